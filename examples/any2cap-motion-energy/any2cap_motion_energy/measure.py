"""The measurement itself, numpy only: how much the picture changes from one sampled frame to
the next, over the whole frame and on a coarse grid, and the clip-level numbers the summary,
the grounding facts and the review pane are built from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rec.601 luma weights, as the built-in clip statistics use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


@dataclass(frozen=True)
class Levels:
    """Upper bounds (mean absolute luma change per sampled step, 0..1) of each level.

    ``still`` leaves room for codec noise: a static shot encoded with H.264 changes by up
    to ~0.002 across a keyframe.
    """

    still_below: float = 0.004
    low_below: float = 0.01
    moderate_below: float = 0.03

    def word(self, energy: float) -> str:
        if energy < self.still_below:
            return "still"
        if energy < self.low_below:
            return "low"
        if energy < self.moderate_below:
            return "moderate"
        return "high"

    def amount(self, energy: float) -> str:
        """The level as a phrase that reads after "motion is"."""
        word = self.word(energy)
        return "nearly absent" if word == "still" else word


@dataclass(frozen=True)
class EnergyMeasurement:
    """Everything measured on one clip's sampled frames."""

    energy: np.ndarray  # [F] float32; energy[f] = mean |luma_f - luma_(f-1)|, energy[0] = 0
    maps: np.ndarray  # [F, grid, grid] float32, the same per grid cell; maps[0] = 0
    change: np.ndarray  # [H, W] float32, mean |luma change| per pixel over all steps
    mean: float  # over the F - 1 steps
    peak: float
    peak_index: int  # the frame whose step from its predecessor changed most
    first_half: float  # mean over the steps whose midpoint lies in the clip's first half
    second_half: float
    busiest_region: str  # cell of a 3x3 grid with the most change
    busiest_share: float  # its share of all change


def luma(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB -> [T, H, W] float32 luma in 0..1."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {frames.shape}")
    return (frames.astype(np.float32) @ _LUMA) / 255.0


def _cell_means(values: np.ndarray, grid: int) -> np.ndarray:
    """[..., H, W] -> [..., grid, grid] means over an even split of rows and columns."""
    rows = np.array_split(np.arange(values.shape[-2]), grid)
    cols = np.array_split(np.arange(values.shape[-1]), grid)
    out = np.empty((*values.shape[:-2], grid, grid), dtype=np.float32)
    for i, r in enumerate(rows):
        band = values[..., r, :]
        for j, c in enumerate(cols):
            out[..., i, j] = band[..., c].mean(axis=(-2, -1))
    return out


def region_name(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return f"middle {_COLS[col]}"
    return f"{_ROWS[row]} {_COLS[col]}"


def measure_motion_energy(
    frames: np.ndarray,
    timestamps_s: list[float],
    span: tuple[float, float],
    grid: int = 8,
) -> EnergyMeasurement:
    """Motion energy of ``frames`` sampled at ``timestamps_s`` inside the clip ``span``.

    Needs at least two frames: with one there is no change to measure, and a zero would
    claim the clip is still.
    """
    if len(timestamps_s) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(timestamps_s)} timestamps")
    if len(frames) < 2:
        raise ValueError(
            f"motion energy needs at least 2 sampled frames, got {len(frames)} "
            "(a clip this short has nothing to compare)"
        )
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    y = luma(frames)
    diff = np.abs(np.diff(y, axis=0))  # [F-1, H, W]
    steps = diff.mean(axis=(1, 2))
    energy = np.concatenate([[0.0], steps]).astype(np.float32)
    maps = np.concatenate([np.zeros((1, grid, grid), np.float32), _cell_means(diff, grid)]).astype(
        np.float32
    )
    change = diff.mean(axis=0).astype(np.float32)

    times = np.asarray(timestamps_s, dtype=np.float64)
    midpoints = (times[1:] + times[:-1]) / 2
    middle = (span[0] + span[1]) / 2
    early, late = steps[midpoints < middle], steps[midpoints >= middle]
    mean = float(steps.mean())
    first = float(early.mean()) if early.size else mean
    second = float(late.mean()) if late.size else mean

    thirds = _cell_means(change, 3)
    total = float(thirds.sum())
    row, col = (int(v) for v in np.unravel_index(int(np.argmax(thirds)), thirds.shape))
    peak_step = int(np.argmax(steps))
    return EnergyMeasurement(
        energy=energy,
        maps=maps,
        change=change,
        mean=mean,
        peak=float(steps[peak_step]),
        peak_index=peak_step + 1,
        first_half=first,
        second_half=second,
        busiest_region=region_name(row, col),
        busiest_share=float(thirds[row, col]) / total if total > 0 else 0.0,
    )


def halves_contrast(first: float, second: float, levels: Levels) -> str | None:
    """'first' or 'second' when motion clearly concentrates in that half, else None.

    Clearly: the busier half is at least twice the other and not itself still.
    """
    busier, calmer, name = (
        (second, first, "second") if second >= first else (first, second, "first")
    )
    if busier < levels.still_below or busier < 2 * calmer:
        return None
    return name
