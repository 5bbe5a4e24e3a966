"""Leases: claiming the next item, renewing, skipping and releasing claims, and the item views
a lease-holder (or a reviewer looking in) gets."""

from __future__ import annotations

import contextlib
import json
import random
import time
from datetime import datetime, timedelta

from sqlalchemy import and_, case, exists, func, or_, select, true
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from any2capins.schemas import Record
from any2capins.workflows.review._base import StoreBase, snapshot
from any2capins.workflows.review._db import retrying
from any2capins.workflows.review._errors import Conflict, Forbidden, NotFound
from any2capins.workflows.review._types import (
    ClaimRow,
    FieldVerdictInfo,
    ItemView,
    Regeneration,
    ReviewInfo,
    RunBinding,
    UserInfo,
)
from any2capins.workflows.review.models import (
    Claim,
    FieldVerdictRow,
    Item,
    Review,
    User,
)

# How long a PostgreSQL claimer waits for rows other claimers hold before saying "none left".
_CLAIM_PATIENCE_S = 5.0


class LeasesMixin(StoreBase):
    """Leased claims on items."""

    def _open_slots(
        self, s: Session, item: Item, now: datetime, ignore_claim: int | None = None
    ) -> int:
        """Free review slots of a locked item, counted with a fresh statement."""
        kind = "adjudication" if item.state == "disputed" else "review"
        active = select(func.count(Claim.id)).where(
            Claim.item_id == item.id,
            Claim.kind == kind,
            Claim.status == "active",
            Claim.expires_at > now,
        )
        if ignore_claim is not None:
            active = active.where(Claim.id != ignore_claim)
        n_active = s.scalar(active) or 0
        if kind == "adjudication":
            return 1 - n_active
        done = s.scalar(
            select(func.count(Review.id)).where(
                Review.item_id == item.id,
                Review.kind == "review",
                Review.revision == item.revision,
            )
        )
        return item.reviews_required - (done or 0) - n_active

    def _view(self, s: Session, item: Item, claim: Claim | None) -> ItemView:
        reviews = s.execute(
            select(Review, User.name)
            .join(User, User.id == Review.user_id)
            .where(Review.item_id == item.id, Review.revision == item.revision)
            .order_by(Review.id)
        ).all()
        verdicts = self._verdicts_of(s, [r.id for r, _ in reviews])
        infos = [
            ReviewInfo(
                reviewer=name,
                kind=r.kind,
                decision=r.decision,
                edits=json.loads(r.edits_json),
                reason=r.reason,
                note=r.note,
                at=r.created_at,
                seconds=r.seconds,
                revision=r.revision,
                verdicts=verdicts.get(r.id, {}),
            )
            for r, name in reviews
        ]
        regenerated: dict[str, Regeneration] = {}
        carried: dict[str, str] = {}
        if item.revision > 1:
            for name, done in json.loads(item.regenerations_json or "{}").items():
                last = done[-1] if done else None
                if last is not None and last["revision"] == item.revision - 1:
                    regenerated[name] = Regeneration(
                        name, last["revision"], last["reason"], last["note"], last["rejected_text"]
                    )
            for row in s.scalars(
                select(FieldVerdictRow)
                .where(
                    FieldVerdictRow.item_id == item.id,
                    FieldVerdictRow.revision == item.revision - 1,
                    FieldVerdictRow.verdict == "fix",
                )
                .order_by(FieldVerdictRow.id)
            ):
                carried.setdefault(row.field, row.text or "")
        return ItemView(
            id=item.id,
            clip_id=item.clip_id,
            version=item.version,
            state=item.state,
            record=Record.model_validate_json(item.record_json),
            reviews_required=item.reviews_required,
            reviews_done=sum(1 for i in infos if i.kind == "review"),
            hold_reason=item.hold_reason,
            final_edits=json.loads(item.final_edits_json),
            claim_id=claim.id if claim is not None else None,
            claim_kind=claim.kind if claim is not None else None,
            lease_expires_at=claim.expires_at if claim is not None else None,
            # Independent reviewers must not see each other; adjudicators must see everyone.
            prior_reviews=infos if item.state != "pending" else [],
            revision=item.revision,
            regenerated=regenerated,
            carried_edits=carried,
        )

    @staticmethod
    def _verdicts_of(s: Session, review_ids: list[int]) -> dict[int, dict[str, FieldVerdictInfo]]:
        out: dict[int, dict[str, FieldVerdictInfo]] = {}
        if not review_ids:
            return out
        for row in s.scalars(
            select(FieldVerdictRow)
            .where(FieldVerdictRow.review_id.in_(review_ids))
            .order_by(FieldVerdictRow.id)
        ):
            out.setdefault(row.review_id, {})[row.field] = FieldVerdictInfo(
                row.verdict, row.machine_text, row.text, row.reason, row.note
            )
        return out

    def _sweep_expired(self) -> None:
        """Mark lapsed leases expired (they already stopped counting when they lapsed)."""
        if time.monotonic() - self._last_sweep < 5.0:
            return
        self._last_sweep = time.monotonic()
        now = self._now()
        with self._write() as s:
            lapsed = s.execute(
                select(Claim, Item)
                .join(Item, Item.id == Claim.item_id)
                .where(Claim.status == "active", Claim.expires_at <= now)
                .order_by(Claim.id)
                .limit(200)
                .with_for_update(skip_locked=True, of=Claim)
            ).all()
            for claim, item in lapsed:
                claim.status, claim.closed_at = "expired", now
                self._audit(s, "system", "lease_expired", item, {"claim": claim.id}, None)

    @staticmethod
    def _live_lease(
        s: Session, run: RunBinding, user: UserInfo, now: datetime
    ) -> tuple[Claim, Item] | None:
        """The oldest unexpired lease ``user`` holds in the run, with its item."""
        row = s.execute(
            select(Claim, Item)
            .join(Item, Item.id == Claim.item_id)
            .where(
                Item.run_key == run.run_key,
                Claim.user_id == user.id,
                Claim.status == "active",
                Claim.expires_at > now,
            )
            .order_by(Claim.id)
            .limit(1)
        ).first()
        return None if row is None else (row[0], row[1])

    @retrying
    def claim(self, user: UserInfo) -> ItemView | None:
        """Lease the next item for ``user`` (or return the lease they already hold).

        Returns None when nothing is left for them. Reviewers and admins get items waiting
        for adjudication first; nobody gets an item they reviewed or (policy
        ``requeue_others``) skipped.
        """
        run = self._bound()
        with contextlib.suppress(DBAPIError):
            self._sweep_expired()
        now = self._now()
        with self._write() as s:
            policy = self._policy(s)
            ttl = timedelta(seconds=policy.lease_ttl_s)
            held = self._live_lease(s, run, user, now)
            if held is not None:
                claim, item = held
                claim.expires_at = now + ttl
                return self._view(s, item, claim)
            states = ["pending", "disputed"] if user.has("reviewer") else ["pending"]
            # a regenerated item is a new text: its earlier reviewers may review it again
            mine_reviewed = select(Review.id).where(
                Review.item_id == Item.id,
                Review.user_id == user.id,
                Review.revision == Item.revision,
            )
            conditions = [
                Item.run_key == run.run_key,
                Item.state.in_(states),
                ~exists(mine_reviewed),
            ]
            if policy.skip == "requeue_others":
                mine_skipped = select(Claim.id).where(
                    Claim.item_id == Item.id, Claim.user_id == user.id, Claim.status == "skipped"
                )
                conditions.append(~exists(mine_skipped))
            # Cheap pre-filter on a snapshot; the real check is _open_slots after the lock.
            active = (
                select(func.count(Claim.id))
                .where(
                    Claim.item_id == Item.id,
                    Claim.status == "active",
                    Claim.expires_at > now,
                    Claim.kind == case((Item.state == "disputed", "adjudication"), else_="review"),
                )
                .scalar_subquery()
            )
            done = (
                select(func.count(Review.id))
                .where(
                    Review.item_id == Item.id,
                    Review.kind == "review",
                    Review.revision == Item.revision,
                )
                .scalar_subquery()
            )
            conditions.append(
                or_(
                    and_(Item.state == "disputed", active == 0),
                    and_(Item.state == "pending", done + active < Item.reviews_required),
                )
            )
            excluded: set[int] = set()
            deadline = time.monotonic() + _CLAIM_PATIENCE_S
            while True:
                base = select(Item).where(
                    *conditions, Item.id.not_in(excluded) if excluded else true()
                )
                # One row at a time: locking several would hide them from other claimers.
                candidate = s.scalars(
                    base.order_by(
                        case((Item.state == "disputed", 0), else_=1), Item.queue_seq, Item.id
                    )
                    .limit(1)
                    .with_for_update(skip_locked=True, of=Item)
                ).first()
                if candidate is None:
                    if self.dialect != "postgresql" or time.monotonic() > deadline:
                        return None
                    # SKIP LOCKED hides rows other claimers hold for a moment; "nothing
                    # left" is only true when no candidate exists at all.
                    if s.scalar(select(exists(base.with_only_columns(Item.id)))) is not True:
                        return None
                    time.sleep(random.uniform(0.002, 0.01))
                    continue
                if self._open_slots(s, candidate, now) <= 0:
                    excluded.add(candidate.id)
                    continue
                claim = Claim(
                    item_id=candidate.id,
                    user_id=user.id,
                    kind="adjudication" if candidate.state == "disputed" else "review",
                    status="active",
                    claimed_at=now,
                    expires_at=now + ttl,
                    version_seen=candidate.version,
                )
                s.add(claim)
                s.flush()
                self._audit(
                    s,
                    user.name,
                    "claim",
                    candidate,
                    None,
                    {"claim": claim.id, "kind": claim.kind, "expires_at": claim.expires_at},
                )
                return self._view(s, candidate, claim)

    def current(self, user: UserInfo) -> ItemView | None:
        """The item ``user`` holds a live lease on, if any (no side effects)."""
        run = self._bound()
        with self._read() as s:
            held = self._live_lease(s, run, user, self._now())
            return None if held is None else self._view(s, held[1], held[0])

    def item(self, user: UserInfo, item_id: int) -> ItemView:
        """An item for display: its holder sees it with their lease (read-only once the lease
        ended); reviewers and admins may look at any item of the run (read-only)."""
        run = self._bound()
        with self._read() as s:
            item = s.get(Item, item_id)
            if item is None or item.run_key != run.run_key:
                raise NotFound(f"no item {item_id} in this run")
            claim = s.scalar(
                select(Claim)
                .where(Claim.item_id == item_id, Claim.user_id == user.id)
                .order_by(Claim.id.desc())
                .limit(1)
            )
            # Annotators see items they have held (read-only once the lease ended).
            if claim is None and not user.has("reviewer"):
                raise Forbidden(f"item {item_id} is not leased to you")
            live = claim if claim is not None and claim.status in ("active", "expired") else None
            return self._view(s, item, live)

    def _my_claim(self, s: Session, item: Item, user: UserInfo, now: datetime) -> Claim:
        """The caller's lease on a locked item; a lapsed lease is revived when its slot is
        still free, so a slow reviewer loses nothing unless someone else took over."""
        claim = s.scalar(
            select(Claim)
            .where(Claim.item_id == item.id, Claim.user_id == user.id)
            .order_by(Claim.id.desc())
            .limit(1)
        )
        if claim is None:
            raise Conflict(f"item {item.id} is not leased to you: claim it first")
        if claim.status == "released":
            raise Conflict(f"your lease on item {item.id} was released by an admin")
        if claim.status in ("completed", "skipped"):
            raise Conflict(f"you already {claim.status} item {item.id}")
        if claim.status == "expired" or claim.expires_at <= now:
            if self._open_slots(s, item, now, ignore_claim=claim.id) <= 0:
                raise Conflict(
                    f"your lease on item {item.id} expired and someone else has claimed it"
                )
            claim.status = "active"
        return claim

    @retrying
    def renew(self, user: UserInfo, item_id: int) -> datetime:
        now = self._now()
        with self._write() as s:
            item = self._locked_item(s, item_id)
            claim = self._my_claim(s, item, user, now)
            claim.expires_at = now + timedelta(seconds=self._policy(s).lease_ttl_s)
            return claim.expires_at

    @retrying
    def skip(self, user: UserInfo, item_id: int) -> str:
        """Give the item back according to the run's skip policy; returns the item's state."""
        now = self._now()
        with self._write() as s:
            item = self._locked_item(s, item_id)
            claim = self._my_claim(s, item, user, now)
            policy = self._policy(s)
            before = snapshot(item)
            claim.status, claim.closed_at = "skipped", now
            if policy.skip == "drop" and item.state == "pending":
                item.state, item.hold_reason = "held_back", f"dropped by {user.name} (skip)"
                item.version += 1
            elif policy.skip == "requeue":
                top = s.scalar(select(func.max(Item.queue_seq)).where(Item.run_key == item.run_key))
                item.queue_seq = (top or 0) + 1
            item.updated_at = now
            self._audit(
                s, user.name, "skip", item, before, {**snapshot(item), "policy": policy.skip}
            )
            return item.state

    def claims(self, active_only: bool = True) -> list[ClaimRow]:
        run = self._bound()
        now = self._now()
        with self._read() as s:
            query = (
                select(Claim, Item.clip_id, User.name)
                .join(Item, Item.id == Claim.item_id)
                .join(User, User.id == Claim.user_id)
                .where(Item.run_key == run.run_key)
                .order_by(Claim.expires_at)
            )
            if active_only:
                query = query.where(Claim.status == "active", Claim.expires_at > now)
            return [
                ClaimRow(c.id, c.item_id, clip, name, c.kind, c.claimed_at, c.expires_at)
                for c, clip, name in s.execute(query)
            ]

    @retrying
    def release(self, admin: UserInfo, claim_id: int) -> None:
        if not admin.has("admin"):
            raise Forbidden("releasing someone's lease needs the admin role")
        with self._write() as s:
            claim = s.get(Claim, claim_id)
            if claim is None:
                raise NotFound(f"no claim {claim_id}")
            item = self._locked_item(s, claim.item_id)
            if claim.status != "active":
                raise Conflict(f"claim {claim_id} is {claim.status}, not active")
            claim.status, claim.closed_at = "released", self._now()
            self._audit(s, admin.name, "release", item, {"claim": claim_id}, None)
