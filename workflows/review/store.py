"""The review store: :class:`ReviewStore`, the front that owns the engine, the transactions
and the clock, and :func:`open_store`. The operations live in one module per concern
(``_runs``, ``_ingest``, ``_accounts``, ``_leases``, ``_decisions``, ``_results``,
``_stats``); the names importable from here before the split still are.

Concurrency model. Every write that touches an item's claims or reviews first locks the item
row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every write transaction is
``BEGIN IMMEDIATE``, which serialises writers). A claim picks candidates with
``FOR UPDATE SKIP LOCKED`` and re-counts the item's open slots with a fresh statement after
the lock is held, so two claimers can never both take the last slot.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from any2capins.schemas import utc_now
from any2capins.workflows.review._accounts import SESSION_TTL, AccountsMixin
from any2capins.workflows.review._base import HOLD_SAMPLING
from any2capins.workflows.review._db import MIGRATIONS, file_lock, make_engine, migrate
from any2capins.workflows.review._decisions import DecisionsMixin
from any2capins.workflows.review._errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ReviewError,
    StaleVersion,
    Throttled,
)
from any2capins.workflows.review._ingest import IngestMixin
from any2capins.workflows.review._leases import LeasesMixin
from any2capins.workflows.review._regenerate import RegenerateMixin
from any2capins.workflows.review._results import ResultsMixin
from any2capins.workflows.review._runs import (
    SQLITE_NAME,
    RunsMixin,
    default_db_url,
    run_binding,
)
from any2capins.workflows.review._stats import StatsMixin
from any2capins.workflows.review._types import (
    AuditRow,
    ClaimRow,
    ClipReview,
    DecisionResult,
    IngestReport,
    ItemView,
    LoginLimits,
    ReviewInfo,
    RunBinding,
    UserInfo,
)
from any2capins.workflows.review.policy import ReviewPolicy


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
    binding = run_binding(run_dir) if run_dir is not None else None
    url = db_url or default_db_url(str(run_dir))
    engine = make_engine(url)
    lock_path = None
    if url.startswith("sqlite:///") and engine.url.database:
        lock_path = engine.url.database + ".migrate-lock"
    # SQLite cannot take a write lock before the file has its WAL mode, so concurrent first
    # openers take turns on a file lock around the migration.
    with file_lock(lock_path):
        migrate(engine)
    store = ReviewStore(engine, binding)
    if binding is not None:
        store.ensure_run(policy)
    return store


class ReviewStore(
    RunsMixin,
    IngestMixin,
    AccountsMixin,
    DecisionsMixin,  # before LeasesMixin, which it extends
    LeasesMixin,
    ResultsMixin,
    StatsMixin,
    RegenerateMixin,
):
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

    def _now(self) -> datetime:
        # Looked up here at each call: tests move the store's clock with this module's utc_now.
        return utc_now()

    def _bound(self) -> RunBinding:
        if self.run is None:
            raise Invalid("this operation needs a run directory (--run RUN_DIR)")
        return self.run


__all__ = [
    "HOLD_SAMPLING",
    "MIGRATIONS",
    "SESSION_TTL",
    "SQLITE_NAME",
    "AuditRow",
    "ClaimRow",
    "ClipReview",
    "Conflict",
    "DecisionResult",
    "Forbidden",
    "IngestReport",
    "Invalid",
    "ItemView",
    "LoginLimits",
    "NotFound",
    "ReviewError",
    "ReviewInfo",
    "ReviewStore",
    "RunBinding",
    "StaleVersion",
    "Throttled",
    "UserInfo",
    "default_db_url",
    "make_engine",
    "migrate",
    "open_store",
    "utc_now",
]
