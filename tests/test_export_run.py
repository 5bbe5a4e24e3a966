"""`any2cap export`: a demo build, a scripted review in the real review store (SQLite and
PostgreSQL), then shards of exactly the accepted and edited records, to a folder and to S3."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from any2capins.pipeline.build import run_build
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.schemas import Record
from any2capins.workflows.cli import app
from any2capins.workflows.export import ShardDataset, verify_shards
from any2capins.workflows.recipes import load_recipe
from any2capins.workflows.review import Invalid, ReviewStore, UserInfo, open_store
from tests import media
from tests.review_fixtures import free_port, fresh_pg_database

runner = CliRunner()
CLIPS = 8
# the scripted review, in claim order; the last two clips stay pending
SCRIPT = ("accept", "edit", "reject", "accept", "edit", "reject")


@contextlib.contextmanager
def offline_captions(cache: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
            mp.delenv(var, raising=False)
        mp.setenv("ANY2CAP_CACHE_DIR", str(cache))
        yield


def demo_build(root: Path) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    for i in range(CLIPS):
        media.make_video(src / f"c{i:02d}.mp4", seconds=1.2, width=160, height=120)
    out = root / "run"
    with offline_captions(root / "cache"):
        report = run_build(load_recipe("demo"), list_sources(str(src)), str(out), executor="local")
    assert report.records_ok == CLIPS
    assert all(r.caption is not None and r.short_prompt for r in RunDir(str(out)).records())
    return out


def scripted_review(store: ReviewStore) -> dict[str, dict[str, Any]]:
    """Decide SCRIPT in claim order as two annotators; returns clip_id -> what was done."""
    assert store.ingest().added == CLIPS
    people = [store.add_user(n, "annotator", "a-long-password") for n in ("ann", "bob")]
    done: dict[str, dict[str, Any]] = {}
    for i, decision in enumerate(SCRIPT):
        user: UserInfo = people[i % 2]
        item = store.claim(user)
        assert item is not None
        edits = (
            {"dense": f"Human dense caption {i}.", "short_prompt": f"human prompt {i}"}
            if decision == "edit"
            else {}
        )
        store.decide(
            user,
            item.id,
            decision,
            item.version,
            edits=edits,
            reason="hallucination" if decision == "reject" else None,
        )
        done[item.clip_id] = {"decision": decision, "edits": edits, "record": item.record}
    return done


def shard_rows(shards: Path) -> list[dict[str, Any]]:
    manifest = json.loads((shards / "_manifest.json").read_text())
    return [r for s in manifest["shards"] for r in pq.read_table(shards / s["path"]).to_pylist()]


def export(*args: str) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, ["export", *args, "--json"])
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, data, " ".join(result.stderr.split())  # rich wraps lines


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_build(tmp_path_factory.mktemp("export-run"))


def copy_run(built: Path, dest: Path) -> Path:
    """A private copy of the built run (each test reviews its own)."""
    import shutil

    shutil.copytree(built, dest, symlinks=True)
    # records point at payload files by absolute URI: re-point them at the copy
    rundir = RunDir(str(dest))
    for record in list(rundir.records()):
        text = record.model_dump_json().replace(str(built), str(dest))
        rundir.save_record(Record.model_validate_json(text))
    return dest


def check_export(run: Path, shards: Path, done: dict[str, dict[str, Any]], *db: str) -> None:
    code, data, err = export("--run", str(run), "--out", str(shards), *db)
    assert code == 0, err
    kept = {c: d for c, d in done.items() if d["decision"] in ("accept", "edit")}
    assert data["new_rows"] == len(kept) == 4
    assert data["review_states"] == {"accepted": 2, "edited": 2, "rejected": 2, "pending": 2}
    assert data["not_in_review_store"] == 0 and data["incomplete"] == []
    assert verify_shards(str(shards)) == []

    rows = {r["clip_id"]: r for r in shard_rows(shards)}
    assert set(rows) == set(kept)
    for clip_id, d in kept.items():
        row, machine = rows[clip_id], d["record"]
        if d["decision"] == "edit":
            assert row["caption"]["dense"] == d["edits"]["dense"]
            assert row["short_prompt"] == d["edits"]["short_prompt"]
            assert row["machine_caption"]["dense"] == machine.caption.dense
            assert row["machine_short_prompt"] == machine.short_prompt
            assert row["review"]["status"] == "edited"
            assert row["caption"]["camera"] == machine.caption.camera, "unedited fields stay"
        else:
            assert row["caption"] == json.loads(machine.caption.model_dump_json())
            assert row["short_prompt"] == machine.short_prompt
            assert row["machine_caption"] is None and row["review"]["status"] == "accepted"
        assert row["review"]["reviewer"] in ("ann", "bob")
        assert row["structured_caption"].startswith("1. Dense caption: " + row["caption"]["dense"])
        payloads = {kv["key"]: kv["value"] for kv in row["payloads"]}
        assert payloads and all(v[:2] == b"\xff\xd8" for v in payloads.values())

    manifest = json.loads((shards / "_manifest.json").read_text())
    run_ids = [r["run_id"] for r in RunDir(str(run)).load_info().runs]  # type: ignore[union-attr]
    for shard in manifest["shards"]:
        assert set(run_ids) <= set(shard["run_ids"])
        assert "4 decisions" not in shard["review_snapshot"]
        assert shard["review_snapshot"].split(": ")[1].startswith("6 decisions")

    card = (shards / "README.md").read_text()
    assert "decision rates: accept 33.3%, edit 33.3%, reject 33.3%" in card
    for png in ("caption_words.png", "prompt_words.png", "camera_labels.png"):
        assert (shards / png).read_bytes()[:4] == b"\x89PNG"

    # a second export adds nothing
    code, again, _ = export("--run", str(run), "--out", str(shards), *db)
    assert code == 0 and again["new_rows"] == 0 and again["already_exported"] == 4


def test_export_after_review_sqlite(built: Path, tmp_path: Path) -> None:
    run = copy_run(built, tmp_path / "run")
    store = open_store(run_dir=str(run))
    done = scripted_review(store)
    store.close()
    shards = tmp_path / "shards"
    check_export(run, shards, done)

    # more reviews later: the next export adds only those, and never duplicates
    store = open_store(run_dir=str(run))
    rev = store.add_user("rev", "annotator", "a-long-password")
    while (item := store.claim(rev)) is not None:
        store.decide(rev, item.id, "accept", item.version)
    store.close()
    code, third, _ = export("--run", str(run), "--out", str(shards))
    assert code == 0 and third["new_rows"] == 2 and third["total_rows"] == 6
    ids = Counter(r["clip_id"] for r in shard_rows(shards))
    assert len(ids) == 6 and set(ids.values()) == {1}
    assert verify_shards(str(shards)) == []
    # the reader sees every exported record once, with the human text
    samples = list(ShardDataset(str(shards)))
    assert sorted(s["clip_id"] for s in samples) == sorted(ids)
    edited = [c for c, d in done.items() if d["decision"] == "edit"]
    assert {s["short_prompt"] for s in samples if s["clip_id"] in edited} == {
        done[c]["edits"]["short_prompt"] for c in edited
    }


def test_export_after_review_postgresql(built: Path, tmp_path: Path) -> None:
    run = copy_run(built, tmp_path / "run")
    with fresh_pg_database("export") as url:
        store = open_store(run_dir=str(run), db_url=url)
        done = scripted_review(store)
        store.close()
        check_export(run, tmp_path / "shards", done, "--db", url)
    assert not (run / "review.db").exists(), "--db means the run's SQLite store is not used"


def test_the_reviewed_copy_wins_over_a_later_rebuild(built: Path, tmp_path: Path) -> None:
    run = copy_run(built, tmp_path / "run")
    store = open_store(run_dir=str(run))
    done = scripted_review(store)
    store.close()
    accepted = next(c for c, d in done.items() if d["decision"] == "accept")
    rundir = RunDir(str(run))
    record = next(r for r in rundir.records() if r.clip_id == accepted)
    assert record.caption is not None
    rebuilt = record.caption.model_copy(update={"dense": "Rewritten after the review."})
    rundir.save_record(record.model_copy(update={"caption": rebuilt}))
    code, _, err = export("--run", str(run), "--out", str(tmp_path / "shards"))
    assert code == 0, err
    row = {r["clip_id"]: r for r in shard_rows(tmp_path / "shards")}[accepted]
    assert row["caption"]["dense"] == record.caption.dense != "Rewritten after the review."


def test_human_written_records_go_out_and_unreadable_ones_are_listed(
    built: Path, tmp_path: Path
) -> None:
    run = copy_run(built, tmp_path / "run")
    rundir = RunDir(str(run))
    records = sorted(rundir.records(), key=lambda r: r.clip_id)
    # two records the machine left without text
    for r in records[:2]:
        rundir.save_record(r.model_copy(update={"caption": None, "short_prompt": None}))
    store = open_store(run_dir=str(run))
    assert store.ingest().added == CLIPS
    ann = store.add_user("ann", "annotator", "a-long-password")
    full = {
        "dense": "A grey square drifts over a dark ground.",
        "main_object": "A grey square.",
        "background": "A dark, even ground.",
        "camera": "A fixed camera at eye level.",
        "style": "Flat synthetic shading.",
        "action": "The square drifts to the right.",
        "short_prompt": "a square drifts right",
    }
    decided: dict[str, str] = {}
    while (item := store.claim(ann)) is not None:
        if item.record.caption is None and "full" not in decided.values():
            # a human wrote everything: it goes out
            store.decide(ann, item.id, "edit", item.version, edits=full)
            decided[item.clip_id] = "full"
        elif item.record.caption is None:
            # only part written: the store refuses it, so it never reaches an export
            with pytest.raises(Invalid, match="write main_object"):
                store.decide(ann, item.id, "edit", item.version, edits={"dense": "Only this."})
            store.decide(ann, item.id, "reject", item.version, reason="bad_clip")
            decided[item.clip_id] = "rejected"
        else:
            store.decide(ann, item.id, "accept", item.version)
            decided[item.clip_id] = "accept"
    store.close()
    # and an accepted record whose payload file has gone missing
    gone = next(r for r in records[2:] if decided[r.clip_id] == "accept")
    assert gone.keyframes is not None
    Path(gone.keyframes.frames[0].uri.removeprefix("file://")).unlink()

    shards = tmp_path / "shards"
    code, data, _ = export("--run", str(run), "--out", str(shards))
    assert code == 1, "an accepted record left out is an error exit"
    assert [p["clip_id"] for p in data["incomplete"]] == [gone.clip_id]
    assert "cannot be read" in data["incomplete"][0]["why"]
    assert data["new_rows"] == CLIPS - 2  # one rejected, one unreadable
    rows = {r["clip_id"]: r for r in shard_rows(shards)}
    human = rows[next(c for c, d in decided.items() if d == "full")]
    assert human["caption"]["main_object"] == full["main_object"]
    assert human["short_prompt"] == full["short_prompt"]
    assert human["machine_caption"] is None or human["machine_caption"]["dense"] == ""
    # reference mode does not read payloads: the record with the lost file goes out there
    code, ref, _ = export("--run", str(run), "--out", str(tmp_path / "ref"), "--reference-payloads")
    assert code == 0 and ref["incomplete"] == []
    assert ref["new_rows"] == CLIPS - 1


def test_bad_arguments_exit_2(built: Path, tmp_path: Path) -> None:
    code, _, err = export("--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "s"))
    assert code == 2 and "not a run directory" in err
    run = copy_run(built, tmp_path / "run")
    code, _, err = export(
        "--run",
        str(run),
        "--out",
        str(tmp_path / "s"),
        "--db",
        "postgresql+psycopg://x@127.0.0.1:1/none",
    )
    assert code == 2 and "cannot open the review store" in err


# S3: a real S3 protocol server (moto) on loopback, reached through s3fs
@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("a2c-shards")
    try:
        yield endpoint
    finally:
        server.stop()


def test_export_to_s3(built: Path, tmp_path: Path, s3_server: str) -> None:
    import fsspec

    fsspec.config.conf.pop("s3", None)
    run = copy_run(built, tmp_path / "run")
    store = open_store(run_dir=str(run))
    done = scripted_review(store)
    store.close()
    uri = "s3://a2c-shards/v1"
    code, data, err = export("--run", str(run), "--out", uri, "--shard-size-mb", "0.01")
    assert code == 0, err
    assert data["new_rows"] == 4 and len(data["new_shards"]) >= 2
    assert verify_shards(uri) == []
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    names = {p.rsplit("/", 1)[-1] for p in fs.find("a2c-shards/v1")}
    assert {"_manifest.json", "README.md", "caption_words.png"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    samples = list(ShardDataset(uri))
    kept = {c for c, d in done.items() if d["decision"] in ("accept", "edit")}
    assert sorted(s["clip_id"] for s in samples) == sorted(kept)
    code, again, _ = export("--run", str(run), "--out", uri)
    assert code == 0 and again["new_rows"] == 0
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server
