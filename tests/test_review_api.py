"""The review app over HTTP: API decisions, roles, CSRF, media confinement, security headers,
the OpenAPI schema fuzzed by schemathesis, concurrent API clients, and the CLI."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import PayloadRef
from any2capins.workflows.review import ReviewPolicy, ReviewStore, open_store
from any2capins.workflows.review.app import CSP, create_app
from tests.review_fixtures import fresh_pg_database, live_server, make_run

TEMPLATES = Path(__file__).resolve().parents[1] / "workflows" / "review" / "templates"
FIELDS = ("dense", "main_object", "background", "camera", "style", "action", "short_prompt")


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    run = make_run(tmp_path / "run", n=6, xss=True)
    s = open_store(str(run))
    s.ingest()
    for name, role in (
        ("ann", "annotator"),
        ("bob", "annotator"),
        ("rev", "reviewer"),
        ("boss", "admin"),
    ):
        s.add_user(name, role, None)
    return s


@pytest.fixture
def client(store: ReviewStore) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def _bearer(store: ReviewStore, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_token(name)}"}


def _login(client: TestClient, store: ReviewStore, name: str) -> str:
    """Log in through the form; returns the session's CSRF token."""
    store.set_password(name, "password-123")
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    r = client.post(
        "/login",
        data={"name": name, "password": "password-123", "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    home = client.get("/review")
    token = re.search(r'name="csrf-token" content="([^"]+)"', home.text)
    assert token is not None
    return token.group(1)


def test_claim_and_decide_over_the_api(client: TestClient, store: ReviewStore) -> None:
    ann = _bearer(store, "ann")
    r = client.post("/api/claim", headers=ann)
    assert r.status_code == 200
    item = r.json()
    assert {"id", "version", "clip_id", "fields", "media", "record", "lease_expires_at"} <= set(
        item
    )
    assert item["kind"] == "review" and item["version"] == 1
    assert item["media"][0]["url"] == f"/media/{item['id']}/0"
    # Claiming again returns the lease already held, not a second item.
    assert client.post("/api/claim", headers=ann).json()["id"] == item["id"]
    r = client.post(
        f"/api/items/{item['id']}/decision",
        headers=ann,
        json={
            "decision": "edit",
            "version": item["version"],
            "edits": {"camera": "A locked-off camera."},
        },
    )
    assert r.status_code == 200 and r.json()["state"] == "edited" and r.json()["version"] == 2
    # Work through the rest; then 204.
    seen = {item["id"]}
    while (r := client.post("/api/claim", headers=ann)).status_code == 200:
        nxt = r.json()
        seen.add(nxt["id"])
        body = {
            "decision": "reject",
            "version": nxt["version"],
            "reason": "bad_clip",
            "note": "blurry",
        }
        assert (
            client.post(f"/api/items/{nxt['id']}/decision", headers=ann, json=body).status_code
            == 200
        )
    assert r.status_code == 204 and r.content == b""
    assert len(seen) == 6
    states = {s.state for s in store.final_states().values()}
    assert states == {"edited", "rejected"}


def test_refusals_have_clear_statuses(client: TestClient, store: ReviewStore) -> None:
    ann, bob = _bearer(store, "ann"), _bearer(store, "bob")
    item = client.post("/api/claim", headers=ann).json()
    url = f"/api/items/{item['id']}/decision"
    stale = client.post(
        url, headers=ann, json={"decision": "accept", "version": item["version"] + 1}
    )
    assert stale.status_code == 409 and stale.json()["current_version"] == item["version"]
    assert (
        client.post(url, headers=ann, json={"decision": "reject", "version": 1}).status_code == 422
    )
    assert (
        client.post(
            url, headers=ann, json={"decision": "reject", "version": 1, "reason": "nope"}
        ).status_code
        == 422
    )
    bad_field = {"decision": "edit", "version": 1, "edits": {"title": "x"}}
    assert client.post(url, headers=ann, json=bad_field).status_code == 422
    assert (
        client.post(url, headers=ann, json={"decision": "accept", "version": 2**40}).status_code
        == 422
    )
    assert (
        client.post(url, headers=ann, json={"decision": "maybe", "version": 1}).status_code == 422
    )
    assert (
        client.post(
            url,
            headers=ann,
            content=b"{not json",
        ).status_code
        == 422
    )
    # Someone else's lease: bob cannot decide ann's item.
    other = client.post(url, headers=bob, json={"decision": "accept", "version": 1})
    assert other.status_code == 409 and "not leased to you" in other.json()["detail"]
    assert (
        client.post(
            "/api/items/999999/decision", headers=ann, json={"decision": "accept", "version": 1}
        ).status_code
        == 404
    )
    assert client.get(f"/api/items/{item['id']}", headers=bob).status_code == 403
    assert client.post(f"/api/items/{item['id']}/renew", headers=ann).status_code == 200
    assert client.post(f"/api/items/{item['id']}/skip", headers=ann).json()["state"] == "pending"


def test_every_endpoint_checks_the_role(client: TestClient, store: ReviewStore) -> None:
    assert client.post("/api/claim").status_code == 401
    assert client.post("/api/claim").headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/api/claim", headers={"Authorization": "Bearer a2c_forged"}).status_code == 401
    )
    ann, rev, boss = (_bearer(store, n) for n in ("ann", "rev", "boss"))
    for path, method, allowed in (
        ("/api/stats", "GET", {"rev", "boss"}),
        ("/api/claims", "GET", {"boss"}),
        ("/api/me", "GET", {"ann", "rev", "boss"}),
    ):
        for name, headers in (("ann", ann), ("rev", rev), ("boss", boss)):
            status = client.request(method, path, headers=headers).status_code
            assert status == (200 if name in allowed else 403), (path, name, status)
    assert client.post("/api/claims/1/release", headers=ann).status_code == 403
    assert client.post("/api/claims/1/release", headers=boss).status_code == 404
    assert client.get("/media/1/0").status_code == 401
    # Pages: a login redirect without a session, 403 without the role.
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/login"
    _login(client, store, "ann")
    assert client.get("/dashboard").status_code == 403
    assert client.get("/admin").status_code == 403
    store.revoke_tokens("ann")
    assert client.get("/api/me", headers=ann).status_code == 401


def test_cookie_requests_need_the_csrf_token(client: TestClient, store: ReviewStore) -> None:
    csrf = _login(client, store, "ann")
    assert client.post("/api/claim").status_code == 403
    assert client.post("/api/claim", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post("/api/claim", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.post("/review/next", data={"csrf": "wrong"}).status_code == 403
    client.cookies.clear()
    page = client.get("/login")
    assert page.status_code == 200
    client.cookies.clear()  # the login form's double-submit cookie is gone
    forged = client.post("/login", data={"name": "ann", "password": "password-123", "csrf": "x"})
    assert forged.status_code == 403


def test_html_flow_edit_then_stale_submit_keeps_the_text(
    client: TestClient, store: ReviewStore
) -> None:
    csrf = _login(client, store, "ann")
    r = client.post("/review/next", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    item_url = r.headers["location"]
    item_id = int(item_url.rsplit("/", 1)[1])
    page = client.get(item_url).text
    version = int(re.search(r'name="version" value="(\d+)"', page).group(1))  # type: ignore[union-attr]
    machine = store.item(store.users()[0][0], item_id).machine
    form = {f"field_{k}": v for k, v in machine.items()}
    stale_form = {
        **form,
        "field_main_object": "My carefully written object text.",
        "csrf": csrf,
        "version": str(version + 5),
        "action": "accept",
    }
    stale = client.post(f"/review/items/{item_id}/decision", data=stale_form)
    assert stale.status_code == 409
    assert "My carefully written object text." in stale.text, "the reviewer's text must come back"
    ok_form = {**stale_form, "version": str(version)}
    done = client.post(f"/review/items/{item_id}/decision", data=ok_form, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] != item_url, (
        "goes straight to the next item"
    )
    (final,) = [s for s in store.final_states().values() if s.state == "edited"]
    assert final.edits == {"main_object": "My carefully written object text."}
    # Reject without a reason re-renders with the error, nothing recorded.
    nxt = done.headers["location"]
    nid = int(nxt.rsplit("/", 1)[1])
    bad = client.post(
        f"/review/items/{nid}/decision", data={"csrf": csrf, "version": "1", "action": "reject"}
    )
    assert bad.status_code == 422 and "reason" in bad.text
    skip = client.post(f"/review/items/{nid}/skip", data={"csrf": csrf}, follow_redirects=False)
    assert skip.status_code == 303
    # An admin releases the lease while ann types: her text still comes back to her.
    third = int(skip.headers["location"].rsplit("/", 1)[1])
    boss = next(u for u, _ in store.users() if u.name == "boss")
    (lease,) = [c for c in store.claims() if c.item_id == third]
    store.release(boss, lease.id)
    lost = client.post(
        f"/review/items/{third}/decision",
        data={
            **form,
            "field_style": "Text typed before the release.",
            "csrf": csrf,
            "version": "1",
            "action": "accept",
        },
    )
    assert lost.status_code == 409 and "released by an admin" in lost.text
    assert "Text typed before the release." in lost.text


def test_media_is_served_only_from_the_artifact_store(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=1)
    rundir = RunDir(str(run))
    (record,) = list(rundir.records())
    artifacts = run / "artifacts" / record.clip_id
    (artifacts / "evil.html").write_text("<script>alert(1)</script>")
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", artifacts / "link.jpg")

    def ref(uri: str, media_type: str = "image/jpeg") -> PayloadRef:
        return PayloadRef(uri=uri, media_type=media_type, bytes=1, sha256="0" * 64)

    assert record.keyframes is not None
    record.keyframes.frames = [
        ref(str(artifacts / "keyframes" / "00.jpg")),
        ref(str(tmp_path / "secret.txt")),
        ref(str(run / "artifacts" / ".." / "run.json")),
        ref(str(artifacts / "link.jpg")),
        ref(str(artifacts / "evil.html"), "text/html"),
        ref("s3://elsewhere/x.jpg"),
    ]
    record.keyframes.timestamps_s = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    rundir.save_record(record)
    store = open_store(str(run))
    store.ingest()
    store.add_user("ann", "annotator", None)
    headers = _bearer(store, "ann")
    with TestClient(create_app(store)) as client:
        item = client.post("/api/claim", headers=headers).json()
        base = f"/media/{item['id']}"
        video = client.get(f"{base}/0", headers={**headers, "Range": "bytes=0-99"})
        assert video.status_code == 206 and len(video.content) == 100
        assert video.headers["content-type"] == "video/mp4"
        assert client.get(f"{base}/1", headers=headers).headers["content-type"] == "image/jpeg"
        for index in (2, 3, 4, 6):
            r = client.get(f"{base}/{index}", headers=headers)
            assert r.status_code == 403, (index, r.status_code)
            assert b"top secret" not in r.content and b"recipe" not in r.content
        html = client.get(f"{base}/5", headers=headers)
        assert html.status_code == 200
        assert html.headers["content-type"] == "application/octet-stream"
        assert html.headers["content-disposition"] == "attachment"
        assert client.get(f"{base}/99", headers=headers).status_code == 404
        assert client.get(f"{base}/-1", headers=headers).status_code == 422
        assert client.get("/media/1/..%2F..%2Frun.json", headers=headers).status_code in (404, 422)


def test_security_headers_and_templates(client: TestClient, store: ReviewStore) -> None:
    csrf = _login(client, store, "boss")
    client.post("/review/next", data={"csrf": csrf})
    pages = [
        "/login",
        "/review",
        "/review/items/1",
        "/dashboard",
        "/admin",
        "/static/review.js",
        "/nope",
    ]
    for path in pages:
        r = client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        if r.headers["content-type"].startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), f"inline script on {path}"
            assert " style=" not in r.text, f"inline style on {path}"
            assert r.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    for template in TEMPLATES.glob("*.html"):
        assert "|safe" not in template.read_text().replace(" ", ""), template.name
    page = client.get("/review/items/1").text
    assert "<script>window" not in page and "&lt;script&gt;window.__xss" in page
    assert "<img src=x onerror" not in page and "&lt;img src=x onerror=" in page


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    claim = spec["paths"]["/api/claim"]["post"]
    assert {"200", "204", "401"} <= set(claim["responses"])
    decision = spec["paths"]["/api/items/{item_id}/decision"]["post"]
    body = decision["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[
        1
    ]
    props = spec["components"]["schemas"][body]["properties"]
    assert {"decision", "version", "edits", "reason", "note"} <= set(props)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert not any(p.startswith(("/login", "/review")) for p in spec["paths"]), (
        "pages stay out of the API"
    )


def test_schemathesis_no_server_errors(store: ReviewStore) -> None:
    """Every API operation, fed schema-valid and malformed input (schemathesis' positive and
    negative generation), with and without a token: never a 5xx."""
    import schemathesis
    from hypothesis import given
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store))
    token = store.create_token("boss")
    # Give the fuzzer live items to hit: half of them leased to the token's user.
    boss = next(u for u, _ in store.users() if u.name == "boss")
    store.claim(boss)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 8
    failures: list[str] = []

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: Any) -> None:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {mode.value} -> "
                        f"{response.status_code}: {response.text[:200]}"
                    )

        run()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    assert failures == []


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ReviewStore]]:
    run = make_run(tmp_path / "run", n=30, conditions=False)

    def serve(url: str | None) -> Iterator[tuple[str, ReviewStore]]:
        store = open_store(str(run), url, policy=ReviewPolicy(overlap_fraction=0.2))
        store.ingest()
        with live_server(create_app(store)) as base:
            yield base, store

    if request.param == "sqlite":
        yield from serve(None)
    else:
        with fresh_pg_database("api") as url:
            yield from serve(url)


def test_concurrent_api_clients_never_get_the_same_slot(served: tuple[str, ReviewStore]) -> None:
    base, store = served
    users = [store.add_user(f"c{i}", "annotator", None) for i in range(12)]
    tokens = {u.name: store.create_token(u.name) for u in users}
    log: list[tuple[str, int]] = []
    errors: list[str] = []
    barrier = threading.Barrier(len(users))

    def client(name: str) -> None:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=60
        ) as c:
            barrier.wait()
            while True:
                r = c.post("/api/claim")
                if r.status_code == 204:
                    return
                if r.status_code != 200:
                    errors.append(f"claim {r.status_code} {r.text}")
                    return
                item = r.json()
                log.append((name, item["id"]))
                d = c.post(
                    f"/api/items/{item['id']}/decision",
                    json={"decision": "accept", "version": item["version"]},
                )
                if d.status_code != 200:
                    errors.append(f"decision {d.status_code} {d.text}")
                    return

    threads = [threading.Thread(target=client, args=(u.name,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(log) == len(set(log)), "nobody got the same item twice"
    per_item: dict[int, list[str]] = {}
    for name, item_id in log:
        per_item.setdefault(item_id, []).append(name)
    states = store.final_states()
    assert all(s.state == "accepted" for s in states.values())
    required = {v.clip_id: len(v.reviews) for v in states.values()}
    assert sum(required.values()) == len(log)
    assert all(len(set(names)) == len(names) for names in per_item.values())


def test_cli_users_tokens_ingest_stats(tmp_path: Path) -> None:
    from any2capins.workflows.cli import app

    run = make_run(tmp_path / "run", n=3)
    runner = CliRunner()
    args = ["--run", str(run)]
    first = runner.invoke(app, ["review", "ingest", *args])
    assert first.exit_code == 0, first.output
    assert "3 added" in first.output
    assert "0 added, 3 unchanged" in runner.invoke(app, ["review", "ingest", *args]).output
    add = runner.invoke(
        app, ["review", "users", "add", "ann", "--role", "reviewer", *args], input="s3cret-pass\n"
    )
    assert add.exit_code == 0, add.output
    dup = runner.invoke(
        app, ["review", "users", "add", "ann", "--role", "reviewer", *args], input="s3cret-pass\n"
    )
    assert dup.exit_code == 1 and "already exists" in dup.output
    bad_role = runner.invoke(
        app, ["review", "users", "add", "x", "--role", "owner", *args], input="s3cret-pass\n"
    )
    assert bad_role.exit_code == 1 and "unknown role" in bad_role.output
    tok = runner.invoke(app, ["review", "tokens", "create", "ann", *args])
    token = tok.stdout.strip()
    assert tok.exit_code == 0 and token.startswith("a2c_")
    store = open_store(str(run))
    assert store.user_for_token(token) is not None
    assert store.authenticate("ann", "s3cret-pass") is not None
    stats = runner.invoke(app, ["review", "stats", *args, "--json"])
    assert stats.exit_code == 0
    assert json.loads(stats.stdout)["queue"]["all"]["pending"] == 3
    assert runner.invoke(app, ["review", "stats", *args]).exit_code == 0
    users_db = f"sqlite:///{tmp_path / 'team.db'}"
    via_db = runner.invoke(
        app, ["review", "users", "add", "zed", "--db", users_db], input="another-pass\n"
    )
    assert via_db.exit_code == 0, via_db.output
    neither = runner.invoke(app, ["review", "users", "add", "zed"], input="another-pass\n")
    assert neither.exit_code == 2 and "--run" in neither.output
    policy = tmp_path / "policy.yaml"
    policy.write_text("sample: {default: 0.0}\nskip: drop\n")
    shown = runner.invoke(app, ["review", "policy", *args, "--set", str(policy)])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["skip"] == "drop"
    policy.write_text("sample: {default: 2}\n")
    assert runner.invoke(app, ["review", "policy", *args, "--set", str(policy)]).exit_code == 2
    bad_db = runner.invoke(
        app, ["review", "stats", *args, "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x"]
    )
    assert bad_db.exit_code == 2 and "cannot open" in bad_db.output
