"""``any2cap review serve --workers 2``: two real uvicorn worker processes on one store
(SQLite in WAL mode, and PostgreSQL), real HTTP on 127.0.0.1.

- a browser login made on one worker is valid on the other (sessions and CSRF tokens are in
  the store, no per-process secret), and the login throttle counts attempts on both;
- many logged-in clients (threads, a new connection per request, so claims and decisions
  land on either worker) claim and decide until the queue is empty: no item is ever leased
  to two clients, and every decision is recorded exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from any2capins.workflows.review import open_store
from any2capins.workflows.review.store import ReviewStore
from tests.review_fixtures import free_port, fresh_pg_database, make_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
ITEMS = 48
NAMES = [f"ann{i}" for i in range(8)]
PASSWORD = "a-long-password-1"


@contextlib.contextmanager
def serve(run: Path, db_url: str, log: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``any2cap review serve --workers 2`` in its own process group; yields the base URL
    and the serve process once both workers answer."""
    port = free_port()
    cmd = [sys.executable, "-m", "any2capins.workflows.cli", "review", "serve", "--run", str(run)]
    cmd += ["--db", db_url, "--port", str(port), "--workers", str(WORKERS), "--no-ingest"]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if len(workers(parent)) == WORKERS and httpx.get(f"{base}/login").is_success:
                    break
            time.sleep(0.2)
        yield base, parent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def workers(parent: psutil.Process) -> list[psutil.Process]:
    """The uvicorn worker processes of ``serve`` (not multiprocessing's resource tracker)."""
    found = []
    for child in parent.children():
        with contextlib.suppress(psutil.Error):  # gone, or a zombie
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


def worker_of(response: httpx.Response, parent: psutil.Process) -> int:
    """The pid of the worker at the other end of the kept-alive connection of ``response``."""
    port = response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
    owners = []
    for worker in workers(parent):
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and c.raddr.port == port for c in worker.net_connections("tcp")):
                owners.append(worker.pid)
    assert len(owners) == 1, owners
    return int(owners[0])


def client_on_another_worker(
    served: Served, avoid: int | None, probe: str, cookies: httpx.Cookies | None = None
) -> tuple[httpx.Client, httpx.Response, int]:
    """A client whose kept-alive connection is on a worker other than ``avoid``: new
    connections (``GET probe``) until the kernel hands one to another worker."""
    for _ in range(100):
        client = httpx.Client(base_url=served.base, cookies=cookies)
        response = client.get(probe)
        pid = worker_of(response, served.parent)
        if pid != avoid:
            return client, response, pid
        client.close()
    raise AssertionError(f"100 connections in a row went to worker {avoid}")


def _form_csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def _post_login(client: httpx.Client, name: str, password: str, csrf: str) -> httpx.Response:
    return client.post(
        "/login", data={"name": name, "password": password, "csrf": csrf}, follow_redirects=False
    )


def _api_csrf(home: httpx.Response) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', home.text)
    assert found is not None, home.text
    return found.group(1)


def login(base: str, name: str) -> tuple[httpx.Cookies, dict[str, str]]:
    """Log ``name`` in through the form: (cookies, headers) for the API."""
    with httpx.Client(base_url=base) as c:
        r = _post_login(c, name, PASSWORD, _form_csrf(c.get("/login")))
        assert r.status_code == 303, r.text
        return c.cookies, {"X-CSRF-Token": _api_csrf(c.get("/review"))}


@dataclass
class Served:
    base: str
    parent: psutil.Process
    store: ReviewStore


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A run of ITEMS records, its store (one per backend) with the annotators, and
    ``serve --workers 2`` on it; shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp(f"workers-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp / 'review.db'}"
        else:
            db_url = stack.enter_context(fresh_pg_database("workers"))
        run = make_run(tmp / "run", ITEMS, conditions=False)
        store = open_store(str(run), db_url)
        stack.callback(store.close)
        assert store.ingest().added == ITEMS
        for name in ["ann", "target", *NAMES]:
            store.add_user(name, "annotator", PASSWORD)
        base, parent = stack.enter_context(serve(run, db_url, tmp / "serve.log"))
        yield Served(base, parent, store)


def test_login_on_one_worker_holds_on_the_other(served: Served) -> None:
    # The login form comes from one worker, the login goes to the other.
    form = httpx.Client(base_url=served.base)
    page = form.get("/login")
    form_pid = worker_of(page, served.parent)
    c, _, _ = client_on_another_worker(served, form_pid, "/api/me", form.cookies)
    logged_in = _post_login(c, "ann", PASSWORD, _form_csrf(page))
    assert logged_in.status_code == 303, logged_in.text
    login_pid = worker_of(logged_in, served.parent)
    assert login_pid != form_pid
    # The session made on that worker is valid on the other one ...
    c, me, me_pid = client_on_another_worker(served, login_pid, "/api/me", c.cookies)
    assert me.json()["name"] == "ann"
    assert me_pid != login_pid
    # ... and so is the CSRF token a page of one worker gives to the other's API.
    token = {"X-CSRF-Token": _api_csrf(c.get("/review"))}
    page_pid = worker_of(c.get("/api/me"), served.parent)
    c, _, _ = client_on_another_worker(served, page_pid, "/api/me", c.cookies)
    claimed = c.post("/api/claim", headers=token)
    assert claimed.status_code == 200, claimed.text
    claim_pid = worker_of(claimed, served.parent)
    assert claim_pid != page_pid
    item = claimed.json()
    c, _, _ = client_on_another_worker(served, claim_pid, "/api/me", c.cookies)
    decided = c.post(
        f"/api/items/{item['id']}/decision",
        json={"decision": "accept", "version": item["version"]},
        headers=token,
    )
    assert decided.status_code == 200, decided.text
    assert worker_of(decided, served.parent) != claim_pid

    # Login throttling counts the failures of both workers: five wrong passwords for one
    # account, on alternate workers, lock it out on both, the right password included.
    limit = served.store.login_limits.account_failures
    seen: list[int] = []
    for i in range(limit + 2):
        c, page, _ = client_on_another_worker(served, seen[-1] if seen else None, "/login")
        password = "wrong-password" if i < limit else PASSWORD
        answer = _post_login(c, "target", password, _form_csrf(page))
        seen.append(worker_of(answer, served.parent))
        assert answer.status_code == (401 if i < limit - 1 else 429), (i, answer.text)
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
        c.close()
    assert len(set(seen)) == WORKERS, seen


def test_concurrent_claims_and_decisions_across_workers(served: Served) -> None:
    store = served.store
    before = {clip: len(s.reviews) for clip, s in store.final_states().items()}
    open_items = sum(1 for n in before.values() if n == 0)
    assert open_items >= ITEMS - 1  # (the other test may have decided one)
    claims: list[tuple[str, int]] = []
    decided: list[tuple[str, int]] = []
    failures: list[str] = []
    holding: dict[int, str] = {}
    guard = threading.Lock()

    def annotator(name: str, cookies: httpx.Cookies, headers: dict[str, str]) -> None:
        # No keep-alive: every request opens a connection, which either worker may accept.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(
            base_url=served.base, cookies=cookies, headers=headers, limits=limits, timeout=120
        ) as c:
            for n in range(ITEMS + 1):
                r = c.post("/api/claim")
                if r.status_code == 204:
                    return
                if r.status_code != 200:
                    failures.append(f"{name} claim {r.status_code}: {r.text}")
                    return
                item = r.json()
                with guard:
                    claims.append((name, item["id"]))
                    if item["id"] in holding:
                        failures.append(f"{name} got item {item['id']} held by {holding}")
                    holding[item["id"]] = name
                body: dict[str, Any] = {"decision": "accept", "version": item["version"]}
                if n % 3 == 1:
                    body = {
                        "decision": "edit",
                        "version": item["version"],
                        "edits": {"camera": f"A locked-off camera ({name})."},
                    }
                d = c.post(f"/api/items/{item['id']}/decision", json=body)
                if d.status_code != 200:
                    failures.append(f"{name} decision {d.status_code}: {d.text}")
                    return
                # Let go only after the answer: a decided item is never offered again.
                with guard:
                    del holding[item["id"]]
                    decided.append((name, item["id"]))
            failures.append(f"{name} never got a 204")

    sessions = {name: login(served.base, name) for name in NAMES}
    threads = [threading.Thread(target=annotator, args=(n, *sessions[n])) for n in NAMES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(workers(served.parent)) == WORKERS

    assert failures == []
    per_item = Counter(item for _, item in claims)
    assert len(per_item) == open_items, (len(per_item), open_items)
    assert set(per_item.values()) == {1}, per_item.most_common(3)  # no item claimed twice
    assert sorted(decided) == sorted(claims)
    assert len({name for name, _ in decided}) > 1  # the clients really ran side by side
    states = store.final_states()
    assert len(states) == ITEMS
    assert Counter(len(s.reviews) for s in states.values()) == {1: ITEMS}  # each decision once
    reviewers = Counter(
        r.reviewer for s in states.values() for r in s.reviews if r.reviewer != "ann"
    )
    assert reviewers == Counter(name for name, _ in decided)
    assert store.claims() == []
