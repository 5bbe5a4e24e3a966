"""The review store on SQLite and PostgreSQL: ingest, leases under concurrency (threads and
processes), expiry, stale versions, overlap and adjudication, policies, audit trail."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from any2capins.schemas import utc_now
from any2capins.workflows.review import (
    Conflict,
    Invalid,
    ReviewPolicy,
    ReviewStore,
    StaleVersion,
    UserInfo,
    final_states,
    open_store,
    review_stats,
)
from any2capins.workflows.review import store as store_module
from tests.review_fixtures import fresh_pg_database, make_run

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the run's default SQLite file; else a fresh PostgreSQL database for this test."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_pg_database("store") as url:
        yield url


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", n=6)


def _store(run_dir: Path, db_url: str | None, policy: ReviewPolicy | None = None) -> ReviewStore:
    store = open_store(str(run_dir), db_url, policy=policy)
    store.ingest()
    return store


def _users(
    store: ReviewStore, n: int, role: str = "annotator", prefix: str = "u"
) -> list[UserInfo]:
    # A real KDF per user is slow on purpose; these users never log in with a password.
    return [store.add_user(f"{prefix}{i}", role, None) for i in range(n)]


def test_ingest_is_idempotent(run_dir: Path, db_url: str | None) -> None:
    store = open_store(str(run_dir), db_url)
    first = store.ingest()
    audit_after_first = len(store.audit())
    second = store.ingest()
    assert (first.added, first.unchanged) == (6, 0)
    assert (second.added, second.unchanged, second.updated) == (0, 6, 0)
    assert len(store.audit()) == audit_after_first, "a no-op ingest must not write audit rows"
    assert store.queue_counts()["pending"] == 6
    # A second process opening the same store (fresh engine, migrations already done).
    again = open_store(str(run_dir), db_url)
    assert again.ingest().added == 0
    assert len(final_states(again)) == 6


def test_ingest_reports_unreadable_records_and_keeps_the_rest(
    run_dir: Path, db_url: str | None
) -> None:
    (run_dir / "records" / "broken.json").write_text("{not json")
    store = open_store(str(run_dir), db_url)
    report = store.ingest()
    assert report.added == 6
    assert [name for name, _ in report.invalid] == ["broken.json"]


def test_changed_record_updates_untouched_items_only(run_dir: Path, db_url: str | None) -> None:
    store = _store(run_dir, db_url)
    (user,) = _users(store, 1)
    claimed = store.claim(user)
    assert claimed is not None
    for path in (run_dir / "records").glob("*.json"):
        data = json.loads(path.read_text())
        data["short_prompt"] = "A different prompt."
        path.write_text(json.dumps(data))
    report = store.ingest()
    assert (report.updated, report.changed_after_review) == (5, 1)
    # The claimed item keeps the text its reviewer is looking at.
    assert store.item(user, claimed.id).record.short_prompt != "A different prompt."


def test_threads_never_share_a_claim(tmp_path: Path, db_url: str | None) -> None:
    run = make_run(tmp_path / "run", n=10, conditions=False)
    store = _store(run, db_url)
    users = _users(store, 16)
    barrier = threading.Barrier(len(users))
    got: dict[str, int | None] = {}

    def worker(user: UserInfo) -> None:
        barrier.wait()
        view = store.claim(user)
        got[user.name] = None if view is None else view.id

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    claimed = [v for v in got.values() if v is not None]
    assert len(got) == 16
    assert len(claimed) == 10 and len(set(claimed)) == 10, got
    assert len(store.claims()) == 10


def _process_worker(run: str, db_url: str | None, names: list[str], out: Any) -> None:
    store = open_store(run, db_url)
    users = {u.name: u for u, _ in store.users()}
    done: list[tuple[str, int]] = []
    while True:
        progressed = False
        for name in names:
            view = store.claim(users[name])
            if view is None:
                continue
            store.decide(users[name], view.id, "accept", view.version)
            done.append((name, view.id))
            progressed = True
        if not progressed:
            break
    out.put(done)


def test_processes_never_share_a_claim(tmp_path: Path, db_url: str | None) -> None:
    run = make_run(tmp_path / "run", n=24, conditions=False)
    store = _store(run, db_url)
    names = [u.name for u in _users(store, 6)]
    # fork: each child opens its own engine and connections (nothing inherited is used).
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(str(run), db_url, names[i::3], out))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    decided = [item for part in results for _, item in part]
    assert len(decided) == 24 and len(set(decided)) == 24, Counter(decided).most_common(3)
    assert store.queue_counts()["accepted"] == 24
    claims = [a for a in store.audit() if a.action == "claim"]
    assert len(claims) == 24, "every item was leased exactly once"


def test_expired_lease_comes_back(
    run_dir: Path, db_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(run_dir, db_url, ReviewPolicy(lease_ttl_s=60))
    ann, bob = _users(store, 2)
    first = store.claim(ann)
    assert first is not None
    assert store.claim(bob).id != first.id  # type: ignore[union-attr]
    later = utc_now() + timedelta(seconds=61)
    monkeypatch.setattr(store_module, "utc_now", lambda: later)
    store._last_sweep = 0.0  # let the sweep run now
    # bob holds a lapsed lease too; his next claim starts fresh from the queue head.
    again = store.claim(bob)
    assert again is not None and again.id == first.id
    assert any(a.action == "lease_expired" for a in store.audit(first.id))
    # ann's stale submit is refused: the item moved on without her.
    store.decide(bob, again.id, "accept", again.version)
    with pytest.raises(StaleVersion):
        store.decide(ann, first.id, "accept", first.version)


def test_lapsed_lease_revives_when_nobody_took_the_item(
    run_dir: Path, db_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(run_dir, db_url, ReviewPolicy(lease_ttl_s=60))
    (ann,) = _users(store, 1)
    view = store.claim(ann)
    assert view is not None
    later = utc_now() + timedelta(seconds=300)
    monkeypatch.setattr(store_module, "utc_now", lambda: later)
    result = store.decide(ann, view.id, "edit", view.version, edits={"camera": "A static camera."})
    assert result.state == "edited"


def test_stale_version_is_refused_not_applied(run_dir: Path, db_url: str | None) -> None:
    store = _store(run_dir, db_url)
    (ann,) = _users(store, 1)
    view = store.claim(ann)
    assert view is not None
    with pytest.raises(StaleVersion) as e:
        store.decide(ann, view.id, "edit", view.version + 1, edits={"dense": "Overwrite."})
    assert e.value.current_version == view.version
    assert store.item(ann, view.id).state == "pending"
    store.decide(ann, view.id, "accept", view.version)
    with pytest.raises(StaleVersion):
        store.decide(ann, view.id, "edit", view.version, edits={"dense": "Overwrite."})
    assert final_states(store)[view.clip_id].edits == {}


def test_decision_validation(tmp_path: Path, db_url: str | None) -> None:
    run = make_run(tmp_path / "run", n=2, captions=False)
    store = _store(run, db_url)
    (ann,) = _users(store, 1)
    view = store.claim(ann)
    assert view is not None
    with pytest.raises(Invalid, match="reason code"):
        store.decide(ann, view.id, "reject", view.version)
    with pytest.raises(Invalid, match="unknown field"):
        store.decide(ann, view.id, "edit", view.version, edits={"title": "x"})
    with pytest.raises(Invalid, match="NUL"):
        store.decide(ann, view.id, "edit", view.version, edits={"dense": "a\x00b"})
    with pytest.raises(Invalid, match="no caption"):
        store.decide(ann, view.id, "accept", view.version)
    with pytest.raises(Invalid, match="write"):
        store.decide(ann, view.id, "edit", view.version, edits={"dense": "Only one field."})
    # Without a machine caption a human may write the whole thing.
    texts = {
        f: f"Human {f} text."
        for f in ("dense", "main_object", "background", "camera", "style", "action", "short_prompt")
    }
    result = store.decide(ann, view.id, "edit", view.version, edits=texts)
    assert result.state == "edited"
    assert final_states(store)[view.clip_id].edits == texts


def test_audit_trail_holds_every_change_and_is_append_only(
    run_dir: Path, db_url: str | None
) -> None:
    store = _store(run_dir, db_url, ReviewPolicy(skip="requeue_others"))
    ann, bob = _users(store, 2)
    view = store.claim(ann)
    assert view is not None
    store.decide(
        ann, view.id, "edit", view.version, edits={"style": "Flat colours, no grain."}, note="tidy"
    )
    other = store.claim(ann)
    assert other is not None
    store.skip(ann, other.id)
    taken = store.claim(bob)
    assert taken is not None and taken.id == other.id
    store.decide(bob, taken.id, "reject", taken.version, reason="hallucination", note="no square")

    trail = store.audit(view.id)
    assert [a.action for a in trail] == ["ingest", "claim", "review", "final"]
    review = trail[2]
    assert review.actor == "u0" and review.before["state"] == "pending"
    assert review.after["edits"] == {"style": "Flat colours, no grain."}
    assert trail[3].before["version"] == 1 and trail[3].after == {
        **trail[3].after,
        "state": "edited",
        "version": 2,
        "final_edits": {"style": "Flat colours, no grain."},
    }
    assert all(a.at is not None for a in trail)
    assert [(a.actor, a.action) for a in store.audit(other.id)] == [
        ("ingest", "ingest"),
        ("u0", "claim"),
        ("u0", "skip"),
        ("u1", "claim"),
        ("u1", "review"),
        ("system", "final"),
    ]
    engine = store.engine
    for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert len(store.audit()) > 10


def test_overlap_disagreement_goes_to_adjudication(tmp_path: Path, db_url: str | None) -> None:
    run = make_run(tmp_path / "run", n=2, conditions=False)
    store = _store(run, db_url, ReviewPolicy(overlap_fraction=1.0, overlap_reviews=2))
    a, b, c = _users(store, 3)
    (judge,) = _users(store, 1, role="reviewer", prefix="judge")
    # Item 1: accept vs edit -> disputed. Item 2: both accept -> accepted.
    va, vb = store.claim(a), store.claim(b)
    assert va is not None and vb is not None and va.id == vb.id, "overlap: two reviewers, one item"
    vc = store.claim(c)
    assert vc is not None and vc.id != va.id, "both slots of the first item are leased"
    store.skip(c, vc.id)
    store.decide(a, va.id, "accept", va.version)
    assert vb.prior_reviews == [], "independent reviewers do not see each other"
    store.decide(b, vb.id, "edit", vb.version, edits={"action": "The square drifts right slowly."})
    assert store.item(judge, va.id).state == "disputed"
    assert store.claim(a) is None or store.claim(a).id != va.id  # type: ignore[union-attr]
    second = store.item(judge, va.id + 1)
    for user in (a, b):
        v = store.claim(user)
        assert v is not None and v.id == second.id
        store.decide(user, v.id, "accept", v.version)
    assert final_states(store)[second.clip_id].state == "accepted"

    adj = store.claim(judge)
    assert adj is not None and adj.id == va.id and adj.claim_kind == "adjudication"
    assert [r.reviewer for r in adj.prior_reviews] == ["u0", "u1"]
    store.decide(judge, adj.id, "edit", adj.version, edits={"action": "The square drifts right."})
    final = final_states(store)[adj.clip_id]
    assert final.state == "edited" and final.reviewers == ["u0", "u1", "judge0"]
    assert final.edits == {"action": "The square drifts right."}

    stats = review_stats(store)
    ag = stats["agreement"]
    assert ag["items"] == 2 and ag["decision_agreement"] == 1.0
    assert ag["components"]["action"]["identical"] == 0.5
    assert ag["components"]["action"]["mean_edit_distance"] > 0
    assert ag["components"]["dense"]["identical"] == 1.0
    assert stats["adjudications"] == 1 and stats["annotators"]["judge0"]["adjudications"] == 1


def test_sampling_policy_holds_back_and_never_accepts(tmp_path: Path, db_url: str | None) -> None:
    run = make_run(tmp_path / "run", n=8)  # every other record has camera
    store = _store(run, db_url, ReviewPolicy(sample={"default": 0.0, "camera": 1.0}))
    counts = store.queue_counts()
    assert counts["pending"] == 4 and counts["held_back"] == 4
    states = final_states(store)
    held = [s for s in states.values() if s.state == "held_back"]
    assert len(held) == 4 and all(s.review_state().status == "pending" for s in held)
    stats = review_stats(store)
    assert stats["queue"]["camera"]["pending"] == 4 and stats["queue"]["camera"]["held_back"] == 0
    # Reviewing everything again puts the held-back items into the queue.
    assert store.set_policy(ReviewPolicy(), actor="admin") == 4
    assert store.queue_counts()["pending"] == 8


@pytest.mark.parametrize("policy", ["requeue_others", "requeue", "drop"])
def test_skip_policies(tmp_path: Path, policy: str) -> None:
    run = make_run(tmp_path / "run", n=3, conditions=False)
    store = _store(run, None, ReviewPolicy.model_validate({"skip": policy}))
    ann, bob = _users(store, 2)
    first = store.claim(ann)
    assert first is not None
    state = store.skip(ann, first.id)
    seen = []
    while (v := store.claim(ann)) is not None:
        seen.append(v.id)
        store.decide(ann, v.id, "accept", v.version)
    if policy == "requeue_others":
        assert state == "pending" and first.id not in seen and len(seen) == 2
        assert store.claim(bob).id == first.id  # type: ignore[union-attr]
    elif policy == "requeue":
        assert state == "pending" and seen[-1] == first.id, "back at the end of the queue"
    else:
        assert state == "held_back" and first.id not in seen
        assert store.claim(bob) is None
        assert final_states(store)[first.clip_id].hold_reason == "dropped by u0 (skip)"


def test_admin_release_and_roles(run_dir: Path, db_url: str | None) -> None:
    store = _store(run_dir, db_url)
    (ann,) = _users(store, 1)
    (boss,) = _users(store, 1, role="admin", prefix="boss")
    view = store.claim(ann)
    assert view is not None
    (lease,) = store.claims()
    with pytest.raises(store_module.Forbidden):
        store.release(ann, lease.id)
    store.release(boss, lease.id)
    assert store.claims() == []
    with pytest.raises(Conflict, match="released"):
        store.decide(ann, view.id, "accept", view.version)


def test_users_tokens_and_sessions(run_dir: Path, db_url: str | None) -> None:
    store = open_store(str(run_dir), db_url)
    user = store.add_user("ann", "annotator", "correct horse")
    with pytest.raises(Conflict):
        store.add_user("ann", "admin", "another pass")
    with pytest.raises(Invalid):
        store.add_user("bad name!", "annotator", "whatever1")
    with pytest.raises(ValueError, match="at least"):
        store.add_user("short", "annotator", "x")
    assert store.authenticate("ann", "correct horse") == user
    assert store.authenticate("ann", "wrong horse") is None
    assert store.authenticate("nobody", "correct horse") is None
    token = store.create_token("ann", label="script")
    assert store.user_for_token(token) == user
    assert store.user_for_token(token + "x") is None
    session_id, csrf = store.create_session(user)
    assert store.session_user(session_id) == (user, csrf)
    # Nothing stored logs anyone in: a password hash (Argon2id) and SHA-256 digests.
    with store.engine.connect() as conn:
        dump = " ".join(
            str(row)
            for table in ("users", "api_tokens", "web_sessions")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert "$argon2id$" in dump
    assert token not in dump and session_id not in dump and "correct horse" not in dump
    assert store.revoke_tokens("ann") == 1
    assert store.user_for_token(token) is None
    store.end_session(session_id)
    assert store.session_user(session_id) is None


def test_migrations_match_the_models(run_dir: Path, db_url: str | None) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from any2capins.workflows.review.models import Base

    store = open_store(str(run_dir), db_url)
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert ctx.get_current_revision() == "0003"
        assert compare_metadata(ctx, Base.metadata) == []


def test_sqlite_default_lives_in_the_run_directory(run_dir: Path) -> None:
    store = open_store(str(run_dir))
    assert Path(str(store.engine.url.database)) == run_dir / "review.db"
    with pytest.raises(Invalid, match="run directory"):
        open_store()
    with pytest.raises(store_module.NotFound, match="not a run directory"):
        open_store(str(run_dir / "missing"))


def test_users_only_store_without_a_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    store = open_store(db_url=url)
    store.add_user("admin", "admin", None)
    assert [u.name for u, _ in store.users()] == ["admin"]
    with pytest.raises(Invalid, match="run directory"):
        store.ingest()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 1
    engine.dispose()


STUBS = {
    # apt-get: "installs" by creating what the real package would leave behind.
    "apt-get": """
echo "apt-get $*" >> "$LOG"
case "$*" in
  *"install"*chromium*) printf '#!/bin/sh\\necho Chromium 1.0\\n' > "$ANY2CAP_CHROMIUM"; chmod +x "$ANY2CAP_CHROMIUM" ;;
  *"install"*postgresql*) : ;;
esac
""",
    "pg_createcluster": """
echo "pg_createcluster $*" >> "$LOG"
mkdir -p "$ANY2CAP_PG_ETC/$1/main"
printf 'local all postgres peer\\nhost all all 127.0.0.1/32 scram-sha-256\\n' > "$ANY2CAP_PG_ETC/$1/main/pg_hba.conf"
""",
    "pg_ctlcluster": """
echo "pg_ctlcluster $*" >> "$LOG"
case "$*" in *start*) touch "$STATE/up" ;; esac
""",
    "pg_isready": '[ -e "$STATE/up" ]',
    "psql": """
echo "psql $*" >> "$LOG"
case "$*" in *"SELECT 1 FROM pg_database"*) [ -e "$STATE/db" ] && echo 1 ;; *"CREATE DATABASE"*) touch "$STATE/db" ;; esac
exit 0
""",
    # su postgres -s /bin/sh -c CMD: run CMD here.
    "su": 'shift 4; sh -c "$1"',
}


def test_ensure_services_fresh_machine_path(tmp_path: Path) -> None:
    """tools/ensure_services.sh on a "fresh machine" made of stubs: installs Chromium and
    PostgreSQL, creates the cluster, trusts 127.0.0.1, starts it, creates `test`; a second
    run changes nothing. (The real machine's run is a no-op, checked by hand: see report.)"""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "tools" / "ensure_services.sh"
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LOG": str(tmp_path / "calls.log"),
        "STATE": str(state),
        "ANY2CAP_PG_PORT": "1",
        "ANY2CAP_PG_ETC": str(tmp_path / "etc-postgresql"),
        "ANY2CAP_CHROMIUM": str(tmp_path / "chromium"),
    }
    if os.getuid() != 0:
        pytest.skip("the install path runs only as root")
    first = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "install --no-install-recommends chromium" in calls
    assert "install --no-install-recommends postgresql" in calls
    assert "pg_createcluster" in calls and "main start" in calls and "CREATE DATABASE test" in calls
    hba = (tmp_path / "etc-postgresql").glob("*/main/pg_hba.conf")
    assert next(hba).read_text().startswith("host all all 127.0.0.1/32 trust\n")
    assert "created database 'test'" in first.stdout
    (tmp_path / "calls.log").unlink()
    second = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0
    assert "apt-get" not in (tmp_path / "calls.log").read_text()
    assert "present" in second.stdout and "database 'test' present" in second.stdout
    # Nothing installable and nothing running: it says so and still exits 0.
    (state / "up").unlink()
    bare = {**env, "ANY2CAP_PG_ETC": str(tmp_path / "none"), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    third = subprocess.run(
        ["bash", str(script)], env=bare, capture_output=True, text=True, timeout=60
    )
    assert third.returncode == 0 and "PostgreSQL tests will skip" in third.stdout
