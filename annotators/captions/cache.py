"""The persistent response cache, spend ledger and Batch API queue: one SQLite file.

Responses are keyed by the SHA-256 of the full request body (model, messages with their
images, response format, options; never the API key), so a re-run or a resumed crash
answers every request it has seen from disk and pays for nothing twice. The ledger has
one row per paid request (run id, clip, tokens, USD) and is what per-run cost totals and
the budget cap read. ``pending`` and ``submissions`` hold Batch API mode's queue and its
submissions, so submit/poll/collect can resume after a kill.

An answer the writer found wanting (refused, invalid, cut off) is marked ``invalid`` with
the reason: it stays in the file and in the ledger (it was paid for), but :meth:`get` never
returns it again, so the next run asks anew instead of replaying the same bad answer.
When the new answer replaces it, the rejected one moves to the ``rejected`` table.

Several processes (the actors of a Ray pool on one node) may share the file: WAL journal,
a generous busy timeout, one connection per thread, and short write transactions. Put the
cache on a local disk (SQLite locking is unreliable on NFS and absent on object stores).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL,
    tokens_in INTEGER NOT NULL, tokens_cached INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL, source TEXT NOT NULL, created REAL NOT NULL,
    invalid INTEGER NOT NULL DEFAULT 0, invalid_reason TEXT);
CREATE TABLE IF NOT EXISTS rejected (
    key TEXT NOT NULL, model TEXT NOT NULL, response TEXT NOT NULL, cost_usd REAL NOT NULL,
    source TEXT NOT NULL, created REAL NOT NULL, reason TEXT, replaced REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rejected_key ON rejected (key);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, clip_id TEXT NOT NULL,
    key TEXT NOT NULL, model TEXT NOT NULL, tokens_in INTEGER NOT NULL,
    tokens_cached INTEGER NOT NULL, tokens_out INTEGER NOT NULL, cost_usd REAL NOT NULL,
    source TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_run ON ledger (run_id);
CREATE TABLE IF NOT EXISTS pending (
    key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL, body TEXT NOT NULL,
    clip_id TEXT NOT NULL, run_id TEXT NOT NULL, created REAL NOT NULL,
    submission TEXT, errors INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX IF NOT EXISTS pending_submission ON pending (submission);
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, created REAL NOT NULL, requests INTEGER NOT NULL,
    input_file_id TEXT, batch_id TEXT, status TEXT NOT NULL, output_file_id TEXT,
    error_file_id TEXT, collected REAL, message TEXT);
"""


def request_key(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Usage:
    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class CachedResponse:
    key: str
    response: dict[str, Any]
    usage: Usage
    cost_usd: float
    source: str


@dataclass(frozen=True)
class Spend:
    requests: int
    tokens_in: int
    tokens_cached: int
    tokens_out: int
    cost_usd: float


class ResponseCache:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "responses.sqlite")
        self._local = threading.local()
        conn = self._conn()
        with self._setup_lock():
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
            if "invalid" not in columns:  # a cache file written before answers were judged
                conn.execute("ALTER TABLE responses ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0")
                conn.execute("ALTER TABLE responses ADD COLUMN invalid_reason TEXT")

    @contextmanager
    def _setup_lock(self) -> Iterator[None]:
        """Serialise connection set-up across processes.

        Switching a fresh file to WAL needs an exclusive lock, and SQLite may answer a
        concurrent switch with "database is locked" at once instead of calling the busy
        handler; so openers take turns on a sidecar flock for it (milliseconds each).
        """
        with open(self.path + ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._setup_lock():
                # autocommit: transactions are explicit (BEGIN IMMEDIATE), so a reader
                # never has to upgrade to a writer lock, which SQLite may refuse without
                # waiting.
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # responses
    def get(self, key: str) -> CachedResponse | None:
        """The stored answer to a request, unless it was marked invalid."""
        row = (
            self._conn()
            .execute(
                "SELECT response, tokens_in, tokens_cached, tokens_out, cost_usd, source "
                "FROM responses WHERE key = ? AND invalid = 0",
                (key,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return CachedResponse(key, json.loads(row[0]), Usage(*row[1:4]), float(row[4]), row[5])

    def put(
        self,
        key: str,
        model: str,
        response: dict[str, Any],
        usage: Usage,
        cost_usd: float,
        source: str,
        run_id: str,
        clip_id: str,
    ) -> None:
        """Store a paid response and its ledger row in one transaction (replacing an answer
        to the same request that was marked invalid)."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO rejected SELECT key, model, response, cost_usd, source, created, "
                "invalid_reason, ? FROM responses WHERE key = ? AND invalid = 1",
                (now, key),
            )
            conn.execute(
                "INSERT OR REPLACE INTO responses (key, model, response, tokens_in, "
                "tokens_cached, tokens_out, cost_usd, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    json.dumps(response),
                    usage.tokens_in,
                    usage.tokens_cached,
                    usage.tokens_out,
                    cost_usd,
                    source,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO ledger (run_id, clip_id, key, model, tokens_in, tokens_cached, "
                "tokens_out, cost_usd, source, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    clip_id,
                    key,
                    model,
                    usage.tokens_in,
                    usage.tokens_cached,
                    usage.tokens_out,
                    cost_usd,
                    source,
                    now,
                ),
            )
            conn.execute("DELETE FROM pending WHERE key = ?", (key,))

    def mark_invalid(self, key: str, reason: str) -> None:
        """Never replay this answer: it failed validation (kept, with the reason, for the
        record; its ledger row stays)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE responses SET invalid = 1, invalid_reason = ? WHERE key = ?",
                (reason[:500], key),
            )

    def invalid_reason(self, key: str) -> str | None:
        """Why the answer to ``key`` was marked invalid; None when it was not (or is absent)."""
        row = (
            self._conn()
            .execute("SELECT invalid, invalid_reason FROM responses WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None or not row[0] else str(row[1] or "")

    # the ledger
    def spend(self, run_id: str | None = None) -> Spend:
        """What was paid by one run (``None``: everything this cache has seen)."""
        sql = (
            "SELECT COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_cached), 0), "
            "COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_usd), 0) FROM ledger"
        )
        args: tuple[str, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        row = self._conn().execute(sql, args).fetchone()
        return Spend(int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]))

    def spend_by_run(self) -> dict[str, Spend]:
        rows = self._conn().execute(
            "SELECT run_id, COUNT(*), SUM(tokens_in), SUM(tokens_cached), SUM(tokens_out), "
            "SUM(cost_usd) FROM ledger GROUP BY run_id ORDER BY MIN(created)"
        )
        return {r[0]: Spend(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5])) for r in rows}

    # the Batch API queue
    def add_pending(
        self, key: str, endpoint: str, model: str, body: dict[str, Any], clip_id: str, run_id: str
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO pending (key, endpoint, model, body, clip_id, run_id, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, endpoint, model, json.dumps(body), clip_id, run_id, time.time()),
            )

    def pending_counts(self) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT COALESCE(submission, ''), COUNT(*) FROM pending GROUP BY submission"
        )
        return {r[0]: int(r[1]) for r in rows}

    def claim_pending(
        self, submission: str, endpoint: str, max_requests: int, max_bytes: int
    ) -> int:
        """Assign unsubmitted requests for ``endpoint`` to a new submission, oldest first, up
        to ``max_requests`` and about ``max_bytes`` of request bodies; returns how many."""
        with self._tx() as conn:
            keys: list[str] = []
            size = 0
            for key, n in conn.execute(
                "SELECT key, LENGTH(body) FROM pending WHERE submission IS NULL AND endpoint = ? "
                "ORDER BY created, key LIMIT ?",
                (endpoint, max_requests),
            ):
                if keys and size + n > max_bytes:
                    break
                keys.append(key)
                size += n
            if not keys:
                return 0
            conn.executemany(
                "UPDATE pending SET submission = ? WHERE key = ?", [(submission, k) for k in keys]
            )
            conn.execute(
                "INSERT INTO submissions (id, endpoint, created, requests, status) "
                "VALUES (?, ?, ?, ?, 'claimed')",
                (submission, endpoint, time.time(), len(keys)),
            )
        return len(keys)

    def pending_endpoints(self) -> dict[str, int]:
        """Unsubmitted requests per endpoint."""
        rows = self._conn().execute(
            "SELECT endpoint, COUNT(*) FROM pending WHERE submission IS NULL GROUP BY endpoint"
        )
        return {r[0]: int(r[1]) for r in rows}

    def submission_lines(self, submission: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, body in self._conn().execute(
            "SELECT key, body FROM pending WHERE submission = ? ORDER BY key", (submission,)
        ):
            yield key, json.loads(body)

    def pending_row(self, key: str) -> tuple[str, str, str, dict[str, Any]] | None:
        """(model, clip_id, run_id, body) of a queued request."""
        row = (
            self._conn()
            .execute("SELECT model, clip_id, run_id, body FROM pending WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None else (row[0], row[1], row[2], json.loads(row[3]))

    def requeue(self, key: str, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE pending SET submission = NULL, errors = errors + 1, last_error = ? "
                "WHERE key = ?",
                (error[:500], key),
            )

    def requeue_submission(self, submission: str, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE pending SET submission = NULL, errors = errors + 1, last_error = ? "
                "WHERE submission = ?",
                (error[:500], submission),
            )

    def update_submission(self, submission: str, **fields: Any) -> None:
        allowed = {
            "input_file_id",
            "batch_id",
            "status",
            "output_file_id",
            "error_file_id",
            "collected",
            "message",
        }
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update submission fields {sorted(set(fields) - allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as conn:
            conn.execute(
                f"UPDATE submissions SET {cols} WHERE id = ?", (*fields.values(), submission)
            )

    def submissions(self, open_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM submissions"
        if open_only:
            sql += " WHERE collected IS NULL"
        cur = self._conn().execute(sql + " ORDER BY created")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]
