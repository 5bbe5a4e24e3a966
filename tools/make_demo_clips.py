"""Re-encode a few of the shared SAM 2 demo videos into small clips for demo/clips/.

Run from the repository root:  .venv/bin/python tools/make_demo_clips.py
It writes demo/clips/<name>.mp4 (H.264, <= 640 px wide, no audio, a few hundred KB each), copies
the source licence beside them and writes demo/clips/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "videos"
DEFAULT_OUT = REPO / "demo" / "clips"
DEFAULT_NAMES = ("bedroom", "coffee", "dog")
LICENSE_NAME = "LICENSE-sam2-repo.txt"
# Where the shared copies live in https://github.com/facebookresearch/sam2.
UPSTREAM = {
    "bedroom": "test/assets/bedroom.mp4",
    "coffee": "demo/data/gallery/04_coffee.mp4",
    "dog": "demo/data/gallery/01_dog.mp4",
    "juggle": "demo/data/gallery/05_default_juggle.mp4",
}
COMMAND = ".venv/bin/python tools/make_demo_clips.py"
# Below this rate 640x360 H.264 turns to mush; cut the clip shorter instead.
MIN_KBPS = 200
MAX_KBPS = 700
CUT_SECONDS = 6.0


def even_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    scale = min(1.0, max_width / width)
    return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)


def reencode(
    src: Path, dst: Path, max_width: int, kbps: int, max_seconds: float | None
) -> tuple[int, float]:
    """Video only, same timestamps, scaled down; returns (frames written, seconds covered)."""
    with (
        av.open(str(src)) as inp,
        av.open(str(dst), "w", options={"movflags": "+faststart"}) as out,
    ):
        vin = inp.streams.video[0]
        time_base = vin.time_base or Fraction(1, av.time_base)
        width, height = even_size(vin.codec_context.width, vin.codec_context.height, max_width)
        rate = vin.average_rate or Fraction(30)
        vout = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
        assert isinstance(vout, av.video.stream.VideoStream)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.codec_context.time_base = time_base
        vout.bit_rate = kbps * 1000
        # One thread keeps the bytes reproducible; a keyframe every 2 s keeps seeking cheap.
        keyint = max(1, round(2 * float(rate)))
        vout.codec_context.gop_size = keyint
        if vout.codec_context.name == "libx264":
            vout.options = {"preset": "slow", "threads": "1", "keyint_min": str(keyint)}
        origin = vin.start_time or 0
        frames, last = 0, 0.0
        for frame in inp.decode(vin):
            if frame.pts is None:
                continue
            t = float((frame.pts - origin) * time_base)
            if max_seconds is not None and t >= max_seconds:
                break
            small = frame.reformat(
                width=width, height=height, format="yuv420p", interpolation="AREA"
            )
            small.pts, small.time_base = frame.pts - origin, time_base
            out.mux(vout.encode(small))
            frames, last = frames + 1, t
        out.mux(vout.encode(None))
    return frames, last + 1.0 / float(rate)


def make_clip(src: Path, dst: Path, max_width: int, max_kb: int) -> str:
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        tb = stream.time_base
        duration = float(stream.duration * tb) if stream.duration and tb else 10.0
    budget_bits = max_kb * 1024 * 8 * 0.9  # leave room for the container and rate overshoot
    max_seconds: float | None = None
    kbps = int(budget_bits / duration / 1000)
    if kbps < MIN_KBPS:
        max_seconds = CUT_SECONDS
        kbps = int(budget_bits / CUT_SECONDS / 1000)
    kbps = min(kbps, MAX_KBPS)
    for _ in range(4):
        frames, seconds = reencode(src, dst, max_width, kbps, max_seconds)
        size = dst.stat().st_size
        if size <= max_kb * 1024:
            break
        kbps = int(kbps * max_kb * 1024 / size * 0.95)  # ABR overshot: scale down and retry
    cut = f", cut to the first {max_seconds:g} s" if max_seconds else ", full length"
    return f"{dst.name}: {frames} frames, {seconds:.2f} s{cut}, {kbps} kbit/s target, {size} bytes"


README = """# Demo clips

Small re-encodes of demo videos from the SAM 2 repository
(https://github.com/facebookresearch/sam2), which is released under the Apache License 2.0;
its licence text is copied beside them as `{license}`. The sources are the copies in
`../shared/data/videos/` (upstream paths in the table).

How they were made (`tools/make_demo_clips.py`): each source was decoded with PyAV and
re-encoded with PyAV's bundled encoder ({codec}, yuv420p, single-pass average bitrate chosen so
the file stays under {max_kb} KB, a keyframe every 2 s, `+faststart`), scaled with area
filtering to at most {max_width} px wide (aspect kept, even sizes), keeping the original frame
timestamps and dropping the audio.

| clip | upstream path | details |
|---|---|---|
{rows}

Regenerate from the repository root (needs the sources in `../shared/data/videos/`):

    {command}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    parser.add_argument("--max-width", type=int, default=640)
    parser.add_argument("--max-kb", type=int, default=400)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.names:
        src = args.src / f"{name}.mp4"
        if not src.is_file():
            parser.error(f"source video {src} not found")
        summary = make_clip(src, args.out / f"{name}.mp4", args.max_width, args.max_kb)
        upstream = UPSTREAM.get(name, "?")
        rows.append(f"| `{name}.mp4` | `{upstream}` | {summary.split(': ', 1)[1]} |")
        sys.stdout.write(summary + "\n")
    shutil.copyfile(args.src / LICENSE_NAME, args.out / LICENSE_NAME)
    codec = "H.264 via libx264" if "libx264" in av.codecs_available else "MPEG-4 Part 2"
    (args.out / "README.md").write_text(
        README.format(
            license=LICENSE_NAME,
            codec=codec,
            max_kb=args.max_kb,
            max_width=args.max_width,
            rows="\n".join(rows),
            command=COMMAND,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
