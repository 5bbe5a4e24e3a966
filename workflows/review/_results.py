"""What the review produced, for export and tools: final states per clip, the records as they
were reviewed, and the audit trail."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator

from sqlalchemy import select

from any2capins.workflows.review._base import StoreBase
from any2capins.workflows.review._types import (
    AuditRow,
    ClipReview,
    FieldVerdictInfo,
    Regeneration,
    ReviewInfo,
)
from any2capins.workflows.review.models import (
    FINAL_STATES,
    AuditEntry,
    FieldVerdictRow,
    Item,
    Review,
    User,
)


class ResultsMixin(StoreBase):
    """Reads of the review's outcome."""

    def audit(
        self, item_id: int | None = None, limit: int = 100_000, newest: bool = False
    ) -> list[AuditRow]:
        """Audit rows of one item or of the whole database, oldest first (``newest``: the
        last ``limit`` rows, still oldest first)."""
        with self._read() as s:
            query = select(AuditEntry).order_by(AuditEntry.id.desc() if newest else AuditEntry.id)
            if item_id is not None:
                query = query.where(AuditEntry.item_id == item_id)
            rows = [
                AuditRow(
                    a.id,
                    a.at,
                    a.actor,
                    a.action,
                    a.item_id,
                    a.clip_id,
                    None if a.before_json is None else json.loads(a.before_json),
                    None if a.after_json is None else json.loads(a.after_json),
                )
                for a in s.scalars(query.limit(limit))
            ]
        return rows[::-1] if newest else rows

    def final_states(self) -> dict[str, ClipReview]:
        """For every clip of the run: its final reviewed state (see :class:`ClipReview`)."""
        run = self._bound()
        with self._read() as s:
            items = s.execute(
                select(
                    Item.id,
                    Item.clip_id,
                    Item.state,
                    Item.final_edits_json,
                    Item.final_reason,
                    Item.final_note,
                    Item.created_at,
                    Item.decided_at,
                    Item.hold_reason,
                    Item.revision,
                    Item.regenerations_json,
                ).where(Item.run_key == run.run_key)
            ).all()
            verdict_rows = s.execute(
                select(FieldVerdictRow)
                .join(Item, Item.id == FieldVerdictRow.item_id)
                .where(Item.run_key == run.run_key)
                .order_by(FieldVerdictRow.id)
            ).scalars()
            verdicts: dict[int, dict[str, FieldVerdictInfo]] = defaultdict(dict)
            for v in verdict_rows:
                verdicts[v.review_id][v.field] = FieldVerdictInfo(
                    v.verdict, v.machine_text, v.text, v.reason, v.note
                )
            reviews: dict[int, list[ReviewInfo]] = defaultdict(list)
            for r, name in s.execute(
                select(Review, User.name)
                .join(User, User.id == Review.user_id)
                .join(Item, Item.id == Review.item_id)
                .where(Item.run_key == run.run_key)
                .order_by(Review.id)
            ):
                reviews[r.item_id].append(
                    ReviewInfo(
                        name,
                        r.kind,
                        r.decision,
                        json.loads(r.edits_json),
                        r.reason,
                        r.note,
                        r.created_at,
                        r.seconds,
                        r.revision,
                        verdicts.get(r.id, {}),
                    )
                )
        out: dict[str, ClipReview] = {}
        for row in items:
            state = row.state if row.state in (*FINAL_STATES, "held_back") else "pending"
            final = state in FINAL_STATES
            mine = reviews.get(row.id, [])
            out[row.clip_id] = ClipReview(
                clip_id=row.clip_id,
                state=state,
                queue_state=row.state,
                edits=json.loads(row.final_edits_json) if final else {},
                reviewers=list(dict.fromkeys(r.reviewer for r in mine)),
                reason=row.final_reason,
                note=row.final_note,
                ingested_at=row.created_at,
                decided_at=row.decided_at,
                reviews=mine,
                hold_reason=row.hold_reason,
                revision=row.revision,
                regenerations=[
                    Regeneration(name, d["revision"], d["reason"], d["note"], d["rejected_text"])
                    for name, done in json.loads(row.regenerations_json or "{}").items()
                    for d in done
                ],
            )
        return out

    def reviewed_records(self, clip_ids: Iterable[str]) -> Iterator[tuple[str, str]]:
        """``(clip_id, record JSON)`` for the given clips: the record exactly as it was
        queued and reviewed (a later rebuild that changed it does not change what the
        reviewer decided on). Streams in chunks; clips not in the store are left out."""
        run = self._bound()
        wanted = sorted(set(clip_ids))
        chunk = 500
        for start in range(0, len(wanted), chunk):
            with self._read() as s:
                rows = s.execute(
                    select(Item.clip_id, Item.record_json).where(
                        Item.run_key == run.run_key,
                        Item.clip_id.in_(wanted[start : start + chunk]),
                    )
                ).all()
            yield from ((clip_id, record_json) for clip_id, record_json in rows)
