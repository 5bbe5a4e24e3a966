"""The review store and its operations: ingest, leased claims, decisions with optimistic
versions, overlap and adjudication, skip policies, users/tokens/sessions and the audit trail.

Concurrency model. Every write that touches an item's claims or reviews first locks the item
row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every write transaction is
``BEGIN IMMEDIATE``, which serialises writers). A claim picks candidates with
``FOR UPDATE SKIP LOCKED`` and re-counts the item's open slots with a fresh statement after
the lock is held, so two claimers can never both take the last slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import (
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from pipeline.rundir import RunDir
from pipeline.storage import Storage
from schemas import Record, ReviewState, utc_now
from workflows.review import auth
from workflows.review.models import (
    FINAL_STATES,
    ROLES,
    ApiToken,
    AuditEntry,
    Claim,
    Item,
    LoginThrottle,
    Review,
    Run,
    User,
    WebSession,
)
from workflows.review.policy import ReviewPolicy
from workflows.review.text import (
    FIELDS,
    PROMPT,
    apply_edits,
    check_text,
    field_names,
    instance_key,
    is_prompt,
    machine_texts,
    normalized_distance,
    unknown_fields,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_NAME = "review.db"
SESSION_TTL = timedelta(hours=12)
HOLD_SAMPLING = "not sampled by the review policy"
_ROLE_RANK = {role: i for i, role in enumerate(ROLES)}
# How long a PostgreSQL claimer waits for rows other claimers hold before saying "none left".
_CLAIM_PATIENCE_S = 5.0
_P = ParamSpec("_P")
_T = TypeVar("_T")


# errors: the app maps each to an HTTP status
class ReviewError(Exception):
    status = 400


class NotFound(ReviewError):
    status = 404


class Forbidden(ReviewError):
    status = 403


class Conflict(ReviewError):
    status = 409


class StaleVersion(Conflict):
    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class Invalid(ReviewError):
    status = 422


class Throttled(ReviewError):
    """Too many failed logins for the account or from the address: ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        wait = f"{retry_after} s" if retry_after < 120 else f"{math.ceil(retry_after / 60)} min"
        super().__init__(
            f"Too many failed logins for this account or from this address: try again in "
            f"{wait} (an admin can reset the password with `any2cap review users passwd`)."
        )
        self.retry_after = retry_after


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

    @property
    def machine(self) -> dict[str, str]:
        return machine_texts(self.record)


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

    def review_state(self) -> ReviewState:
        """As the record schema's :class:`schemas.ReviewState` (held back maps to pending)."""
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


def _transient(e: DBAPIError) -> bool:
    orig = e.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


def _retrying(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Retry a whole transaction on lock timeouts, deadlocks and serialisation failures."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(8):
            try:
                return fn(*args, **kwargs)
            except DBAPIError as e:
                if not _transient(e) or attempt == 7:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _snapshot(item: Item) -> dict[str, Any]:
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


def _conditions_of(record: Record) -> list[str]:
    return sorted(record.conditions.present())


def make_engine(url: str) -> Engine:
    """An engine for a review store URL (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=20,
            max_overflow=60,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (below); the driver's implicit BEGIN would be DEFERRED.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL is a property of the file: switch once (store creation does it under its
            # file lock); a pooled connection to a WAL file then takes no lock for it.
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock up front: no lock upgrade, no deadlock between two
            # readers-turned-writers, and a claim's read-check-insert is one critical section.
            read_only = conn.get_execution_options().get("review_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_size=20, max_overflow=60, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema; safe to run from many processes at once."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(732145001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _run_binding(run_dir: str) -> RunBinding:
    rundir = RunDir(run_dir)
    info = rundir.load_info()
    if info is None and not rundir.storage.exists("records"):
        raise NotFound(f"{rundir.root} is not a run directory (no run.json, no records/)")
    # The first build's run id names the run wherever its folder is mounted or moved.
    if info is not None and info.runs and info.runs[0].get("run_id"):
        key = f"run:{info.runs[0]['run_id']}"
    else:
        key = "path:" + hashlib.sha256(rundir.root.encode()).hexdigest()[:32]
    artifacts = (info.recipe.get("artifacts") if info is not None else None) or (
        rundir.artifacts_uri()
    )
    return RunBinding(run_key=key, root=rundir.root, artifacts_root=Storage(artifacts).root)


def default_db_url(run_dir: str) -> str:
    rundir = RunDir(run_dir)
    if not rundir.storage.local:
        raise Invalid(
            f"{rundir.root} is not on a local disk: give the review store with --db URL "
            "(PostgreSQL, or a sqlite:/// path on a local disk)"
        )
    return f"sqlite:///{os.path.join(rundir.root, SQLITE_NAME)}"


def open_store(
    run_dir: str | None = None, db_url: str | None = None, policy: ReviewPolicy | None = None
) -> ReviewStore:
    """Open (creating and migrating as needed) the review store.

    ``run_dir`` binds the store to a build run: its records are what is reviewed, and
    without ``db_url`` the store is the SQLite file ``RUN_DIR/review.db``. ``db_url`` alone
    opens the database for user and token administration. ``policy`` replaces the run's
    review policy (otherwise the stored one, or the default for a new run).
    """
    if run_dir is None and db_url is None:
        raise Invalid("give a run directory (--run RUN_DIR) or a database URL (--db URL)")
    binding = _run_binding(run_dir) if run_dir is not None else None
    url = db_url or default_db_url(str(run_dir))
    engine = make_engine(url)
    lock_path = None
    if url.startswith("sqlite:///") and engine.url.database:
        lock_path = engine.url.database + ".migrate-lock"
    # SQLite cannot take a write lock before the file has its WAL mode, so concurrent first
    # openers take turns on a file lock around the migration.
    with _file_lock(lock_path):
        migrate(engine)
    store = ReviewStore(engine, binding)
    if binding is not None:
        store.ensure_run(policy)
    return store


@contextlib.contextmanager
def _file_lock(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ReviewStore:
    """Every operation of the human-verification queue, each in its own transaction."""

    def __init__(self, engine: Engine, run: RunBinding | None) -> None:
        self.engine = engine
        self._read_engine = engine.execution_options(review_read_only=True)
        self.run = run
        self._last_sweep = 0.0
        # SQLite serialises writers anyway; queueing them on a lock in this process avoids
        # SQLite's busy-wait backoff, which starves unlucky writers under load (p95).
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self.login_limits = LoginLimits()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # transactions
    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        lock = self._write_lock or contextlib.nullcontext()
        with lock, Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _bound(self) -> RunBinding:
        if self.run is None:
            raise Invalid("this operation needs a run directory (--run RUN_DIR)")
        return self.run

    def _audit(
        self,
        s: Session,
        actor: str,
        action: str,
        item: Item | None = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        s.add(
            AuditEntry(
                at=utc_now(),
                actor=actor,
                action=action,
                run_key=item.run_key if item is not None else (self.run and self.run.run_key),
                item_id=item.id if item is not None else None,
                clip_id=item.clip_id if item is not None else None,
                before_json=None if before is None else _dumps(before),
                after_json=None if after is None else _dumps(after),
            )
        )

    # the run and its policy
    @_retrying
    def ensure_run(self, policy: ReviewPolicy | None = None) -> None:
        run = self._bound()
        with self._write() as s:
            row = s.get(Run, run.run_key)
            if row is None:
                chosen = policy or ReviewPolicy()
                s.add(
                    Run(
                        run_key=run.run_key,
                        root=run.root,
                        artifacts_root=run.artifacts_root,
                        policy_json=chosen.model_dump_json(),
                        created_at=utc_now(),
                    )
                )
                s.flush()
                self._audit(
                    s, "system", "run_created", after={"root": run.root, **chosen.model_dump()}
                )
                return
            if row.root != run.root or row.artifacts_root != run.artifacts_root:
                self._audit(
                    s,
                    "system",
                    "run_moved",
                    before={"root": row.root, "artifacts_root": row.artifacts_root},
                    after={"root": run.root, "artifacts_root": run.artifacts_root},
                )
                row.root, row.artifacts_root = run.root, run.artifacts_root
        if policy is not None:
            self.set_policy(policy, actor="system")

    def policy(self) -> ReviewPolicy:
        with self._read() as s:
            return self._policy(s)

    def _policy(self, s: Session) -> ReviewPolicy:
        row = s.get(Run, self._bound().run_key)
        if row is None:
            return ReviewPolicy()
        return ReviewPolicy.model_validate_json(row.policy_json)

    @_retrying
    def set_policy(self, policy: ReviewPolicy, actor: str) -> int:
        """Store a new policy and re-sample the items no human has touched yet.

        Returns how many items changed state (pending <-> held back) or review count.
        """
        run = self._bound()
        changed = 0
        with self._write() as s:
            row = s.get(Run, run.run_key, with_for_update=True)
            if row is None:
                raise NotFound(f"run {run.run_key} is not in the store")
            old = ReviewPolicy.model_validate_json(row.policy_json)
            if old == policy:
                return 0
            row.policy_json = policy.model_dump_json()
            self._audit(s, actor, "set_policy", before=old.model_dump(), after=policy.model_dump())
            touched = select(Claim.id).where(Claim.item_id == Item.id)
            untouched = s.scalars(
                select(Item)
                .where(
                    Item.run_key == run.run_key,
                    or_(
                        Item.state == "pending",
                        and_(Item.state == "held_back", Item.hold_reason == HOLD_SAMPLING),
                    ),
                    ~exists(touched),
                )
                .with_for_update()
            ).all()
            now = utc_now()
            for item in untouched:
                types = [] if item.conditions == "none" else item.conditions.split("+")
                state = "pending" if policy.is_sampled(item.clip_id, types) else "held_back"
                required = policy.reviews_for(item.clip_id)
                if state == item.state and required == item.reviews_required:
                    continue
                before = _snapshot(item)
                item.state, item.reviews_required = state, required
                item.hold_reason = HOLD_SAMPLING if state == "held_back" else None
                item.version += 1
                item.updated_at = now
                self._audit(s, actor, "resample", item, before, _snapshot(item))
                changed += 1
        return changed

    # ingest
    @_retrying
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
            now = utc_now()
            for record, canonical, sha in parsed:
                types = _conditions_of(record)
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
                    self._audit(s, actor, "ingest", item, None, {**_snapshot(item), "sha256": sha})
                    report.added += 1
                else:
                    before = {**_snapshot(item), "sha256": item.record_sha256}
                    item.record_json, item.record_sha256 = canonical, sha
                    item.conditions = "+".join(types) or "none"
                    item.state = state
                    item.hold_reason = None if sampled else HOLD_SAMPLING
                    item.version += 1
                    item.updated_at = now
                    self._audit(
                        s, actor, "reingest", item, before, {**_snapshot(item), "sha256": sha}
                    )
                    report.updated += 1
                if not sampled:
                    report.held_back += 1
            row = s.get(Run, run.run_key)
            if row is not None:
                row.ingested_at = now
        return report

    # users, tokens, sessions
    @_retrying
    def add_user(
        self, name: str, role: str, password: str | None, actor: str = "admin-cli"
    ) -> UserInfo:
        if role not in ROLES:
            raise Invalid(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        name = name.strip()
        if (
            not name
            or len(name) > 100
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise Invalid("user names are 1-100 letters, digits, '-', '_' or '.'")
        if password is not None:
            auth.check_new_password(password, name)
        hashed = auth.hash_password(password) if password is not None else None
        with self._write() as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise Conflict(f"user {name!r} already exists")
            user = User(
                name=name, role=role, password_hash=hashed, created_at=utc_now(), disabled=False
            )
            s.add(user)
            s.flush()
            self._audit(s, actor, "user_add", after={"user": name, "role": role})
            return UserInfo(user.id, user.name, user.role)

    @_retrying
    def set_password(self, name: str, password: str, actor: str = "admin-cli") -> None:
        """Set ``name``'s password; ends their sessions and lifts their account's lockout."""
        auth.check_new_password(password, name)
        hashed = auth.hash_password(password)
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            user.password_hash = hashed
            s.execute(delete(WebSession).where(WebSession.user_id == user.id))
            s.execute(
                delete(LoginThrottle).where(
                    LoginThrottle.kind == "account", LoginThrottle.subject == name
                )
            )
            self._audit(s, actor, "user_password", after={"user": name})

    def users(self) -> list[tuple[UserInfo, bool]]:
        with self._read() as s:
            return [
                (UserInfo(u.id, u.name, u.role), u.disabled)
                for u in s.scalars(select(User).order_by(User.name))
            ]

    def authenticate(self, name: str, password: str, address: str | None = None) -> UserInfo | None:
        """The user whose name and password these are, else None; throttled per account name
        and per client ``address`` (:class:`LoginLimits`): raises :class:`Throttled` while
        either is locked out (the right password included) and on the failure that locks
        it. Failed logins and lockouts are audited."""
        keys = [("account", name[:200])]
        if address:
            keys.append(("address", address[:200]))
        # Each attempt is counted before its password is checked, so a burst of parallel
        # guesses (or several server processes) cannot get past the limit.
        self._login_reserve(keys)
        try:
            with self._read() as s:
                user = s.scalar(select(User).where(User.name == name))
            stored = user.password_hash if user is not None and not user.disabled else None
            ok = auth.verify_password(stored, password) and user is not None
        except BaseException:
            self._login_settle(keys, None, name, address)
            raise
        if not ok or user is None:
            self._login_settle(keys, False, name, address)
            return None
        self._login_settle(keys, True, name, address)
        return UserInfo(user.id, user.name, user.role)

    def _throttle_rows(
        self, s: Session, keys: list[tuple[str, str]], now: datetime
    ) -> list[LoginThrottle]:
        """The throttle rows of ``keys``, created as needed and locked (in key order)."""
        insert: Callable[..., Any] = pg_insert if self.dialect == "postgresql" else sqlite_insert
        for kind, subject in sorted(keys):
            s.execute(
                insert(LoginThrottle)
                .values(kind=kind, subject=subject, failures=0, window_start=now, lockouts=0)
                .on_conflict_do_nothing()
            )
        wanted = or_(*(and_(LoginThrottle.kind == k, LoginThrottle.subject == v) for k, v in keys))
        return list(
            s.scalars(
                select(LoginThrottle)
                .where(wanted)
                .order_by(LoginThrottle.kind, LoginThrottle.subject)
                .with_for_update()
            )
        )

    @_retrying
    def _login_reserve(self, keys: list[tuple[str, str]]) -> None:
        limits = self.login_limits
        now = utc_now()
        with self._write() as s:
            rows = self._throttle_rows(s, keys, now)
            wait = 0.0
            for row in rows:
                if row.locked_until is not None and row.locked_until > now:
                    wait = max(wait, (row.locked_until - now).total_seconds())
                elif now - row.window_start >= limits.window:
                    row.failures, row.window_start = 0, now
                elif row.failures >= limits.limit(row.kind):
                    # the window's budget is taken by attempts still in flight
                    wait = max(wait, limits.lockout(row.lockouts).total_seconds())
            if wait:
                raise Throttled(max(1, math.ceil(wait)))
            for row in rows:
                row.failures += 1

    @_retrying
    def _login_settle(
        self, keys: list[tuple[str, str]], ok: bool | None, name: str, address: str | None
    ) -> None:
        """Settle a reserved attempt: ``ok`` True (success), False (wrong name or password),
        None (not checked: an error)."""
        limits = self.login_limits
        now = utc_now()
        locked: list[tuple[LoginThrottle, timedelta]] = []
        with self._write() as s:
            rows = self._throttle_rows(s, keys, now)
            for row in rows:
                if ok is None or (ok and row.kind == "address"):
                    row.failures = max(0, row.failures - 1)
                elif ok:
                    row.failures, row.lockouts, row.locked_until = 0, 0, None
                else:
                    row.last_failure_at = now
                    if row.failures >= limits.limit(row.kind):
                        length = limits.lockout(row.lockouts)
                        row.locked_until = now + length
                        row.lockouts += 1
                        row.failures, row.window_start = 0, now
                        locked.append((row, length))
            if ok is False:
                actor = name[:100] or "?"
                self._audit(s, actor, "login_failed", after={"user": name, "address": address})
                for row, length in locked:
                    self._audit(
                        s,
                        actor,
                        "login_lockout",
                        after={
                            "kind": row.kind,
                            "subject": row.subject,
                            "seconds": int(length.total_seconds()),
                            "lockouts": row.lockouts,
                            "until": row.locked_until,
                        },
                    )
                # forget quiet subjects (their lockout count starts again from the first)
                cutoff = now - limits.forget_after
                s.execute(
                    delete(LoginThrottle).where(
                        LoginThrottle.window_start < cutoff,
                        or_(
                            LoginThrottle.locked_until.is_(None),
                            LoginThrottle.locked_until < cutoff,
                        ),
                    )
                )
        if locked:
            raise Throttled(max(1, math.ceil(max(t for _, t in locked).total_seconds())))

    @_retrying
    def create_token(self, name: str, label: str = "", actor: str = "admin-cli") -> str:
        token = auth.new_token()
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r} (add it with `any2cap review users add`)")
            s.add(
                ApiToken(
                    user_id=user.id,
                    token_sha256=auth.digest(token),
                    label=label,
                    created_at=utc_now(),
                )
            )
            self._audit(s, actor, "token_create", after={"user": name, "label": label})
        return token

    @_retrying
    def revoke_tokens(self, name: str, actor: str = "admin-cli") -> int:
        with self._write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            result = s.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
            n = int(getattr(result, "rowcount", 0) or 0)
            self._audit(s, actor, "token_revoke", after={"user": name, "tokens": n})
            return n

    def user_for_token(self, token: str) -> UserInfo | None:
        if not token.startswith(auth.TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = auth.digest(token)
        with self._read() as s:
            row = s.execute(
                select(User, ApiToken)
                .join(ApiToken, ApiToken.user_id == User.id)
                .where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None))
            ).first()
        if row is None or row[0].disabled:
            return None
        user, tok = row
        now = utc_now()
        # Recording use is a write: once every few minutes is enough to see idle tokens.
        if tok.last_used_at is None or now - tok.last_used_at > timedelta(minutes=5):
            with contextlib.suppress(DBAPIError), self._write() as s:
                s.execute(update(ApiToken).where(ApiToken.id == tok.id).values(last_used_at=now))
        return UserInfo(user.id, user.name, user.role)

    @_retrying
    def create_session(self, user: UserInfo) -> tuple[str, str]:
        """A browser session: returns (session id for the cookie, CSRF token)."""
        session_id, csrf = auth.new_secret(), auth.new_secret()
        now = utc_now()
        with self._write() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(
                WebSession(
                    id_sha256=auth.digest(session_id),
                    user_id=user.id,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + SESSION_TTL,
                )
            )
            self._audit(s, user.name, "login")
        return session_id, csrf

    def session_user(self, session_id: str) -> tuple[UserInfo, str] | None:
        if len(session_id) > 200:
            return None
        with self._read() as s:
            row = s.execute(
                select(User, WebSession)
                .join(WebSession, WebSession.user_id == User.id)
                .where(WebSession.id_sha256 == auth.digest(session_id))
            ).first()
        if row is None or row[0].disabled or row[1].expires_at < utc_now():
            return None
        return UserInfo(row[0].id, row[0].name, row[0].role), row[1].csrf

    @_retrying
    def end_session(self, session_id: str) -> None:
        with self._write() as s:
            s.execute(delete(WebSession).where(WebSession.id_sha256 == auth.digest(session_id)))

    # claims
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
            select(func.count(Review.id)).where(Review.item_id == item.id, Review.kind == "review")
        )
        return item.reviews_required - (done or 0) - n_active

    def _view(self, s: Session, item: Item, claim: Claim | None) -> ItemView:
        reviews = s.execute(
            select(Review, User.name)
            .join(User, User.id == Review.user_id)
            .where(Review.item_id == item.id)
            .order_by(Review.id)
        ).all()
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
            )
            for r, name in reviews
        ]
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
        )

    def _sweep_expired(self) -> None:
        """Mark lapsed leases expired (they already stopped counting when they lapsed)."""
        if time.monotonic() - self._last_sweep < 5.0:
            return
        self._last_sweep = time.monotonic()
        now = utc_now()
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

    @_retrying
    def claim(self, user: UserInfo) -> ItemView | None:
        """Lease the next item for ``user`` (or return the lease they already hold).

        Returns None when nothing is left for them. Reviewers and admins get items waiting
        for adjudication first; nobody gets an item they reviewed or (policy
        ``requeue_others``) skipped.
        """
        run = self._bound()
        with contextlib.suppress(DBAPIError):
            self._sweep_expired()
        now = utc_now()
        with self._write() as s:
            policy = self._policy(s)
            ttl = timedelta(seconds=policy.lease_ttl_s)
            held = self._live_lease(s, run, user, now)
            if held is not None:
                claim, item = held
                claim.expires_at = now + ttl
                return self._view(s, item, claim)
            states = ["pending", "disputed"] if user.has("reviewer") else ["pending"]
            mine_reviewed = select(Review.id).where(
                Review.item_id == Item.id, Review.user_id == user.id
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
                .where(Review.item_id == Item.id, Review.kind == "review")
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
            held = self._live_lease(s, run, user, utc_now())
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

    def _locked_item(self, s: Session, item_id: int) -> Item:
        item = s.get(Item, item_id, with_for_update=True)
        if item is None or item.run_key != self._bound().run_key:
            raise NotFound(f"no item {item_id} in this run")
        return item

    @_retrying
    def renew(self, user: UserInfo, item_id: int) -> datetime:
        now = utc_now()
        with self._write() as s:
            item = self._locked_item(s, item_id)
            claim = self._my_claim(s, item, user, now)
            claim.expires_at = now + timedelta(seconds=self._policy(s).lease_ttl_s)
            return claim.expires_at

    @_retrying
    def skip(self, user: UserInfo, item_id: int) -> str:
        """Give the item back according to the run's skip policy; returns the item's state."""
        now = utc_now()
        with self._write() as s:
            item = self._locked_item(s, item_id)
            claim = self._my_claim(s, item, user, now)
            policy = self._policy(s)
            before = _snapshot(item)
            claim.status, claim.closed_at = "skipped", now
            if policy.skip == "drop" and item.state == "pending":
                item.state, item.hold_reason = "held_back", f"dropped by {user.name} (skip)"
                item.version += 1
            elif policy.skip == "requeue":
                top = s.scalar(select(func.max(Item.queue_seq)).where(Item.run_key == item.run_key))
                item.queue_seq = (top or 0) + 1
            item.updated_at = now
            self._audit(
                s, user.name, "skip", item, before, {**_snapshot(item), "policy": policy.skip}
            )
            return item.state

    @_retrying
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
            if name not in FIELDS and instance_key(name) is None:
                raise Invalid(
                    f"unknown field {name!r}; fields are {', '.join(FIELDS)} or "
                    "short_prompt:<instance key> for a record with instances"
                )
            try:
                check_text(value, name)
            except ValueError as e:
                raise Invalid(str(e)) from e
        if note is not None:
            try:
                check_text(note, "note")
            except ValueError as e:
                raise Invalid(str(e)) from e
            note = note.strip() or None
        now = utc_now()
        with self._write() as s:
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
            policy = self._policy(s)
            record = Record.model_validate_json(item.record_json)
            unknown = unknown_fields(record, list(edits))
            if unknown:
                raise Invalid(
                    f"item {item_id} has no field {', '.join(map(repr, unknown))}; its fields "
                    f"are {', '.join(field_names(record))}"
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
            before = _snapshot(item)
            started = claim.claimed_at
            claim.status, claim.closed_at = "completed", now
            review = Review(
                item_id=item.id,
                user_id=user.id,
                claim_id=claim.id,
                kind=claim.kind,
                decision=decision,
                edits_json=_dumps(changed),
                reason=reason if decision == "reject" else None,
                note=note,
                version_seen=version,
                seconds=max(0.0, (now - started).total_seconds()),
                created_at=now,
            )
            s.add(review)
            s.flush()
            self._audit(
                s,
                user.name,
                "adjudicate" if claim.kind == "adjudication" else "review",
                item,
                before,
                {"decision": decision, "edits": changed, "reason": review.reason, "note": note},
            )
            if claim.kind == "adjudication":
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

    def _settle(
        self, s: Session, item: Item, machine: dict[str, str], policy: ReviewPolicy, now: datetime
    ) -> None:
        """Once every required review is in: finalise on agreement, else ask for adjudication."""
        rows = s.execute(
            select(Review, User.name)
            .join(User, User.id == Review.user_id)
            .where(Review.item_id == item.id, Review.kind == "review")
            .order_by(Review.id)
        ).all()
        if len(rows) < item.reviews_required:
            return
        names = [name for _, name in rows]
        decisions = [r.decision for r, _ in rows]
        if all(d == "reject" for d in decisions):
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
        before = _snapshot(item)
        item.state = "disputed"
        self._audit(s, "system", "disputed", item, before, {**_snapshot(item), "why": why})

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
        before = _snapshot(item)
        item.state = {"accept": "accepted", "reject": "rejected", "edit": "edited"}[decision]
        item.final_edits_json = _dumps(edits)
        item.final_reason, item.final_note = reason, note
        item.final_by = ",".join(by)
        item.decided_at = now
        item.version += 1
        self._audit(s, "system", "final", item, before, _snapshot(item))

    # admin
    def claims(self, active_only: bool = True) -> list[ClaimRow]:
        run = self._bound()
        now = utc_now()
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

    @_retrying
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
            claim.status, claim.closed_at = "released", utc_now()
            self._audit(s, admin.name, "release", item, {"claim": claim_id}, None)

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

    def queue_counts(self) -> dict[str, int]:
        """Items of the run per state."""
        run = self._bound()
        counts = dict.fromkeys(
            ("pending", "disputed", "held_back", "accepted", "rejected", "edited"), 0
        )
        with self._read() as s:
            for state, n in s.execute(
                select(Item.state, func.count(Item.id))
                .where(Item.run_key == run.run_key)
                .group_by(Item.state)
            ):
                counts[state] = n
        return counts

    # what the review produced
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
                ).where(Item.run_key == run.run_key)
            ).all()
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

    def _instance_keys(self, item_ids: set[int]) -> dict[int, list[str]]:
        """Instance keys (``camera``, ``camera+depth``) of the given items' records."""
        out: dict[int, list[str]] = {}
        wanted = sorted(item_ids)
        for start in range(0, len(wanted), 500):
            with self._read() as s:
                for item_id, raw in s.execute(
                    select(Item.id, Item.record_json).where(
                        Item.id.in_(wanted[start : start + 500])
                    )
                ):
                    instances = json.loads(raw).get("instances") or []
                    out[item_id] = ["+".join(i["condition_types"]) for i in instances]
        return out

    def stats(self) -> dict[str, Any]:
        """Queue sizes, throughput, decision and edit rates, and inter-reviewer agreement."""
        run = self._bound()
        now = utc_now()
        with self._read() as s:
            items = s.execute(
                select(Item.id, Item.state, Item.conditions).where(Item.run_key == run.run_key)
            ).all()
            rows = s.execute(
                select(Review, User.name)
                .join(User, User.id == Review.user_id)
                .join(Item, Item.id == Review.item_id)
                .where(Item.run_key == run.run_key)
                .order_by(Review.id)
            ).all()
            active_claims = s.scalar(
                select(func.count(Claim.id))
                .join(Item, Item.id == Claim.item_id)
                .where(
                    Item.run_key == run.run_key,
                    Claim.status == "active",
                    Claim.expires_at > now,
                )
            )
            by_item: dict[int, list[Review]] = defaultdict(list)
            for r, _ in rows:
                if r.kind == "review":
                    by_item[r.item_id].append(r)
            overlap_ids = [i for i, rs in by_item.items() if len(rs) >= 2]
            machine = (
                {
                    item_id: machine_texts(Record.model_validate_json(raw))
                    for item_id, raw in s.execute(
                        select(Item.id, Item.record_json).where(Item.id.in_(overlap_ids))
                    )
                }
                if overlap_ids
                else {}
            )
        states = ("pending", "disputed", "held_back", "accepted", "rejected", "edited")
        queue: dict[str, dict[str, int]] = {"all": dict.fromkeys(states, 0)}
        for _, state, conds in items:
            queue["all"][state] += 1
            for c in conds.split("+"):
                queue.setdefault(c, dict.fromkeys(states, 0))[state] += 1
        people: dict[str, dict[str, Any]] = {}
        seconds: dict[str, list[float]] = defaultdict(list)
        day_ago = now - timedelta(days=1)
        for r, name in rows:
            p = people.setdefault(
                name,
                {
                    "reviews": 0,
                    "adjudications": 0,
                    "accept": 0,
                    "reject": 0,
                    "edit": 0,
                    "last_24h": 0,
                },
            )
            p["adjudications" if r.kind == "adjudication" else "reviews"] += 1
            p[r.decision] += 1
            p["last_24h"] += r.created_at >= day_ago
            seconds[name].append(r.seconds)
        for name, p in people.items():
            total = sum(seconds[name])
            p["median_seconds"] = round(median(seconds[name]), 2)
            n = p["reviews"] + p["adjudications"]
            p["per_hour"] = round(n / (total / 3600), 1) if total > 0 else None
        independent = [r for r, _ in rows if r.kind == "review"]
        n = len(independent)
        decisions = Counter(r.decision for r in independent)
        kept = [r for r in independent if r.decision != "reject"]
        kept_edits = [(r.item_id, set(json.loads(r.edits_json))) for r in kept]
        # One ``short_prompt`` bucket: a kept review that changed the record's prompt (a
        # record without instances) or any of its instances' prompts.
        edit_rate = {
            c: round(
                sum(any(is_prompt(k) for k in e) if c == PROMPT else c in e for _, e in kept_edits)
                / len(kept),
                4,
            )
            if kept
            else None
            for c in FIELDS
        }
        # Per instance key: kept reviews of items with that instance that changed its prompt.
        keys = self._instance_keys({item_id for item_id, _ in kept_edits})
        per_key: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item_id, e in kept_edits:
            for key in keys.get(item_id, []):
                per_key[key][0] += f"{PROMPT}:{key}" in e
                per_key[key][1] += 1
        edit_rate_instances = {
            key: round(edited / total, 4)
            for key, (edited, total) in sorted(
                per_key.items(), key=lambda kv: (kv[0].count("+"), kv[0])
            )
        }
        return {
            "run": run.run_key,
            "root": run.root,
            "items": len(items),
            "queue": queue,
            "active_claims": active_claims or 0,
            "reviews": n,
            "adjudications": sum(1 for r, _ in rows if r.kind == "adjudication"),
            "rates": {
                d: round(decisions[d] / n, 4) if n else None for d in ("accept", "reject", "edit")
            },
            "edit_rate_per_component": edit_rate,
            "edit_rate_per_instance": edit_rate_instances,
            "annotators": dict(sorted(people.items())),
            "agreement": _agreement({i: by_item[i] for i in overlap_ids}, machine),
        }


def _agreement(
    by_item: dict[int, list[Review]], machine: dict[int, dict[str, str]]
) -> dict[str, Any]:
    """Pairwise agreement of the first two independent reviews of every overlap item."""
    pairs = [(rs[0], rs[1]) for rs in by_item.values()]
    if not pairs:
        return {"items": 0, "decision_agreement": None, "kappa": None, "components": {}}

    def keep(r: Review) -> bool:
        return r.decision != "reject"

    agree = sum(keep(a) == keep(b) for a, b in pairs) / len(pairs)
    pa = sum(keep(a) for a, _ in pairs) / len(pairs)
    pb = sum(keep(b) for _, b in pairs) / len(pairs)
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if chance >= 1 else round((agree - chance) / (1 - chance), 4)
    components: dict[str, dict[str, Any]] = {}
    both_kept = [(a, b) for a, b in pairs if keep(a) and keep(b)]
    # Every instance prompt of an item is one more pair in the ``short_prompt`` bucket.
    by_field: dict[str, list[float]] = {name: [] for name in FIELDS}
    for a, b in both_kept:
        texts = machine.get(a.item_id, dict.fromkeys(FIELDS, ""))
        ta = apply_edits(texts, json.loads(a.edits_json))
        tb = apply_edits(texts, json.loads(b.edits_json))
        for name in texts:
            bucket = PROMPT if is_prompt(name) else name
            by_field[bucket].append(normalized_distance(ta[name], tb[name]))
    for name in FIELDS:
        distances = by_field[name]
        components[name] = {
            "pairs": len(distances),
            "identical": round(sum(d == 0 for d in distances) / len(distances), 4)
            if distances
            else None,
            "mean_edit_distance": round(sum(distances) / len(distances), 4) if distances else None,
        }
    return {
        "items": len(pairs),
        "decision_agreement": round(agree, 4),
        "kappa": kappa,
        "components": components,
    }


__all__ = [
    "ClipReview",
    "Conflict",
    "DecisionResult",
    "Forbidden",
    "IngestReport",
    "Invalid",
    "ItemView",
    "NotFound",
    "ReviewError",
    "ReviewStore",
    "StaleVersion",
    "UserInfo",
    "open_store",
]
