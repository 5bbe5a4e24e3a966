"""Decisions: accept / reject / edit on a leased item with optimistic versions, and settling
overlap reviews into a final state or a dispute for adjudication."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from any2capins.schemas import Record
from any2capins.workflows.review._base import dumps, snapshot
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._errors import Conflict, Invalid, StaleVersion
from any2capins.workflows.review._leases import LeasesMixin
from any2capins.workflows.review._types import (
    DecisionResult,
    UserInfo,
)
from any2capins.workflows.review.models import (
    FINAL_STATES,
    Claim,
    FieldVerdictRow,
    Item,
    Review,
    User,
)
from any2capins.workflows.review.outcome import VERDICTS, FieldVerdict, Outcome, field_outcome
from any2capins.workflows.review.policy import ReviewPolicy
from any2capins.workflows.review.text import (
    FIELDS,
    apply_edits,
    check_text,
    field_names,
    instance_key,
    machine_texts,
    normalized_distance,
    unknown_fields,
)


def _check_field_name(name: str) -> None:
    """Refuse a name that is no field of any record (before the item is read)."""
    if name not in FIELDS and instance_key(name) is None:
        raise Invalid(
            f"unknown field {name!r}; fields are {', '.join(FIELDS)} or "
            "short_prompt:<instance key> for a record with instances"
        )


def _checked_note(note: str | None) -> str | None:
    if note is None:
        return None
    try:
        check_text(note, "note")
    except ValueError as e:
        raise Invalid(str(e)) from e
    return note.strip() or None


def _check_record_fields(record: Record, names: list[str], item_id: int) -> None:
    """Refuse names that are not fields of this record (an instance it does not have)."""
    unknown = unknown_fields(record, names)
    if unknown:
        raise Invalid(
            f"item {item_id} has no field {', '.join(map(repr, unknown))}; its fields "
            f"are {', '.join(field_names(record))}"
        )


class DecisionsMixin(LeasesMixin):
    """Recording decisions and finalising items (a decision closes the caller's lease)."""

    def _open_decision(
        self,
        s: Session,
        user: UserInfo,
        item_id: int,
        version: int,
        now: datetime,
        names: list[str],
    ) -> tuple[Item, Claim, ReviewPolicy, Record]:
        """The leased item a decision is about, its claim, the run's policy and the record,
        once ``names`` are checked to be fields of that record."""
        item, claim = self._decidable(s, user, item_id, version, now)
        record = Record.model_validate_json(item.record_json)
        _check_record_fields(record, names, item_id)
        return item, claim, self._policy(s), record

    @retrying
    def decide(
        self,
        user: UserInfo,
        item_id: int,
        decision: str,
        version: int,
        edits: dict[str, str] | None = None,
        reason: str | None = None,
        note: str | None = None,
    ) -> DecisionResult:
        """Record ``user``'s decision on a leased item.

        ``edits`` maps field names to new text: the six components, and ``short_prompt``
        for a record without instances or ``short_prompt:<instance key>`` (e.g.
        ``short_prompt:camera+depth``) for each instance of a record with them; any other
        name is refused (:class:`Invalid`). Text equal to the machine's (ignoring surrounding
        whitespace) is dropped; an edit that then changes nothing is refused (send accept).
        ``version`` must be the item's current version: a decision taken on an older state
        is refused with :class:`StaleVersion`, never applied over a newer one.
        """
        if decision not in ("accept", "reject", "edit"):
            raise Invalid(f"decision must be accept, reject or edit, not {decision!r}")
        edits = dict(edits or {})
        for name, value in edits.items():
            _check_field_name(name)
            try:
                check_text(value, name)
            except ValueError as e:
                raise Invalid(str(e)) from e
        note = _checked_note(note)
        now = self._now()
        with self._write() as s:
            item, claim, policy, record = self._open_decision(
                s, user, item_id, version, now, list(edits)
            )
            machine = machine_texts(record)
            changed = {k: v.strip() for k, v in edits.items() if v.strip() != machine[k].strip()}
            if decision == "reject":
                if changed:
                    raise Invalid("a reject carries no edits (send reason and note)")
                if reason not in policy.reject_reasons:
                    raise Invalid(
                        f"a reject needs a reason code, one of {', '.join(policy.reject_reasons)}"
                    )
            else:
                if reason is not None:
                    raise Invalid("reason codes are for rejects; use note for a comment")
                if decision == "accept" and changed:
                    raise Invalid("accept carries no changed text: send decision 'edit'")
                if decision == "edit" and not changed:
                    raise Invalid("an edit needs at least one changed field; use accept")
                final = apply_edits(machine, changed)
                empty = [k for k in machine if not final[k].strip()]
                if empty:
                    missing = "no caption" if record.caption is None else "empty fields"
                    raise Invalid(
                        f"cannot {decision} with {missing}: write {', '.join(empty)} or reject"
                    )
            implicit = None
            if decision != "reject":
                implicit = {
                    k: FieldVerdict("fix", changed[k]) if k in changed else FieldVerdict("accept")
                    for k in machine
                }
            return self._record(
                s, item, claim, user, decision, changed, reason, note, version, now, implicit
            )

    @retrying
    def decide_fields(
        self,
        user: UserInfo,
        item_id: int,
        version: int,
        verdicts: dict[str, FieldVerdict],
        note: str | None = None,
    ) -> DecisionResult:
        """Record ``user``'s verdict per field of a leased item: ``accept``, ``fix`` (with
        the corrected text) or ``reject`` (a reason code of the policy, an optional note).
        Fields not named are accepted (a field whose text is empty cannot be). A ``fix``
        whose text equals the machine's (ignoring surrounding whitespace) is an accept.
        What the item becomes is :func:`any2capins.workflows.review.outcome.field_outcome`'s rule:
        accepted / edited, or with a rejected field ``regenerate`` or ``rejected`` by the
        policy (``on_field_reject``, ``max_regenerations``, ``final_reject_reasons``).
        """
        if not verdicts:
            raise Invalid("verdicts name no field; use the decisions accept, edit or reject")
        for name, v in verdicts.items():
            _check_field_name(name)
            if v.verdict not in VERDICTS:
                raise Invalid(f"{name}: verdict must be accept, fix or reject, not {v.verdict!r}")
            for what, value in (("text", v.text), ("note", v.note)):
                if value is not None:
                    try:
                        check_text(value, f"{name} {what}")
                    except ValueError as e:
                        raise Invalid(str(e)) from e
            if v.verdict == "fix" and v.text is None:
                raise Invalid(f"{name}: a fix carries the corrected text")
            if v.verdict != "fix" and v.text is not None:
                raise Invalid(f"{name}: only a fix carries text")
            if v.verdict != "reject" and (v.reason is not None or v.note is not None):
                raise Invalid(f"{name}: reason and note go with a reject")
        note = _checked_note(note)
        now = self._now()
        with self._write() as s:
            item, claim, policy, record = self._open_decision(
                s, user, item_id, version, now, list(verdicts)
            )
            machine = machine_texts(record)
            full: dict[str, FieldVerdict] = {}
            for name in machine:  # screen order
                v = verdicts.get(name, FieldVerdict("accept"))
                if v.verdict == "fix" and (v.text or "").strip() == machine[name].strip():
                    v = FieldVerdict("accept")
                if v.verdict == "fix":
                    v = FieldVerdict("fix", (v.text or "").strip())
                if v.verdict == "reject":
                    if v.reason not in policy.reject_reasons:
                        raise Invalid(
                            f"{name}: a reject needs a reason code, one of "
                            f"{', '.join(policy.reject_reasons)}"
                        )
                    v = FieldVerdict("reject", None, v.reason, (v.note or "").strip() or None)
                final_text = v.text if v.verdict == "fix" else machine[name]
                if v.verdict != "reject" and not (final_text or "").strip():
                    raise Invalid(f"{name} is empty: write it (fix) or reject it")
                full[name] = v
            outcome = field_outcome(full, policy, _regeneration_counts(item))
            notes = "; ".join(p for p in (note, outcome.note) if p) or None
            return self._record(
                s,
                item,
                claim,
                user,
                outcome.decision,
                outcome.edits,
                outcome.reason,
                notes,
                version,
                now,
                full,
            )

    def _decidable(
        self, s: Session, user: UserInfo, item_id: int, version: int, now: datetime
    ) -> tuple[Item, Claim]:
        """The locked item and the caller's lease on it, when a decision may be recorded."""
        item = self._locked_item(s, item_id)
        # The version first: "it changed since you loaded it" is what a stale page needs
        # to hear, whatever happened to the lease meanwhile.
        if item.version != version:
            raise StaleVersion(
                f"item {item_id} changed since you loaded it (version {version}, now "
                f"{item.version}, {item.state}); your decision was not applied",
                item.version,
            )
        claim = self._my_claim(s, item, user, now)
        expected = "disputed" if claim.kind == "adjudication" else "pending"
        if item.state != expected:
            raise Conflict(f"item {item_id} is {item.state}, nothing to decide")
        return item, claim

    def _record(
        self,
        s: Session,
        item: Item,
        claim: Claim,
        user: UserInfo,
        decision: str,
        changed: dict[str, str],
        reason: str | None,
        note: str | None,
        version: int,
        now: datetime,
        verdicts: dict[str, FieldVerdict] | None,
    ) -> DecisionResult:
        """Store one review (and its field verdicts), close the lease, settle the item."""
        policy = self._policy(s)
        machine = machine_texts(Record.model_validate_json(item.record_json))
        before = snapshot(item)
        started = claim.claimed_at
        claim.status, claim.closed_at = "completed", now
        review = Review(
            item_id=item.id,
            user_id=user.id,
            claim_id=claim.id,
            kind=claim.kind,
            decision=decision,
            edits_json=dumps(changed),
            reason=reason if decision == "reject" else None,
            note=note,
            version_seen=version,
            seconds=max(0.0, (now - started).total_seconds()),
            created_at=now,
            revision=item.revision,
        )
        s.add(review)
        s.flush()
        if verdicts:
            # One executemany instead of one ORM insert per field: the decide path's largest
            # cost on SQLite (docs/benchmarks.md, "Offered load and workers").
            s.execute(
                insert(FieldVerdictRow),
                [
                    {
                        "review_id": review.id,
                        "item_id": item.id,
                        "revision": item.revision,
                        "field": name,
                        "verdict": v.verdict,
                        "machine_text": machine.get(name, ""),
                        "text": v.text,
                        "reason": v.reason,
                        "note": v.note,
                    }
                    for name, v in verdicts.items()
                ],
            )
        audited: dict[str, Any] = {
            "decision": decision,
            "edits": changed,
            "reason": review.reason,
            "note": note,
        }
        if verdicts and any(v.verdict == "reject" for v in verdicts.values()):
            audited["verdicts"] = {
                n: {"verdict": v.verdict, "reason": v.reason, "note": v.note}
                for n, v in verdicts.items()
                if v.verdict != "accept"
            }
        self._audit(
            s,
            user.name,
            "adjudicate" if claim.kind == "adjudication" else "review",
            item,
            before,
            audited,
        )
        if claim.kind == "adjudication":
            outcome = self._verdict_outcome(s, item, policy, [review])
            if outcome is not None and decision == "reject":
                self._conclude(s, item, outcome, [user.name], now)
            else:
                self._finalize(s, item, decision, changed, review.reason, note, [user.name], now)
        else:
            self._settle(s, item, machine, policy, now)
        item.updated_at = now
        return DecisionResult(
            item_id=item.id,
            clip_id=item.clip_id,
            decision=decision,
            state=item.state,
            version=item.version,
            final=item.state in FINAL_STATES,
        )

    def _verdict_outcome(
        self, s: Session, item: Item, policy: ReviewPolicy, reviews: list[Review]
    ) -> Outcome | None:
        """The outcome of rejecting reviews given per field (their rejected fields merged,
        the first reviewer's verdict per field standing); None when any of them rejected
        the whole record (a whole-record reject is final, as it always was)."""
        merged: dict[str, FieldVerdict] = {}
        machine = machine_texts(Record.model_validate_json(item.record_json))
        for review in reviews:
            rows = s.scalars(
                select(FieldVerdictRow)
                .where(FieldVerdictRow.review_id == review.id)
                .order_by(FieldVerdictRow.id)
            ).all()
            if not any(r.verdict == "reject" for r in rows):
                return None
            for r in rows:
                if r.verdict == "reject" and r.field not in merged:
                    merged[r.field] = FieldVerdict("reject", None, r.reason, r.note)
        ordered = {n: merged[n] for n in machine if n in merged}
        return field_outcome(ordered, policy, _regeneration_counts(item))

    def _conclude(
        self, s: Session, item: Item, outcome: Outcome, by: list[str], now: datetime
    ) -> None:
        """A rejecting outcome: rejected for good, or waiting for regeneration."""
        if outcome.state != "regenerate":
            self._finalize(s, item, "reject", {}, outcome.reason, outcome.note, by, now)
            return
        before = snapshot(item)
        item.state = "regenerate"
        item.final_edits_json = dumps(outcome.edits)
        item.final_reason, item.final_note = outcome.reason, outcome.note
        item.final_by = ",".join(by)
        item.decided_at = now
        item.version += 1
        self._audit(
            s,
            "system",
            "regenerate",
            item,
            before,
            {
                **snapshot(item),
                "revision": item.revision,
                "fields": {
                    n: {"reason": v.reason, "note": v.note} for n, v in outcome.rejected.items()
                },
            },
        )

    def _settle(
        self, s: Session, item: Item, machine: dict[str, str], policy: ReviewPolicy, now: datetime
    ) -> None:
        """Once every required review is in: finalise on agreement, else ask for adjudication."""
        rows = s.execute(
            select(Review, User.name)
            .join(User, User.id == Review.user_id)
            .where(
                Review.item_id == item.id,
                Review.kind == "review",
                Review.revision == item.revision,
            )
            .order_by(Review.id)
        ).all()
        if len(rows) < item.reviews_required:
            return
        names = [name for _, name in rows]
        decisions = [r.decision for r, _ in rows]
        if all(d == "reject" for d in decisions):
            outcome = self._verdict_outcome(s, item, policy, [r for r, _ in rows])
            if outcome is not None:
                self._conclude(s, item, outcome, names, now)
                return
            reasons = Counter(r.reason for r, _ in rows)
            reason = max(reasons, key=lambda k: (reasons[k], -decisions.index("reject")))
            notes = "; ".join(r.note for r, _ in rows if r.note) or None
            self._finalize(s, item, "reject", {}, reason, notes, names, now)
            return
        if any(d == "reject" for d in decisions):
            self._dispute(s, item, "accept/reject disagreement")
            return
        texts = [apply_edits(machine, json.loads(r.edits_json)) for r, _ in rows]
        for name in machine:
            for other in texts[1:]:
                if normalized_distance(texts[0][name], other[name]) > policy.edit_tolerance:
                    self._dispute(s, item, f"{name} texts differ")
                    return
        # Within tolerance: the first reviewer's text stands.
        first = json.loads(rows[0][0].edits_json)
        notes = "; ".join(r.note for r, _ in rows if r.note) or None
        self._finalize(s, item, "edit" if first else "accept", first, None, notes, names, now)

    def _dispute(self, s: Session, item: Item, why: str) -> None:
        before = snapshot(item)
        item.state = "disputed"
        self._audit(s, "system", "disputed", item, before, {**snapshot(item), "why": why})

    def _finalize(
        self,
        s: Session,
        item: Item,
        decision: str,
        edits: dict[str, str],
        reason: str | None,
        note: str | None,
        by: list[str],
        now: datetime,
    ) -> None:
        before = snapshot(item)
        item.state = {"accept": "accepted", "reject": "rejected", "edit": "edited"}[decision]
        item.final_edits_json = dumps(edits)
        item.final_reason, item.final_note = reason, note
        item.final_by = ",".join(by)
        item.decided_at = now
        item.version += 1
        self._audit(s, "system", "final", item, before, snapshot(item))


def _regeneration_counts(item: Item) -> dict[str, int]:
    """How many times each field of the item was regenerated so far."""
    return {name: len(done) for name, done in json.loads(item.regenerations_json or "{}").items()}
