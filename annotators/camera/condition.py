"""The camera condition type: the CameraCondition summary, its RealEstate10K payload decoded
into arrays, the motion facts it gives the caption writer, and the rule that a short prompt
given with a camera condition does not describe the camera (checked mechanically).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from any2capins.annotators.camera.formats import parse_realestate10k
from any2capins.annotators.camera.labels import VOCABULARY
from any2capins.annotators.camera.trajectory import Trajectory
from any2capins.annotators.conditions import ConditionType, PayloadReader
from any2capins.schemas import CameraCondition, Record, Suitability

CAMERA_SOURCES = {
    "estimated": "estimated from the video",
    "realestate10k": "imported from a RealEstate10K camera file",
    "motionctrl": "imported from a MotionCtrl camera file",
}

# Camera talk in a prompt. Words that also name things ("pan", "truck", "dolly", "zoom",
# "orbit") only count with a direction or a camera context, so "a frying pan" or "a red
# truck" are not flagged.
CAMERA_PHRASES = re.compile(
    r"\b("
    r"pan(?:s|ning|ned)?\s+(?:left|right|up|down|across|over|around|to\s+the\s+(?:left|right))"
    r"|panning|pan\s+shot"
    r"|tilt(?:s|ing|ed)?\s+(?:up|down)|tilting\s+shot"
    r"|roll(?:s|ing|ed)?\s+(?:clockwise|counter-?clockwise|anti-?clockwise)"
    r"|zoom(?:s|ing|ed)?(?:[\s-]+(?:in|out|into|onto))?"
    r"|dolly(?:ing)?\s+(?:in|out|forward|back(?:ward)?|shot|zoom)|dollies|dollying"
    r"|truck(?:s|ing|ed)?\s+(?:left|right)|trucking\s+shot"
    r"|pedestal(?:s|ing|led|ling)?\s+(?:up|down)"
    r"|orbit(?:s|ing)?\s+(?:left|right|around)|orbiting|arc\s+shot"
    r"|tracking\s+shot|crane\s+shot|dolly\s+shot|push(?:es|ing)?\s+in|pull(?:s|ing)?\s+(?:out|back)"
    r"|handheld|hand-held|steadicam|shaky\s+(?:camera|cam|footage|shot)"
    r"|(?:static|fixed|stationary|still|locked[- ]off|steady|moving)\s+(?:camera|shot|frame)"
    r"|camera\s+(?:\w+\s+){0,2}?(?:moves?|moving|pans?|tilts?|zooms?|follows?|tracks?|"
    r"pushes|pulls|rises|descends|circles|orbits|sweeps|glides|travels|rotates|turns|"
    r"shakes|stays|remains|holds|is\s+(?:static|still|fixed|stationary))"
    r")\b",
    re.IGNORECASE,
)


class CameraConditionType(ConditionType[CameraCondition]):
    name: ClassVar[str] = "camera"
    summary_model: ClassVar[type[BaseModel]] = CameraCondition
    description: ClassVar[str] = (
        "per-frame intrinsics and world-to-camera extrinsics (RealEstate10K convention), "
        "estimated with OpenCV or imported, plus motion labels"
    )

    # An estimate is trusted when enough features were tracked, most of them agree with the
    # final cameras, those that agree do so closely (working-resolution pixels, inliers are
    # within 3 px) and tracking was rarely lost. The demo clips (static camera, people moving
    # in front) measure 210-540 tracks, inlier ratio 0.43-0.99, RMS 0.15-1.0 px, nothing lost;
    # the close-up of hands pouring coffee is the one with half of its tracks on moving things.
    default_thresholds: ClassVar[dict[str, float]] = {
        "min_mean_tracks": 50.0,
        "min_inlier_ratio": 0.3,
        "max_reprojection_rms_px": 1.5,
        "max_lost_fraction": 0.1,
    }

    def suitability(
        self, summary: BaseModel, record: Record, thresholds: Mapping[str, float]
    ) -> Suitability:
        """Imported trajectories always suit; an estimate suits when its quality figures pass."""
        s = self.summary_of(summary)
        limits = {
            k: float(thresholds[k])
            for k in (
                "min_mean_tracks",
                "min_inlier_ratio",
                "max_reprojection_rms_px",
                "max_lost_fraction",
            )
        }
        if s.source != "estimated":
            return Suitability(
                suitable=True,
                reason=f"the trajectory is {CAMERA_SOURCES.get(s.source, s.source)} ({s.frames} poses), "
                "so it is trusted without quality checks",
                measured={"frames": float(s.frames)},
                thresholds=limits,
            )
        q = s.quality
        measured = {
            "mean_tracks": q.get("mean_tracks", 0.0),
            "inlier_ratio": q.get("inlier_ratio", 0.0),
            "reprojection_rms_px": q.get("reprojection_rms_px", 0.0),
            "lost_fraction": q.get("lost_fraction", 1.0),
            "usable": 1.0 if s.usable else 0.0,
        }
        checks = [
            (
                measured["mean_tracks"] >= limits["min_mean_tracks"],
                f"{measured['mean_tracks']:.0f} tracked points per frame (needs >= "
                f"{limits['min_mean_tracks']:.0f})",
            ),
            (
                measured["inlier_ratio"] >= limits["min_inlier_ratio"],
                f"inlier ratio {measured['inlier_ratio']:.2f} (needs >= "
                f"{limits['min_inlier_ratio']:.2f})",
            ),
            (
                measured["reprojection_rms_px"] <= limits["max_reprojection_rms_px"],
                f"reprojection RMS {measured['reprojection_rms_px']:.2f} px (needs <= "
                f"{limits['max_reprojection_rms_px']:.2f} px)",
            ),
            (
                measured["lost_fraction"] <= limits["max_lost_fraction"],
                f"tracking lost in {measured['lost_fraction']:.0%} of frames (needs <= "
                f"{limits['max_lost_fraction']:.0%})",
            ),
        ]
        failed = [text for ok, text in checks if not ok]
        if not s.usable:
            reason = f"the estimate is unusable ({s.description}): " + "; ".join(failed or ["-"])
        elif failed:
            reason = "the estimated trajectory is not trustworthy: " + "; ".join(failed)
        else:
            reason = "the estimated trajectory is trustworthy: " + "; ".join(t for _, t in checks)
        return Suitability(
            suitable=s.usable and not failed, reason=reason, measured=measured, thresholds=limits
        )

    def trajectory(self, summary: BaseModel, read: PayloadReader) -> Trajectory:
        """The stored trajectory; estimated ones are in scene-depth units (depth 1)."""
        s = self.summary_of(summary)
        traj = parse_realestate10k(read(s.trajectory).decode("utf-8"), s.trajectory.uri)
        return traj.replace(scene_depth=1.0) if s.source == "estimated" else traj

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """``intrinsics`` [F, 4] (fx/W, fy/H, cx/W, cy/H), ``w2c`` [F, 3, 4], ``c2w``
        [F, 4, 4] and ``timestamps_s`` [F]; OpenCV axes (x right, y down, z forward)."""
        traj = self.trajectory(summary, read)
        return {
            "intrinsics": np.array(traj.intrinsics),
            "w2c": np.array(traj.w2c),
            "c2w": traj.c2w(),
            "timestamps_s": np.array(traj.timestamps_s),
        }

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        if not s.usable:
            return ["Camera motion could not be measured from the video (too little to track)."]
        known = [lab for lab in s.labels if lab in VOCABULARY]
        where = CAMERA_SOURCES.get(s.source, s.source)
        facts = [
            f"Camera motion ({where}, {s.frames} camera poses over "
            f"{record.clip.duration_s:.1f} s): {s.description}."
        ]
        if known == ["static"]:
            facts.append("The camera does not move: no pan, tilt, roll, translation or zoom.")
        else:
            facts.append(f"Camera motion labels, largest first: {', '.join(known)}.")
        if s.speed:
            facts.append(f"The camera moves {s.speed}.")
        if "shaky" in known:
            facts.append("The footage shakes like a handheld camera.")
        return facts

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        return [
            "The camera trajectory is given as a condition: the short prompt must not describe "
            "the camera or how it moves (no pan, tilt, roll, zoom, dolly, truck, pedestal, "
            "orbit, tracking or handheld shot, and no 'static camera' either).",
            "Describe what is in the scene and what happens; framing words such as 'close-up' "
            "are fine.",
        ]

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        found = sorted({m.group(0).lower() for m in CAMERA_PHRASES.finditer(prompt)})
        if not found:
            return []
        return [
            "describes the camera or its motion, which the camera condition already gives: "
            + ", ".join(f"'{p}'" for p in found)
        ]


__all__ = ["CAMERA_PHRASES", "CAMERA_SOURCES", "CameraConditionType"]
