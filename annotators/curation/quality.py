"""The ``quality`` scores: sharpness, exposure and degenerate frames (black, white, flat,
frozen) from sampled frames, with plain OpenCV/numpy arithmetic."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators.base import AnnotatorConfig, ClipInput, FrameSampling, Resources
from any2capins.annotators.curation._common import ScoreAnnotator, check_frames, fit_long_side, grey
from any2capins.schemas import ModelInfo

QUALITY_SCORES: tuple[str, ...] = (
    "sharpness",
    "luma_mean",
    "clipped_fraction",
    "black_fraction",
    "white_fraction",
    "flat_fraction",
    "frozen_fraction",
)


class QualityConfig(AnnotatorConfig):
    working_size: int = Field(
        default=256, ge=32, description="longer side (px) the frames are scaled to"
    )
    clip_low: int = Field(default=2, ge=0, le=255, description="luma <= this is clipped black")
    clip_high: int = Field(default=253, ge=0, le=255, description="luma >= this is clipped white")
    black_luma: float = Field(
        default=0.06, ge=0, le=1, description="a frame whose mean luma (0..1) is below is black"
    )
    white_luma: float = Field(
        default=0.94, ge=0, le=1, description="a frame whose mean luma (0..1) is above is white"
    )
    flat_std: float = Field(
        default=0.01, ge=0, description="a frame whose luma std (0..1) is below is flat"
    )
    frozen_change: float = Field(
        default=0.002,
        ge=0,
        description="consecutive frames whose mean absolute luma change (0..1) is below are frozen",
    )


def quality_scores(frames: np.ndarray, config: QualityConfig) -> dict[str, float]:
    """Scores of [T, H, W, 3] RGB frames, each frame first scaled to ``working_size``:

    - ``sharpness``: variance of the 3x3 Laplacian of the grey (0..255) frame, mean over
      frames; higher is sharper (a blurred copy of a clip scores lower). Depends on the
      working size, which is why it is fixed.
    - ``luma_mean``: mean Rec.601 luma, 0..1.
    - ``clipped_fraction``: fraction of pixels at luma <= 2 or >= 253 (of 255).
    - ``black_fraction`` / ``white_fraction`` / ``flat_fraction``: fraction of frames whose
      mean luma is under ``black_luma`` / over ``white_luma``, or whose luma standard
      deviation is under ``flat_std`` (a frame of one colour).
    - ``frozen_fraction``: fraction of consecutive frame pairs whose mean absolute luma change
      is under ``frozen_change`` (0 for a clip of one frame).
    """
    check_frames(frames)
    greys = [grey(fit_long_side(f, config.working_size)) for f in frames]
    stack = np.stack(greys)
    sharp = [float(cv2.Laplacian(g, cv2.CV_64F).var()) for g in greys]
    unit = stack.astype(np.float32) / 255.0
    means = unit.mean(axis=(1, 2))
    stds = unit.std(axis=(1, 2))
    clipped = (stack <= config.clip_low) | (stack >= config.clip_high)
    if len(greys) > 1:
        change = np.abs(np.diff(unit, axis=0)).mean(axis=(1, 2))
        frozen = float((change < config.frozen_change).mean())
    else:
        frozen = 0.0
    return {
        "sharpness": round(float(np.mean(sharp)), 3),
        "luma_mean": round(float(means.mean()), 6),
        "clipped_fraction": round(float(clipped.mean()), 6),
        "black_fraction": round(float((means < config.black_luma).mean()), 6),
        "white_fraction": round(float((means > config.white_luma).mean()), 6),
        "flat_fraction": round(float((stds < config.flat_std).mean()), 6),
        "frozen_fraction": round(frozen, 6),
    }


class QualityAnnotator(ScoreAnnotator):
    """Sharpness, exposure and degenerate-frame scores per clip (CPU, cheap)."""

    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = QualityConfig
    score_names: ClassVar[tuple[str, ...]] = QUALITY_SCORES
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=16, max_side=256)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5, batch_size=4)

    config: QualityConfig

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                model_id="laplacian-variance+luma-statistics",
                version=f"{self.version} (opencv {cv2.__version__})",
                license="Apache-2.0",
            )
        ]

    def score(self, item: ClipInput) -> dict[str, float]:
        return quality_scores(item.frames, self.config)


__all__ = ["QUALITY_SCORES", "QualityAnnotator", "QualityConfig", "quality_scores"]
