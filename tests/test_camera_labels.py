"""Camera-motion labels: the six labelled MotionCtrl files, the real RealEstate10K files,
every label of the vocabulary on constructed paths, scale invariance, speed and sentence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from any2capins.annotators.camera import (
    SPEEDS,
    VOCABULARY,
    Trajectory,
    analyze_motion,
    label_trajectory,
    read_trajectory,
)
from any2capins.annotators.camera.trajectory import matrix_from_rotvec
from tests.conftest import SHARED_DATA

MOTIONCTRL = SHARED_DATA / "camera" / "motionctrl"
RE10K = SHARED_DATA / "camera" / "realestate10k"
EXPECTED_MOTIONCTRL = {
    "L": "truck_left",
    "R": "truck_right",
    "U": "pedestal_up",
    "D": "pedestal_down",
    "I": "dolly_in",
    "O": "dolly_out",
}


def path(
    rotvecs_deg: np.ndarray,
    centers: np.ndarray,
    seconds: float = 3.0,
    focal: np.ndarray | None = None,
    scene_depth: float | None = None,
) -> Trajectory:
    """A trajectory from camera-to-world rotation vectors (degrees) and centres."""
    n = len(centers)
    w2c = np.zeros((n, 3, 4))
    for i in range(n):
        Rc = matrix_from_rotvec(np.radians(rotvecs_deg[i]))
        w2c[i, :, :3] = Rc.T
        w2c[i, :, 3] = -Rc.T @ centers[i]
    f = np.ones(n) if focal is None else focal
    intr = np.stack([0.8 * f, 1.4 * f, np.full(n, 0.5), np.full(n, 0.5)], axis=1)
    return Trajectory(intr, w2c, np.linspace(0, seconds, n), scene_depth=scene_depth)


def ramp(n: int, vec: list[float]) -> np.ndarray:
    out: np.ndarray = np.linspace(0, 1, n)[:, None] * np.asarray(vec, float)[None]
    return out


N = 31
ZERO = np.zeros((N, 3))


@pytest.mark.parametrize(
    ("rot", "centre", "expected"),
    [
        (ZERO, ZERO, ["static"]),
        (ramp(N, [0, -20, 0]), ZERO, ["pan_left"]),
        (ramp(N, [0, 20, 0]), ZERO, ["pan_right"]),
        (ramp(N, [15, 0, 0]), ZERO, ["tilt_up"]),
        (ramp(N, [-15, 0, 0]), ZERO, ["tilt_down"]),
        (ramp(N, [0, 0, 12]), ZERO, ["roll_cw"]),
        (ramp(N, [0, 0, -12]), ZERO, ["roll_ccw"]),
        (ZERO, ramp(N, [-1, 0, 0]), ["truck_left"]),
        (ZERO, ramp(N, [1, 0, 0]), ["truck_right"]),
        (ZERO, ramp(N, [0, -1, 0]), ["pedestal_up"]),
        (ZERO, ramp(N, [0, 1, 0]), ["pedestal_down"]),
        (ZERO, ramp(N, [0, 0, 1]), ["dolly_in"]),
        (ZERO, ramp(N, [0, 0, -1]), ["dolly_out"]),
        (ramp(N, [0, -30, 0]), ramp(N, [0, 0, 1]), ["pan_left", "dolly_in"]),
    ],
)
def test_constructed_paths(rot: np.ndarray, centre: np.ndarray, expected: list[str]) -> None:
    labels, speed, description = label_trajectory(path(rot, centre))
    assert labels == expected
    assert (speed == "") == (expected == ["static"])
    assert description.startswith("the camera")


def test_orbit_is_sideways_travel_turning_to_a_fixed_point() -> None:
    target = np.array([0.0, 0.0, 5.0])
    for sign, label in ((1, "orbit_left"), (-1, "orbit_right")):
        phis = np.radians(np.linspace(0, sign * 25, N))
        rot = np.stack([[0, math.degrees(p), 0] for p in phis])
        centres = np.stack([target + matrix_from_rotvec([0, p, 0]) @ [0, 0, -5.0] for p in phis])
        labels, _, description = label_trajectory(path(rot, centres))
        assert labels == [label], labels
        assert label.replace("_", "s ") in description  # "orbits left"


def test_zoom_from_focal_change() -> None:
    assert label_trajectory(path(ZERO, ZERO, focal=np.linspace(1, 1.4, N)))[0] == ["zoom_in"]
    assert label_trajectory(path(ZERO, ZERO, focal=np.linspace(1, 0.7, N)))[0] == ["zoom_out"]
    assert label_trajectory(path(ZERO, ZERO, focal=np.linspace(1, 1.03, N)))[0] == ["static"]


def test_shaky_is_jitter_not_motion() -> None:
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 1.2, (N, 3))
    a = analyze_motion(path(jitter, ZERO))
    assert a.labels == ["shaky"] and a.speed == ""
    assert "shakes" in a.description
    # a smooth pan that accelerates is not shaky
    smooth = np.stack([[0, 30 * (i / (N - 1)) ** 2, 0] for i in range(N)])
    assert label_trajectory(path(smooth, ZERO))[0] == ["pan_right"]
    # a pan with jitter on top is both
    labels = label_trajectory(path(ramp(N, [0, 30, 0]) + jitter, ZERO))[0]
    assert labels[0] == "pan_right" and labels[-1] == "shaky"


def test_slow_drift_on_a_long_clip_stays_static() -> None:
    drift = ramp(N, [3.5, -1.5, 0.8])  # what the bedroom clip's handheld camera does
    assert label_trajectory(path(drift, ZERO, seconds=6.7))[0] == ["static"]
    assert label_trajectory(path(drift, ZERO, seconds=2.0))[0] == ["tilt_up"]


def test_known_depth_decides_whether_translation_counts() -> None:
    tiny = ramp(N, [0.02, 0, 0])  # 2% of the scene depth
    assert label_trajectory(path(ZERO, tiny, scene_depth=1.0))[0] == ["static"]
    assert label_trajectory(path(ZERO, tiny * 10, scene_depth=1.0))[0] == ["truck_right"]
    # back-and-forth wobble is not a deliberate move
    wobble = np.stack([[0.3 * math.sin(i), 0, 0] for i in range(N)])
    assert "truck_right" not in label_trajectory(path(ZERO, wobble))[0]


def test_speed_words_follow_the_rate() -> None:
    rot = ramp(N, [0, 30, 0])
    speeds = [label_trajectory(path(rot, ZERO, seconds=s))[1] for s in (12.0, 3.0, 1.0)]
    assert speeds == ["slowly", "moderately", "quickly"]
    assert set(speeds) <= set(SPEEDS)
    assert label_trajectory(path(rot, ZERO, seconds=12.0))[2] == "the camera slowly pans right"


@pytest.mark.parametrize("factor", [0.01, 100.0])
def test_scale_invariance_on_constructed_paths(factor: float) -> None:
    cases = [
        path(ZERO, ramp(N, [0, 0, 1])),
        path(ramp(N, [0, 20, 0]), ramp(N, [-0.6, 0, 0.3])),
        path(ZERO, ramp(N, [0.2, 0, 0]), scene_depth=2.0),
        path(np.random.default_rng(1).normal(0, 1, (N, 3)), ramp(N, [0, 0.05, 0]), scene_depth=1.0),
    ]
    for traj in cases:
        assert label_trajectory(traj.scaled(factor)) == label_trajectory(traj)


def _files(folder: Path, pattern: str) -> list[Path]:
    files = [f for f in sorted(folder.glob(pattern)) if not f.name.startswith("LICENSE")]
    if not files:
        pytest.skip(f"camera files not present at {folder} (set ANY2CAP_SHARED_DATA)")
    return files


def test_motionctrl_files_get_exactly_their_label() -> None:
    files = _files(MOTIONCTRL, "*.json")
    assert len(files) == 6
    for f in files:
        labels, speed, description = label_trajectory(read_trajectory(f))
        assert labels == [EXPECTED_MOTIONCTRL[f.stem]], (f.name, labels)
        assert speed in SPEEDS
        verb = {"truck": "trucks", "pedestal": "pedestals", "dolly": "dollies"}
        kind, direction = EXPECTED_MOTIONCTRL[f.stem].split("_")
        assert description == f"the camera {speed} {verb[kind]} {direction}"


@pytest.mark.parametrize("factor", [0.01, 100.0])
def test_scale_invariance_on_real_files(factor: float) -> None:
    files = _files(MOTIONCTRL, "*.json") + _files(RE10K, "*.txt")
    for f in files:
        traj = read_trajectory(f)
        assert label_trajectory(traj.scaled(factor)) == label_trajectory(traj), f.name


def test_realestate10k_files_get_plausible_labels() -> None:
    files = _files(RE10K, "*.txt")
    results = {f.stem: analyze_motion(read_trajectory(f)) for f in files}
    for name, a in results.items():
        assert a.labels and set(a.labels) <= set(VOCABULARY), name
        assert a.labels != ["static"], name  # walkthrough footage: the camera always moves
        assert "shaky" not in a.labels, name  # stabilised real-estate footage
        assert a.speed in SPEEDS and a.description.startswith("the camera")
    # the clearest cases, read off the poses: yaw and forward travel
    if "0c11dbe781b1c11c" in results:
        assert results["0c11dbe781b1c11c"].labels[:2] == ["pan_left", "dolly_in"]
    if "3c35b868a8ec3433" in results:
        assert results["3c35b868a8ec3433"].labels[:2] == ["pan_left", "dolly_out"]
    if "4a2d6753676df096" in results:
        assert set(results["4a2d6753676df096"].labels) == {"pan_right", "truck_right"}
