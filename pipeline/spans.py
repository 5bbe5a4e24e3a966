"""Clip spans: cut a probed source into clips (whole, fixed windows, or scene cuts)."""

from __future__ import annotations

import logging
import math

from any2capins.pipeline.recipe import SpanConfig
from any2capins.pipeline.video import ClipTooShort, VideoInfo

log = logging.getLogger(__name__)


def clamp_warning(info: VideoInfo, end_s: float | None) -> str | None:
    """The warning due when a requested span end lies past the video's end (it is clamped
    to the end); None when it fits, allowing one frame of rounding."""
    if end_s is None or end_s <= info.duration_s + 1.0 / info.fps + 1e-3:
        return None
    return (
        f"{info.uri}: span end {end_s:.3f}s is past the end of the "
        f"{info.duration_s:.3f}s video; clamped to {info.duration_s:.3f}s"
    )


def _split_long(start: float, end: float, max_len: float | None) -> list[tuple[float, float]]:
    if max_len is None or end - start <= max_len:
        return [(start, end)]
    parts = math.ceil((end - start) / max_len)
    step = (end - start) / parts
    return [(start + i * step, start + (i + 1) * step) for i in range(parts)]


def detect_scenes(
    path: str, start_s: float, end_s: float, threshold: float
) -> list[tuple[float, float]]:
    """Scene spans inside [start_s, end_s) by PySceneDetect's ContentDetector."""
    from scenedetect import ContentDetector, detect

    scenes = detect(path, ContentDetector(threshold=threshold), start_time=start_s, end_time=end_s)
    spans = [(float(s.seconds), float(e.seconds)) for s, e in scenes]
    return spans or [(start_s, end_s)]


def make_spans(
    info: VideoInfo,
    path: str,
    config: SpanConfig,
    start_s: float | None = None,
    end_s: float | None = None,
) -> list[tuple[float, float]]:
    """Spans in seconds from the start of the file; raises ClipTooShort when none is long enough.

    An ``end_s`` past the video's end is clamped to it, and logged (see :func:`clamp_warning`).
    """
    for name, value in (("start", start_s), ("end", end_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"span {name} {value!r} is not a finite, non-negative number")
    warning = clamp_warning(info, end_s)
    if warning:
        log.warning(warning)
    lo = 0.0 if start_s is None else start_s
    hi = info.duration_s if end_s is None else min(end_s, info.duration_s)
    if hi - lo < max(config.min_len_s, 1.0 / info.fps):
        raise ClipTooShort(
            f"span {lo:.3f}-{hi:.3f}s of a {info.duration_s:.3f}s video is shorter than "
            f"min_len_s={config.min_len_s}"
        )
    if config.mode == "whole":
        raw = [(lo, hi)]
    elif config.mode == "fixed":
        assert config.window_s is not None
        stride = config.stride_s or config.window_s
        raw = []
        t = lo
        while t < hi - 1e-6:
            raw.append((t, min(t + config.window_s, hi)))
            t += stride
    else:
        raw = detect_scenes(path, lo, hi, config.scene_threshold)
    spans = [
        (round(a, 3), round(b, 3))
        for s, e in raw
        for a, b in _split_long(s, e, config.max_len_s)
        if b - a >= config.min_len_s
    ]
    if not spans:
        raise ClipTooShort(
            f"no {config.mode} span of {info.uri} reaches min_len_s={config.min_len_s}"
        )
    return spans
