"""Camera estimation: synthetic renders with known cameras (rotation error in degrees, ATE after
a Sim(3) alignment, labels), the real static clips, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from any2capins.annotators.base import FrameSampling
from any2capins.annotators.camera import (
    EstimationError,
    estimate_camera_trajectory,
    estimate_with_report,
    label_trajectory,
)
from any2capins.annotators.camera.metrics import ate_sim3, trajectory_accuracy, umeyama_sim3
from any2capins.annotators.camera.synthetic import SyntheticClip, render_clip
from any2capins.annotators.camera.trajectory import matrix_from_rotvec
from any2capins.pipeline.video import probe_video, sample_frames

# (motion, moving objects, masks given, labels, max mean rotation error deg, max relative ATE)
CASES = [
    ("pan_right", 0, False, ["pan_right"], 0.1, None),
    ("pan_left", 2, False, ["pan_left"], 0.1, None),
    ("dolly_in", 0, False, ["dolly_in"], 0.5, 0.01),
    ("truck_right", 0, False, ["truck_right"], 0.5, 0.01),
    ("truck_left", 2, True, ["truck_left"], 0.5, 0.01),
    ("orbit_left", 0, False, ["orbit_left"], 0.5, 0.01),
    ("pan_dolly", 0, False, ["pan_left", "dolly_in"], 0.5, 0.01),
    ("zoom_in", 0, False, ["zoom_in"], 0.1, None),
    ("static", 2, False, ["static"], 0.05, None),
    ("static", 3, True, ["static"], 0.05, None),
]


@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, int], SyntheticClip]:
    return {(m, k): render_clip(m, moving_objects=k, seed=1) for m, k, *_ in CASES}


@pytest.mark.parametrize(("motion", "objects", "use_masks", "labels", "max_rot", "max_ate"), CASES)
def test_synthetic_accuracy(
    clips: dict[tuple[str, int], SyntheticClip],
    motion: str,
    objects: int,
    use_masks: bool,
    labels: list[str],
    max_rot: float,
    max_ate: float | None,
) -> None:
    clip = clips[(motion, objects)]
    if objects:
        assert clip.masks.mean() > 0.1  # the moving objects cover a real share of the frame
    traj, report = estimate_with_report(
        clip.frames, clip.truth.timestamps_s, K=clip.K, masks=clip.masks if use_masks else None
    )
    assert len(traj) == len(clip.truth) and "lost" not in report.modes
    acc = trajectory_accuracy(traj, clip.truth)
    assert acc.rotation_mean_deg <= max_rot, acc
    assert acc.rotation_max_deg <= 2 * max_rot + 0.05, acc
    if max_ate is not None:
        assert acc.ate_relative is not None and acc.ate_relative <= max_ate, acc
        assert traj.scene_depth == 1.0  # translations come out in scene depths
    else:
        assert traj.scene_depth is None
        np.testing.assert_allclose(traj.centers(), 0.0, atol=1e-12)
    assert label_trajectory(traj)[0] == labels
    assert label_trajectory(clip.truth)[0] == labels


def test_estimated_scale_is_the_scene_depth(clips: dict[tuple[str, int], SyntheticClip]) -> None:
    clip = clips[("dolly_in", 0)]
    traj = estimate_camera_trajectory(clip.frames, clip.truth.timestamps_s, K=clip.K)
    true_travel = np.linalg.norm(clip.truth.centers()[-1]) / (clip.truth.scene_depth or 1.0)
    est_travel = float(np.linalg.norm(traj.centers()[-1]))
    # measured against the median depth of tracked points, not of the rendered layers
    assert 0.5 * true_travel < est_travel < 2.0 * true_travel


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    R = matrix_from_rotvec([0.3, -0.2, 0.5])
    dst = 2.5 * src @ R.T + [1.0, -2.0, 0.5]
    s, R_est, t = umeyama_sim3(src, dst)
    assert np.isclose(s, 2.5) and np.allclose(R_est, R) and np.allclose(t, [1.0, -2.0, 0.5])
    assert ate_sim3(src, dst) < 1e-9


def _static_labels(folder: Path) -> dict[str, list[str]]:
    sampling = FrameSampling(num_frames=None, fps=5.0, max_frames=96, max_side=480)
    out = {}
    for path in sorted(folder.glob("*.mp4")):
        info = probe_video(str(path))
        frames = sample_frames(str(path), info, 0.0, info.duration_s, sampling, ("decord", "pyav"))
        traj = estimate_camera_trajectory(frames.frames, frames.timestamps_s)
        out[path.name] = label_trajectory(traj)[0]
    return out


def test_real_clips_are_static(shared_videos: Path) -> None:
    labels = _static_labels(shared_videos)
    assert len(labels) == 4
    assert labels == {name: ["static"] for name in labels}


def test_demo_clips_are_static(demo_clips: Path) -> None:
    labels = _static_labels(demo_clips)
    assert labels == {name: ["static"] for name in labels}


def test_bad_input() -> None:
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    with pytest.raises(EstimationError, match="textureless"):
        estimate_camera_trajectory(frames, [0, 0.1, 0.2, 0.3])
    with pytest.raises(EstimationError, match="at least 2 frames"):
        estimate_camera_trajectory(frames[:1], [0.0])
    with pytest.raises(ValueError, match="timestamps"):
        estimate_camera_trajectory(frames, [0.0, 0.1])
    with pytest.raises(ValueError, match="uint8"):
        estimate_camera_trajectory(frames.astype(np.float32), [0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not both"):
        estimate_camera_trajectory(frames, [0, 0.1, 0.2, 0.3], K=np.eye(3), fov_deg=50)
    with pytest.raises(ValueError, match="masks"):
        clip = render_clip("static", seconds=0.3)
        estimate_camera_trajectory(
            clip.frames, clip.truth.timestamps_s, masks=np.zeros((2, 8, 8), bool)
        )


def test_untrackable_motion_is_an_error() -> None:
    """Unrelated images in a row (a cut every frame) cannot be chained."""
    rng = np.random.default_rng(0)
    clips = [render_clip("static", seconds=0.1, seed=s).frames[0] for s in range(6)]
    frames = np.stack([clips[i] for i in rng.permutation(6)])
    with pytest.raises(EstimationError, match="lost"):
        estimate_camera_trajectory(frames, np.arange(6) / 5.0)
