"""Pose activity facts for the caption writer, measured from the tracked keypoints: how many
people, where they are, posture estimates, raised arms and which limbs move most.

Every threshold below is a plain geometric rule on OpenPose body points (pixel coordinates,
image y pointing down), stated in the fact it produces; "left"/"right" of a limb is the
person's own side, "left"/"right" of the frame the viewer's.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np

from any2capins.annotators.pose._keypoints import (
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NECK,
    NOSE,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    SCORE_THRESHOLD,
)
from any2capins.schemas import PersonActivity

MIN_BODY_POINTS = 4  # a person counts as visible in a frame with this many body points
STILL = 0.05  # limb motion below this many torso lengths per sampled step is "still"
LIMBS: dict[str, tuple[int, ...]] = {
    "right arm": (R_SHOULDER, R_ELBOW, R_WRIST),
    "left arm": (L_SHOULDER, L_ELBOW, L_WRIST),
    "right leg": (R_HIP, R_KNEE, R_ANKLE),
    "left leg": (L_HIP, L_KNEE, L_ANKLE),
    "head": (NOSE, 14, 15, 16, 17),
}
_THIRDS = ("left", "center", "right")


def _angle_from_vertical(top: np.ndarray, bottom: np.ndarray) -> float:
    dx, dy = bottom[0] - top[0], bottom[1] - top[1]
    return math.degrees(math.atan2(abs(dx), dy))  # 0 = straight down, 90 = horizontal


def posture(points: np.ndarray, ok: np.ndarray) -> str:
    """One frame's posture from body points [18, 2] (pixels) and visibility [18].

    lying: the torso (neck to mid-hip) is closer to horizontal than vertical. standing: a
    thigh (hip to knee) within 30 degrees of vertical, with the knee below the hip, and its
    shin, if seen, within 30 degrees too. sitting: an upright torso (within 35 degrees) over a
    thigh more than 50 degrees from vertical. Otherwise (legs hidden, ambiguous): unknown.
    """
    hips = [h for h in (R_HIP, L_HIP) if ok[h]]
    if ok[NECK] and hips:
        mid_hip = points[hips].mean(axis=0)
        torso = _angle_from_vertical(points[NECK], mid_hip)
        if torso > 45:
            return "lying"
    else:
        torso = None
    votes = []
    for hip, knee, ankle in ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE)):
        if not (ok[hip] and ok[knee]):
            continue
        thigh = _angle_from_vertical(points[hip], points[knee])
        shin_ok = not ok[ankle] or _angle_from_vertical(points[knee], points[ankle]) < 30
        if thigh < 30 and points[knee][1] > points[hip][1] and shin_ok:
            votes.append("standing")
        elif thigh > 50 and torso is not None and torso < 35:
            votes.append("sitting")
    if votes and all(v == votes[0] for v in votes):
        return votes[0]
    return "unknown"


def _torso_length(points: np.ndarray, ok: np.ndarray) -> float | None:
    hips = [h for h in (R_HIP, L_HIP) if ok[h]]
    if ok[NECK] and hips:
        return float(np.linalg.norm(points[hips].mean(axis=0) - points[NECK]))
    shoulders = [s for s in (R_SHOULDER, L_SHOULDER) if ok[s]]
    if len(shoulders) == 2:
        # shoulder width is roughly 0.8 torso lengths in adults, facing the camera
        return float(np.linalg.norm(points[R_SHOULDER] - points[L_SHOULDER])) / 0.8
    return None


def measure_person(person_id: int, body: np.ndarray, ok: np.ndarray, width: int) -> PersonActivity:
    """One tracked person's activity from body points [F, 18, 2] (pixels) and visibility
    [F, 18]. A person counts as present in frames with at least 4 body points."""
    frames = np.nonzero(ok.sum(axis=1) >= MIN_BODY_POINTS)[0]
    if len(frames) == 0:
        return PersonActivity(
            person_id=person_id, frames_present=0, position="", horizontal_drift=0.0,
            posture="unknown",
        )  # fmt: skip
    xs = [float(body[f][ok[f]][:, 0].mean()) / width for f in frames]
    postures = Counter(posture(body[f], ok[f]) for f in frames)
    known = {k: v for k, v in postures.items() if k != "unknown"}
    best, count = max(known.items(), key=lambda kv: kv[1]) if known else ("unknown", 0)
    raised: dict[str, int] = {}
    seen_arms: dict[str, int] = {}
    for side, shoulder, wrist in (("right", R_SHOULDER, R_WRIST), ("left", L_SHOULDER, L_WRIST)):
        seen = [f for f in frames if ok[f, shoulder] and ok[f, wrist]]
        if seen:
            seen_arms[side] = len(seen)
            raised[side] = sum(1 for f in seen if body[f, wrist, 1] < body[f, shoulder, 1])
    motion: dict[str, float] = {}
    scale = [s for f in frames if (s := _torso_length(body[f], ok[f]))]
    if len(frames) > 1 and scale:
        torso = float(np.median(scale))
        for name, joints in LIMBS.items():
            steps = []
            for f0, f1 in itertools.pairwise(frames):
                if not (ok[f0, NECK] and ok[f1, NECK]):
                    continue
                # Relative to the neck, so walking across the frame is not limb motion.
                shift = body[f1, NECK] - body[f0, NECK]
                both = [j for j in joints if ok[f0, j] and ok[f1, j]]
                if both:
                    d = body[f1, both] - body[f0, both] - shift
                    steps.append(float(np.linalg.norm(d, axis=1).mean()) / torso)
            if steps:
                motion[name] = round(float(np.mean(steps)), 4)
    return PersonActivity(
        person_id=person_id,
        frames_present=len(frames),
        position=_THIRDS[min(2, int(np.mean(xs) * 3))],
        horizontal_drift=round(xs[-1] - xs[0], 4),
        posture=best,
        posture_frames=count,
        arm_raised_frames=raised,
        arm_seen_frames=seen_arms,
        limb_motion=motion,
    )


def measure_activity(
    keypoints: np.ndarray, scores: np.ndarray, width: int, height: int
) -> tuple[int, int, list[PersonActivity]]:
    """(most people visible at once, median per frame, activity per tracked person) from
    keypoints [F, P, 134, 2] (0..1, masked -1) and scores [F, P, 134]."""
    if keypoints.ndim != 4 or keypoints.shape[2:] != (134, 2):
        raise ValueError(f"expected keypoints [F, P, 134, 2], got {keypoints.shape}")
    ok = scores[:, :, :18] > SCORE_THRESHOLD
    body = keypoints[:, :, :18].astype(np.float64) * np.array([width, height])
    per_frame = (ok.sum(axis=2) >= MIN_BODY_POINTS).sum(axis=1)
    people = [measure_person(p, body[:, p], ok[:, p], width) for p in range(keypoints.shape[1])]
    return int(per_frame.max(initial=0)), int(np.median(per_frame)), people


def person_facts(label: str, person: PersonActivity, frames: int) -> list[str]:
    if person.frames_present == 0:
        return []
    movement = ""
    if abs(person.horizontal_drift) > 0.15:
        movement = f", moving {'right' if person.horizontal_drift > 0 else 'left'} across the frame"
    facts = [
        f"{label} is in the {person.position} of the frame in {person.frames_present} of "
        f"{frames} sampled frames{movement}."
    ]
    if person.posture != "unknown":
        facts.append(
            f"{label} appears to be {person.posture} (estimated from hip, knee and torso angles "
            f"in {person.posture_frames} of {person.frames_present} frames)."
        )
    raised = [
        f"{side} wrist above the shoulder in {up} of {person.arm_seen_frames[side]} frames"
        for side, up in person.arm_raised_frames.items()
        if up * 2 >= person.arm_seen_frames.get(side, 0) > 0
    ]
    if raised:
        facts.append(f"{label} has the {' and the '.join(raised)}.")
    if person.limb_motion:
        ranked = sorted(person.limb_motion.items(), key=lambda kv: kv[1], reverse=True)
        if ranked[0][1] < STILL:
            facts.append(f"{label}'s limbs stay mostly still relative to the body.")
        else:
            moving = [f"{n} ({v:.2f})" for n, v in ranked if v >= STILL][:2]
            facts.append(
                f"{label}'s most moving limbs, in torso lengths per sampled step relative to "
                f"the neck: {', '.join(moving)}."
            )
    return facts


def activity_facts(
    frames: int, people_max: int, people_typical: int, people: list[PersonActivity],
    max_people: int = 3,
) -> list[str]:  # fmt: skip
    """The caption writer's sentences for a pose summary's measured activity."""
    present = [p for p in people if p.frames_present > 0]
    if not present:
        return [f"Pose: no person is detected in any of the {frames} sampled frames."]
    n = len(present)
    facts = [
        f"Pose: up to {people_max} {'person' if people_max == 1 else 'people'} visible at once "
        f"({people_typical} in a typical frame); {n} distinct "
        f"{'person' if n == 1 else 'people'} tracked over {frames} frames."
    ]
    main = sorted(present, key=lambda p: p.frames_present, reverse=True)[:max_people]
    for rank, person in enumerate(sorted(main, key=lambda p: p.person_id)):
        label = f"Person {rank + 1}" if n > 1 else "The person"
        facts.extend(person_facts(label, person, frames))
    return facts


__all__ = [
    "LIMBS",
    "activity_facts",
    "measure_activity",
    "measure_person",
    "person_facts",
    "posture",
]
