"""Frame-sampling throughput: decord against PyAV on the same clips, in the same process.

Each round samples 16 frames uniformly over every whole clip (max side 512) with one reader,
then the other; the order alternates between rounds so neither always runs on a warm cache.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from annotators.base import FrameSampling
from pipeline.video import READERS, ReaderUnavailable, VideoInfo, probe_video

FRAMES_PER_CLIP = 16
MAX_SIDE = 512


def _one_pass(reader: str, clips: list[tuple[str, VideoInfo]], sampling: FrameSampling) -> float:
    """Frames per second for one pass of ``reader`` over every clip."""
    frames = 0
    started = time.perf_counter()
    for path, info in clips:
        got = READERS[reader].read(path, info, 0.0, info.duration_s, sampling)
        frames += len(got.indices)
    return frames / (time.perf_counter() - started)


def run(clips: list[str], repeats: int = 3) -> dict[str, Any]:
    """Median and best frames/s of both readers over ``repeats`` alternating rounds.

    ``decord_fps`` and the ratio are None when decord is not installed.
    """
    if not clips:
        raise ValueError("no clips to benchmark")
    sampling = FrameSampling(num_frames=FRAMES_PER_CLIP, max_side=MAX_SIDE)
    probed = [(path, probe_video(path)) for path in clips]
    readers = ["decord", "pyav"]
    try:
        _one_pass("decord", probed[:1], sampling)  # warm-up: import, page cache
    except ReaderUnavailable:
        readers = ["pyav"]
    _one_pass("pyav", probed[:1], sampling)

    runs: dict[str, list[float]] = {name: [] for name in readers}
    for r in range(repeats):
        for name in readers if r % 2 == 0 else readers[::-1]:
            runs[name].append(_one_pass(name, probed, sampling))

    def median(name: str) -> float | None:
        return round(statistics.median(runs[name]), 2) if runs.get(name) else None

    def best(name: str) -> float | None:
        return round(max(runs[name]), 2) if runs.get(name) else None

    decord_fps, pyav_fps = median("decord"), median("pyav")
    return {
        "decord_fps": decord_fps,
        "pyav_fps": pyav_fps,
        "ratio_decord_over_pyav": (
            round(decord_fps / pyav_fps, 3) if decord_fps and pyav_fps else None
        ),
        "decord_fps_best": best("decord"),
        "pyav_fps_best": best("pyav"),
        "runs_fps": {name: [round(v, 2) for v in values] for name, values in runs.items()},
        "clips": [Path(path).name for path in clips],
        "frames_per_clip": FRAMES_PER_CLIP,
        "max_side": MAX_SIDE,
        "repeats": repeats,
        "statistic": "median over repeats (best also given)",
    }
