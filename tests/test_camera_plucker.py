"""Plücker embeddings in CameraCtrl's convention: unit directions, moments orthogonal to them,
the first camera at the origin, and agreement between the w2c and c2w inputs."""

from __future__ import annotations

import numpy as np
import pytest

from any2capins.annotators.camera import Trajectory, plucker_embedding, trajectory_plucker
from any2capins.annotators.camera.trajectory import matrix_from_rotvec


def _trajectory(n: int = 5) -> Trajectory:
    rng = np.random.default_rng(7)
    w2c = np.zeros((n, 3, 4))
    for i in range(n):
        w2c[i, :, :3] = matrix_from_rotvec(rng.normal(0, 0.2, 3))
        w2c[i, :, 3] = rng.normal(0, 1.0, 3)
    return Trajectory(np.array([0.6, 1.0, 0.5, 0.5]), w2c, np.arange(n) / 8.0)


def test_shape_units_and_orthogonality() -> None:
    traj = _trajectory()
    emb = trajectory_plucker(traj, 24, 40)
    assert emb.shape == (5, 6, 24, 40) and emb.dtype == np.float32
    moment, d = emb[:, :3], emb[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(moment * d, axis=1), 0.0, atol=1e-5)
    # relative to the first camera: it sits at the origin, so its moments vanish
    np.testing.assert_allclose(moment[0], 0.0, atol=1e-6)
    assert np.abs(moment[1:]).max() > 1e-3


def test_directions_follow_the_pixel_grid() -> None:
    traj = _trajectory(1)
    h, w = 9, 15
    emb = trajectory_plucker(traj, h, w)
    K = traj.K(w, h)[0]
    # relative=True: frame 0 is the identity, so directions are camera rays
    v, u = 4, 11
    ray = np.array([(u + 0.5 - K[0, 2]) / K[0, 0], (v + 0.5 - K[1, 2]) / K[1, 1], 1.0])
    np.testing.assert_allclose(emb[0, 3:, v, u], ray / np.linalg.norm(ray), atol=1e-6)
    # x grows to the right, y downward
    assert emb[0, 3, 0, -1] > 0 > emb[0, 3, 0, 0]
    assert emb[0, 4, -1, 0] > 0 > emb[0, 4, 0, 0]


def test_w2c_and_c2w_inputs_agree_and_absolute_mode() -> None:
    traj = _trajectory()
    K = traj.K(32, 18)
    a = plucker_embedding(K, 18, 32, w2c=traj.w2c)
    b = plucker_embedding(K, 18, 32, c2w=traj.c2w())
    np.testing.assert_allclose(a, b, atol=1e-5)
    absolute = plucker_embedding(K, 18, 32, w2c=traj.w2c, relative=False)
    C = traj.centers()
    # the moment of a ray through the camera centre o is o x d
    np.testing.assert_allclose(
        absolute[2, :3, 5, 7], np.cross(C[2], absolute[2, 3:, 5, 7]), atol=1e-5
    )


def test_bad_arguments() -> None:
    traj = _trajectory(2)
    K = traj.K(8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        plucker_embedding(K, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        plucker_embedding(K, 8, 8, w2c=traj.w2c, c2w=traj.c2w())
    with pytest.raises(ValueError, match="poses"):
        plucker_embedding(K, 8, 8, w2c=traj.w2c[:, :2])
    with pytest.raises(ValueError, match="K must be"):
        plucker_embedding(np.zeros((3, 3, 3)), 8, 8, w2c=traj.w2c)
