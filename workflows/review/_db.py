"""Database plumbing: engines (SQLite in WAL mode with up-front write locks, or PostgreSQL),
the Alembic migration runner, the file lock first openers share, and retrying a transaction
on transient lock errors."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _transient(e: DBAPIError) -> bool:
    orig = e.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


def retrying(fn: Callable[_P, _T]) -> Callable[_P, _T]:
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


@contextlib.contextmanager
def file_lock(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
