"""The review store's tables (SQLAlchemy 2 ORM): runs, items, claims, reviews, users, tokens,
browser sessions, login throttling and the append-only audit trail.

The schema itself is created by the Alembic migrations in ``migrations/``; these classes must
match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# ``regenerate``: rejected fields wait for new text (``any2cap captions regenerate``), then the
# item is queued again as its next revision.
ITEM_STATES = (
    "pending",
    "disputed",
    "held_back",
    "regenerate",
    "accepted",
    "rejected",
    "edited",
)
FINAL_STATES = ("accepted", "rejected", "edited")
CLAIM_STATES = ("active", "completed", "skipped", "released", "expired")
ROLES = ("annotator", "reviewer", "admin")
DECISIONS = ("accept", "reject", "edit")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database.

    SQLite has no time zones and PostgreSQL's ``timestamp`` compares naive values, so
    storing naive UTC everywhere keeps comparisons (lease expiry) identical on both.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the review store; use UTC-aware values")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    """A build run directory whose records are reviewed; holds the run's review policy."""

    __tablename__ = "runs"

    run_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    root: Mapped[str] = mapped_column(Text)
    artifacts_root: Mapped[str] = mapped_column(Text)
    policy_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ingested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Item(Base):
    """One record in the queue: the machine record as ingested and its review state."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("run_key", "clip_id", name="uq_items_run_key_clip_id"),
        Index("ix_items_queue", "run_key", "state", "queue_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(200), ForeignKey("runs.run_key"))
    clip_id: Mapped[str] = mapped_column(String(64))
    conditions: Mapped[str] = mapped_column(String(200))  # "camera+depth", or "none"
    record_json: Mapped[str] = mapped_column(Text)
    record_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    hold_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviews_required: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    queue_seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    final_edits_json: Mapped[str] = mapped_column(Text, default="{}")
    final_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    final_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    final_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    # 1 as ingested; +1 each time rejected fields are regenerated and the item is re-queued
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # {field: [{"revision": n, "reason": ..., "note": ..., "rejected_text": ...}, ...]}: each
    # regeneration of a field, oldest first (its length is how often it was regenerated)
    regenerations_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class Claim(Base):
    """A lease on one review slot of an item (or on its adjudication)."""

    __tablename__ = "claims"
    __table_args__ = (
        Index("ix_claims_item_status", "item_id", "status"),
        Index("ix_claims_user_status", "user_id", "status"),
        Index("ix_claims_status_expires", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(Integer, ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # review | adjudication
    status: Mapped[str] = mapped_column(String(16))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version_seen: Mapped[int] = mapped_column(Integer)


class Review(Base):
    """One reviewer's decision on an item (an independent review or an adjudication)."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_item", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(Integer, ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    claim_id: Mapped[int] = mapped_column(Integer, ForeignKey("claims.id"))
    kind: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str] = mapped_column(String(16))
    edits_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    version_seen: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class FieldVerdictRow(Base):
    """One field's verdict in a review given per field (accept / fix / reject)."""

    __tablename__ = "field_verdicts"
    __table_args__ = (
        Index("ix_field_verdicts_item", "item_id"),
        Index("ix_field_verdicts_review", "review_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[int] = mapped_column(Integer, ForeignKey("reviews.id"))
    item_id: Mapped[int] = mapped_column(Integer, ForeignKey("items.id"))
    revision: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(1100))
    verdict: Mapped[str] = mapped_column(String(16))  # accept | fix | reject
    machine_text: Mapped[str] = mapped_column(Text)  # the text the verdict was given on
    text: Mapped[str | None] = mapped_column(Text, nullable=True)  # a fix's text
    reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebSession(Base):
    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Failed logins per account name and per client address (``kind``), shared by every
    server process on the store: the window's failures (attempts in flight included),
    the lockouts so far and the end of the current one."""

    __tablename__ = "login_throttle"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # account | address
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    lockouts: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEntry(Base):
    """Append-only (database triggers refuse UPDATE and DELETE): who, when, what, before, after."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_item", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    run_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    clip_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    before_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    after_json: Mapped[str | None] = mapped_column(Text, nullable=True)
