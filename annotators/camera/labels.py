"""Camera-motion labels from any trajectory: a fixed CameraBench-style vocabulary, a speed
word and a one-sentence description, all independent of the trajectory's arbitrary scale.

How each label is measured (thresholds in :class:`LabelThresholds`, documented in
docs/camera.md):

* **Rotation** (pan/tilt/roll) is integrated in the camera's own frame: the per-step
  rotations ``R_i R_{i+1}^T`` are summed as axis-angle vectors, so a pan of 200 degrees is
  not folded back and a pan while tilting is split per axis. Components: x = tilt up,
  y = pan right, z = roll clockwise (as seen from behind the camera).
* **Translation** (truck/pedestal/dolly) is the sum of the per-step camera displacements
  expressed in the camera's axes at that step (x right, y down, z forward). Only its
  *direction* and *straightness* (|sum| / path length) are used, plus its size relative to
  the scene depth when the trajectory knows it (estimated trajectories do); multiplying
  every translation by any factor therefore changes no label.
* **Zoom** is the ratio of the last focal length to the first.
* **Orbit** is a sideways translation combined with a pan towards the side it leaves
  (truck left + pan right = orbit left): the optical axes converge on a point in front.
* **Shaky** is high-frequency jitter: the residual of the integrated rotation (and, with a
  known depth, the translation in scene depths) after a local quadratic fit over one second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from any2capins.annotators.camera.trajectory import FloatArray, Trajectory, rotvec_from_matrix

VOCABULARY: tuple[str, ...] = (
    "static",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "roll_cw",
    "roll_ccw",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "pedestal_down",
    "dolly_in",
    "dolly_out",
    "zoom_in",
    "zoom_out",
    "orbit_left",
    "orbit_right",
    "shaky",
)
SPEEDS: tuple[str, ...] = ("slowly", "moderately", "quickly")

# (present tense, gerund) for the description sentence
_PHRASES: dict[str, tuple[str, str]] = {
    "pan_left": ("pans left", "panning left"),
    "pan_right": ("pans right", "panning right"),
    "tilt_up": ("tilts up", "tilting up"),
    "tilt_down": ("tilts down", "tilting down"),
    "roll_cw": ("rolls clockwise", "rolling clockwise"),
    "roll_ccw": ("rolls counter-clockwise", "rolling counter-clockwise"),
    "truck_left": ("trucks left", "trucking left"),
    "truck_right": ("trucks right", "trucking right"),
    "pedestal_up": ("pedestals up", "pedestaling up"),
    "pedestal_down": ("pedestals down", "pedestaling down"),
    "dolly_in": ("dollies in", "dollying in"),
    "dolly_out": ("dollies out", "dollying out"),
    "zoom_in": ("zooms in", "zooming in"),
    "zoom_out": ("zooms out", "zooming out"),
    "orbit_left": ("orbits left", "orbiting left"),
    "orbit_right": ("orbits right", "orbiting right"),
}

# Used when a trajectory has no timestamps (all equal): spacing assumed between frames.
FALLBACK_FPS = 8.0


@dataclass(frozen=True)
class LabelThresholds:
    """Every number the labeller decides with; all are scale-free."""

    rotation_min_deg: float = 3.0  # integrated rotation about an axis to count at all ...
    rotation_min_rate_deg_s: float = 1.0  # ... and on long clips this much per second ...
    rotation_rate_cap_deg: float = 6.0  # ... up to this: slow handheld drift stays static
    secondary_ratio: float = 0.25  # a further rotation axis needs this share of the largest
    translation_min_depths: float = 0.05  # known depth: net travel >= 5% of the scene depth
    straightness_min: float = 0.5  # |net displacement| / path length for a deliberate move
    axis_min_fraction: float = 0.4  # share of the unit displacement for a translation axis
    zoom_min_ratio: float = 1.08  # focal change for zoom in / out
    orbit_min_pan_deg: float = 8.0  # pan needed to read truck + opposite pan as an orbit
    shake_rotation_deg: float = 0.4  # RMS rotation jitter for "shaky"
    shake_translation_depths: float = 0.01  # RMS translation jitter (known depth only)
    shake_window_s: float = 1.0  # local quadratic fit window separating jitter from motion
    slow_below_deg_s: float = 5.0  # apparent motion rate: slowly < 5 deg/s
    fast_from_deg_s: float = 15.0  # quickly >= 15 deg/s, moderately in between
    # Without a depth scale the speed of a translation is unknowable; the camera is taken to
    # travel this fraction of the scene depth over the clip.
    nominal_travel_depths: float = 0.5
    # Path lengths below this share of the camera's distance from the origin are rounding.
    translation_noise_ratio: float = 1e-6


DEFAULT_THRESHOLDS = LabelThresholds()


@dataclass(frozen=True)
class MotionAnalysis:
    """Labels plus the measurements they were decided from."""

    labels: list[str]
    speed: str  # "" for a camera that does not move
    description: str
    rotation_deg: tuple[float, float, float]  # integrated (tilt up, pan right, roll cw)
    translation_direction: tuple[float, float, float]  # unit (right, down, forward) or zeros
    translation_depths: float | None  # net travel in scene depths, when the depth is known
    straightness: float
    zoom_ratio: float
    jitter_rotation_deg: float
    jitter_translation_depths: float | None
    rate_deg_s: float  # apparent angular rate of the primary motion

    def as_tuple(self) -> tuple[list[str], str, str]:
        return self.labels, self.speed, self.description


def _times(trajectory: Trajectory) -> FloatArray:
    t = np.asarray(trajectory.timestamps_s, dtype=np.float64)
    if len(t) > 1 and t[-1] - t[0] <= 0:
        return np.arange(len(t)) / FALLBACK_FPS
    return t


def _jitter(series: FloatArray, t: FloatArray, window_s: float) -> float:
    """RMS of what a local quadratic fit over ``window_s`` (at least 5 samples) leaves.

    A quadratic follows smooth starts, stops and accelerations, so only oscillation faster
    than the window (hand shake, vibration) remains.
    """
    n = series.shape[0]
    dt = float(np.median(np.diff(t))) if n > 1 else 0.0
    w = max(5, round(window_s / dt) if dt > 0 else 5)
    w = w if w % 2 else w + 1
    if n < w:
        return 0.0
    half = w // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    # Savitzky-Golay: the fitted value at the window centre is a fixed weighted sum.
    kernel = np.linalg.pinv(np.vander(x, 3))[-1]
    resid = np.stack(
        [
            series[half : n - half, k] - np.convolve(series[:, k], kernel[::-1], mode="valid")
            for k in range(series.shape[1])
        ],
        axis=1,
    )
    return float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))


def _sentence(labels: list[str], speed: str) -> str:
    if labels == ["static"]:
        return "the camera is static"
    moves = [lab for lab in labels if lab in _PHRASES]
    shaky = "shaky" in labels
    if not moves:
        return "the handheld camera shakes but stays in place"
    text = " ".join(w for w in ("the camera", speed, _PHRASES[moves[0]][0]) if w)
    rest = [_PHRASES[m][1] for m in moves[1:]]
    if rest:
        text += " while " + (
            rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]
        )
    if shaky:
        text += ", with a shaky handheld feel"
    return text


def analyze_motion(
    trajectory: Trajectory, thresholds: LabelThresholds = DEFAULT_THRESHOLDS
) -> MotionAnalysis:
    """Measure a trajectory's motion and turn it into labels, a speed and a sentence."""
    th = thresholds
    n = len(trajectory)
    R = trajectory.rotations
    C = trajectory.centers()
    t = _times(trajectory)
    duration = float(t[-1] - t[0]) if n > 1 else 0.0

    # rotation, integrated in the camera's own frame
    steps = (
        np.stack([rotvec_from_matrix(R[i] @ R[i + 1].T) for i in range(n - 1)])
        if n > 1
        else np.zeros((0, 3))
    )
    cum_rot = np.degrees(np.vstack([np.zeros((1, 3)), np.cumsum(steps, axis=0)]))
    rot = cum_rot[-1]

    # translation, per step in the camera's axes at that step
    dC = np.diff(C, axis=0)
    local = np.einsum("nij,nj->ni", R[:-1], dC) if n > 1 else np.zeros((0, 3))
    D = local.sum(axis=0) if n > 1 else np.zeros(3)
    path = float(np.linalg.norm(dC, axis=1).sum()) if n > 1 else 0.0
    noise_floor = th.translation_noise_ratio * max(
        float(np.linalg.norm(trajectory.translations, axis=1).max()), path
    )
    moved = path > noise_floor and path > 0
    straight = float(np.linalg.norm(D) / path) if moved else 0.0
    depth = trajectory.scene_depth
    net_depths = float(np.linalg.norm(D) / depth) if depth is not None else None
    direction = D / np.linalg.norm(D) if moved and np.linalg.norm(D) > 0 else np.zeros(3)
    translating = moved and straight >= th.straightness_min
    if net_depths is not None:
        translating = translating and net_depths >= th.translation_min_depths
    # reference length turning a translation into an apparent angle (for ranking and speed)
    ref = depth if depth is not None else path / th.nominal_travel_depths

    intr = trajectory.intrinsics
    f0 = float(intr[0, 0] + intr[0, 1]) / 2
    f1 = float(intr[-1, 0] + intr[-1, 1]) / 2
    zoom = f1 / f0
    half_fov = math.degrees(math.atan(0.5 / float(intr[0, 0])))

    # candidate labels with their apparent size in degrees
    sized: dict[str, float] = {}
    biggest_rot = float(np.abs(rot).max()) if n > 1 else 0.0
    rot_min = max(
        th.rotation_min_deg, min(th.rotation_rate_cap_deg, th.rotation_min_rate_deg_s * duration)
    )
    for axis, (pos, neg) in enumerate(
        (("tilt_up", "tilt_down"), ("pan_right", "pan_left"), ("roll_cw", "roll_ccw"))
    ):
        a = float(rot[axis])
        if abs(a) >= rot_min and abs(a) >= th.secondary_ratio * biggest_rot:
            sized[pos if a > 0 else neg] = abs(a)
    if translating:
        for axis, (pos, neg) in enumerate(
            (
                ("truck_right", "truck_left"),
                ("pedestal_down", "pedestal_up"),
                ("dolly_in", "dolly_out"),
            )
        ):
            c = float(direction[axis])
            if abs(c) >= th.axis_min_fraction:
                sized[pos if c > 0 else neg] = math.degrees(math.atan(abs(D[axis]) / ref))
    if zoom >= th.zoom_min_ratio or zoom <= 1 / th.zoom_min_ratio:
        sized["zoom_in" if zoom > 1 else "zoom_out"] = abs(math.log(zoom)) * half_fov
    for truck, pan, orbit in (
        ("truck_left", "pan_right", "orbit_left"),
        ("truck_right", "pan_left", "orbit_right"),
    ):
        if truck in sized and pan in sized and sized[pan] >= th.orbit_min_pan_deg:
            sized[orbit] = sized.pop(pan)
            sized.pop(truck)

    jitter_rot = _jitter(cum_rot, t, th.shake_window_s)
    jitter_trans = None
    if depth is not None and n > 1:
        rel = np.einsum("ij,nj->ni", R[0], C - C[0]) / depth
        jitter_trans = _jitter(rel, t, th.shake_window_s)
    shaky = jitter_rot >= th.shake_rotation_deg or (
        jitter_trans is not None and jitter_trans >= th.shake_translation_depths
    )

    ordered = sorted(sized, key=lambda k: (-sized[k], VOCABULARY.index(k)))
    labels = ordered + (["shaky"] if shaky else [])
    if not labels:
        labels = ["static"]
    rate = sized[ordered[0]] / duration if ordered and duration > 0 else 0.0
    if not ordered:
        speed = ""
    elif rate < th.slow_below_deg_s:
        speed = "slowly"
    elif rate < th.fast_from_deg_s:
        speed = "moderately"
    else:
        speed = "quickly"
    return MotionAnalysis(
        labels=labels,
        speed=speed,
        description=_sentence(labels, speed),
        rotation_deg=(float(rot[0]), float(rot[1]), float(rot[2])),
        translation_direction=(float(direction[0]), float(direction[1]), float(direction[2])),
        translation_depths=net_depths,
        straightness=straight,
        zoom_ratio=zoom,
        jitter_rotation_deg=jitter_rot,
        jitter_translation_depths=jitter_trans,
        rate_deg_s=rate,
    )


def label_trajectory(
    trajectory: Trajectory, thresholds: LabelThresholds = DEFAULT_THRESHOLDS
) -> tuple[list[str], str, str]:
    """``(labels, speed, description)``: labels from :data:`VOCABULARY`, largest motion
    first; speed is one of :data:`SPEEDS` or ``""`` for a camera that does not move."""
    return analyze_motion(trajectory, thresholds).as_tuple()


__all__ = [
    "DEFAULT_THRESHOLDS",
    "SPEEDS",
    "VOCABULARY",
    "LabelThresholds",
    "MotionAnalysis",
    "analyze_motion",
    "label_trajectory",
]
