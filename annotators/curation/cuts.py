"""The ``cuts`` score: how many shot boundaries (hard cuts) lie inside a clip, so clips that
straddle a cut can be dropped or re-split.

PySceneDetect's ContentDetector (the detector ``pipeline/spans.py`` cuts sources with) runs
over the frames the engine decodes for this stage, densely (``fps`` sampling), so it works
for any source URI and reader the engine handles, and never opens the file itself.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators.base import AnnotatorConfig, ClipInput, FrameSampling, Resources
from any2capins.annotators.curation._common import ScoreAnnotator, check_frames
from any2capins.schemas import ModelInfo

CUT_SCORES: tuple[str, ...] = ("cuts",)


class CutsConfig(AnnotatorConfig):
    threshold: float = Field(
        default=27.0, gt=0, description="ContentDetector threshold (its default: 27)"
    )
    min_scene_len_s: float = Field(
        default=0.5,
        ge=0,
        description="a cut closer than this to the previous cut or to either end of the clip "
        "is not counted",
    )


def cut_times(frames: np.ndarray, timestamps_s: list[float], config: CutsConfig) -> list[float]:
    """Times (s, on the source's timeline) of the hard cuts inside [T, H, W, 3] RGB frames
    shown at ``timestamps_s`` (dense, e.g. 8 fps or more)."""
    from scenedetect import ContentDetector, FrameTimecode
    from scenedetect.detector import FlashFilter

    check_frames(frames)
    if len(timestamps_s) != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {len(timestamps_s)} timestamps")
    if len(timestamps_s) < 2:
        return []
    span = timestamps_s[-1] - timestamps_s[0]
    # The detector counts frames at a constant rate; the sampled frames are evenly spaced.
    rate = (len(timestamps_s) - 1) / span if span > 0 else 1.0
    detector = ContentDetector(
        threshold=config.threshold,
        min_scene_len=float(config.min_scene_len_s),
        # SUPPRESS emits each cut as it is seen (MERGE would hold cuts back for post_process)
        filter_mode=FlashFilter.Mode.SUPPRESS,
    )
    found: list[float] = []
    for i, frame in enumerate(frames):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        for cut in detector.process_frame(FrameTimecode(i, fps=rate), bgr):
            found.append(timestamps_s[min(int(cut.frame_num), len(timestamps_s) - 1)])
    end = timestamps_s[-1]
    return [t for t in found if end - t >= config.min_scene_len_s]


class CutsAnnotator(ScoreAnnotator):
    """``cuts``: the number of hard cuts inside the clip (0 for a single shot)."""

    name: ClassVar[str] = "cuts"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = CutsConfig
    requires: ClassVar[tuple[str, ...]] = ("scenedetect",)
    score_names: ClassVar[tuple[str, ...]] = CUT_SCORES
    default_sampling: ClassVar[FrameSampling] = FrameSampling(
        num_frames=None, fps=12.0, max_frames=720, max_side=256
    )
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=2)

    config: CutsConfig

    def setup(self) -> None:
        import scenedetect

        self._models = [
            ModelInfo(
                model_id="pyscenedetect/ContentDetector",
                version=f"scenedetect {scenedetect.__version__}",
                license="BSD-3-Clause",
            )
        ]

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def score_with_details(self, item: ClipInput) -> tuple[dict[str, float], dict[str, str]]:
        times = cut_times(item.frames, item.timestamps_s, self.config)
        details = {
            "frames": str(item.frames.shape[0]),
            "cut_times_s": ", ".join(f"{t:.3f}" for t in times),
        }
        return {"cuts": float(len(times))}, details


__all__ = ["CUT_SCORES", "CutsAnnotator", "CutsConfig", "cut_times"]
