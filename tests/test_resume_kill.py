"""A build killed with SIGKILL at any moment, then re-run, ends with every clip exactly once;
a part-log compaction killed at any moment leaves the log reading the same."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from any2capins.pipeline.partlog import PartLog
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.storage import Storage
from tests import media

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CLIPS = 8
STAGES = ["clip_stats", "keyframes", "captions"]


def _start(src: Path, out: Path, executor: str) -> subprocess.Popen[bytes]:
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [
            str(BIN / "any2cap"),
            "build",
            "demo",
            "--input",
            str(src),
            "--out",
            str(out),
            "--no-progress",
            "--executor",
            executor,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the kill takes the whole process group, Ray's too
    )


def _markers(out: Path) -> int:
    """Finished (stage, clip) pairs: the entries of every stage's marker log."""
    if not (out / "stages").exists():
        return 0
    run = RunDir(str(out))
    return sum(len(run.markers(p.name)) for p in (out / "stages").iterdir() if p.is_dir())


def _settled_markers(out: Path, quiet_s: float = 3.0) -> int:
    """Marker count once it stops changing: Ray workers orphaned by the kill may finish the
    clip in hand (atomically) before they notice their driver is gone."""
    count, since = _markers(out), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = _markers(out)
        if now != count:
            count, since = now, time.monotonic()
    return count


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i in range(CLIPS):
        media.make_video(src / f"clip{i:02d}.mp4", seconds=2.0, width=320, height=240)
    return src


@pytest.mark.parametrize(
    ("executor", "kill_after_markers"),
    [("local", 3), ("local", 9), ("ray", 2), ("ray", 7)],
)
def test_sigkill_then_rerun_gives_every_clip_once(
    sources: Path, tmp_path: Path, executor: str, kill_after_markers: int
) -> None:
    out = tmp_path / "run"
    proc = _start(sources, out, executor)
    deadline = time.monotonic() + 300
    while _markers(out) < kill_after_markers and proc.poll() is None:
        assert time.monotonic() < deadline, "the build made no progress"
        time.sleep(0.02)
    killed_mid_run = proc.poll() is None
    _kill_group(proc)
    done_before = _settled_markers(out)

    rerun = subprocess.run(
        [
            str(BIN / "any2cap"),
            "build",
            "demo",
            "--input",
            str(sources),
            "--out",
            str(out),
            "--no-progress",
            "--executor",
            executor,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["clips_in"] == CLIPS and report["records_ok"] == CLIPS and report["failed"] == 0
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == CLIPS
    assert len({r["clip"]["clip_id"] for r in records}) == CLIPS
    assert sorted(Path(r["clip"]["source_uri"]).name for r in records) == sorted(
        p.name for p in sources.glob("*.mp4")
    )
    for r in records:
        assert [s["stage"] for s in r["provenance"]["stages"]] == STAGES
        assert r["stats"] is not None and len(r["keyframes"]["frames"]) == 4
    # what finished before the kill was not done again
    if killed_mid_run:
        skipped = sum(s["skipped"] for s in report["stages"].values())
        assert skipped == done_before
        assert (
            sum(s["clips"] for s in report["stages"].values()) == len(STAGES) * CLIPS - done_before
        )
    assert _markers(out) == len(STAGES) * CLIPS
    # no partial file is visible under its final name
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for path in out.rglob("part-*.tsv"):
        for line in path.read_text().splitlines():
            json.loads(line.partition("\t")[2])
    # the done index names exactly the records, each once
    assert set(RunDir(str(out)).done_log().load()) == {r["clip"]["clip_id"] for r in records}


# The child compacts with each delete slowed down, so that a kill can land between the
# compacted part's write and the last delete; the compaction itself is the real code.
_COMPACT_CHILD = """
import sys, time
from any2capins.pipeline import storage
from any2capins.pipeline.partlog import PartLog
slow = storage.Storage.delete
def delete(self, rel):
    time.sleep(0.002)
    slow(self, rel)
storage.Storage.delete = delete
PartLog(storage.Storage(sys.argv[1]), "stages/s", legacy_suffix=".json").compact(min_files=1)
"""


def _make_log(root: Path) -> dict[str, str]:
    """A stage log of 150 legacy files and 300 parts whose later entries overwrite earlier
    ones; returns what it reads as."""
    folder = root / "stages" / "s"
    folder.mkdir(parents=True)
    for i in range(150):
        (folder / f"clip{i:04d}.json").write_text(json.dumps({"v": "legacy", "i": i}))
    log = PartLog(Storage(str(root)), "stages/s", legacy_suffix=".json")
    for p in range(300):
        log.append({f"clip{(p * 7 + k) % 600:04d}": json.dumps({"v": p, "k": k}) for k in range(5)})
    return log.load()


def test_sigkill_during_compaction_keeps_the_log(tmp_path: Path) -> None:
    root = tmp_path / "run"
    expected = _make_log(root)
    log = PartLog(Storage(str(root)), "stages/s", legacy_suffix=".json")
    folder = root / "stages" / "s"
    rng = random.Random(12)
    mid_compaction = 0
    for attempt in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _COMPACT_CHILD, str(root)],
            cwd=Path(__file__).parents[1],
            start_new_session=True,
        )
        if attempt % 2 == 0:
            # wait for the compacted part, then kill among the deletes
            deadline = time.monotonic() + 60
            while not list(folder.glob("*.c.tsv")) and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.2, 1.5))  # anywhere: importing, reading or writing
        killed = proc.poll() is None
        _kill_group(proc)
        legacy, parts = log.files()
        if killed and any(p.endswith(".c.tsv") for p in parts) and len(legacy) + len(parts) > 1:
            mid_compaction += 1
        # the next build holds the run directory: it sweeps a half-written temporary
        with Storage(str(root)).exclusive("busy"):
            pass
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
        assert log.load() == expected, f"attempt {attempt}"
    assert mid_compaction >= 1, "no kill landed between the compacted write and the deletes"
    log.compact(min_files=1)
    legacy, parts = log.files()
    assert legacy == [] and len(parts) == 1 and log.load() == expected
