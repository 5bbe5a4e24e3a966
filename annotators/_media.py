"""Small media helpers shared by condition annotators: H.264 MP4 previews from frames and
back (PyAV)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

# PyAV's wheels bundle libx264; mpeg4 part 2 is what every FFmpeg build can encode.
_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 20) -> bytes:
    """[T, H, W, 3] uint8 RGB -> MP4 bytes (H.264, yuv420p) playing at ``fps``.

    Odd sizes are padded by one black row/column, because yuv420p needs even dimensions.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h, w = frames.shape[1:3]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(_CODEC, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if _CODEC == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def playback_fps(frames: int, duration_s: float) -> float:
    """Frame rate that plays ``frames`` samples over the clip's real duration (at least 1)."""
    return max(1.0, frames / duration_s) if duration_s > 0 else 1.0


def decode_mp4(data: bytes) -> np.ndarray:
    """Every frame of MP4 bytes as [T, H, W, 3] uint8 RGB (previews and tests)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError("the MP4 holds no decodable frames")
    return np.stack(frames)


__all__ = ["decode_mp4", "encode_mp4", "playback_fps"]
