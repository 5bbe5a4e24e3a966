"""Ingest: copying a run's records into the queue (idempotent, never over a reviewed copy)."""

from __future__ import annotations

import hashlib

from pydantic import ValidationError
from sqlalchemy import func, select, text

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import Record, ReviewState
from any2capins.workflows.review._base import HOLD_SAMPLING, StoreBase, conditions_of, snapshot
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._types import (
    IngestReport,
)
from any2capins.workflows.review.models import (
    FINAL_STATES,
    Claim,
    Item,
    Run,
)


class IngestMixin(StoreBase):
    """Queueing the run's records."""

    @retrying
    def ingest(self, actor: str = "ingest") -> IngestReport:
        """Queue the run's records. Idempotent: records already in the store, unchanged, add
        nothing. A record whose machine text changed is updated only while no human has
        touched it; afterwards the reviewed version is kept and the change is counted.
        The records' ``review`` block is not part of the queued copy (see :mod:`writeback`)."""
        run = self._bound()
        report = IngestReport()
        rundir = RunDir(run.root)
        parsed: list[tuple[Record, str, str]] = []
        for name in rundir.storage.list("records", ".json"):
            try:
                record = Record.model_validate_json(rundir.storage.read(f"records/{name}"))
            except (OSError, ValueError, ValidationError) as e:
                report.invalid.append((name, f"{type(e).__name__}: {e}"[:500]))
                continue
            # The review block is the store's output (``any2cap review writeback`` writes it
            # into the run's records), not machine text: it is left out of the queued copy
            # and of the comparison, so a written-back run re-ingests as unchanged.
            record = record.model_copy(update={"review": ReviewState()})
            canonical = record.model_dump_json()
            parsed.append((record, canonical, hashlib.sha256(canonical.encode()).hexdigest()))
        parsed.sort(key=lambda p: (p[0].clip.source_uri, p[0].clip.start_s, p[0].clip_id))
        with self._write() as s:
            if self.dialect == "postgresql":
                key = int(hashlib.sha256(run.run_key.encode()).hexdigest()[:15], 16)
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            policy = self._policy(s)
            existing = {
                item.clip_id: item
                for item in s.scalars(select(Item).where(Item.run_key == run.run_key))
            }
            touched = set(
                s.scalars(
                    select(Claim.item_id)
                    .join(Item, Item.id == Claim.item_id)
                    .where(Item.run_key == run.run_key)
                    .distinct()
                )
            )
            seq = s.scalar(select(func.max(Item.queue_seq)).where(Item.run_key == run.run_key)) or 0
            now = self._now()
            for record, canonical, sha in parsed:
                types = conditions_of(record)
                item = existing.get(record.clip_id)
                if item is not None and item.record_sha256 == sha:
                    report.unchanged += 1
                    continue
                if item is not None and (item.id in touched or item.state in FINAL_STATES):
                    report.changed_after_review += 1
                    continue
                sampled = policy.is_sampled(record.clip_id, types)
                state = "pending" if sampled else "held_back"
                if item is None:
                    seq += 1
                    item = Item(
                        run_key=run.run_key,
                        clip_id=record.clip_id,
                        conditions="+".join(types) or "none",
                        record_json=canonical,
                        record_sha256=sha,
                        state=state,
                        hold_reason=None if sampled else HOLD_SAMPLING,
                        reviews_required=policy.reviews_for(record.clip_id),
                        version=1,
                        queue_seq=seq,
                        created_at=now,
                        updated_at=now,
                        final_edits_json="{}",
                    )
                    s.add(item)
                    s.flush()
                    self._audit(s, actor, "ingest", item, None, {**snapshot(item), "sha256": sha})
                    report.added += 1
                else:
                    before = {**snapshot(item), "sha256": item.record_sha256}
                    item.record_json, item.record_sha256 = canonical, sha
                    item.conditions = "+".join(types) or "none"
                    item.state = state
                    item.hold_reason = None if sampled else HOLD_SAMPLING
                    item.version += 1
                    item.updated_at = now
                    self._audit(
                        s, actor, "reingest", item, before, {**snapshot(item), "sha256": sha}
                    )
                    report.updated += 1
                if not sampled:
                    report.held_back += 1
            row = s.get(Run, run.run_key)
            if row is not None:
                row.ingested_at = now
        return report
