"""Hardening of the review app against hostile clients: request-body limits (413 from the
Content-Length header, a chunked body stopped once past the limit), credentials checked before
any body is read, login throttling kept in the database, common passwords refused, strict JSON
types, JSON errors for media, and an edit that changes nothing refused."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from any2capins.schemas import utc_now
from any2capins.workflows.review import Invalid, ReviewStore, open_store
from any2capins.workflows.review import store as store_module
from any2capins.workflows.review.app import create_app
from any2capins.workflows.review.store import Throttled
from tests.review_fixtures import free_port, fresh_pg_database, make_run

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


# a real server in its own process, and a raw HTTP client that streams big bodies
@contextlib.contextmanager
def _serve(run: Path, *extra: str) -> Iterator[tuple[int, int]]:
    """``any2cap review serve`` in its own process; yields (port, pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "any2capins.workflows.cli", "review", "serve", "--run", str(run)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--no-ingest", *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the review server did not start within 60 s")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _json_body_chunks(total: int, chunk: int = MB) -> Iterator[bytes]:
    """A valid JSON decision of ``total`` bytes (a huge note), generated chunk by chunk."""
    head, tail = b'{"decision": "accept", "version": 1, "note": "', b'"}'
    yield head
    left = total - len(head) - len(tail)
    block = b"a" * chunk
    while left > 0:
        n = min(chunk, left)
        yield block[:n]
        left -= n
    yield tail


def _post_stream(
    port: int,
    path: str,
    total: int,
    *,
    chunked: bool,
    headers: dict[str, str] | None = None,
) -> tuple[int, int, bytes]:
    """POST a ``total``-byte body from a generator (never held in memory), stopping as soon as
    the server answers. Returns (status, body bytes sent, response body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        answered = False
        for data in _json_body_chunks(total):
            if select.select([sock], [], [], 0)[0]:
                answered = True  # the server answered before the whole body was sent
                break
            try:
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += len(data)
        if not answered and chunked:
            sock.sendall(b"0\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response:
            got = sock.recv(65536)
            if not got:
                break
            response += got
        head, _, rest = response.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(rest) < int(length.group(1)):
            got = sock.recv(65536)
            if not got:
                break
            rest += got
        return status, sent, rest
    finally:
        sock.close()


@pytest.fixture
def run_with_token(tmp_path: Path) -> tuple[Path, str]:
    run = make_run(tmp_path / "run", n=2, conditions=False)
    store = open_store(str(run))
    store.ingest()
    store.add_user("ann", "annotator", None)
    token = store.create_token("ann")
    store.close()
    return run, token


def test_oversized_bodies_get_413_and_memory_stays_flat(run_with_token: tuple[Path, str]) -> None:
    run, token = run_with_token
    auth = {"Authorization": f"Bearer {token}"}
    with _serve(run, "--max-body-mb", "1") as (port, pid):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            item = c.post("/api/claim").json()  # warm up every code path once
            c.post("/api/lint", json={"field": "dense", "text": "warm up"})
        baseline = _rss_mb(pid)
        peak = baseline
        path = f"/api/items/{item['id']}/decision"
        for _ in range(3):
            # a declared length over the limit: 413 before one body byte is read
            status, sent, body = _post_stream(port, path, 50 * MB, chunked=False, headers=auth)
            assert status == 413 and sent < 50 * MB, (status, sent)
            assert "limit" in json.loads(body)["detail"]
            # chunked, no length: read only until past the limit
            status, sent, body = _post_stream(port, path, 50 * MB, chunked=True, headers=auth)
            assert status == 413, status
            # no credentials: 401, whatever the body
            status, sent, _ = _post_stream(port, path, 50 * MB, chunked=True)
            assert status == 401, status
            status, sent, _ = _post_stream(port, path, 50 * MB, chunked=False)
            assert status in (401, 413), status
            peak = max(peak, _rss_mb(pid))
        # requests under the limit still work
        with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            ok = c.post(path, json={"decision": "accept", "version": item["version"]})
            assert ok.status_code == 200, ok.text
        assert peak - baseline < 30, f"server RSS grew from {baseline:.0f} MB to {peak:.0f} MB"


def test_unauthenticated_bodies_are_never_read(run_with_token: tuple[Path, str]) -> None:
    """With a limit far above the body, an unauthenticated request still costs no memory."""
    run, _ = run_with_token
    with _serve(run, "--max-body-mb", "500") as (port, pid):
        httpx.get(f"http://127.0.0.1:{port}/login")
        baseline = peak = _rss_mb(pid)
        for path in ("/api/items/1/decision", "/api/lint", "/review/items/1/decision"):
            status, _, _ = _post_stream(port, path, 100 * MB, chunked=True)
            assert status in (401, 303), (path, status)
            status, _, _ = _post_stream(port, path, 100 * MB, chunked=False)
            assert status in (401, 303), (path, status)
            peak = max(peak, _rss_mb(pid))
        assert peak - baseline < 30, f"server RSS grew from {baseline:.0f} MB to {peak:.0f} MB"


# the same, in process: the app's receive is never called for a refused request
def _asgi(
    app: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight through the ASGI app. Returns (status, headers, body, how many
    times the app called ``receive``)."""
    import anyio

    calls = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= len(chunks):
            return {
                "type": "http.request",
                "body": chunks[calls - 1],
                "more_body": calls < len(chunks),
            }
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {"Content-Type": "application/json", **headers}.items()
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, body, calls


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    run = make_run(tmp_path / "run", n=3, conditions=False)
    s = open_store(str(run))
    s.ingest()
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("rev", "reviewer")):
        s.add_user(name, role, None)
    return s


def test_credentials_are_checked_before_the_body_is_read(store: ReviewStore) -> None:
    app = create_app(store)
    body = [b'{"decision": "accept", ', b'"version": 1}']
    for path in ("/api/items/1/decision", "/api/claim", "/api/lint", "/api/claims/1/release"):
        for headers in ({}, {"Authorization": "Bearer a2c_forged"}, {"Cookie": "a2c_session=x"}):
            status, hdrs, answer, calls = _asgi(app, "POST", path, headers, body)
            assert (status, calls) == (401, 0), (path, headers, status, calls)
            assert hdrs["www-authenticate"] == "Bearer"
            assert json.loads(answer)["detail"].startswith("log in")
    for path in ("/review/next", "/review/items/1/decision", "/admin/claims/1/release", "/logout"):
        status, hdrs, _, calls = _asgi(app, "POST", path, {"Cookie": "a2c_session=x"}, body)
        assert (status, hdrs["location"], calls) == (303, "/login", 0), path
        assert "content-security-policy" in hdrs
    # with credentials the body is read as before
    token = {"Authorization": f"Bearer {store.create_token('ann')}"}
    status, _, answer, calls = _asgi(
        app, "POST", "/api/lint", token, [b'{"field": "dense", "text": "A cat."}']
    )
    assert status == 200 and calls >= 1 and json.loads(answer)["words"] == 2


def test_body_limit_in_process(store: ReviewStore) -> None:
    app = create_app(store, max_body_bytes=1000)
    token = {"Authorization": f"Bearer {store.create_token('ann')}"}
    text = {"field": "dense", "text": "x" * 1200}
    # the declared length alone: 413 before one byte is read
    status, hdrs, answer, calls = _asgi(
        app, "POST", "/api/lint", {**token, "Content-Length": "5000"}, [b"{}"]
    )
    assert (status, calls) == (413, 0)
    assert (
        json.loads(answer)["detail"]
        == "the request body is over this server's limit of 0.000953674 MB"
    )
    assert "content-security-policy" in hdrs
    # no length (chunked): read only until past the limit, then 413
    raw = json.dumps(text).encode()
    chunks = [raw[i : i + 400] for i in range(0, len(raw), 400)]
    status, hdrs, answer, calls = _asgi(app, "POST", "/api/lint", token, chunks)
    assert (status, calls) == (413, 3), (status, calls, len(chunks))
    assert hdrs["connection"] == "close"  # the server stops receiving the rest
    assert "limit" in json.loads(answer)["detail"]
    # pages too (a form)
    status, _, _, calls = _asgi(
        app, "POST", "/login", {"Content-Length": "2000"}, [b"name=a&password=b"]
    )
    assert (status, calls) == (413, 0)
    # under the limit: answered as usual
    status, _, answer, _ = _asgi(
        app, "POST", "/api/lint", token, [json.dumps({"field": "dense", "text": "A cat."}).encode()]
    )
    assert status == 200, answer


# login throttling
GOOD = "tangerine-orbit-lamp"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with fresh_pg_database("harden") as url:
        yield url


def _actions(store: ReviewStore, action: str) -> list[Any]:
    return [r.after for r in store.audit() if r.action == action]


def test_login_throttle_locks_the_account_across_processes(
    tmp_path: Path, db_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path / "run", n=1, conditions=False)
    store = open_store(str(run), db_url)
    store.add_user("ann", "annotator", GOOD)
    # a second server process: its own engine and connections, the same database
    other = open_store(str(run), db_url)
    for i in range(4):
        assert store.authenticate("ann", f"wrong-guess-{i}", address="10.0.0.1") is None
    with pytest.raises(Throttled) as locked:  # the fifth failure, from elsewhere, locks it
        other.authenticate("ann", "wrong-guess-4", address="10.0.0.2")
    assert locked.value.retry_after == 60 and "try again in 60 s" in str(locked.value)
    # The right password is refused during the lockout, from any address, in any process.
    for s, address in ((store, "10.0.0.3"), (other, None)):
        with pytest.raises(Throttled) as refused:
            s.authenticate("ann", GOOD, address=address)
        assert 55 <= refused.value.retry_after <= 60
    assert len(_actions(store, "login_failed")) == 5
    (lockout,) = _actions(store, "login_lockout")
    assert lockout["kind"] == "account" and lockout["subject"] == "ann"
    assert lockout["seconds"] == 60
    assert {a["address"] for a in _actions(store, "login_failed")} == {"10.0.0.1", "10.0.0.2"}
    # After it: five more failures lock it again, for twice as long.
    now = utc_now()
    monkeypatch.setattr(store_module, "utc_now", lambda: now + timedelta(seconds=61))
    for i in range(4):
        assert other.authenticate("ann", f"again-{i}") is None
    with pytest.raises(Throttled) as second:
        store.authenticate("ann", "again-4")
    assert second.value.retry_after == 120
    with pytest.raises(Throttled):
        store.authenticate("ann", GOOD)
    # Once it ends the right password works and the counters start again.
    monkeypatch.setattr(store_module, "utc_now", lambda: now + timedelta(seconds=61 + 121))
    assert store.authenticate("ann", GOOD) is not None
    for i in range(4):
        assert store.authenticate("ann", f"after-{i}") is None
    assert other.authenticate("ann", GOOD) is not None
    # An admin's new password lifts a lockout.
    for i in range(4):
        assert store.authenticate("ann", f"late-{i}") is None
    with pytest.raises(Throttled):
        store.authenticate("ann", "late-4")
    store.set_password("ann", "a-brand-new-passphrase")
    assert store.authenticate("ann", "a-brand-new-passphrase") is not None


def test_login_throttle_per_address_and_under_parallel_guesses(
    tmp_path: Path, db_url: str | None
) -> None:
    run = make_run(tmp_path / "run", n=1, conditions=False)
    store = open_store(str(run), db_url)
    store.add_user("ann", "annotator", GOOD)
    store.add_user("bob", "annotator", GOOD + "-bob")
    store.login_limits = store_module.LoginLimits(address_failures=6)
    # one address trying many names: the address is locked, for every name
    for i in range(5):
        assert store.authenticate(f"user{i}", "wrong-guess", address="10.9.9.9") is None
    with pytest.raises(Throttled):
        store.authenticate("nobody", "wrong-guess", address="10.9.9.9")
    with pytest.raises(Throttled):
        store.authenticate("ann", GOOD, address="10.9.9.9")
    assert store.authenticate("ann", GOOD, address="10.1.1.1") is not None
    assert _actions(store, "login_lockout")[-1]["kind"] == "address"
    # A burst of parallel guesses on one account: no more than the limit are checked.
    results: list[str] = []

    def guess(i: int) -> None:
        try:
            outcome = store.authenticate("bob", f"parallel-{i}", address=f"10.2.0.{i}")
            results.append("none" if outcome is None else "user")
        except Throttled:
            results.append("throttled")

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    failed_for_bob = [a for a in _actions(store, "login_failed") if a["user"] == "bob"]
    assert len(failed_for_bob) <= 5, len(failed_for_bob)
    assert results.count("throttled") >= 7 and "user" not in results
    with pytest.raises(Throttled):
        store.authenticate("bob", GOOD + "-bob", address="10.3.0.1")


def _login_form(client: TestClient, name: str, password: str) -> Any:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf": csrf.group(1)},
        follow_redirects=False,
    )


def test_login_form_is_throttled(store: ReviewStore) -> None:
    store.set_password("ann", GOOD)
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        # the probe: 40 wrong passwords in a row, then the right one
        statuses = [_login_form(client, "ann", f"guess-{i:02d}").status_code for i in range(40)]
        assert statuses[:4] == [401] * 4 and set(statuses[4:]) == {429}, statuses
        right = _login_form(client, "ann", GOOD)
        assert right.status_code == 429
        assert "a2c_session" not in right.cookies
        assert 1 <= int(right.headers["retry-after"]) <= 60
        assert "Too many failed logins" in right.text and "try again in" in right.text
        assert right.headers["content-type"].startswith("text/html")
        # another account from another address is not affected
        store.set_password("bob", GOOD + "-bob")
    with TestClient(
        create_app(store), base_url="http://127.0.0.1", client=("10.7.7.7", 5000)
    ) as elsewhere:
        assert _login_form(elsewhere, "bob", GOOD + "-bob").status_code == 303
    failed = _actions(store, "login_failed")
    assert len(failed) == 5 and failed[0] == {"user": "ann", "address": "testclient"}
    assert len(_actions(store, "login_lockout")) == 1


# passwords
def test_common_passwords_and_the_user_name_are_refused(store: ReviewStore, tmp_path: Path) -> None:
    for bad, why in (
        ("password123", "most common"),
        ("Qwertyuiop", "most common"),
        ("12345678", "most common"),
        ("carol-the-great", "user name"),
        ("short", "at least 8"),
    ):
        with pytest.raises(ValueError, match=why):
            store.add_user("carol-the-great", "annotator", bad)
    with pytest.raises(ValueError, match="most common"):
        store.set_password("ann", "Password123")
    assert "carol-the-great" not in {u.name for u, _ in store.users()}
    from any2capins.workflows.cli import app

    run = Path(store.run.root)  # type: ignore[union-attr]
    runner = CliRunner()
    add = runner.invoke(
        app, ["review", "users", "add", "dave", "--run", str(run)], input="iloveyou\n"
    )
    assert add.exit_code == 2 and "most common passwords" in add.output
    same = runner.invoke(
        app, ["review", "users", "add", "dave1234", "--run", str(run)], input="DAVE1234\n"
    )
    assert same.exit_code == 2 and "user name" in same.output
    ok = runner.invoke(
        app, ["review", "users", "add", "dave", "--run", str(run)], input="plum-cactus-river\n"
    )
    assert ok.exit_code == 0, ok.output
    passwd = runner.invoke(
        app, ["review", "users", "passwd", "dave", "--run", str(run)], input="letmein123\n"
    )
    assert passwd.exit_code == 2 and "most common passwords" in passwd.output


# smaller ones
@pytest.fixture
def client(store: ReviewStore) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def test_json_api_types_are_strict(client: TestClient, store: ReviewStore) -> None:
    ann = {"Authorization": f"Bearer {store.create_token('ann')}"}
    item = client.post("/api/claim", headers=ann).json()
    url = f"/api/items/{item['id']}/decision"
    for version in (True, "1", 1.0, "one", None):
        r = client.post(url, headers=ann, json={"decision": "accept", "version": version})
        assert r.status_code == 422, (version, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "version"]
    for bad in ({"camera": 5}, {"camera": True}, ["camera"]):
        r = client.post(url, headers=ann, json={"decision": "edit", "version": 1, "edits": bad})
        assert r.status_code == 422, bad
    r = client.post(url, headers=ann, json={"decision": "reject", "version": 1, "reason": 1})
    assert r.status_code == 422
    lint = client.post("/api/lint", headers=ann, json={"field": "dense", "text": 42})
    assert lint.status_code == 422
    assert store.item(store.users()[0][0], item["id"]).state == "pending", "nothing was decided"
    ok = client.post(url, headers=ann, json={"decision": "accept", "version": item["version"]})
    assert ok.status_code == 200 and ok.json()["version"] == 2


def test_media_errors_are_json_and_pages_stay_html(client: TestClient, store: ReviewStore) -> None:
    ann = {"Authorization": f"Bearer {store.create_token('ann')}"}
    bob = {"Authorization": f"Bearer {store.create_token('bob')}"}
    item = client.post("/api/claim", headers=ann).json()
    for headers, path, status in (
        (ann, f"/media/{item['id']}/99", 404),  # no such media
        (bob, f"/media/{item['id']}/0", 403),  # someone else's item
        (ann, "/media/999999/0", 404),  # no such item
        ({}, f"/media/{item['id']}/0", 401),
        (ann, f"/media/{item['id']}/-1", 422),
    ):
        r = client.get(path, headers=headers)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"] == "application/json", (path, r.headers["content-type"])
        assert r.json()["detail"]
    assert client.get(f"/media/{item['id']}/0", headers=ann).status_code == 200
    # the pages keep their HTML error page
    store.set_password("rev", GOOD)
    assert _login_form(client, "rev", GOOD).status_code == 303
    page = client.get("/review/items/999999")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


def test_an_edit_that_changes_nothing_is_refused(client: TestClient, store: ReviewStore) -> None:
    ann_user = next(u for u, _ in store.users() if u.name == "ann")
    ann = {"Authorization": f"Bearer {store.create_token('ann')}"}
    item = client.post("/api/claim", headers=ann).json()
    url = f"/api/items/{item['id']}/decision"
    same = {"camera": "  " + item["fields"]["camera"] + "\n"}  # the machine text again
    for edits in ({}, same):
        r = client.post(url, headers=ann, json={"decision": "edit", "version": 1, "edits": edits})
        assert r.status_code == 422, (edits, r.text)
        assert r.json()["detail"] == "an edit needs at least one changed field; use accept"
    with pytest.raises(Invalid, match="at least one changed field"):
        store.decide(ann_user, item["id"], "edit", 1, edits={})
    assert store.item(ann_user, item["id"]).state == "pending"
    assert not [r for r in store.audit(item["id"]) if r.action == "review"], "nothing recorded"
    # an accept is still an accept, and a real edit still an edit
    r = client.post(url, headers=ann, json={"decision": "accept", "version": 1})
    assert r.status_code == 200 and r.json()["decision"] == "accept"
    nxt = client.post("/api/claim", headers=ann).json()
    r = client.post(
        f"/api/items/{nxt['id']}/decision",
        headers=ann,
        json={"decision": "edit", "version": 1, "edits": {"camera": "A handheld camera."}},
    )
    assert r.status_code == 200 and r.json()["state"] == "edited"
