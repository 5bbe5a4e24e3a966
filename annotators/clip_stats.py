"""Cheap per-clip statistics (brightness, colour palette, motion) from sampled frames.

This is the first real stage: it lets data flow end to end before any model stage exists,
and its numbers later ground the caption writer's style and action components.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.schemas import ClipStats, ColorSwatch


class ClipStatsConfig(AnnotatorConfig):
    palette_size: int = Field(default=5, ge=1, le=16)
    palette_pixels: int = Field(
        default=4096, ge=64, description="pixels sampled per clip for the palette k-means"
    )
    seed: int = 0


def _luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma in 0..1, [T, H, W]."""
    rgb = frames.astype(np.float32) / 255.0
    return np.asarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def palette(frames: np.ndarray, k: int, pixels: int, seed: int) -> list[ColorSwatch]:
    """Dominant colours by k-means over a deterministic pixel sample, largest first."""
    flat = frames.reshape(-1, 3)
    rng = np.random.default_rng(seed)
    take = min(pixels, flat.shape[0])
    sample = flat[rng.choice(flat.shape[0], size=take, replace=False)].astype(np.float32)
    k = min(k, len(np.unique(sample, axis=0)))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    # OpenCV 4's stubs reject None for bestLabels and OpenCV 5's accept it: typed loosely so
    # both type-check.
    kmeans: Any = cv2.kmeans
    _, labels, centers = kmeans(sample, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    counts = np.bincount(labels.ravel(), minlength=k)
    order = np.argsort(-counts)
    return [
        ColorSwatch(
            hex="#{:02x}{:02x}{:02x}".format(*(round(c) for c in np.clip(centers[i], 0, 255))),
            fraction=round(float(counts[i]) / take, 4),
        )
        for i in order
    ]


def clip_statistics(frames: np.ndarray, config: ClipStatsConfig) -> ClipStats:
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    luma = _luma(frames)
    motion = float(np.abs(np.diff(luma, axis=0)).mean()) if luma.shape[0] > 1 else 0.0
    return ClipStats(
        frames_sampled=int(frames.shape[0]),
        mean_brightness=round(float(luma.mean()), 4),
        palette=palette(frames, config.palette_size, config.palette_pixels, config.seed),
        motion_magnitude=round(motion, 5),
    )


class ClipStatsAnnotator(Annotator):
    name: ClassVar[str] = "clip_stats"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = ClipStatsConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=16, max_side=256)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5, batch_size=4)
    writes: ClassVar[tuple[str, ...]] = ("stats",)

    config: ClipStatsConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            out.append({"stats": clip_statistics(item.frames, self.config)})
        return out


__all__ = ["ClipStatsAnnotator", "ClipStatsConfig", "clip_statistics", "palette"]
