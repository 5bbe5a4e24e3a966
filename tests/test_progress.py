"""Live build progress: the tracker's arithmetic, the plain log lines, builds with it on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from any2capins.pipeline.build import run_build
from any2capins.pipeline.progress import (
    PROBE,
    ProgressTracker,
    ProgressView,
    RayProgress,
    RayReporter,
    format_duration,
    format_line,
)
from any2capins.pipeline.sources import list_sources
from any2capins.workflows.progress_display import PlainLines
from any2capins.workflows.recipes import load_recipe
from tests import media

STAGES = ["clip_stats", "keyframes", "captions"]
ANY2CAP = str(Path(sys.executable).parent / "any2cap")
QUIET = ("--executor", "local", "--no-progress")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_totals_wait_for_the_probe_then_shrink_with_failures_and_drops() -> None:
    clock = Clock()
    tracker = ProgressTracker(["a", "b", "c"], sources_total=3, clock=clock)
    view = tracker.view()
    assert view.clips_total is None and all(
        s.total is None and s.eta_s is None for s in view.stages
    )
    assert "probe sources 0/3" in format_line(view)
    assert "a 0/? 0.00 clips/s ETA ? failed 0" in format_line(view)

    tracker.add(PROBE, {"done": 2, "rows": 7, "failed": 0})
    assert tracker.view().clips_total is None  # a source still to probe
    tracker.add(PROBE, {"done": 1, "rows": 1, "failed": 1})  # a bad source: one failure row
    view = tracker.view()
    assert view.clips_total == 8 and view.probe_failed == 1
    assert [s.total for s in view.stages] == [7, 7, 7]

    tracker.add("a", {"done": 4, "failed": 1, "filtered": 2, "skipped": 1})
    tracker.add("b", {"done": 1, "filtered": 1})
    view = tracker.view()
    a, b, c = view.stages
    assert (a.total, b.total, c.total) == (7, 4, 3)  # drops count as done for later stages
    assert (a.failed, a.filtered, a.skipped) == (1, 2, 1)


def test_limit_caps_the_total_before_every_source_is_probed() -> None:
    tracker = ProgressTracker(["a"], sources_total=100, limit=5, clock=Clock())
    tracker.add(PROBE, {"done": 2, "rows": 3})
    assert tracker.view().clips_total is None
    tracker.add(PROBE, {"done": 1, "rows": 4})
    assert tracker.view().clips_total == 5


def test_rate_and_eta_follow_the_recent_pace() -> None:
    clock = Clock()
    tracker = ProgressTracker(["a"], sources_total=1, clock=clock, window_s=60)
    clock.t += 30  # start-up: not held against the stage
    tracker.add(PROBE, {"done": 1, "rows": 1000})
    clock.t += 10
    tracker.add("a", {"done": 10})
    a = tracker.view().stages[0]
    assert a.rate == pytest.approx(1.0)  # 10 clips in the 10 s since work arrived
    assert a.eta_s == pytest.approx(990.0)
    for _ in range(12):  # the stage speeds up to 2 clips/s
        clock.t += 10
        tracker.add("a", {"done": 20})
    a = tracker.view().stages[0]
    assert a.done == 250
    assert a.rate == pytest.approx(2.0)  # the last 60 s only
    assert a.eta_s == pytest.approx(750 / 2.0)
    tracker2 = ProgressTracker(["a"], sources_total=1, clock=clock, window_s=60)
    tracker2.add(PROBE, {"done": 1, "rows": 50})
    clock.t += 20
    tracker2.add("a", {"done": 40})
    clock.t += 5
    a = tracker2.view().stages[0]
    assert a.rate == pytest.approx(40 / 25) and a.eta_s == pytest.approx(10 / (40 / 25))
    clock.t += 100  # stalled: the windowed rate falls and the ETA grows
    a = tracker2.view().stages[0]
    assert a.rate == 0.0 and a.eta_s is None


def test_a_finished_stage_keeps_its_average_rate() -> None:
    clock = Clock()
    tracker = ProgressTracker(["a"], sources_total=1, clock=clock)
    tracker.add(PROBE, {"done": 1, "rows": 20})
    clock.t += 10
    tracker.add("a", {"done": 20})
    clock.t += 500
    a = tracker.view().stages[0]
    assert a.finished and a.eta_s == 0.0 and a.rate == pytest.approx(2.0)


def test_overall_counts_rows_out_and_finish_fixes_the_total() -> None:
    clock = Clock()
    tracker = ProgressTracker(["a"], sources_total=2, limit=10, clock=clock)
    tracker.add(PROBE, {"done": 2, "rows": 4, "failed": 1})
    clock.t += 2
    tracker.row_out(failed=True)
    tracker.row_out(filtered=True)
    tracker.row_out()
    view = tracker.view()
    assert (view.overall.done, view.overall.total, view.overall.failed) == (3, 4, 1)
    assert view.overall.filtered == 1 and view.overall.rate == pytest.approx(1.5)
    tracker.finish()
    final = tracker.view(finished=True)
    assert final.overall.total == 3 and final.overall.eta_s == 0.0
    assert format_line(final).startswith("progress done 0:00:02 | probe sources 2/2")


def test_format_line_and_durations() -> None:
    assert format_duration(None) == "?"
    assert format_duration(3725.4) == "1:02:05"
    clock = Clock()
    tracker = ProgressTracker(["a", "b"], sources_total=1, clock=clock)
    tracker.add(PROBE, {"done": 1, "rows": 10})
    clock.t += 4
    tracker.add("a", {"done": 4, "failed": 1, "skipped": 2, "filtered": 1})
    line = format_line(tracker.view())
    assert "a 4/10 1.00 clips/s ETA 0:00:06 failed 1 resumed 2 dropped 1" in line
    assert "b 0/8 0.00 clips/s ETA ? failed 0" in line
    assert "overall 0/10" in line


def test_plain_lines_every_interval_and_always_the_last(tmp_path: Path) -> None:
    log = tmp_path / "log"
    tracker = ProgressTracker(["a"], sources_total=1)
    with log.open("w") as stream:
        lines = PlainLines(stream, interval_s=3600)
        lines.update(tracker.view())  # within the interval: nothing
        lines.update(tracker.view(finished=True))
        lines.interval_s = 0.0
        lines.update(tracker.view())
    text = log.read_text().splitlines()
    assert len(text) == 2 and text[0].startswith("progress done")


def _sources(tmp_path: Path, n: int = 3, bad: bool = True) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        media.make_video(src / f"v{i}.mp4", seconds=1.5, pattern="moving")
    if bad:
        media.make_text_as_mp4(src / "bad.mp4")
    return src


def _check_final(view: ProgressView, clips: int, failed_sources: int) -> None:
    assert view.finished and view.sources_probed == view.sources_total
    assert view.probe_failed == failed_sources
    assert view.overall.done == view.overall.total == clips + failed_sources
    assert view.overall.failed == failed_sources
    for stage in view.stages:
        assert (stage.done, stage.total, stage.failed) == (clips, clips, 0), stage
        assert stage.rate > 0 and stage.eta_s == 0.0


def test_local_build_reports_every_stage(tmp_path: Path) -> None:
    views: list[ProgressView] = []
    report = run_build(
        load_recipe("demo"),
        list_sources(str(_sources(tmp_path))),
        str(tmp_path / "run"),
        executor="local",
        progress=views.append,
        progress_tick_s=0.05,
    )
    assert report.records_ok == 3 and report.failed == 1
    assert [s.name for s in views[-1].stages] == STAGES
    _check_final(views[-1], clips=3, failed_sources=1)

    again: list[ProgressView] = []  # a re-run resumes every stage from its markers
    run_build(
        load_recipe("demo"),
        list_sources(str(tmp_path / "src")),
        str(tmp_path / "run"),
        executor="local",
        progress=again.append,
    )
    assert [s.skipped for s in again[-1].stages] == [3, 3, 3]


@pytest.mark.slow
def test_ray_build_with_progress_completes(ray_session: None, tmp_path: Path) -> None:
    views: list[ProgressView] = []
    report = run_build(
        load_recipe("demo"),
        list_sources(str(_sources(tmp_path))),
        str(tmp_path / "run"),
        executor="ray",
        progress=views.append,
    )
    assert report.records_ok == 3 and report.failed == 1
    _check_final(views[-1], clips=3, failed_sources=1)


@pytest.mark.slow
def test_a_dead_counter_never_blocks(ray_session: None) -> None:
    import ray

    tracker = ProgressTracker(["a"], sources_total=1)
    live = RayProgress(tracker, interval_s=0.05)
    RayReporter(live.counter)(PROBE, {"done": 1, "rows": 2})
    deadline = time.monotonic() + 20
    while tracker.view().clips_total != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ray.kill(live.counter)
    RayReporter(live.counter)("a", {"done": 1})  # no exception, no wait
    started = time.monotonic()
    while live.poll(timeout_s=1.0):
        assert time.monotonic() - started < 10
        time.sleep(0.05)
    live.close()
    assert time.monotonic() - started < 15
    assert tracker.view().clips_total == 2  # the last figures stay


@pytest.mark.slow
def test_cli_prints_plain_lines_when_not_on_a_tty(tmp_path: Path) -> None:
    src = _sources(tmp_path)
    env = {**os.environ, "ANY2CAP_PROGRESS_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [ANY2CAP, "build", "demo", "--input", str(src), "--out", str(tmp_path / "run")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=300,
            check=False,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if line.startswith("progress")]
    assert len(lines) >= 2, text  # at least one a second while running, and the last
    assert not any(line.startswith("progress done") for line in lines[:-1])
    last = lines[-1]
    assert last.startswith("progress done ")
    assert "probe sources 4/4, clips 4, failed 1" in last
    for stage in STAGES:
        assert re.search(rf"\| {stage} 3/3 [0-9.]+ clips/s ETA 0:00:00 failed 0", last), last
    assert re.search(r"\| overall 4/4 [0-9.]+ clips/s ETA 0:00:00 failed 1$", last), last
    for line in lines[:-1]:  # the running lines carry the same figures
        assert all(f"| {stage} " in line for stage in STAGES) and "clips/s ETA " in line

    quiet = tmp_path / "quiet.log"
    with quiet.open("w") as stderr:
        subprocess.run(
            [*(ANY2CAP, "build", "demo", "-i", str(src), "-o", str(tmp_path / "run2")), *QUIET],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=300,
            check=True,
        )
    assert "progress" not in quiet.read_text()


def test_bars_on_a_terminal_render_every_stage() -> None:
    import io

    from rich.console import Console

    from any2capins.workflows.progress_display import Bars, make_display

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    clock = Clock()
    tracker = ProgressTracker(["a", "b"], sources_total=2, clock=clock)
    with make_display(True, console, ["a", "b"]) as display:
        assert isinstance(display, Bars)
        display.update(tracker.view())  # totals unknown: pulsing bars
        tracker.add(PROBE, {"done": 2, "rows": 4})
        clock.t += 2
        tracker.add("a", {"done": 2, "failed": 1})
        display.update(tracker.view())
        display.progress.refresh()
    text = buffer.getvalue()
    assert "sources 2/2, clips 4" in text and "2/4 1.00 clips/s ETA 0:00:02 failed 1" in text
    assert type(make_display(False, console, ["a"])).__name__ == "Display"
