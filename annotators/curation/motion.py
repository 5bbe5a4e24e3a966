"""The ``motion`` scores: dense optical flow (OpenCV DIS) between consecutive sampled frames.

Flow tells a static shot from a dynamic one (camera or subject moving) where frame differences
mostly measure texture and lighting changes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators.base import AnnotatorConfig, ClipInput, FrameSampling, Resources
from any2capins.annotators.curation._common import ScoreAnnotator, check_frames, fit_long_side, grey
from any2capins.schemas import ModelInfo

MOTION_SCORES: tuple[str, ...] = ("motion_mean", "motion_fraction")

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class MotionConfig(AnnotatorConfig):
    working_size: int = Field(
        default=320, ge=32, description="longer side (px) the frames are scaled to for the flow"
    )
    preset: Literal["ultrafast", "fast", "medium"] = Field(
        default="fast", description="OpenCV DIS preset (speed against accuracy)"
    )
    moving_threshold: float = Field(
        default=0.01,
        gt=0,
        description="a pixel moves when its flow exceeds this many frame diagonals per second",
    )


def motion_scores(
    frames: np.ndarray, timestamps_s: list[float], config: MotionConfig
) -> dict[str, float]:
    """``motion_mean`` and ``motion_fraction`` of [T, H, W, 3] RGB frames shown at
    ``timestamps_s``.

    - ``motion_mean``: mean optical-flow magnitude, in frame diagonals per second (flow in
      pixels / the frame's diagonal in pixels / the seconds between the two frames), so it
      does not depend on the frame size or the sampling rate. A pan that crosses the whole
      frame width of a 16:9 shot in 2 s is about 0.44.
    - ``motion_fraction``: fraction of the frame whose flow exceeds ``moving_threshold``
      (diagonals per second; default 0.01), 0..1.

    Both are averaged over the pairs of consecutive frames; a clip of one frame scores 0.
    """
    check_frames(frames)
    if len(timestamps_s) != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {len(timestamps_s)} timestamps")
    dis = cv2.DISOpticalFlow_create(_PRESETS[config.preset])  # type: ignore[attr-defined]
    greys = [grey(fit_long_side(f, config.working_size)) for f in frames]
    h, w = greys[0].shape
    diagonal = float(np.hypot(h, w))
    means: list[float] = []
    fractions: list[float] = []
    for i in range(1, len(greys)):
        dt = timestamps_s[i] - timestamps_s[i - 1]
        if dt <= 0:
            continue
        flow = dis.calc(greys[i - 1], greys[i], None)
        rate = np.linalg.norm(flow, axis=2) / diagonal / dt
        means.append(float(rate.mean()))
        fractions.append(float((rate > config.moving_threshold).mean()))
    if not means:
        return {"motion_mean": 0.0, "motion_fraction": 0.0}
    return {
        "motion_mean": round(float(np.mean(means)), 6),
        "motion_fraction": round(float(np.mean(fractions)), 6),
    }


class MotionAnnotator(ScoreAnnotator):
    """Optical-flow motion per clip (CPU, cheap): static against dynamic shots."""

    name: ClassVar[str] = "motion"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = MotionConfig
    score_names: ClassVar[tuple[str, ...]] = MOTION_SCORES
    default_sampling: ClassVar[FrameSampling] = FrameSampling(
        num_frames=None, fps=4.0, max_frames=64, max_side=320
    )
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=4)

    config: MotionConfig

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                model_id=f"opencv-dis-optical-flow/{self.config.preset}",
                version=f"opencv {cv2.__version__}",
                license="Apache-2.0",
            )
        ]

    def score(self, item: ClipInput) -> dict[str, float]:
        return motion_scores(item.frames, item.timestamps_s, self.config)


__all__ = ["MOTION_SCORES", "MotionAnnotator", "MotionConfig", "motion_scores"]
