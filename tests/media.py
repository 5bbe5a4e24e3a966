"""Test-video factory: every clip the tests need is generated here with PyAV, so no test
depends on a file outside the repository (and none needs the ffmpeg command-line tool).

Every generator is deterministic and returns the path it wrote.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# PyAV's wheels bundle libx264 today; the native mpeg4 encoder is the fallback every FFmpeg has.
DEFAULT_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"

# Size of the white block painted in the top-left corner of every "moving" frame, as a fraction
# of the frame: lets tests check orientation after rotation.
MARKER_FRACTION = 0.25

PATTERNS = ("moving", "static", "scenes")

# Every frame carries its own index as a row of black/white blocks along the bottom edge
# (bit 0 leftmost), so tests can tell exactly which frame a reader returned.
STAMP_BITS = 10

# Frame durations (ms) cycled by make_vfr_video: irregular enough that CFR index maths is wrong.
VFR_DURATIONS_MS = (20, 40, 100, 40, 20, 60)


def frame_image(i: int, n: int, width: int, height: int, pattern: str = "moving") -> np.ndarray:
    """Frame ``i`` of ``n`` as [H, W, 3] uint8 RGB.

    ``moving``: a colour gradient whose brightness swings over the clip, a grey square moving
    left to right, and a fixed white marker in the top-left corner. ``static``: frame 0 of
    ``moving`` repeated. ``scenes``: ``moving`` for the first half, then a different scene (dark
    blue, square moving the other way, no marker), i.e. one hard cut at n // 2.
    The bottom tenth is the frame-index stamp (see :func:`read_stamp`).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    if pattern == "static":
        i = 0
    second_scene = pattern == "scenes" and i >= n // 2
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = i / max(n - 1, 1)
    brightness = 0.55 + 0.35 * math.sin(2.0 * math.pi * phase)
    img = np.empty((height, width, 3), np.float32)
    if second_scene:
        img[..., 0] = 20 + 30 * xs
        img[..., 1] = 30 + 30 * ys
        img[..., 2] = 120 + 60 * brightness
    else:
        img[..., 0] = 255 * brightness * xs
        img[..., 1] = 255 * brightness * ys
        img[..., 2] = 255 * brightness * (1.0 - xs)
    side = max(4, min(width, height) // 4)
    travel = max(width - side, 1)
    x0 = round(phase * travel)
    if second_scene:
        x0 = travel - x0
    y0 = (height - side) // 2
    img[y0 : y0 + side, x0 : x0 + side] = 180.0
    if not second_scene:
        mh, mw = max(2, int(height * MARKER_FRACTION)), max(2, int(width * MARKER_FRACTION))
        img[:mh, :mw] = 255.0
    _stamp(img, i)
    return np.clip(img, 0, 255).astype(np.uint8)


def _stamp_rows(height: int) -> int:
    return max(2, height // 10)


def _stamp(img: np.ndarray, index: int) -> None:
    height, width = img.shape[:2]
    top = height - _stamp_rows(height)
    for bit in range(STAMP_BITS):
        x0, x1 = bit * width // STAMP_BITS, (bit + 1) * width // STAMP_BITS
        img[top:, x0:x1] = 255.0 if (index >> bit) & 1 else 0.0


def read_stamp(image: np.ndarray) -> int:
    """The frame index stamped by :func:`frame_image`, read from an [H, W, 3] frame in coded
    orientation (any size: only the middle of each block is looked at)."""
    height, width = image.shape[:2]
    rows = _stamp_rows(height)
    top = height - rows
    band = image[top + rows // 4 : height - rows // 4].astype(np.float32)
    value = 0
    for bit in range(STAMP_BITS):
        x0, x1 = bit * width // STAMP_BITS, (bit + 1) * width // STAMP_BITS
        pad = (x1 - x0) // 4
        if band[:, x0 + pad : x1 - pad].mean() > 127.5:
            value |= 1 << bit
    return value


def _encode(
    path: str | Path,
    images: list[np.ndarray],
    pts: list[int],
    time_base: Fraction,
    rate: Fraction,
    codec: str,
    pix_fmt: str,
    gop: int,
    rotation: int = 0,
    audio_seconds: float = 0.0,
    faststart: bool = False,
    mux_options: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    height, width = images[0].shape[:2]
    options = {"movflags": "faststart"} if faststart else {}
    options.update(mux_options or {})
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.video.stream.VideoStream), codec
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            # Keep B-frames (pts != dts, as in real footage) but stay fast.
            stream.options = {"preset": "veryfast", "bf": "2"}
        if rotation:
            # The display matrix angle is counter-clockwise; ``rotation`` is clockwise.
            stream.set_display_rotation(-rotation)
        # Every stream must exist before the first packet is muxed.
        audio = _add_audio_stream(out) if audio_seconds > 0 else None
        for image, t in zip(images, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio is not None:
            _write_tone(out, audio, audio_seconds)
    return path


def _add_audio_stream(out: av.container.OutputContainer) -> av.audio.stream.AudioStream:
    return out.add_stream("aac", rate=16000, layout="mono")


def _write_tone(
    out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float
) -> None:
    rate = stream.codec_context.sample_rate
    samples = int(seconds * rate)
    t = np.arange(samples, dtype=np.float32) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    chunk = 1024
    for start in range(0, samples, chunk):
        part = tone[start : start + chunk][None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 24,
    width: int = 320,
    height: int = 240,
    codec: str = DEFAULT_CODEC,
    pattern: str = "moving",
    *,
    gop: int = 12,
    audio: bool = False,
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
) -> Path:
    """A constant-frame-rate clip of round(seconds * fps) frames (see :func:`frame_image`).

    A short GOP (keyframe every ``gop`` frames) makes seeking matter; ``audio`` adds a tone;
    ``faststart`` writes the moov box (the index) before the media data, as web uploads do.
    """
    n = max(1, round(seconds * fps))
    images = [frame_image(i, n, width, height, pattern) for i in range(n)]
    return _encode(
        path,
        images,
        list(range(n)),
        Fraction(1, fps),
        Fraction(fps),
        codec,
        pix_fmt,
        gop,
        audio_seconds=seconds if audio else 0.0,
        faststart=faststart,
    )


def make_ts_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 24,
    width: int = 320,
    height: int = 240,
    *,
    gop: int = 250,
    mux_delay_s: float = 0.7,
) -> Path:
    """An MPEG-TS clip (H.264 with B-frames when libx264 is there), as broadcast and camera
    footage comes: the ``.ts`` suffix picks the mpegts muxer. The default GOP is libx264's
    (250 frames: one keyframe in a short clip); pass a short one to make seeking matter.

    ``mux_delay_s`` is the muxer's max_delay; FFmpeg's command line uses 0.7 s, which puts the
    first presentation time near 1.4 s (TS timestamps practically never start at 0).
    """
    n = max(1, round(seconds * fps))
    images = [frame_image(i, n, width, height) for i in range(n)]
    delay_us = str(round(mux_delay_s * 1_000_000))
    return _encode(
        path,
        images,
        list(range(n)),
        Fraction(1, fps),
        Fraction(fps),
        DEFAULT_CODEC,
        "yuv420p",
        gop,
        mux_options={"max_delay": delay_us},
    )


def make_odd_size_video(
    path: str | Path, width: int = 317, height: int = 239, seconds: float = 1.0, fps: int = 24
) -> Path:
    """An odd-sized clip. yuv420p cannot hold odd sizes in libx264, so this uses 4:4:4
    (High 4:4:4 profile, which FFmpeg and decord decode fine); the mpeg4 fallback encoder only
    has yuv420p, so without libx264 the size is rounded down to even and the test must skip.
    """
    if DEFAULT_CODEC != "libx264":
        width, height = width - width % 2, height - height % 2
        return make_video(path, seconds, fps, width, height, codec="mpeg4")
    return make_video(path, seconds, fps, width, height, codec="libx264", pix_fmt="yuv444p")


def make_rotated_video(
    path: str | Path,
    rotation: int = 90,
    seconds: float = 1.0,
    fps: int = 24,
    width: int = 320,
    height: int = 240,
) -> Path:
    """A clip whose container carries a display matrix: ``rotation`` is the clockwise angle a
    player turns the coded frame by (90 = landscape-coded phone video shown as portrait).

    The coded frames are ``width`` x ``height`` with the white marker top-left, so after a
    90-degree clockwise display rotation the marker is top-right.
    """
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90")
    rotation %= 360
    n = max(1, round(seconds * fps))
    images = [frame_image(i, n, width, height) for i in range(n)]
    rate = Fraction(fps)
    if hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        return _encode(
            path,
            images,
            list(range(n)),
            1 / rate,
            rate,
            DEFAULT_CODEC,
            "yuv420p",
            12,
            rotation=rotation,
        )
    # PyAV < 18 cannot write a display matrix: write a plain file and patch the track header.
    _encode(path, images, list(range(n)), 1 / rate, rate, DEFAULT_CODEC, "yuv420p", 12)
    return patch_mp4_rotation(path, rotation)


def patch_mp4_rotation(path: str | Path, rotation: int) -> Path:
    """Rewrite the video track's tkhd matrix in place (same layout FFmpeg writes)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    one, zero = 0x10000, 0
    cos = {0: one, 90: zero, 180: -one, 270: zero}[rotation % 360]
    sin = {0: zero, 90: one, 180: zero, 270: -one}[rotation % 360]
    # Clockwise rotation by ``rotation`` in the ISO-BMFF row-vector convention.
    matrix = (cos, sin, 0, -sin, cos, 0, 0, 0, 0x40000000)
    for offset in _find_boxes(data, b"tkhd"):
        version = data[offset + 8]
        # size+type (8), version+flags (4), times/ids (v0: 20, v1: 32), reserved+layer+... (16)
        matrix_at = offset + 12 + (20 if version == 0 else 32) + 16
        width_at = matrix_at + 36
        if struct.unpack(">I", data[width_at : width_at + 4])[0] == 0:
            continue  # audio tracks have zero width
        data[matrix_at:width_at] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def _find_boxes(data: bytes | bytearray, box_type: bytes) -> list[int]:
    """Offsets of every ISO-BMFF box of ``box_type`` (walking moov/trak/... containers)."""
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
    found: list[int] = []

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= end:
            size, kind = struct.unpack(">I4s", data[pos : pos + 8])
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
            elif size == 0:
                size = end - pos
            if size < header:
                return
            if kind == box_type:
                found.append(pos)
            if kind in containers:
                walk(pos + header, pos + size)
            pos += size

    walk(0, len(data))
    return found


def vfr_timestamps(seconds: float = 2.0) -> list[float]:
    """Presentation times (s) of the frames make_vfr_video writes: VFR_DURATIONS_MS cycled."""
    times: list[float] = []
    t_ms = 0
    k = 0
    while t_ms < seconds * 1000:
        times.append(t_ms / 1000)
        t_ms += VFR_DURATIONS_MS[k % len(VFR_DURATIONS_MS)]
        k += 1
    return times


def make_vfr_video(
    path: str | Path, seconds: float = 2.0, width: int = 320, height: int = 240
) -> Path:
    """A variable-frame-rate clip: frame i is shown at vfr_timestamps(seconds)[i] (1 ms clock)."""
    times = vfr_timestamps(seconds)
    n = len(times)
    images = [frame_image(i, n, width, height) for i in range(n)]
    pts = [round(t * 1000) for t in times]
    rate = Fraction(n) / Fraction(seconds).limit_denominator(1000)
    return _encode(path, images, pts, Fraction(1, 1000), rate, DEFAULT_CODEC, "yuv420p", 12)


def make_short_video(path: str | Path, seconds: float = 0.3, fps: int = 24) -> Path:
    """A clip shorter than most minimum span lengths (0.3 s = 7 frames at 24 fps)."""
    return make_video(path, seconds=seconds, fps=fps)


def make_zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_as_mp4(path: str | Path) -> Path:
    """A text file with a video name."""
    path = Path(path)
    path.write_text("This is not a video.\n" * 20)
    return path


def make_garbage(path: str | Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Random bytes with a video name."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    return path


def make_truncated(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """The first ``keep_fraction`` of ``src``'s bytes, as an interrupted download leaves it.

    PyAV writes the moov box at the end, so cutting the tail loses the header (index) too.
    """
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An AAC-only MP4 (no video stream)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, _add_audio_stream(out), seconds)
    return path


def make_corrupt_midstream(
    src: str | Path, dst: str | Path, fraction: float = 0.2, seed: int = 0
) -> Path:
    """Copy ``src`` and overwrite ``fraction`` of its mdat payload, centred in the middle of the
    box, with random bytes: the container still parses, frames in the middle are damaged.
    """
    data = bytearray(Path(src).read_bytes())
    boxes = _find_boxes(data, b"mdat")
    if not boxes:
        raise ValueError(f"{src} has no mdat box")
    start = boxes[0]
    size, header = struct.unpack(">I", data[start : start + 4])[0], 8
    if size == 1:
        size, header = struct.unpack(">Q", data[start + 8 : start + 16])[0], 16
    payload_start, payload_end = start + header, start + size
    run = max(1, int((payload_end - payload_start) * fraction))
    mid = (payload_start + payload_end) // 2
    lo = mid - run // 2
    rng = np.random.default_rng(seed)
    data[lo : lo + run] = rng.integers(0, 256, run, np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------- crafted scenes
# Frames with known properties for the curation scores: texture that optical flow can track,
# a camera pan, blur, black frames, burnt-in text, two shots.


def textured_scene(width: int, height: int, seed: int = 0, grain: int = 24) -> np.ndarray:
    """A deterministic natural-looking texture [H, W, 3] uint8 RGB: smoothed colour noise
    (blobs about ``grain`` px across, and finer ones) over a gradient, with hard-edged
    rectangles scattered on it (sharp edges for the sharpness score)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for size, weight in ((grain, 110.0), (max(2, grain // 6), 40.0)):
        small = rng.random((max(2, height // size), max(2, width // size), 3)).astype(np.float32)
        img += weight * np.clip(
            cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1
        )
    img += 40 + 50 * np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    for _ in range(max(1, width * height // 2000)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(3, 14)), int(rng.integers(3, 14))
        img[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def pan_frames(
    n: int, width: int, height: int, px_per_frame: float, seed: int = 0
) -> list[np.ndarray]:
    """``n`` frames of a camera panning right over :func:`textured_scene` at ``px_per_frame``
    (0: a static shot of the same scene)."""
    travel = math.ceil(abs(px_per_frame) * max(n - 1, 0)) + 2
    scene = textured_scene(width + travel, height, seed)
    frames = []
    for i in range(n):
        x = px_per_frame * i
        x0 = math.floor(x)
        frac = x - x0
        a = scene[:, x0 : x0 + width].astype(np.float32)
        b = scene[:, x0 + 1 : x0 + 1 + width].astype(np.float32)
        frames.append(np.clip((1 - frac) * a + frac * b + 0.5, 0, 255).astype(np.uint8))
    return frames


def blurred(frames: list[np.ndarray], sigma: float = 3.0) -> list[np.ndarray]:
    import cv2

    return [cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]


def with_text(
    frames: list[np.ndarray], lines: tuple[str, ...] = ("BREAKING NEWS", "LIVE 24/7")
) -> list[np.ndarray]:
    """The frames with white, black-outlined text burnt into their lower half."""
    import cv2

    out = []
    for f in frames:
        img = np.ascontiguousarray(f.copy())
        h, w = img.shape[:2]
        scale = w / 320
        for k, line in enumerate(lines):
            y = int(h * 0.62 + k * 34 * scale)
            org = (int(w * 0.06), y)
            cv2.putText(
                img, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), int(6 * scale / 2) + 2
            )
            cv2.putText(
                img,
                line,
                org,
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (255, 255, 255),
                int(2 * scale / 2) + 1,
            )
        out.append(img)
    return out


def make_frames_video(
    path: str | Path, frames: list[np.ndarray], fps: int = 24, codec: str = DEFAULT_CODEC
) -> Path:
    """Encode RGB ``frames`` (same size, even sides) as a constant-frame-rate MP4."""
    return _encode(
        path,
        frames,
        list(range(len(frames))),
        Fraction(1, fps),
        Fraction(fps),
        codec,
        "yuv420p",
        12,
    )
