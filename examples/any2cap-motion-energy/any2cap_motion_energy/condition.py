"""The motion-energy condition type: its summary (what the record stores), how its payload is
decoded, the facts it gives the caption writer and what a short prompt must leave out."""

from __future__ import annotations

import io
import re
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from any2cap_motion_energy.measure import Levels, halves_contrast
from any2capins.plugins import ConditionType, PayloadReader, PayloadRef, Record

NAME = "motion_energy"
# What "still", "low", "moderate" and "high" mean, for the summary and the facts alike.
LEVELS = Levels()


class MotionEnergyCondition(BaseModel):
    """The record's ``conditions.extra["motion_energy"]`` (stored as this model's JSON).

    Only types that map to Arrow are used (str, int, float, bool, lists, nested models,
    Optional): ``MotionEnergyConditionType.arrow_type()`` derives the Arrow struct from it.
    """

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(ge=2)
    timestamps_s: list[float]
    step_s: float = Field(ge=0, description="mean time between sampled frames")
    grid: int = Field(ge=1, description="cells per side of the stored energy maps")
    mean_energy: float = Field(ge=0, le=1, description="mean |luma change| per step, 0..1")
    peak_energy: float = Field(ge=0, le=1)
    peak_time_s: float = Field(description="source time of the frame that changed most")
    first_half: float = Field(ge=0, le=1, description="mean energy of the clip's first half")
    second_half: float = Field(ge=0, le=1)
    level: Literal["still", "low", "moderate", "high"]
    busiest_region: str = Field(description="cell of a 3x3 grid with the most change")
    busiest_share: float = Field(ge=0, le=1)
    description: str
    payload: PayloadRef  # motion_energy.npz: energy [F], maps [F, grid, grid], timestamps_s [F]
    preview: PayloadRef | None = None  # PNG heat map of where the picture changes


def describe(s: MotionEnergyCondition, levels: Levels = LEVELS) -> str:
    """One line for the review pane."""
    if s.level == "still":
        return "still: the sampled frames barely change"
    text = f"{s.level} motion overall, most of it in the {s.busiest_region} of the frame"
    half = halves_contrast(s.first_half, s.second_half, levels)
    return text + (f", concentrated in the {half} half" if half else ", spread over the clip")


def energy_facts(s: MotionEnergyCondition, record: Record, levels: Levels = LEVELS) -> list[str]:
    """Sentences built from the measured numbers only."""
    start = record.clip.start_s
    sampling = f"{s.frames} frames sampled every {s.step_s:.2f} s"
    if s.level == "still":
        return [
            f"Motion energy over {sampling}: the picture barely changes (mean absolute luma "
            f"change {s.mean_energy:.4f} per step on a 0 to 1 scale); nothing visibly moves."
        ]
    facts = [
        f"Motion energy over {sampling}: {s.level} overall (mean absolute luma change "
        f"{s.mean_energy:.3f} per step on a 0 to 1 scale), peaking at "
        f"{max(0.0, s.peak_time_s - start):.1f} s into the clip.",
    ]
    half = halves_contrast(s.first_half, s.second_half, levels)
    if half is not None:
        other = "first" if half == "second" else "second"
        busy, calm = (
            (s.second_half, s.first_half) if half == "second" else (s.first_half, s.second_half)
        )
        facts.append(
            f"Motion is {levels.amount(busy)} in the {half} half of the clip and "
            f"{levels.amount(calm)} in the {other} half (mean change {busy:.3f} against {calm:.3f})."
        )
    else:
        facts.append("Motion is spread over the whole clip rather than concentrated in one half.")
    where = "middle" if s.busiest_region == "center" else s.busiest_region
    facts.append(
        f"Most of the change happens in the {where} of the frame "
        f"({s.busiest_share:.0%} of it in that ninth)."
    )
    return facts


# How much or how fast things move: what the energy curve already gives.
_AMOUNT_OF_MOTION = re.compile(
    r"\b(slowly|quickly|rapidly|swiftly|briskly|sluggishly|frantically|motionless|"
    r"fast-moving|slow-moving|"
    r"(?:almost no|hardly any|barely any|little|some|moderate|strong|lots of|a lot of|much|no|"
    r"constant|intense) (?:motion|movement|change))\b",
    re.IGNORECASE,
)


class MotionEnergyConditionType(ConditionType[MotionEnergyCondition]):
    name: ClassVar[str] = NAME
    summary_model: ClassVar[type[BaseModel]] = MotionEnergyCondition
    description: ClassVar[str] = (
        "per-frame mean absolute luma change between sampled frames, overall and on a grid "
        "(.npz), with a PNG heat map of where the picture changes"
    )

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """``energy`` [F] float32, ``maps`` [F, grid, grid] float32, ``timestamps_s`` [F]
        float64 and, when the record has one, ``preview`` [H, W, 3] uint8 RGB."""
        s = self.summary_of(summary)
        with np.load(io.BytesIO(read(s.payload)), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if s.preview is not None:
            data = np.frombuffer(read(s.preview), np.uint8)
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{s.preview.uri} is not a decodable image")
            arrays["preview"] = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return arrays

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        return energy_facts(self.summary_of(summary), record, LEVELS)

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        return [
            "The motion-energy condition already gives how much the picture changes over time, "
            "when and where: do not state the amount or speed of motion (no 'slowly', "
            "'rapidly', 'little movement', 'motionless'); say what moves and what it does."
        ]

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        found = sorted({m.group(0).lower() for m in _AMOUNT_OF_MOTION.finditer(prompt)})
        if not found:
            return []
        return [
            "states the amount or speed of motion, which the motion-energy condition gives: "
            + ", ".join(f"'{p}'" for p in found)
        ]
