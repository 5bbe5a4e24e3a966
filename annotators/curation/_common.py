"""What the score stages share: how a score dict becomes record fields, luma, working sizes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import cv2
import numpy as np

from any2capins.annotators.base import PROVENANCE_KEY, Annotator, ClipInput

SCORES_FIELD = "scores"


def score_fields(names: Iterable[str]) -> tuple[str, ...]:
    """The dotted record paths a stage declares in ``writes``: one key of ``record.scores``
    per score, so stages writing into the same dict never touch each other's keys."""
    return tuple(f"{SCORES_FIELD}.{name}" for name in names)


def score_output(scores: Mapping[str, float], names: tuple[str, ...]) -> dict[str, float]:
    """``{"scores.<name>": value}`` for exactly ``names``; a non-finite value is an error (the
    record holds plain floats, and NaN would read as "no measurement" downstream)."""
    if set(scores) != set(names):
        raise ValueError(f"scores {sorted(scores)} are not the declared {sorted(names)}")
    out: dict[str, float] = {}
    for name in names:
        value = float(scores[name])
        if not math.isfinite(value):
            raise ValueError(f"score {name!r} is not finite ({value})")
        out[f"{SCORES_FIELD}.{name}"] = value
    return out


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")


def grey(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] uint8 Rec.601 luma (OpenCV's weights)."""
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))


def fit_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """``image`` scaled so its longer side is ``long_side`` (area filter down, linear up)."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, size, interpolation=interp))


class ScoreAnnotator(Annotator):
    """A stage that writes the scores named in ``score_names`` into ``record.scores``.

    Subclasses implement :meth:`score` for one clip (or override ``__call__`` to batch
    across clips); a clip whose scoring raises fails alone.
    """

    score_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.score_names:
            cls.writes = score_fields(cls.score_names)

    def score(self, item: ClipInput) -> dict[str, float]:
        raise NotImplementedError

    def score_with_details(self, item: ClipInput) -> tuple[dict[str, float], dict[str, str]]:
        """The clip's scores and the details for the stage's provenance entry."""
        return self.score(item), {"frames": str(item.frames.shape[0])}

    def output(self, scores: Mapping[str, float], details: dict[str, str]) -> dict[str, Any]:
        fields: dict[str, Any] = dict(score_output(scores, self.score_names))
        fields[PROVENANCE_KEY] = details
        return fields

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            try:
                out.append(self.output(*self.score_with_details(item)))
            except Exception as e:  # noqa: BLE001 - this clip's failure, not the batch's
                out.append(e)
        return out
