"""End-to-end builds through the CLI on local Ray: demo clips, resume, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.storage import read_payload
from any2capins.workflows.cli import app
from tests import media

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args], catch_exceptions=False)
    return result.exit_code, result.stdout


def build(recipe: str, src: Path | str, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, _ = cli("build", recipe, "--input", str(src), "--out", str(out), "--no-progress", *extra)
    show_code, text = cli("runs", "show", str(out), "--json")
    assert show_code == 0
    return code, json.loads(text)


def records(out: Path) -> list[dict[str, Any]]:
    code, text = cli("runs", "records", str(out), "--json")
    assert code == 0
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_demo_build_on_real_clips(ray_session: None, demo_clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, report = build("demo", demo_clips, out)
    n = len(list(demo_clips.glob("*.mp4")))
    assert code == 0
    assert report["clips_in"] == n and report["records_ok"] == n and report["failures"] == []
    assert set(report["stages"]) == {"clip_stats", "keyframes", "captions"}
    assert all(s["clips"] == n and s["seconds"] > 0 for s in report["stages"].values())
    recs = records(out)
    assert len(recs) == n and len({r["clip"]["clip_id"] for r in recs}) == n
    for r in recs:
        stats = r["stats"]
        assert stats["frames_sampled"] == 16
        assert 0.02 < stats["mean_brightness"] < 0.98
        assert len(stats["palette"]) == 5
        assert abs(sum(s["fraction"] for s in stats["palette"]) - 1) < 0.01
        assert stats["motion_magnitude"] > 0  # people and a dog move in every demo clip
        assert [s["stage"] for s in r["provenance"]["stages"]] == [
            "clip_stats",
            "keyframes",
            "captions",
        ]
        assert len(r["keyframes"]["frames"]) == 4
        for frame in r["keyframes"]["frames"]:
            from any2capins.schemas import PayloadRef

            assert read_payload(PayloadRef.model_validate(frame))[:2] == b"\xff\xd8"  # JPEG


def test_rerun_resumes_and_config_change_reruns_one_stage(
    ray_session: None, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        media.make_video(src / f"v{i}.mp4", seconds=1.5, pattern="moving")
    out = tmp_path / "run"
    code, first = build("demo", src, out)
    assert code == 0 and first["records_ok"] == 3
    # the stage's marker log: one part per batch (pipeline/partlog.py)
    marker = next((out / "stages" / "keyframes").glob("part-*.tsv"))
    before = marker.stat().st_mtime_ns

    code, second = build("demo", src, out)
    assert code == 0 and second["records_ok"] == 3 and second["records_resumed"] == 3
    assert {k: v["skipped"] for k, v in second["stages"].items()} == {
        "clip_stats": 3,
        "keyframes": 3,
        "captions": 3,
    }
    assert all(v["clips"] == 0 for v in second["stages"].values())

    recipe = tmp_path / "changed.yaml"
    text = (Path(__file__).parents[1] / "workflows" / "recipes" / "demo.yaml").read_text()
    recipe.write_text(text.replace("palette_size: 5", "palette_size: 3"))
    code, third = build(str(recipe), src, out)
    assert code == 0 and third["records_ok"] == 3
    assert third["stages"]["clip_stats"]["clips"] == 3
    assert third["stages"]["captions"]["clips"] == 3  # it depends on clip_stats
    assert third["stages"]["keyframes"] == {
        **third["stages"]["keyframes"],
        "clips": 0,
        "skipped": 3,
    }
    assert marker.stat().st_mtime_ns == before
    assert all(len(r["stats"]["palette"]) == 3 for r in records(out))
    assert len(records(out)) == 3


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Every kind of bad input next to one good video; returns file name -> error type."""
    folder.mkdir(parents=True, exist_ok=True)
    good = media.make_video(folder / "good.mp4", seconds=2.0)
    media.make_zero_byte(folder / "zero.mp4")
    media.make_text_as_mp4(folder / "text.mp4")
    media.make_truncated(good, folder / "truncated.mp4")
    media.make_audio_only(folder / "audio.mp4")
    media.make_short_video(folder / "short.mp4", seconds=0.3)
    media.make_corrupt_midstream(
        media.make_video(folder.parent / "long.mp4", seconds=4.0), folder / "corrupt.mp4"
    )
    return {
        "zero.mp4": "EmptyFile",
        "text.mp4": "NotAVideo",
        "truncated.mp4": "NotAVideo",
        "audio.mp4": "NoVideoStream",
        "short.mp4": "ClipTooShort",
    }


def test_bad_inputs_become_failure_rows(ray_session: None, tmp_path: Path) -> None:
    src = tmp_path / "bad"
    expected = make_bad_inputs(src)
    manifest = tmp_path / "manifest.csv"
    # relative URIs in a manifest are resolved against the manifest's folder
    rows = [f"bad/{p.name},," for p in sorted(src.glob("*.mp4"))]
    rows += ["bad/missing.mp4,,", "bad/good.mp4,0.5,1.0"]  # the span is under min_len_s
    manifest.write_text("\n".join(["uri,start,end", *rows]) + "\n")
    out = tmp_path / "run"
    code, report = build("demo", manifest, out)
    assert code == 0, "some clips succeeded, so the run succeeds"
    by_source = {
        Path(f["source_uri"]).name + (":span" if f["source_uri"].endswith("good.mp4") else ""): f
        for f in report["failures"]
    }
    for name, error_type in expected.items():
        assert by_source[name]["error_type"] == error_type, by_source[name]
        assert by_source[name]["stage"] == "probe"
        assert by_source[name]["message"]
    assert by_source["missing.mp4"]["error_type"] == "UnreadableSource"
    assert by_source["good.mp4:span"]["error_type"] == "ClipTooShort"
    # the corrupt file either decodes around the damage or fails with a decode error
    corrupt = by_source.get("corrupt.mp4")
    ok_names = {Path(r["clip"]["source_uri"]).name for r in records(out)}
    assert ("corrupt.mp4" in ok_names) != (corrupt is not None)
    if corrupt is not None:
        assert corrupt["error_type"] in ("DecodeError", "NotAVideo")
    assert "good.mp4" in ok_names
    assert report["clips_in"] == report["records_ok"] + report["failed"] == len(rows)
    assert len(list((out / "failures").glob("*.json"))) == report["failed"]

    # every failure has the fields the report promises
    for f in report["failures"]:
        assert set(f) >= {"clip_id", "source_uri", "stage", "error_type", "message"}

    # --strict turns any failure into exit code 1; attempts are counted across runs
    code, again = build("demo", manifest, out, "--strict")
    assert code == 1
    assert all(f["attempt"] == 2 for f in again["failures"])


def test_every_clip_failing_exits_1(ray_session: None, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    media.make_zero_byte(src / "a.mp4")
    media.make_text_as_mp4(src / "b.mp4")
    code, report = build("demo", src, tmp_path / "run")
    assert code == 1 and report["records_ok"] == 0 and report["failed"] == 2


def test_recipe_error_stops_before_work(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nstages: [{annotator: clip_stats, params: {palette_sise: 3}}]\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["build", str(recipe), "--input", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
    assert "stages[0].params.palette_sise" in result.output
    assert not out.exists()


def test_no_sources_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["build", "demo", "--input", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no videos found" in result.output


def test_local_executor_matches_ray(ray_session: None, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        media.make_video(src / f"v{i}.mp4", seconds=1.2)
    code_a, _ = build("demo", src, tmp_path / "a")
    code_b, _ = build("demo", src, tmp_path / "b", "--executor", "local")
    assert code_a == code_b == 0
    strip = lambda r: (r["clip"], r["stats"])  # noqa: E731
    assert sorted(map(json.dumps, map(strip, records(tmp_path / "a")))) == sorted(
        map(json.dumps, map(strip, records(tmp_path / "b")))
    )


def test_failure_is_cleared_once_the_clip_succeeds(ray_session: None, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    media.make_zero_byte(src / "later.mp4")
    media.make_video(src / "ok.mp4", seconds=1.2)
    out = tmp_path / "run"
    build("demo", src, out)
    assert len(list((out / "failures").glob("*.json"))) == 1
    media.make_video(src / "later.mp4", seconds=1.2)  # the file gets fixed upstream
    code, report = build("demo", src, out)
    assert code == 0 and report["failed"] == 0 and report["records_ok"] == 2
    assert list((out / "failures").glob("*.json")) == []
    assert len(list(RunDir(str(out)).records())) == 2
    shutil.rmtree(out)


def test_one_build_per_run_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    media.make_video(src / "v.mp4", seconds=1.2)
    out = tmp_path / "run"
    (out / "stages" / "clip_stats").mkdir(parents=True)
    leftover = out / "stages" / "clip_stats" / ".tmp-abc"
    leftover.write_text("half a marker from a killed build")
    with RunDir(str(out)).exclusive():
        result = runner.invoke(app, ["build", "demo", "--input", str(src), "--out", str(out)])
        assert result.exit_code == 2 and "another build is running" in result.output
    code, report = build("demo", src, out, "--executor", "local", "--limit", "1")
    assert code == 0 and report["records_ok"] == 1
    assert not leftover.exists()
