"""Frame-sampling throughput and robustness of every frame reader, in the same process.

Readers: decord (0.6.0, or its fork decord2 when that provides the ``decord`` module: the two
install the same module, so one process measures one of them; the result names which),
torchcodec and PyAV. A reader that is not installed or cannot load here is listed under
``unavailable`` with the reason.

Speed: each round samples 16 frames uniformly over every whole clip (max side 512: the
pattern the stages use, N frames at given timestamps) with each reader in turn; the order
rotates between rounds so none always runs on a warm cache.

Robustness: the odd inputs the tests generate (tests/media.py: VFR, rotated, 10-bit, AV1,
VP9, MPEG-TS, odd sizes, truncated, damaged) are sampled by each reader alone and judged:
``ok`` (right frame count, the right frames by their stamped index, right orientation),
``wrong frames``, ``wrong orientation``, ``wrong count``, ``refused`` (the reader declines
the input before decoding, as decord and torchcodec do MPEG-TS; the
verdict without the refusal follows in brackets) or ``error`` (it raised). Inputs the
probe already rejects (a truncated MP4) are ``rejected by probe`` for every reader.

``python -m bench.decode [--clips DIR ...] [--repeats N] [--no-robustness] [--json PATH]``
runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from any2capins.annotators.base import FrameSampling
from any2capins.pipeline import video
from any2capins.pipeline.video import (
    READERS,
    ReaderUnavailable,
    VideoError,
    VideoInfo,
    decord_build,
    probe_video,
)

FRAMES_PER_CLIP = 16
MAX_SIDE = 512
ROBUST_FRAMES = 8
JUDGE_TIMEOUT_S = 120
READER_ORDER = ("decord", "torchcodec", "pyav")


def _one_pass(
    reader: str,
    clips: list[tuple[str, VideoInfo]],
    sampling: FrameSampling,
    per_clip: dict[str, list[float]] | None = None,
    cpu_ms: list[float] | None = None,
) -> float:
    """Frames per second for one pass of ``reader`` over every clip (and, into
    ``per_clip``, each clip's own frames per second; into ``cpu_ms``, the CPU time of the
    whole process, every decoding thread included, per frame)."""
    frames = 0
    total = 0.0
    cpu_started = time.process_time()
    for path, info in clips:
        started = time.perf_counter()
        got = READERS[reader].read(path, info, 0.0, info.duration_s, sampling)
        took = time.perf_counter() - started
        frames += len(got.indices)
        total += took
        if per_clip is not None:
            per_clip.setdefault(_clip_name(path), []).append(len(got.indices) / took)
    if cpu_ms is not None:
        cpu_ms.append(1000 * (time.process_time() - cpu_started) / frames)
    return frames / total


def _clip_name(path: str) -> str:
    """folder/file: the demo clips and their originals share file names."""
    return f"{Path(path).parent.name}/{Path(path).name}"


def available_readers(probe_path: str, info: VideoInfo) -> tuple[list[str], dict[str, str]]:
    """The readers that load here (after a warm-up read of one clip), and why the others
    do not."""
    sampling = FrameSampling(num_frames=2, max_side=MAX_SIDE)
    ok: list[str] = []
    missing: dict[str, str] = {}
    for name in READER_ORDER:
        try:
            READERS[name].read(probe_path, info, 0.0, info.duration_s, sampling)
        except ReaderUnavailable as e:
            missing[name] = str(e).splitlines()[0]
            continue
        ok.append(name)
    return ok, missing


def _label(name: str) -> str:
    return decord_build() if name == "decord" else name


def run(clips: list[str], repeats: int = 3, robustness: bool = True) -> dict[str, Any]:
    """Median and best frames/s of every available reader over ``repeats`` rotating rounds,
    and (``robustness``) the verdict of each on the generated odd inputs.

    ``decord_fps`` (and its ratio to PyAV) is None when decord is not installed; ``decord``
    names the package that provides it.
    """
    if not clips:
        raise ValueError("no clips to benchmark")
    sampling = FrameSampling(num_frames=FRAMES_PER_CLIP, max_side=MAX_SIDE)
    probed = [(path, probe_video(path)) for path in clips]
    readers, unavailable = available_readers(*probed[0])

    runs: dict[str, list[float]] = {name: [] for name in readers}
    clip_runs: dict[str, dict[str, list[float]]] = {name: {} for name in readers}
    cpu_runs: dict[str, list[float]] = {name: [] for name in readers}
    failed: dict[str, str] = {}
    for r in range(repeats):
        order = readers[r % len(readers) :] + readers[: r % len(readers)]
        for name in order:
            if name in failed:
                continue
            try:
                runs[name].append(
                    _one_pass(name, probed, sampling, clip_runs[name], cpu_runs[name])
                )
            except VideoError as e:  # a reader that fails a clip has no speed figure
                failed[name] = f"{type(e).__name__}: {e}"
                runs[name] = []

    def median(name: str) -> float | None:
        return round(statistics.median(runs[name]), 2) if runs.get(name) else None

    def best(name: str) -> float | None:
        return round(max(runs[name]), 2) if runs.get(name) else None

    decord_fps, pyav_fps = median("decord"), median("pyav")
    result: dict[str, Any] = {
        "decord": _label("decord") if "decord" in readers else None,
        "decord_fps": decord_fps,
        "pyav_fps": pyav_fps,
        "torchcodec_fps": median("torchcodec"),
        "ratio_decord_over_pyav": (
            round(decord_fps / pyav_fps, 3) if decord_fps and pyav_fps else None
        ),
        "fps": {_label(n): median(n) for n in readers},
        "fps_best": {_label(n): best(n) for n in readers},
        # CPU time per frame holds up better than wall time on a loaded machine, and is what
        # bounds a build's throughput when every core is busy decoding.
        "cpu_ms_per_frame": {
            _label(n): round(statistics.median(v), 2) for n, v in cpu_runs.items() if v
        },
        "runs_fps": {_label(n): [round(v, 2) for v in values] for n, values in runs.items()},
        "per_clip_fps": {
            _label(n): {clip: round(statistics.median(v), 2) for clip, v in by_clip.items()}
            for n, by_clip in clip_runs.items()
            if n not in failed
        },
        "unavailable": unavailable,
        "failed_on_clips": {_label(n): why for n, why in failed.items()},
        "clips": [_clip_name(path) for path in clips],
        "frames_per_clip": FRAMES_PER_CLIP,
        "max_side": MAX_SIDE,
        "repeats": repeats,
        "statistic": "median over repeats (best also given)",
    }
    if robustness:
        result["robustness"] = robustness_table(readers)
    return result


# --------------------------------------------------------------------------- robustness


def _ten_bit(path: Path) -> Path:
    from tests import media

    n = 24
    return media._encode(
        path,
        [media.frame_image(i, n, 320, 240) for i in range(n)],
        list(range(n)),
        Fraction(1, 24),
        Fraction(24),
        "libx264",
        "yuv420p10le",
        12,
    )


def _codec_clip(path: Path, codec: str) -> Path:
    from tests import media

    n = 24
    return media._encode(
        path,
        [media.frame_image(i, n, 320, 240) for i in range(n)],
        list(range(n)),
        Fraction(1, 24),
        Fraction(24),
        codec,
        "yuv420p",
        12,
    )


def corpus(out: Path) -> dict[str, tuple[Path, list[float] | None]]:
    """The odd inputs, written into ``out``: name -> (path, true frame times or None when
    only the decoder can tell)."""
    from tests import media

    cfr = [i / 24 for i in range(48)]
    inputs: dict[str, tuple[Path, list[float] | None]] = {}

    def add(name: str, make: Callable[[], Path], times: list[float] | None) -> None:
        try:
            inputs[name] = (make(), times)
        except (av.FFmpegError, ValueError, AssertionError) as e:  # an encoder missing here
            print(f"bench.decode: {name} not generated: {e}", file=sys.stderr)

    add("h264 mp4 (CFR, GOP 12)", lambda: media.make_video(out / "cfr.mp4"), cfr)
    add("VFR mp4", lambda: media.make_vfr_video(out / "vfr.mp4"), media.vfr_timestamps(2.0))
    for turn in (90, 180, 270):
        add(
            f"rotated {turn}",
            lambda turn=turn: media.make_rotated_video(out / f"rot{turn}.mp4", turn),  # type: ignore[misc]
            cfr[:24],
        )
    if "libx264" in av.codecs_available:
        add("10-bit h264 (yuv420p10le)", lambda: _ten_bit(out / "ten.mp4"), cfr[:24])
    av1 = [c for c in ("libsvtav1", "libaom-av1") if c in av.codecs_available]
    if av1:
        add("AV1 mp4", lambda: _codec_clip(out / "av1.mp4", av1[0]), cfr[:24])
    if "libvpx-vp9" in av.codecs_available:
        add("VP9 webm", lambda: _codec_clip(out / "vp9.webm", "libvpx-vp9"), cfr[:24])
    add("MPEG-TS, one GOP", lambda: media.make_ts_video(out / "one.ts"), cfr)
    add("MPEG-TS, GOP 12", lambda: media.make_ts_video(out / "gop.ts", gop=12), cfr)
    add("odd size 317x239", lambda: media.make_odd_size_video(out / "odd.mp4"), cfr[:24])
    add("tiny 16x16", lambda: media.make_video(out / "tiny.mp4", width=16, height=16), cfr)
    add(
        "faststart mp4",
        lambda: media.make_video(out / "fast.mp4", faststart=True, audio=True),
        cfr,
    )
    if "cfr.mp4" in {p.name for p, _ in inputs.values()}:
        add(
            "truncated mp4 (half)",
            lambda: media.make_truncated(out / "cfr.mp4", out / "trunc.mp4"),
            None,
        )
        add(
            "damaged mid-stream",
            lambda: media.make_corrupt_midstream(out / "cfr.mp4", out / "corrupt.mp4"),
            None,
        )
    return inputs


def _coded(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A display-orientation frame turned back to coded orientation (stamps read there)."""
    return np.rot90(frame, k=rotation // 90) if rotation % 360 else frame


@contextlib.contextmanager
def _unguarded() -> Iterator[None]:
    saved = video.DECORD_UNSEEKABLE, video.TORCHCODEC_UNSEEKABLE
    video.DECORD_UNSEEKABLE = video.TORCHCODEC_UNSEEKABLE = frozenset()
    try:
        yield
    finally:
        video.DECORD_UNSEEKABLE, video.TORCHCODEC_UNSEEKABLE = saved


def judge(
    name: str, path: Path, times: list[float] | None, info: VideoInfo, guarded: bool = True
) -> str:
    """One reader's verdict on one input (see the module docstring); ``guarded=False`` is
    the verdict with the reader's refusals (decord and torchcodec on MPEG-TS) lifted."""
    from any2capins.pipeline.video import pick_indices
    from tests import media

    sampling = FrameSampling(num_frames=ROBUST_FRAMES, max_side=MAX_SIDE)
    try:
        got = READERS[name].read(str(path), info, 0.0, info.duration_s, sampling)
    except ReaderUnavailable:
        if not guarded:
            return "refused"
        # What the decoder does when not refused: the reason the refusal is there.
        with _unguarded():
            raw = judge(name, path, times, info, guarded=False)
        return f"refused (unguarded: {raw})"
    except Exception as e:  # noqa: BLE001 - every failure is a verdict here
        return f"error: {type(e).__name__}"
    if times is None:  # damaged: no ground truth beyond "no crash, plausible frames"
        return "decoded (no crash)"
    want = pick_indices(np.asarray(times), 0.0, info.duration_s, sampling)
    if len(got.indices) != len(want):
        return f"wrong count ({len(got.indices)} of {len(want)})"
    stamps = [media.read_stamp(_coded(f, info.rotation)) for f in got.frames]
    if stamps != want:
        return "wrong frames"
    if info.rotation:
        first = _coded(got.frames[0], info.rotation)
        h, w = first.shape[:2]
        corner = first[: max(1, h // 8), : max(1, w // 8)].mean()
        if corner < 200:  # the white marker is top-left in coded orientation
            return "wrong orientation"
    return "ok"


def robustness_table(readers: list[str]) -> dict[str, dict[str, str]]:
    """input -> reader -> verdict, on inputs generated in a temporary directory."""
    table: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="any2cap-decode-bench-") as tmp:
        for label, (path, times) in corpus(Path(tmp)).items():
            try:
                info = probe_video(str(path))
            except VideoError as e:
                table[label] = {_label(n): f"rejected by probe ({e.error_type})" for n in readers}
                continue
            table[label] = {_label(n): _isolated_judge(n, path, times, info) for n in readers}
    return table


def _isolated_judge(name: str, path: Path, times: list[float] | None, info: VideoInfo) -> str:
    """:func:`judge` in a fresh (spawned) child process, so that a decoder crashing the
    process (a segfault in its native code) is a verdict, not the end of the benchmark. Not
    forked: a fork of a process whose decoders have run threads can crash by itself."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_judge_child, args=(child, name, path, times, info))
    proc.start()
    child.close()
    proc.join(JUDGE_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"hang (over {JUDGE_TIMEOUT_S} s)"
    if proc.exitcode and proc.exitcode < 0:
        return f"crash (signal {signal.Signals(-proc.exitcode).name})"
    return str(parent.recv()) if parent.poll() else f"error: exit {proc.exitcode}"


def _judge_child(
    conn: Any, name: str, path: Path, times: list[float] | None, info: VideoInfo
) -> None:
    conn.send(judge(name, path, times, info))
    conn.close()


def main(argv: list[str] | None = None) -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="*", default=[str(repo / "demo" / "clips")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--no-robustness", action="store_true", help="speed only")
    args = parser.parse_args(argv)
    # a folder given twice counts once (same-named clips in two folders are different files:
    # the shared data holds the 720p originals of the 360p demo clips)
    clips = sorted({str(p.resolve()) for d in args.clips for p in Path(d).glob("*.mp4")})
    result = run(clips, repeats=args.repeats, robustness=not args.no_robustness)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
