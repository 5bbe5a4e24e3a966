"""What every operation module of the store builds on: the interface of the :class:`ReviewStore`
front (engine, run binding, transactions, clock), appending to the audit trail, the shared row
look-ups and the snapshot and JSON helpers of the audit trail."""

from __future__ import annotations

import functools
import json
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from any2capins.schemas import Record
from any2capins.workflows.review._errors import NotFound
from any2capins.workflows.review._types import LoginLimits, RunBinding
from any2capins.workflows.review.models import AuditEntry, Item, Run
from any2capins.workflows.review.policy import ReviewPolicy

# The hold reason of an item the policy did not sample (re-sampled when the policy changes).
HOLD_SAMPLING = "not sampled by the review policy"


class StoreBase:
    """The front (``any2capins.workflows.review.store.ReviewStore``) implements the transactions and the
    clock; the operation mixins use them through this interface."""

    engine: Engine
    run: RunBinding | None
    login_limits: LoginLimits
    _last_sweep: float

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _write(self) -> AbstractContextManager[Session]:
        """A write transaction (serialised per process on SQLite)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Session]:
        """A read-only transaction."""
        raise NotImplementedError

    def _now(self) -> datetime:
        """The store's clock (UTC)."""
        raise NotImplementedError

    def _bound(self) -> RunBinding:
        """The run this store serves; :class:`Invalid` when it was opened without one."""
        raise NotImplementedError

    def _audit(
        self,
        s: Session,
        actor: str,
        action: str,
        item: Item | None = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Append an audit row in the transaction ``s``."""
        s.add(
            AuditEntry(
                at=self._now(),
                actor=actor,
                action=action,
                run_key=item.run_key if item is not None else (self.run and self.run.run_key),
                item_id=item.id if item is not None else None,
                clip_id=item.clip_id if item is not None else None,
                before_json=None if before is None else dumps(before),
                after_json=None if after is None else dumps(after),
            )
        )

    def _policy(self, s: Session) -> ReviewPolicy:
        row = s.get(Run, self._bound().run_key)
        if row is None:
            return ReviewPolicy()
        return _parsed_policy(row.policy_json)

    def _locked_item(self, s: Session, item_id: int) -> Item:
        item = s.get(Item, item_id, with_for_update=True)
        if item is None or item.run_key != self._bound().run_key:
            raise NotFound(f"no item {item_id} in this run")
        return item


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def snapshot(item: Item) -> dict[str, Any]:
    return {
        "state": item.state,
        "version": item.version,
        "reviews_required": item.reviews_required,
        "hold_reason": item.hold_reason,
        "final_edits": json.loads(item.final_edits_json),
        "final_reason": item.final_reason,
        "final_note": item.final_note,
        "final_by": item.final_by,
    }


def conditions_of(record: Record) -> list[str]:
    return sorted(record.conditions.present())


@functools.lru_cache(maxsize=32)
def _parsed_policy(policy_json: str) -> ReviewPolicy:
    # A claim and a decision each read the run's policy several times; parsing the same
    # JSON again cost about 1.2 ms a decision (docs/benchmarks.md, "Offered load and
    # workers"). Callers only read the policy.
    return ReviewPolicy.model_validate_json(policy_json)
