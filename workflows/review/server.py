"""Serving the review app: one process, or ``--workers N`` processes sharing one port.

With one worker the app is built in the ``serve`` process itself. With several, uvicorn
spawns N worker processes, and each builds its own app and store with :func:`app_from_env`
(uvicorn's ``factory=True``) from the settings the parent put in the environment variable
``ANY2CAP_REVIEW_SERVE`` (JSON). Every worker opens the same database: PostgreSQL, or the
SQLite file in WAL mode; nothing a worker needs lives in its memory alone:

- browser sessions and their CSRF tokens are rows of the store (only digests of the session
  ids), and the login form's CSRF token is a double-submit cookie, so a login made on one
  worker is valid on every other one; there is no process secret to share;
- login throttling counts attempts in the store (``login_throttle``), per account and per
  address, whichever worker takes the attempt;
- leases are rows locked by the database (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
  ``BEGIN IMMEDIATE`` on SQLite), so they stay exclusive across processes.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from any2capins.workflows.review.store import ReviewStore

ENV = "ANY2CAP_REVIEW_SERVE"
HEALTHCHECK_S = 30


@dataclass(frozen=True)
class ServeConfig:
    """What a worker needs to build the app: the run, the store URL and the app settings."""

    run: str
    db: str | None = None
    secure_cookies: bool = False
    max_body_bytes: int = 8 << 20

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


def build_app(config: ServeConfig, store: ReviewStore | None = None) -> FastAPI:
    """The app for ``config`` (opening its store unless one is given)."""
    from any2capins.workflows.review.app import create_app
    from any2capins.workflows.review.store import open_store

    if store is None:
        # The parent already ingested and stored the policy: a worker only opens the store.
        store = open_store(run_dir=config.run, db_url=config.db)
    return create_app(
        store, secure_cookies=config.secure_cookies, max_body_bytes=config.max_body_bytes
    )


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process (``factory=True``)."""
    text = os.environ.get(ENV)
    if not text:
        raise RuntimeError(f"{ENV} is not set: start workers with `any2cap review serve`")
    return build_app(ServeConfig.from_json(text))


def shareable(url: str) -> str | None:
    """None when several processes can share the store at ``url``, else why not."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # not a URL: opening the store says so
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return "an in-memory SQLite store cannot be shared by worker processes"
    return None


def serve(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    store: ReviewStore | None = None,
) -> None:
    """Serve until interrupted. One worker serves ``store`` (or opens it) in this process;
    several are spawned by uvicorn and each opens the store itself."""
    import uvicorn

    if workers == 1:
        uvicorn.run(
            build_app(config, store),
            host=host,
            port=port,
            log_level="warning",
            proxy_headers=False,
            access_log=False,
        )
        return
    if store is not None:
        store.close()  # the workers open their own connections
    os.environ[ENV] = config.to_json()
    extra: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # uvicorn kills a worker that does not answer its health check within this (5 s by
        # default), which a worker still importing on a busy host can miss.
        extra["timeout_worker_healthcheck"] = HEALTHCHECK_S
    uvicorn.run(
        f"{__name__}:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=False,
        access_log=False,
        **extra,
    )
