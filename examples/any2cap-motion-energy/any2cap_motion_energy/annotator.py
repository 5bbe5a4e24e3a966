"""The ``motion_energy`` stage: frames in, the motion-energy summary and its payload files out.

No model and no Ray here: the engine hands over the sampled frames of a batch of clips and an
artifact sink per clip; this class measures, writes the payload and returns the summary.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import Field

from any2cap_motion_energy.condition import (
    LEVELS,
    MotionEnergyCondition,
    MotionEnergyConditionType,
    describe,
)
from any2cap_motion_energy.measure import EnergyMeasurement, measure_motion_energy
from any2capins.plugins import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    PayloadRef,
    Resources,
)


class MotionEnergyConfig(AnnotatorConfig):
    """The stage's ``params`` in a recipe; unknown keys are refused, naming the key."""

    grid: int = Field(default=8, ge=1, le=64, description="cells per side of the energy maps")
    preview: bool = Field(default=True, description="write the PNG heat map")
    preview_max: float = Field(
        default=0.1, gt=0, le=1, description="mean luma change drawn at full brightness"
    )


def heat_map_png(change: np.ndarray, full_scale: float) -> bytes:
    """[H, W] mean luma change (0..1) -> PNG, inferno colours, ``full_scale`` = brightest."""
    u8 = np.rint(np.clip(change / full_scale, 0.0, 1.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO))
    if not ok:
        raise RuntimeError("PNG encoding of the motion-energy heat map failed")
    return bytes(buf.tobytes())


class MotionEnergyAnnotator(Annotator):
    name: ClassVar[str] = "motion_energy"
    # Bump when the output changes for the same config: the config hash includes it, so a
    # resumed run recomputes this stage (and only this stage).
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = MotionEnergyConfig
    # Checked when the stage is built (before any work): the heat map is drawn with OpenCV.
    requires: ClassVar[tuple[str, ...]] = ("cv2",)
    # A rate, not a count per clip: the change between samples then means the same on a
    # 3-second and a 30-second clip (up to max_frames).
    default_sampling: ClassVar[FrameSampling] = FrameSampling(
        num_frames=None, fps=4.0, max_frames=64, max_side=256
    )
    # Cheap numpy work: half a CPU and large batches; no GPU.
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5, batch_size=8, concurrency=1)
    writes: ClassVar[tuple[str, ...]] = (MotionEnergyConditionType.output_key(),)

    config: MotionEnergyConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            try:
                out.append(self._one(item))
            except Exception as e:  # noqa: BLE001 - one bad clip must not fail its batch
                out.append(e)
        return out

    def _one(self, item: ClipInput) -> dict[str, Any]:
        cfg = self.config
        span = (item.clip.start_s, item.clip.end_s)
        m = measure_motion_energy(item.frames, item.timestamps_s, span, cfg.grid)
        times = np.asarray(item.timestamps_s, dtype=np.float64)
        buf = io.BytesIO()
        np.savez_compressed(buf, energy=m.energy, maps=m.maps, timestamps_s=times)
        payload = item.artifacts.put("motion_energy.npz", buf.getvalue(), "application/x-npz")
        preview = None
        if cfg.preview:
            png = heat_map_png(m.change, cfg.preview_max)
            preview = item.artifacts.put("motion_energy.png", png, "image/png")
        summary = self._summary(m, item.timestamps_s, payload, preview)
        return MotionEnergyConditionType.to_output(summary)

    def _summary(
        self,
        m: EnergyMeasurement,
        timestamps_s: list[float],
        payload: PayloadRef,
        preview: PayloadRef | None,
    ) -> MotionEnergyCondition:
        times = np.asarray(timestamps_s, dtype=np.float64)
        summary = MotionEnergyCondition(
            frames=len(m.energy),
            timestamps_s=[round(t, 4) for t in timestamps_s],
            step_s=round(float(np.diff(times).mean()), 4),
            grid=self.config.grid,
            mean_energy=round(m.mean, 6),
            peak_energy=round(m.peak, 6),
            peak_time_s=round(float(times[m.peak_index]), 4),
            first_half=round(m.first_half, 6),
            second_half=round(m.second_half, 6),
            level=LEVELS.word(m.mean),
            busiest_region=m.busiest_region,
            busiest_share=round(m.busiest_share, 4),
            description="",
            payload=payload,
            preview=preview,
        )
        summary.description = describe(summary)
        return summary
