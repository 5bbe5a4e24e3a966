"""Video probing and frame sampling: the only module that opens decoders (PyAV, decord or its
maintained fork decord2, and torchcodec).

It owns the conventions every stage relies on: the timeline (seconds from the video stream's
first presentation time), the rotation convention, and how wanted moments map to real frames.

Conventions
-----------
* **Timeline.** Times are seconds from the start of the file's video stream (its
  ``start_time``, i.e. the first frame is at 0 for practically every MP4). Both readers and
  :func:`probe_video` use it, and so do span bounds.
* **Rotation.** :attr:`VideoInfo.rotation` is the angle, in degrees *clockwise*, by which a
  player turns the coded picture to show it (the legacy ``rotate`` tag; a phone held upright
  records 90). FFmpeg's display-matrix angle (``av_display_rotation_get``, which PyAV returns
  as ``VideoFrame.rotation``) is counter-clockwise, so ``rotation = -angle mod 360``, rounded
  to a multiple of 90. Mirroring in the display matrix is ignored. Sample aspect ratio is
  ignored too: display size means coded size, turned.
* **Frame index.** The position of a frame among the stream's presentable frames in
  presentation order (edit-list pre-roll before time 0 is not counted).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote, urlparse

import av
import cv2
import fsspec
import numpy as np

from any2capins.annotators.base import FrameSampling

__all__ = [
    "DEFAULT_READERS",
    "READERS",
    "ClipTooShort",
    "DecodeError",
    "Decord2Reader",
    "DecordReader",
    "EmptyFile",
    "FrameReader",
    "FrameSampling",
    "NoVideoStream",
    "NotAVideo",
    "PyAVReader",
    "ReaderUnavailable",
    "SampledFrames",
    "TorchCodecReader",
    "UnreadableSource",
    "VideoError",
    "VideoInfo",
    "local_video",
    "output_size",
    "pick_indices",
    "probe_video",
    "sample_frames",
    "target_times",
]

# Span bounds reach us rounded to milliseconds (see pipeline.spans), so a frame at 1.04167 s
# must count as inside a span that starts at 1.042 s, and outside the one that ends there.
SPAN_EPS_S = 1e-3
# decord reports float32 timestamps; within this distance two frames count as equally near.
TIE_EPS_S = 1e-4
# decord's get_batch allocates the whole batch at once: keep each call small.
DECORD_CHUNK = 32
# Packets read by probe_video to judge the frame-rate regularity; B-frame reordering means
# the last few pts of a prefix can be missing, so that many are dropped before judging.
PROBE_PACKETS = 240
PROBE_REORDER_SLACK = 16
# Containers decord cannot seek in: it seeks by timestamp without an index and, in
# MPEG-TS, lands a GOP late and hands back the wrong frames without an error (or
# fails with "Unable to handle EOF"). decord 0.6.0 and decord2 3.4 alike (measured: see
# docs/benchmarks.md). PyAV reads them (see _decode_wanted).
DECORD_UNSEEKABLE = frozenset({"mpegts"})
# The readers sample_frames tries by default. PyAV: in the measurements (docs/benchmarks.md,
# "Video decoders") decord, decord2 and torchcodec cost the same CPU per sampled frame within
# a few percent, and PyAV is the one reader that reads every odd input right (decord fails
# AV1 and tiny frames, none of the others can seek MPEG-TS). The others stay available by
# name, e.g. readers=("decord", "pyav"). Recipes carry their own list (pipeline.recipe).
DEFAULT_READERS: tuple[str, ...] = ("pyav",)
# torchcodec reports each frame's pts in seconds; a frame it hands back for a wanted time must
# carry that time within this distance, or the read fails (it seeks MPEG-TS a GOP late).
TORCHCODEC_PTS_EPS_S = 1e-4
# torchcodec's seek mode. "approximate" (no scan) turns times into frame indices by the
# average frame rate and fails on VFR files (an index past the end) and MPEG-TS (decoding
# past the end); "exact" scans the packets at open, like decord and our PyAV index.
TORCHCODEC_SEEK_MODE = "exact"
# Containers torchcodec 0.17 cannot seek in either: in MPEG-TS it returns frames a GOP late
# (caught by the pts check) or fails at the end of the file (measured: docs/benchmarks.md).
TORCHCODEC_UNSEEKABLE = frozenset({"mpegts"})
# 0 lets FFmpeg pick the number of decoding threads.
DECODE_THREADS = 0
# PyAV decodes with slice threads only by default; most camera H.264 has a single slice per
# frame, so frame threads are what actually use the cores (decord's FFmpeg does the same).
PYAV_THREAD_TYPE = "AUTO"


# --------------------------------------------------------------------------- errors


class VideoError(Exception):
    """Base of every per-video failure; ``error_type`` names it in the failure row."""

    error_type: ClassVar[str] = "VideoError"


class EmptyFile(VideoError):
    """The file has zero bytes."""

    error_type: ClassVar[str] = "EmptyFile"


class UnreadableSource(VideoError):
    """A missing path, or a URI that cannot be opened or fetched."""

    error_type: ClassVar[str] = "UnreadableSource"


class NotAVideo(VideoError):
    """Not a container FFmpeg can parse: text, garbage, or a truncated file."""

    error_type: ClassVar[str] = "NotAVideo"


class NoVideoStream(VideoError):
    """A valid container without a video stream (e.g. audio only)."""

    error_type: ClassVar[str] = "NoVideoStream"


class DecodeError(VideoError):
    """The container parses but the requested frames cannot be decoded by any reader."""

    error_type: ClassVar[str] = "DecodeError"


class ClipTooShort(VideoError):
    """A span is too short to use, or lies past the last frame."""

    error_type: ClassVar[str] = "ClipTooShort"


class ReaderUnavailable(DecodeError):
    """A reader's package is not installed or cannot load (decord has no macOS / aarch64
    wheels; torchcodec needs FFmpeg's shared libraries, 4 to 9, on the machine)."""

    error_type: ClassVar[str] = "ReaderUnavailable"


# --------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file; plain fields so it round-trips as JSON."""

    uri: str
    duration_s: float
    fps: float  # average frame rate
    width: int  # display size: coded size turned by ``rotation``
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # 0/90/180/270, clockwise degrees a player turns the coded picture by
    codec: str
    num_frames: int  # the container's frame count, or duration * fps when it has none
    variable_frame_rate: bool
    has_audio: bool
    # FFmpeg's demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "mpegts", "matroska,webm", ...); empty
    # in probes stored before it was recorded.
    container: str = ""


def probe_video(path: str, uri: str | None = None) -> VideoInfo:
    """Read a local file's video metadata with PyAV and decode its first frame.

    Decoding one frame costs a few milliseconds and proves the stream is decodable, which
    matters because decord must never be handed a file FFmpeg cannot parse. Raises only
    :class:`VideoError` subclasses.
    """
    uri = uri or path
    _check_local_file(path, uri)
    container = _open(path, uri)
    with container:
        stream = _video_stream(container, uri)
        ctx = stream.codec_context
        coded_w, coded_h = int(ctx.width or 0), int(ctx.height or 0)
        if coded_w <= 0 or coded_h <= 0:
            raise NotAVideo(f"{uri}: the video stream has no picture size")
        _check_not_truncated(path, uri, stream)
        scan = _scan_start(container, stream, uri)
        time_base = stream.time_base or Fraction(1, av.time_base)

        duration = 0.0
        if stream.duration:
            duration = float(stream.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        fps = _first_positive(stream.average_rate, stream.guessed_rate, stream.base_rate)
        if fps <= 0 and scan.median_step > 0:
            fps = 1.0 / float(scan.median_step * time_base)
        frames = int(stream.frames or 0)
        if duration <= 0 and frames > 0 and fps > 0:
            duration = frames / fps
        if duration <= 0 or fps <= 0:
            # No usable header numbers (raw streams): count the packets instead.
            index = _FrameIndex.build(container, stream)
            frames = len(index.pts)
            duration = index.end_s
            fps = fps if fps > 0 else frames / duration if duration > 0 else 0.0
        if duration <= 0 or fps <= 0:
            raise NotAVideo(f"{uri}: cannot tell the duration or frame rate of the video")
        if frames <= 0:
            frames = max(1, round(duration * fps))

        base = _first_positive(stream.base_rate)
        rate_mismatch = base > 0 and abs(fps / base - 1.0) > 0.05
        rotation = scan.rotation
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        return VideoInfo(
            uri=uri,
            duration_s=duration,
            fps=fps,
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            codec=_codec_name(ctx),
            num_frames=frames,
            variable_frame_rate=scan.irregular or rate_mismatch,
            has_audio=bool(container.streams.audio),
            container=str(getattr(container.format, "name", "") or ""),
        )


def _codec_name(ctx: av.codec.context.CodecContext) -> str:
    """The codec's canonical name ("av1", "h264"), not the decoder's: FFmpeg builds decode AV1
    with libdav1d, VP9 sometimes with libvpx-vp9, and the record names the format."""
    codec = getattr(ctx, "codec", None)
    name = getattr(codec, "canonical_name", None) if codec is not None else None
    return str(name or ctx.name)


def _check_local_file(path: str, uri: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise UnreadableSource(f"{uri}: no such file") from e
    except OSError as e:
        raise UnreadableSource(f"{uri}: cannot stat: {e}") from e
    if not os.path.isfile(path):
        raise UnreadableSource(f"{uri}: not a regular file")
    if st.st_size == 0:
        raise EmptyFile(f"{uri}: the file is empty (0 bytes)")


def _open(path: str, uri: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except (av.error.FileNotFoundError, av.error.PermissionError, av.error.IsADirectoryError) as e:
        raise UnreadableSource(f"{uri}: cannot open: {e}") from e
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise NotAVideo(f"{uri}: truncated or not a video container{_mp4_hint(path)} ({e})") from e
    except OSError as e:
        raise UnreadableSource(f"{uri}: cannot open: {e}") from e


def _mp4_hint(path: str) -> str:
    """Say what is wrong with an MP4 FFmpeg refused, from its top-level boxes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return ""
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                box_size, kind = struct.unpack(">I4s", f.read(8))
                if kind == b"moov":
                    return " (an MP4 whose moov box, its index, cannot be parsed)"
                if box_size == 1:
                    box_size = struct.unpack(">Q", f.read(8))[0]
                if box_size < 8:
                    break
                pos += box_size
    except (OSError, struct.error):
        return ""
    # PyAV and most tools write moov last, so a cut-off download loses it first.
    return " (an MP4 without its moov box, as when a download is cut short)"


def _video_stream(container: av.container.InputContainer, uri: str) -> av.video.stream.VideoStream:
    """The stream decord would pick too (FFmpeg's best), ignoring cover-art pictures."""
    attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)
    videos = [s for s in container.streams.video if not (attached and s.disposition & attached)]
    if not videos:
        kinds = sorted({s.type for s in container.streams})
        raise NoVideoStream(f"{uri}: no video stream (streams: {', '.join(kinds) or 'none'})")
    best = container.streams.best("video")
    return best if best in videos else videos[0]


def _check_not_truncated(path: str, uri: str, stream: av.video.stream.VideoStream) -> None:
    """An index that points past the end of the file means the download was cut short.

    Only MP4-like containers have a full index; mp4 lists entries in file order, so the
    last few entries reach furthest.
    """
    entries = getattr(stream, "index_entries", None)
    if entries is None:
        return
    n = len(entries)
    ends = [e.pos + e.size for e in (entries[i] for i in range(max(0, n - 64), n)) if e.pos >= 0]
    size = os.path.getsize(path)
    if ends and max(ends) > size:
        raise NotAVideo(
            f"{uri}: truncated or not a video container: the index reaches byte {max(ends)} "
            f"of a {size}-byte file"
        )


@dataclass
class _StartScan:
    rotation: int
    irregular: bool
    median_step: int


def _scan_start(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, uri: str
) -> _StartScan:
    """Decode the first frame (rotation lives in its side data) and read the first packets'
    timestamps (frame-rate regularity), without decoding more than needed."""
    pts: list[int] = []
    first: av.VideoFrame | None = None
    errors: list[str] = []
    eof = True
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size and not packet.is_discard:
            pts.append(packet.pts)
        if first is None:
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                errors.append(str(e))
                frames = []
            if frames:
                first = frames[0]
        if first is not None and len(pts) >= PROBE_PACKETS:
            eof = False
            break
    if first is None:
        detail = f": {errors[0]}" if errors else ""
        raise DecodeError(f"{uri}: no frame could be decoded from the start of the stream{detail}")
    angle = float(getattr(first, "rotation", 0) or 0)
    rotation = round(-angle / 90.0) * 90 % 360
    ordered = sorted(pts)
    if not eof:
        ordered = ordered[: max(2, len(ordered) - PROBE_REORDER_SLACK)]
    steps = np.diff(np.asarray(ordered, dtype=np.int64))
    steps = steps[steps > 0]
    if steps.size == 0:
        return _StartScan(rotation, False, 0)
    median = int(np.median(steps))
    # Containers with a coarse clock (mkv: 1 ms) alternate 33/34 ms at 29.97 fps: allow one tick.
    tolerance = max(0.1 * median, 1.0)
    irregular = bool(np.any(np.abs(steps - median) > tolerance))
    return _StartScan(rotation, irregular, median)


def _first_positive(*rates: Fraction | int | float | None) -> float:
    for rate in rates:
        if rate is not None and float(rate) > 0 and math.isfinite(float(rate)):
            return float(rate)
    return 0.0


# --------------------------------------------------------------------------- sampling


@dataclass
class SampledFrames:
    """Frames of one span, in presentation order.

    ``frames`` is [T, H, W, 3] uint8 RGB in display orientation with max(H, W) <= max_side and
    H, W even. T can be smaller than asked for: a span holding fewer distinct frames than
    wanted yields each of them once (``indices`` is strictly increasing, never padded).
    """

    frames: np.ndarray
    timestamps_s: list[float]  # presentation time of each frame, on the file's timeline
    indices: list[int]  # frame index in the file (see module docstring)
    reader: str  # "decord" or "pyav"


class FrameReader(Protocol):
    name: str

    def read(
        self, path: str, info: VideoInfo, start_s: float, end_s: float, sampling: FrameSampling
    ) -> SampledFrames: ...


def output_size(info: VideoInfo, max_side: int) -> tuple[int, int]:
    """(width, height) of sampled frames: display aspect kept, longest side <= max_side, even."""
    scale = min(1.0, max_side / max(info.width, info.height))
    w = max(2, round(info.width * scale) // 2 * 2)
    h = max(2, round(info.height * scale) // 2 * 2)
    return w, h


def target_times(start_s: float, end_s: float, sampling: FrameSampling) -> np.ndarray:
    """The moments to sample in [start_s, end_s).

    ``num_frames`` N: the centres of N equal sub-intervals. ``fps`` (wins when set):
    start_s + k / fps. Either way at most ``max_frames``; when a rate would need more, that
    many are spread uniformly instead, so the whole span stays covered. Neither set: every
    frame of the span, up to ``max_frames`` (uniformly).
    """
    span = end_s - start_s
    if span <= 0:
        raise ValueError(f"empty span {start_s}-{end_s}")
    if sampling.fps is not None:
        count = math.floor(span * sampling.fps - 1e-9) + 1
        if count <= sampling.max_frames:
            return start_s + np.arange(count, dtype=np.float64) / sampling.fps
        n = sampling.max_frames
    else:
        n = min(sampling.num_frames or sampling.max_frames, sampling.max_frames)
    step = span / n
    return start_s + (np.arange(n, dtype=np.float64) + 0.5) * step


def pick_indices(
    times: np.ndarray, start_s: float, end_s: float, sampling: FrameSampling
) -> list[int]:
    """Indices into ``times`` (ascending frame start times) of the frames to sample.

    Only frames that start inside the span are candidates (so a neighbouring shot never
    leaks in); each target takes the candidate whose timestamp is nearest, the earlier one on
    a tie. Repeats are dropped, so fewer frames than targets come back when the span has
    fewer distinct frames. A span shorter than one frame yields the frame on screen at
    ``start_s``; a span past the last frame raises :class:`ClipTooShort`.
    """
    n = len(times)
    if n == 0:
        raise DecodeError("the video has no frames")
    targets = target_times(start_s, end_s, sampling)
    lo = int(np.searchsorted(times, start_s - SPAN_EPS_S, side="left"))
    hi = int(np.searchsorted(times, end_s - SPAN_EPS_S, side="left"))
    if hi <= lo:
        step = float(np.median(np.diff(times))) if n > 1 else 0.0
        if start_s >= float(times[-1]) + max(step, SPAN_EPS_S):
            raise ClipTooShort(
                f"span {start_s:.3f}-{end_s:.3f}s starts after the last frame "
                f"({float(times[-1]):.3f}s)"
            )
        on_screen = int(np.searchsorted(times, start_s + SPAN_EPS_S, side="right")) - 1
        return [max(0, on_screen)]
    cand = times[lo:hi]
    pos = np.searchsorted(cand, targets, side="left")
    prev = np.clip(pos - 1, 0, len(cand) - 1)
    nxt = np.clip(pos, 0, len(cand) - 1)
    later = (cand[nxt] - targets) < (targets - cand[prev]) - TIE_EPS_S
    chosen = np.where(later, nxt, prev) + lo
    return [int(i) for i in np.unique(chosen)]


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Turn [T, H, W, C] frames clockwise by ``rotation`` degrees."""
    if rotation % 360 == 0:
        return frames
    # np.rot90 turns counter-clockwise for positive k.
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))


def _result(
    frames: np.ndarray,
    info: VideoInfo,
    size: tuple[int, int],
    times: list[float],
    indices: list[int],
    reader: str,
) -> SampledFrames:
    w, h = size
    if frames.shape != (len(indices), h, w, 3) or frames.dtype != np.uint8:
        raise DecodeError(
            f"{info.uri}: {reader} returned frames of shape {frames.shape} {frames.dtype}, "
            f"expected {(len(indices), h, w, 3)} uint8"
        )
    return SampledFrames(frames=frames, timestamps_s=times, indices=indices, reader=reader)


# --------------------------------------------------------------------------- decord


@functools.cache
def _decord() -> Any:
    try:
        import decord
    except ImportError as e:  # no wheels for macOS / aarch64
        raise ReaderUnavailable(
            f"decord is not installed ({e}): pip install 'any2capins[build]' (decord2) or decord"
        ) from e
    # Errors reach us as exceptions; FFmpeg's per-packet complaints would only flood stderr.
    decord.logging.set_level(decord.logging.QUIET)
    return decord


def decord_build() -> str:
    """Which package provides the ``decord`` module: ``"decord"`` (0.6.x, 2021) or
    ``"decord2"`` (the maintained fork, 1.0 and later, same module name; the two cannot be
    installed side by side). Raises :class:`ReaderUnavailable` when neither is."""
    version = str(getattr(_decord(), "__version__", "0"))
    major = version.split(".", 1)[0]
    return "decord2" if major.isdigit() and int(major) >= 1 else "decord"


@functools.cache
def _decord_rotates() -> bool:
    """Whether this decord build turns frames by the display rotation itself.

    decord 0.6.0 does (it reads the ``rotate`` tag or the display matrix and inserts
    FFmpeg transpose filters *before* scaling to width x height). Builds without that code
    would hand back coded frames; a two-frame rotated clip tells them apart, once per process.
    """
    decord = _decord()

    def shape(path: str) -> tuple[int, ...]:
        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        out = tuple(vr[0].shape)
        del vr
        return out

    return _turns_frames_itself(shape)


def _turns_frames_itself(first_frame_shape: Callable[[str], tuple[int, ...]]) -> bool:
    """Whether a decoder hands back frames turned by the display rotation: it decodes a
    two-frame 32x16 clip a player shows turned by 90 degrees, once per decoder and process."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        return True  # cannot write a test clip with this PyAV; 0.6.0 behaviour is the norm
    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="any2cap-rotcheck-")
    os.close(fd)
    try:
        _write_rotated_clip(path)
        return first_frame_shape(path)[:2] == (32, 16)
    except Exception:  # noqa: BLE001 - the check itself failing must not stop decoding
        # Assume the decoder turns frames; _result's shape check still catches a 90/270 mismatch.
        return True
    finally:
        os.unlink(path)


def _write_rotated_clip(path: str) -> None:
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(-90)
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


class DecordReader:
    """decord's VideoReader, opened per call, from whichever package provides the ``decord``
    module: decord 0.6.0 or its maintained fork decord2 (``SampledFrames.reader`` names the
    one that read, so provenance tells them apart).

    A reader is never cached: decord keeps memory after get_batch until the reader is
    freed. decord builds its own index by reading every packet at open, counts a frame per
    packet and seeks by counting decoded frames. On damaged files it mostly raises (and
    sample_frames falls back to PyAV), but its fault tolerance may also hand back the previous
    frame in place of one it could not decode.
    """

    name = "decord"

    def read(
        self, path: str, info: VideoInfo, start_s: float, end_s: float, sampling: FrameSampling
    ) -> SampledFrames:
        build = self._build()
        if info.container in DECORD_UNSEEKABLE:
            raise ReaderUnavailable(
                f"{build} cannot seek in {info.container} files (it returns frames from the "
                "wrong GOP); read by PyAV"
            )
        decord = _decord()
        size = output_size(info, sampling.max_side)
        turn = info.rotation if info.rotation and not _decord_rotates() else 0
        # decord scales the picture it outputs: already turned when it turns frames itself,
        # coded otherwise (and turned here afterwards).
        out_w, out_h = (size[1], size[0]) if turn in (90, 270) else size
        native = (info.coded_width, info.coded_height) if turn else (info.width, info.height)
        kwargs: dict[str, int] = {}
        if (out_w, out_h) != native:
            kwargs = {"width": out_w, "height": out_h}
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS, **kwargs)
        try:
            count = len(vr)
            if count == 0:
                raise DecodeError(f"{info.uri}: {build} found no frames")
            raw = vr.get_frame_timestamp(np.arange(count))[:, 0].astype(np.float64)
            # decord counts edit-list pre-roll packets (before time 0) as frames; skip them.
            first = int(np.searchsorted(raw, -SPAN_EPS_S / 2, side="left"))
            times = raw[first:]
            picked = pick_indices(times, start_s, end_s, sampling)
            chunks = []
            for at in range(0, len(picked), DECORD_CHUNK):
                batch = [first + i for i in picked[at : at + DECORD_CHUNK]]
                chunks.append(vr.get_batch(batch).asnumpy())
        finally:
            del vr
        frames = _rotate(np.concatenate(chunks, axis=0), turn)
        stamps = [round(float(times[i]), 6) for i in picked]
        return _result(frames, info, size, stamps, picked, build)

    def _build(self) -> str:
        return decord_build()


class Decord2Reader(DecordReader):
    """decord2 only: chosen by name, it refuses decord 0.6.0 rather than read with it."""

    name = "decord2"

    def _build(self) -> str:
        build = decord_build()
        if build != "decord2":
            raise ReaderUnavailable(
                f"decord2 is not installed: the decord module here is decord "
                f"{getattr(_decord(), '__version__', '?')} (pip uninstall decord && "
                "pip install decord2; the two install the same module)"
            )
        return build


# --------------------------------------------------------------------------- torchcodec


def _torchcodec() -> Any:
    """torchcodec's VideoDecoder class, or :class:`ReaderUnavailable` saying why not.

    torchcodec loads FFmpeg's shared libraries (major versions 4 to 9) from the machine the
    first time a decoder is made (``import torchcodec`` works without them); its wheels
    bundle none, so ``pip install torchcodec`` alone is not enough on a machine without them
    (Debian 12: apt-get install libavcodec59 libavformat59 libavutil57 libswscale6
    libswresample4 libavdevice59 libavfilter8). It must also match torch. Both are checked
    once per process by opening a two-frame clip; the outcome is remembered.
    """
    if not _TORCHCODEC:
        _TORCHCODEC.append(_load_torchcodec())
    outcome = _TORCHCODEC[0]
    if isinstance(outcome, ReaderUnavailable):
        raise ReaderUnavailable(str(outcome))
    return outcome


# The outcome of loading torchcodec in this process: its VideoDecoder class or the error.
_TORCHCODEC: list[Any] = []


def _cannot_load(e: BaseException) -> ReaderUnavailable:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ReaderUnavailable(
        "torchcodec is installed but cannot load: it needs FFmpeg's shared libraries "
        "(libavcodec etc., FFmpeg 4 to 9) on the machine and the torch it was built for "
        f"({type(e).__name__}: {first})"
    )


def _load_torchcodec() -> Any:
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as e:
        return ReaderUnavailable(
            f"torchcodec is not installed ({e}): pip install 'any2capins[torchcodec]'"
        )
    except (OSError, RuntimeError) as e:  # its torch or FFmpeg libraries cannot be loaded
        return _cannot_load(e)
    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="any2cap-tccheck-")
    os.close(fd)
    try:
        _write_rotated_clip(path)
        VideoDecoder(path, device="cpu", seek_mode="approximate")
    except (OSError, RuntimeError, ImportError) as e:
        return _cannot_load(e)
    finally:
        os.unlink(path)
    return VideoDecoder


@functools.cache
def _torchcodec_rotates() -> bool:
    """Whether this torchcodec turns frames by the display rotation (0.17 does)."""
    decoder = _torchcodec()

    def shape(path: str) -> tuple[int, ...]:
        dec = decoder(path, dimension_order="NHWC", device="cpu", seek_mode="approximate")
        return tuple(dec.get_frame_at(0).data.shape)

    return _turns_frames_itself(shape)


class TorchCodecReader:
    """torchcodec's VideoDecoder (PyTorch's decoder, FFmpeg underneath), opened per call.

    The frame timeline comes from PyAV's packet pass (:class:`_FrameIndex`, no decoding), so
    every reader picks the same frames; torchcodec then decodes each wanted frame by its
    presentation time (``get_frames_played_at``; exact seek mode, see TORCHCODEC_SEEK_MODE).
    Every frame it returns must carry the wanted pts: in MPEG-TS it seeks a GOP late and
    returns other frames, which fails the read here (sample_frames then tries the next reader).
    """

    name = "torchcodec"

    def read(
        self, path: str, info: VideoInfo, start_s: float, end_s: float, sampling: FrameSampling
    ) -> SampledFrames:
        decoder = _torchcodec()
        if info.container in TORCHCODEC_UNSEEKABLE:
            raise ReaderUnavailable(
                f"torchcodec cannot seek in {info.container} files (it returns frames from "
                "the wrong GOP or runs past the end); read by PyAV"
            )
        turns = _torchcodec_rotates()
        size = output_size(info, sampling.max_side)
        try:
            container = av.open(path, mode="r", metadata_errors="ignore")
        except av.FFmpegError as e:
            raise DecodeError(f"{info.uri}: PyAV cannot open the file: {e}") from e
        with container:
            stream = _video_stream(container, info.uri)
            index = _FrameIndex.build(container, stream)
            time_base = stream.time_base or Fraction(1, av.time_base)
            stream_index = stream.index
        picked = pick_indices(index.times, start_s, end_s, sampling)
        # torchcodec's timeline is the stream's own pts (not shifted to start at 0).
        wanted = [float(index.pts[i] * time_base) for i in picked]
        # Ask for a moment a little inside each frame: torchcodec turns pts into seconds by a
        # float product that may land an ulp past the exact value and yield the frame before.
        after = [
            float(index.pts[i + 1] * time_base) if i + 1 < len(index.pts) else w + 2e-5
            for i, w in zip(picked, wanted, strict=True)
        ]
        asked = [w + min((a - w) / 4, 1e-5) for w, a in zip(wanted, after, strict=True)]
        dec = decoder(
            path,
            stream_index=stream_index,
            dimension_order="NHWC",
            num_ffmpeg_threads=DECODE_THREADS,
            device="cpu",
            seek_mode=TORCHCODEC_SEEK_MODE,
        )
        batch = dec.get_frames_played_at(asked)
        got = [float(t) for t in batch.pts_seconds.tolist()]
        wrong = [
            (w, g) for w, g in zip(wanted, got, strict=True) if abs(w - g) > TORCHCODEC_PTS_EPS_S
        ]
        if wrong:
            shown = ", ".join(f"{g:.3f}s for {w:.3f}s" for w, g in wrong[:4])
            raise DecodeError(
                f"{info.uri}: torchcodec returned other frames than asked for "
                f"({len(wrong)} of {len(wanted)}: {shown})"
            )
        raw: np.ndarray = batch.data.numpy()
        turn = 0 if turns else info.rotation
        # Frames come out turned when torchcodec turns them: resize to the display size then.
        want_w, want_h = (size[1], size[0]) if turn in (90, 270) else size
        if raw.shape[1:3] != (want_h, want_w):
            raw = np.stack(
                [cv2.resize(f, (want_w, want_h), interpolation=cv2.INTER_AREA) for f in raw]
            )
        frames = _rotate(np.ascontiguousarray(raw), turn)
        stamps = [round(float(index.times[i]), 6) for i in picked]
        return _result(frames, info, size, stamps, picked, self.name)


# --------------------------------------------------------------------------- PyAV


@dataclass
class _FrameIndex:
    """Presentation timestamps of every presentable frame and of the keyframes, from one pass
    over the packets (no decoding)."""

    pts: list[int]
    times: np.ndarray
    key_pts: list[int]
    end_s: float
    # The decode timestamp of each keyframe in key_pts (its pts where the packet has none).
    key_dts: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def build(
        cls, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> _FrameIndex:
        container.seek(0)
        origin = stream.start_time
        pts: list[int] = []
        keys: list[tuple[int, int]] = []
        last_end = 0
        for packet in container.demux(stream):
            if not packet.size:
                continue
            t = packet.pts if packet.pts is not None else packet.dts
            if t is None or packet.is_discard:
                continue
            pts.append(t)
            last_end = max(last_end, t + (packet.duration or 0))
            if packet.is_keyframe:
                keys.append((t, packet.dts if packet.dts is not None else t))
        pts.sort()
        keys.sort()
        time_base = stream.time_base or Fraction(1, av.time_base)
        if origin is None:
            origin = pts[0] if pts else 0
        keep = bisect.bisect_left(pts, origin)  # pre-roll before the stream start is not shown
        pts = pts[keep:]
        times = np.array([float((p - origin) * time_base) for p in pts], dtype=np.float64)
        end_s = float((last_end - origin) * time_base) if pts else 0.0
        return cls(
            pts=pts,
            times=times,
            key_pts=[k for k, _ in keys],
            end_s=end_s,
            key_dts=[d for _, d in keys],
        )

    def seek_targets(self, pts: int) -> list[int]:
        """Where to seek to decode ``pts``, best guess first; each later target lies earlier.

        1. The pts of the keyframe at or before it: FFmpeg's indexed demuxers (mov, matroska)
           look seek targets up by presentation time, and its smaller dts would land a whole
           GOP early.
        2. That keyframe's dts: demuxers without an index (MPEG-TS, MPEG-PS) binary-search
           the file by decode time, so seeking to the keyframe's pts lands on the *next* one.
        3. The keyframe before it (open GOPs, frames decoded before their keyframe in
           presentation order, odd indexes).
        4. The stream's first timestamp (the start of the file).
        """
        first = min([*self.key_dts, *self.key_pts, self.pts[0]])
        targets: list[int] = []
        i = bisect.bisect_right(self.key_pts, pts) - 1
        if i >= 0:
            targets += [self.key_pts[i], self._dts(i)]
            if i >= 1:
                targets.append(self._dts(i - 1))
        targets.append(first)
        return list(dict.fromkeys(targets))

    def seek_target(self, pts: int) -> int:
        """The first of :meth:`seek_targets`: right for indexed containers."""
        return self.seek_targets(pts)[0]

    def _dts(self, i: int) -> int:
        return self.key_dts[i] if i < len(self.key_dts) else self.key_pts[i]

    def key_at_or_before(self, pts: int) -> int | None:
        i = bisect.bisect_right(self.key_pts, pts) - 1
        return self.key_pts[i] if i >= 0 else None


class PyAVReader:
    """PyAV: one pass over the packets for exact timestamps, then seek + decode forward.

    A packet the decoder rejects is skipped; if a wanted frame never comes out, the read
    fails with :class:`DecodeError`. Frames the decoder conceals damage in come back as
    decoded.
    """

    name = "pyav"

    def read(
        self, path: str, info: VideoInfo, start_s: float, end_s: float, sampling: FrameSampling
    ) -> SampledFrames:
        size = output_size(info, sampling.max_side)
        coded_size = (size[1], size[0]) if info.rotation in (90, 270) else size
        try:
            container = av.open(path, mode="r", metadata_errors="ignore")
        except av.FFmpegError as e:
            raise DecodeError(f"{info.uri}: PyAV cannot open the file: {e}") from e
        with container:
            stream = _video_stream(container, info.uri)
            stream.thread_type = PYAV_THREAD_TYPE
            stream.thread_count = DECODE_THREADS
            index = _FrameIndex.build(container, stream)
            picked = pick_indices(index.times, start_s, end_s, sampling)
            wanted = [index.pts[i] for i in picked]

            def convert(frame: av.VideoFrame) -> np.ndarray:
                rgb: np.ndarray = frame.to_ndarray(format="rgb24")
                if (rgb.shape[1], rgb.shape[0]) != coded_size:
                    rgb = cv2.resize(rgb, coded_size, interpolation=cv2.INTER_AREA)
                return rgb

            got = _decode_wanted(container, stream, index, wanted, convert, info.uri)
        frames = _rotate(np.stack([got[p] for p in wanted]), info.rotation)
        stamps = [round(float(index.times[i]), 6) for i in picked]
        return _result(frames, info, size, stamps, picked, self.name)


def _decode_wanted(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _FrameIndex,
    wanted: list[int],
    convert: Callable[[av.VideoFrame], np.ndarray],
    uri: str,
) -> dict[int, np.ndarray]:
    """Decode the frames with these pts, seeking only where a keyframe lies between two
    wanted frames (decoding on from the previous wanted frame would cost more)."""
    runs: list[list[int]] = []
    for p in wanted:
        key = index.key_at_or_before(p)
        if runs and (key is None or key <= runs[-1][-1]):
            runs[-1].append(p)
        else:
            runs.append([p])
    got: dict[int, np.ndarray] = {}
    errors: list[str] = []
    for run in runs:
        missing = set(run)
        targets = index.seek_targets(run[0])
        for n, target in enumerate(targets):
            container.seek(target, stream=stream, backward=True, any_frame=False)
            # A try that lands past the first wanted frame is abandoned at once (the next
            # target lies earlier); the last one decodes on regardless.
            last_try = n == len(targets) - 1
            _decode_run(container, stream, missing, max(run), got, convert, errors, last_try)
            if not missing:
                break
        if missing:
            times = sorted(float(index.times[index.pts.index(p)]) for p in missing)
            shown = ", ".join(f"{t:.3f}" for t in times[:8])
            detail = f"; decoder errors: {'; '.join(errors[:3])}" if errors else ""
            raise DecodeError(
                f"{uri}: PyAV could not decode {len(missing)} wanted frame(s) at {shown}s{detail}"
            )
    return got


def _decode_run(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    missing: set[int],
    last: int,
    got: dict[int, np.ndarray],
    convert: Callable[[av.VideoFrame], np.ndarray],
    errors: list[str],
    last_try: bool = True,
) -> None:
    first = True
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError as e:  # a corrupt packet: skip it, later frames may still decode
            errors.append(f"pts {packet.pts}: {e}")
            continue
        past = False
        for frame in frames:
            p = frame.pts
            if first and p is not None:
                first = False
                if not last_try and missing and p > min(missing):
                    return  # the seek landed past a wanted frame
            if p in missing:
                got[p] = convert(frame)
                missing.discard(p)
            if p is not None and p > last:
                past = True  # frames leave the decoder in presentation order
        if not missing or past:
            return


READERS: dict[str, FrameReader] = {
    "decord": DecordReader(),
    "decord2": Decord2Reader(),
    "torchcodec": TorchCodecReader(),
    "pyav": PyAVReader(),
}


def sample_frames(
    path: str,
    info: VideoInfo,
    start_s: float,
    end_s: float,
    sampling: FrameSampling,
    readers: Sequence[str] = DEFAULT_READERS,
) -> SampledFrames:
    """Frames of [start_s, end_s) from the first reader that manages (see SampledFrames).

    ``info`` must come from :func:`probe_video` on the same file: decord may abort the process
    on input FFmpeg cannot parse, and the probe is what rules that out. A reader that is not
    installed is skipped when another reader follows it; a reader asked for alone that is
    not installed (or cannot load) fails with :class:`ReaderUnavailable` saying why, never
    falling back to another. When every reader fails the error is a :class:`DecodeError` naming
    each reader's error, except that a span past the end raises :class:`ClipTooShort`.
    """
    if not end_s > start_s:
        raise ValueError(f"span end {end_s} is not after its start {start_s}")
    if not readers:
        raise ValueError("no frame readers given")
    unknown = [r for r in readers if r not in READERS]
    if unknown:
        raise ValueError(f"unknown frame reader(s) {unknown}; known: {sorted(READERS)}")
    failures: list[str] = []
    errors: list[Exception] = []
    for name in readers:
        try:
            return READERS[name].read(path, info, start_s, end_s, sampling)
        except ReaderUnavailable as e:
            failures.append(f"{name}: skipped ({e})")
        except Exception as e:  # noqa: BLE001 - any reader failure means: try the next one
            failures.append(f"{name}: {type(e).__name__}: {e}")
            errors.append(e)
    # A span past the end is the span's fault, not the decoders'.
    if errors and all(isinstance(e, ClipTooShort) for e in errors):
        raise errors[0]
    if not errors:  # no reader could even try: name what is missing, fall back to nothing
        raise ReaderUnavailable(
            f"{info.uri}: no reader available for frames {start_s:.3f}-{end_s:.3f}s: "
            + "; ".join(failures)
        )
    raise DecodeError(
        f"{info.uri}: no reader could decode frames {start_s:.3f}-{end_s:.3f}s: "
        + "; ".join(failures)
    )


# --------------------------------------------------------------------------- fetching


@contextmanager
def local_video(uri: str, cache_dir: str | None = None) -> Iterator[str]:
    """A local path for ``uri`` for the duration of the block.

    Local paths and ``file://`` URIs are yielded as they are; any other fsspec URI (s3://,
    gs://, http(s)://, memory://, ...) is copied to a temporary file in ``cache_dir`` (the
    system temp dir by default), deleted afterwards. A missing local file, or a remote one
    that cannot be opened or fetched, raises :class:`UnreadableSource`.
    """
    local = _local_path(uri)
    if local is not None:
        if not os.path.exists(local):
            raise UnreadableSource(f"{uri}: no such file")
        yield local
        return
    tmp = _fetch(uri, cache_dir)
    try:
        yield tmp
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _local_path(uri: str) -> str | None:
    if "://" not in uri:
        return uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "local"):
        return None
    host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
    return unquote(host + parsed.path)


def _fetch(uri: str, cache_dir: str | None) -> str:
    suffix = Path(urlparse(uri).path).suffix[:16]
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="any2cap-", suffix=suffix, dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb") as src:
            shutil.copyfileobj(src, out, length=8 << 20)
    except Exception as e:  # every fetch failure is the source's failure
        os.unlink(tmp)
        raise UnreadableSource(f"{uri}: cannot fetch: {type(e).__name__}: {e}") from e
    return tmp
