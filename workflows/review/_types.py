"""The plain data the store hands out: users, items as a reviewer sees them, decision and
ingest results, lease and audit rows, final clip states, login limits and the run binding."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from any2capins.schemas import Record, ReviewState
from any2capins.workflows.review.models import FINAL_STATES, ROLES
from any2capins.workflows.review.text import machine_texts

_ROLE_RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class LoginLimits:
    """Login throttling: ``account_failures`` failed logins for one account name (or
    ``address_failures`` from one client address) within ``window`` lock it out for
    ``first_lockout``, doubled on each further lockout up to ``max_lockout``. A lockout
    refuses every attempt, the right password included. Counters live in the store, so
    every server process on it shares them; a day without failures forgets them."""

    account_failures: int = 5
    address_failures: int = 20
    window: timedelta = timedelta(minutes=10)
    first_lockout: timedelta = timedelta(minutes=1)
    max_lockout: timedelta = timedelta(hours=1)
    forget_after: timedelta = timedelta(hours=24)

    def limit(self, kind: str) -> int:
        return self.account_failures if kind == "account" else self.address_failures

    def lockout(self, lockouts: int) -> timedelta:
        return min(self.first_lockout * (1 << min(lockouts, 30)), self.max_lockout)


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str

    def has(self, role: str) -> bool:
        return _ROLE_RANK[self.role] >= _ROLE_RANK[role]


@dataclass(frozen=True)
class ReviewInfo:
    """One person's decision on an item."""

    reviewer: str
    kind: str  # review | adjudication
    decision: str
    edits: dict[str, str]
    reason: str | None
    note: str | None
    at: datetime
    seconds: float
    revision: int = 1
    # per-field verdicts, when the review was given per field
    verdicts: dict[str, FieldVerdictInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldVerdictInfo:
    """One field's verdict as stored: ``machine_text`` is the text it was given on."""

    verdict: str
    machine_text: str
    text: str | None
    reason: str | None
    note: str | None


@dataclass(frozen=True)
class Regeneration:
    """One regeneration of a field: the revision whose text was rejected, why, and that text."""

    field: str
    revision: int
    reason: str | None
    note: str | None
    rejected_text: str


@dataclass
class ItemView:
    """An item as a reviewer sees it: the machine record, its state and the caller's lease."""

    id: int
    clip_id: str
    version: int
    state: str
    record: Record
    reviews_required: int
    reviews_done: int
    hold_reason: str | None
    final_edits: dict[str, str]
    claim_id: int | None = None
    claim_kind: str | None = None
    lease_expires_at: datetime | None = None
    prior_reviews: list[ReviewInfo] = field(default_factory=list)
    revision: int = 1
    # what made this revision: the fields regenerated from the previous one, and why
    regenerated: dict[str, Regeneration] = field(default_factory=dict)
    # the previous revision's fixed fields, carried into this one's page as a starting point
    carried_edits: dict[str, str] = field(default_factory=dict)

    @property
    def machine(self) -> dict[str, str]:
        return machine_texts(self.record)


@dataclass(frozen=True)
class RegenerationTask:
    """An item whose rejected fields wait for new text: ``rejected`` maps each field to its
    verdict (reason, note) and ``machine_text`` is the rejected text."""

    item_id: int
    clip_id: str
    version: int
    revision: int
    record: Record
    rejected: dict[str, FieldVerdictInfo]
    regenerations: dict[str, int]


@dataclass(frozen=True)
class DecisionResult:
    item_id: int
    clip_id: str
    decision: str
    state: str
    version: int
    final: bool


@dataclass
class IngestReport:
    added: int = 0
    unchanged: int = 0
    updated: int = 0
    changed_after_review: int = 0
    held_back: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimRow:
    id: int
    item_id: int
    clip_id: str
    user: str
    kind: str
    claimed_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    item_id: int | None
    clip_id: str | None
    before: Any
    after: Any


@dataclass(frozen=True)
class ClipReview:
    """The final reviewed state of one clip, for export.

    ``state`` is one of ``accepted``, ``rejected``, ``edited`` (final), ``pending`` (not yet
    decided, including items waiting for adjudication: see ``queue_state``) or ``held_back``
    (not sampled by the policy, or dropped by a skip: never accepted without a human).
    ``edits`` holds the human text per edited field (caption component names, and
    ``short_prompt`` or, for a record with instances, ``short_prompt:<instance key>``);
    fields not in it keep the machine text.
    """

    clip_id: str
    state: str
    queue_state: str
    edits: dict[str, str]
    reviewers: list[str]
    reason: str | None
    note: str | None
    ingested_at: datetime
    decided_at: datetime | None
    reviews: list[ReviewInfo]
    hold_reason: str | None
    revision: int = 1
    regenerations: list[Regeneration] = field(default_factory=list)

    def review_state(self) -> ReviewState:
        """As the record schema's :class:`any2capins.schemas.ReviewState` (held back maps to pending)."""
        status = self.state if self.state in FINAL_STATES else "pending"
        reason = ": ".join(p for p in (self.reason, self.note) if p) or None
        return ReviewState(
            status=status,
            reviewer=", ".join(self.reviewers) or None,
            decided_at=self.decided_at,
            reason=reason,
            edits=dict(self.edits),
        )


@dataclass(frozen=True)
class RunBinding:
    run_key: str
    root: str
    artifacts_root: str
