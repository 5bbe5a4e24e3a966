"""Keyframes: a few JPEG frames per clip in the artifact store, the images the caption
writer is shown and the review UI's poster frames.

Also the frame-grid rule: which frames a stage samples when the recipe sets a
``frame_grid`` (:func:`stage_sampling`, the one place that decides it; the recipe resolves
every stage through it and the control export samples target clips with
:func:`grid_sampling`, so conditions and targets share their timestamps).
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
from pydantic import BaseModel, Field

from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.schemas import FrameGrid, Keyframes

# The field of a condition annotator's Config that receives the recipe's grid (recorded in
# the condition it writes); set by the recipe, never in a stage's params.
GRID_FIELD = "frame_grid"


class GridConflict(ValueError):
    """A stage's own sampling sets what the recipe's frame grid decides; ``fields`` names them."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self.reason = (
            "the recipe's frame_grid decides which frames every condition stage samples; "
            "remove it from the stage (only max_side may be set per stage, and not when the "
            "grid has a size)"
        )
        super().__init__(f"{', '.join(fields)}: {self.reason}")


def is_condition_stage(cls: type[Annotator]) -> bool:
    """Whether the annotator writes a condition (``conditions.depth``, a plugin's extra)."""
    return any(w == "conditions" or w.startswith("conditions.") for w in cls.writes)


def grid_sampling(grid: FrameGrid, max_side: int | None = None) -> FrameSampling:
    """The sampling of GRID: its rate or count and cap; frames ``grid.size`` on their longest
    side, else ``max_side`` (a stage's own), else the default."""
    side = grid.size or max_side or FrameSampling().max_side
    return FrameSampling(
        num_frames=grid.num_frames, fps=grid.fps, max_frames=grid.max_frames, max_side=side
    )


def stage_sampling(
    cls: type[Annotator], own: FrameSampling | None, grid: FrameGrid | None
) -> FrameSampling:
    """The frames a stage samples: its own sampling (or its annotator's default), except that
    under a frame grid every condition stage samples the grid's timestamps (at the grid's size
    when it has one). Raises :class:`GridConflict` when the stage's own sampling sets a field
    the grid decides."""
    base = own or cls.default_sampling
    if grid is None or not is_condition_stage(cls):
        return base
    if own is not None:
        allowed = set() if grid.size is not None else {"max_side"}
        clash = sorted(own.model_fields_set - allowed)
        if clash:
            raise GridConflict(clash)
    return grid_sampling(grid, base.max_side)


def with_grid(config: AnnotatorConfig, grid: FrameGrid | None) -> AnnotatorConfig:
    """CONFIG with the recipe's grid in its ``frame_grid`` field (where the Config has one)."""
    if grid is None or GRID_FIELD not in type(config).model_fields:
        return config
    return config.model_copy(update={GRID_FIELD: grid})


def sets_grid_by_hand(params: dict[str, Any]) -> bool:
    """Whether a stage's params name the grid field (only the recipe's top level may)."""
    return GRID_FIELD in params


def grid_field() -> Any:
    """The ``frame_grid`` field of a condition annotator's Config: left out of the config
    (and so of the stage's hash) when there is no grid, so grid-less recipes keep their
    hashes and resume as before."""
    return Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="set by the recipe's frame_grid (recorded in the condition); not a param",
    )


def grid_of(config: BaseModel) -> FrameGrid | None:
    """The grid a condition annotator's config was given by the recipe (None: no grid)."""
    grid = getattr(config, GRID_FIELD, None)
    return grid if isinstance(grid, FrameGrid) else None


class KeyframesConfig(AnnotatorConfig):
    jpeg_quality: int = Field(default=85, ge=10, le=100)


class KeyframesAnnotator(Annotator):
    name: ClassVar[str] = "keyframes"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = KeyframesConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=4, max_side=512)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5, batch_size=4)
    writes: ClassVar[tuple[str, ...]] = ("keyframes",)

    config: KeyframesConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            refs = []
            for i, frame in enumerate(item.frames):
                ok, buf = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality],
                )
                if not ok:
                    raise RuntimeError(f"JPEG encoding failed for frame {i}")
                refs.append(item.artifacts.put(f"{i:03d}.jpg", buf.tobytes(), "image/jpeg"))
            out.append(
                {
                    "keyframes": Keyframes(
                        timestamps_s=[round(t, 4) for t in item.timestamps_s], frames=refs
                    )
                }
            )
        return out
