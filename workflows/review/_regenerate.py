"""Reject -> regenerate: the items whose rejected fields wait for new text, and putting an
item back in the queue as its next revision once they have it (``any2cap captions
regenerate`` does the writing)."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from any2capins.schemas import Record, ReviewState
from any2capins.workflows.review._base import StoreBase, dumps, snapshot
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._errors import Conflict, Invalid, StaleVersion
from any2capins.workflows.review._types import FieldVerdictInfo, RegenerationTask
from any2capins.workflows.review.models import FieldVerdictRow, Item
from any2capins.workflows.review.text import field_names, machine_texts


def canonical_record(record: Record) -> tuple[str, str]:
    """The queued copy of a record (without its review block, as ingest stores it) and its
    SHA-256: a regenerated record saved to the run re-ingests as unchanged."""
    canonical = record.model_copy(update={"review": ReviewState()}).model_dump_json()
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()


def _rejected_rows(s: Session, item: Item) -> dict[str, FieldVerdictRow]:
    """The fields rejected on the item's current revision: the first reject of each (the
    review that sent the item to regeneration), in the order they were given."""
    rejected: dict[str, FieldVerdictRow] = {}
    for row in s.scalars(
        select(FieldVerdictRow)
        .where(
            FieldVerdictRow.item_id == item.id,
            FieldVerdictRow.revision == item.revision,
            FieldVerdictRow.verdict == "reject",
        )
        .order_by(FieldVerdictRow.id)
    ):
        rejected.setdefault(row.field, row)
    return rejected


class RegenerateMixin(StoreBase):
    """Items waiting for regeneration, and their re-queueing."""

    def regeneration_queue(self) -> list[RegenerationTask]:
        """Every item of the run whose latest outcome is ``regenerate``, with its rejected
        fields (reason, note and the rejected text), in queue order."""
        run = self._bound()
        with self._read() as s:
            items = s.scalars(
                select(Item)
                .where(Item.run_key == run.run_key, Item.state == "regenerate")
                .order_by(Item.queue_seq, Item.id)
            ).all()
            tasks = []
            for item in items:
                record = Record.model_validate_json(item.record_json)
                order = {name: i for i, name in enumerate(field_names(record))}
                rejected = {
                    name: FieldVerdictInfo(
                        row.verdict, row.machine_text, row.text, row.reason, row.note
                    )
                    for name, row in _rejected_rows(s, item).items()
                }
                done = json.loads(item.regenerations_json or "{}")
                tasks.append(
                    RegenerationTask(
                        item_id=item.id,
                        clip_id=item.clip_id,
                        version=item.version,
                        revision=item.revision,
                        record=record,
                        rejected=dict(sorted(rejected.items(), key=lambda kv: order.get(kv[0], 0))),
                        regenerations={name: len(v) for name, v in done.items()},
                    )
                )
        return tasks

    @retrying
    def requeue_regenerated(
        self, item_id: int, version: int, record: Record, actor: str = "regenerate"
    ) -> int:
        """Queue ``record`` (the item's record with new text for its rejected fields) as the
        item's next revision; returns the new revision. Refuses a record that changed any
        other field, or a different clip; the audit row links the two revisions."""
        with self._write() as s:
            item = self._locked_item(s, item_id)
            if item.version != version:
                raise StaleVersion(
                    f"item {item_id} changed meanwhile (version {version}, now {item.version})",
                    item.version,
                )
            if item.state != "regenerate":
                raise Conflict(f"item {item_id} is {item.state}, not waiting for regeneration")
            old = Record.model_validate_json(item.record_json)
            if record.clip_id != old.clip_id:
                raise Invalid(f"record {record.clip_id} is not item {item_id}'s clip {old.clip_id}")
            rejected = _rejected_rows(s, item)
            before_texts, after_texts = machine_texts(old), machine_texts(record)
            if list(before_texts) != list(after_texts):
                raise Invalid(
                    f"the regenerated record of item {item_id} has other fields: "
                    f"{', '.join(after_texts)} (was {', '.join(before_texts)})"
                )
            others = [
                n for n in before_texts if n not in rejected and before_texts[n] != after_texts[n]
            ]
            if others:
                raise Invalid(
                    f"the regenerated record of item {item_id} changed fields nobody rejected: "
                    + ", ".join(others)
                )
            done = json.loads(item.regenerations_json or "{}")
            for name, row in rejected.items():
                done.setdefault(name, []).append(
                    {
                        "revision": item.revision,
                        "reason": row.reason,
                        "note": row.note,
                        "rejected_text": row.machine_text,
                    }
                )
            canonical, sha = canonical_record(record)
            before = {**snapshot(item), "revision": item.revision, "sha256": item.record_sha256}
            policy = self._policy(s)
            # ahead of the queue: a rewritten field should not wait behind the whole run
            first = s.scalar(select(func.min(Item.queue_seq)).where(Item.run_key == item.run_key))
            item.record_json, item.record_sha256 = canonical, sha
            item.regenerations_json = dumps(done)
            item.revision += 1
            item.state, item.hold_reason = "pending", None
            item.reviews_required = policy.reviews_for(item.clip_id)
            item.final_edits_json = "{}"
            item.final_reason = item.final_note = item.final_by = None
            item.decided_at = None
            item.queue_seq = (first or 0) - 1
            item.version += 1
            item.updated_at = self._now()
            self._audit(
                s,
                actor,
                "regenerated",
                item,
                before,
                {
                    **snapshot(item),
                    "revision": item.revision,
                    "from_revision": item.revision - 1,
                    "sha256": sha,
                    "fields": {
                        name: {"reason": row.reason, "note": row.note}
                        for name, row in rejected.items()
                    },
                },
            )
            return item.revision


def regeneration_hint(run_dir: str) -> str | None:
    """One line for ``any2cap build`` when the run's own review store (``RUN_DIR/review.db``)
    has items waiting for regeneration; None otherwise (or when it cannot be read)."""
    import os

    from any2capins.workflows.review._runs import SQLITE_NAME

    if "://" in run_dir or not os.path.isfile(os.path.join(run_dir, SQLITE_NAME)):
        return None
    from any2capins.workflows.review.store import open_store

    try:
        store = open_store(run_dir=run_dir)
        try:
            waiting = store.queue_counts().get("regenerate", 0)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - a hint never fails a build
        return None
    if not waiting:
        return None
    return (
        f"review: {waiting} item(s) have fields reviewers rejected; rewrite them with "
        f"`any2cap captions regenerate --run {run_dir}`"
    )
