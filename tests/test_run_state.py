"""Run state at scale: part logs, the resume index, the earlier layout, remote sources once."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from any2capins.pipeline.build import run_build
from any2capins.pipeline.fetch import cache_dir
from any2capins.pipeline.partlog import PartLog
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.storage import Storage
from any2capins.pipeline.video import local_video
from any2capins.workflows.recipes import load_recipe
from tests import media

STAGES = ["clip_stats", "keyframes", "captions"]


def test_partlog_latest_wins_and_compaction_keeps_the_view(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "run"))
    (tmp_path / "run" / "log").mkdir(parents=True)
    (tmp_path / "run" / "log" / "old.json").write_text('{"v": "legacy"}')
    log = PartLog(storage, "log", legacy_suffix=".json")
    log.append({"a": '{"v": 1}', "b": '{"v": 1}'})
    log.append({"a": '{"v": 2}'})
    log.append({})  # nothing to write: no part
    view = log.load()
    assert view == {"old": '{"v": "legacy"}', "a": '{"v": 2}', "b": '{"v": 1}'}
    assert log.compact(min_files=100)  # a legacy file is always folded (the migration)
    legacy, parts = log.files()
    assert legacy == [] and len(parts) == 1 and parts[0].endswith(".c.tsv")
    assert log.load() == view
    log.append({"b": '{"v": 3}'})
    assert log.load()["b"] == '{"v": 3}'  # a part after the compacted one still wins
    assert not log.compact(min_files=100)
    with pytest.raises(ValueError):
        log.append({"a\tb": "{}"})


def _build(src: Path, out: Path, executor: str = "local") -> dict[str, object]:
    report = run_build(load_recipe("demo"), list_sources(str(src)), str(out), executor=executor)
    return report.model_dump(mode="json")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i in range(3):
        media.make_video(src / f"v{i}.mp4", seconds=1.2, pattern="moving")
    return src


def _state_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and "artifacts" not in p.parts]


def test_noop_rerun_reads_the_index_and_touches_no_clip(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _build(clips, out)
    assert first["records_ok"] == 3
    run = RunDir(str(out))
    done = run.done_log().load()
    # the done index never names a clip whose record is not written
    assert set(done) == {r.clip_id for r in run.records()}
    assert len(run.probe_log().load()) == 3
    # markers: one part per batch, not one file per clip
    assert not list((out / "stages").glob("*/*.json"))
    before = {p: p.stat().st_mtime_ns for p in _state_files(out)}
    second = _build(clips, out)
    assert second["records_ok"] == 3 and second["records_resumed"] == 3
    assert {k: (v["clips"], v["skipped"]) for k, v in second["stages"].items()} == {  # type: ignore[attr-defined]
        s: (0, 3) for s in STAGES
    }
    changed = {
        p.relative_to(out).as_posix()
        for p in _state_files(out)
        if before.get(p) != p.stat().st_mtime_ns
    }
    # only the run's own bookkeeping is written: no record, marker or index part
    assert changed <= {".lock", "run.json", "report.json", f"reports/{second['run_id']}.json"}


def test_changed_source_is_probed_and_built_again(clips: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in clips.glob("*.mp4"):
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "run"
    _build(src, out)
    media.make_video(src / "v0.mp4", seconds=1.6, pattern="moving")  # same name, new file
    again = _build(src, out)
    assert again["records_ok"] == 3 and again["records_resumed"] == 2
    assert len(RunDir(str(out)).probe_log().load()) == 4  # the old key stays, unused


def _to_earlier_layout(out: Path) -> int:
    """Rewrite a run directory as the earlier version left it: one marker file per clip per
    stage, no index. Returns the marker files written."""
    run = RunDir(str(out))
    written = 0
    for stage in STAGES:
        for clip_id, raw in run.markers(stage).items():
            (out / "stages" / stage / f"{clip_id}.json").write_text(raw)
            written += 1
        for part in (out / "stages" / stage).glob("part-*"):
            part.unlink()
    for part in (out / "index").rglob("*"):
        if part.is_file():
            part.unlink()
    return written


def test_earlier_layout_resumes_and_is_migrated(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _build(clips, out)
    assert _to_earlier_layout(out) == 3 * len(STAGES)
    again = _build(clips, out)
    assert again["records_ok"] == 3 and again["records_resumed"] == 3
    assert all(v["clips"] == 0 for v in again["stages"].values())  # type: ignore[attr-defined]
    # migrated: no per-clip marker file left, each stage one compacted part
    assert not list((out / "stages").glob("*/*.json"))
    for stage in STAGES:
        assert len(RunDir(str(out)).markers(stage)) == 3
    # and the next re-run is a plain index hit
    third = _build(clips, out)
    assert third["records_resumed"] == 3


def test_earlier_layout_on_ray(ray_session: None, clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _build(clips, out, "ray")
    _to_earlier_layout(out)
    # a half-migrated directory too: one stage's markers still per clip, another's folded
    RunDir(str(out)).marker_log("keyframes").compact(min_files=1)
    again = _build(clips, out, "ray")
    assert again["records_ok"] == 3 and again["records_resumed"] == 3


@pytest.fixture
def counting_server(tmp_path: Path) -> Iterator[tuple[str, Path, Counter[str]]]:
    root = tmp_path / "served"
    root.mkdir()
    gets: Counter[str] = Counter()

    class Counting(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            gets[self.path] += 1
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Counting, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, gets
    finally:
        server.shutdown()
        server.server_close()


def test_remote_source_is_fetched_once_per_build(
    counting_server: tuple[str, Path, Counter[str]], tmp_path: Path
) -> None:
    base, root, gets = counting_server
    media.make_video(root / "remote.mp4", seconds=1.5)
    with local_video(f"{base}/remote.mp4"):
        pass
    one_fetch = gets["/remote.mp4"]  # the GETs of one download, however fsspec splits it
    assert one_fetch >= 1
    gets.clear()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": f"{base}/remote.mp4"}) + "\n")
    out = tmp_path / "run"
    report = run_build(load_recipe("demo"), list_sources(str(manifest)), str(out), executor="local")
    assert report.records_ok == 1
    # the probe and three stages share one download (it used to be one per stage: 4x)
    assert gets["/remote.mp4"] == one_fetch
    assert not os.path.exists(cache_dir(report.run_id))  # the node's copy is gone
    gets.clear()
    again = run_build(load_recipe("demo"), list_sources(str(manifest)), str(out), executor="local")
    assert again.records_resumed == 1 and gets["/remote.mp4"] == 0  # probe cache: no fetch


def test_apply_output_validates_only_what_the_stage_writes() -> None:
    from pydantic import ValidationError

    from any2capins.pipeline.stage import apply_output, dump_record, load_record
    from any2capins.schemas import ClipRef, Provenance, Record, StageProvenance, utc_now

    clip = ClipRef(
        clip_id="c", source_uri="u", start_s=0, end_s=1, fps=24, width=2, height=2, num_frames=24
    )
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))

    def prov(stage: str) -> StageProvenance:
        return StageProvenance(
            stage=stage,
            annotator_version="1",
            config_hash="x",
            run_id="r",
            seconds=0.0,
            finished_at=utc_now(),
        )

    out = apply_output(record, {"scores.a": 0.5, "provenance.tokens_in": 3}, prov("s"))
    assert out.scores == {"a": 0.5} and out.provenance.tokens_in == 3
    assert [s.stage for s in out.provenance.stages] == ["s"]
    assert out.clip is record.clip  # untouched fields are shared, not re-validated
    assert record.scores == {}  # the input record is left as it was
    with pytest.raises(ValidationError):
        apply_output(record, {"scores.a": "not a number"}, prov("s"))
    with pytest.raises(ValueError, match="no field"):
        apply_output(record, {"nonsense.x": 1}, prov("s"))
    # rows carry the record as JSON: one conversion each way, the same record back
    assert load_record(dump_record(out)) == out
