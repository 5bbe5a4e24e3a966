"""Plücker ray embeddings of a camera trajectory, in CameraCtrl's convention, for training
code that conditions a video model on cameras.

Convention (CameraCtrl, arXiv 2404.02101): for every pixel centre ``(u + 0.5, v + 0.5)`` the
ray direction in camera coordinates is ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``,
rotated to world by the camera-to-world rotation and normalised to unit length: ``d``. The
ray origin ``o`` is the camera centre. The embedding is ``(o x d, d)``: channels 0-2 are the
moment ``o x d``, channels 3-5 the direction. Poses are first made relative to the first
frame (its camera-to-world becomes the identity), as CameraCtrl does with RealEstate10K.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from any2capins.annotators.camera.trajectory import FloatArray, Trajectory


def plucker_embedding(
    K: npt.ArrayLike,
    height: int,
    width: int,
    *,
    c2w: npt.ArrayLike | None = None,
    w2c: npt.ArrayLike | None = None,
    relative: bool = True,
) -> npt.NDArray[np.float32]:
    """``[F, 6, height, width]`` float32 Plücker embedding (moment, then direction).

    ``K``: pixel camera matrices for an image of ``height`` x ``width``, ``[3, 3]`` or
    ``[F, 3, 3]``. Give exactly one of ``c2w`` / ``w2c`` (``[F, 3, 4]`` or ``[F, 4, 4]``).
    """
    if (c2w is None) == (w2c is None):
        raise ValueError("give exactly one of c2w or w2c")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    poses = np.asarray(c2w if c2w is not None else w2c, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"poses must be [F, 3, 4] or [F, 4, 4], got {poses.shape}")
    n = poses.shape[0]
    full = np.tile(np.eye(4), (n, 1, 1))
    full[:, :3, :] = poses[:, :3, :]
    cam2world = full if c2w is not None else np.linalg.inv(full)
    if relative:
        cam2world = np.linalg.inv(cam2world[0]) @ cam2world
    Ks = np.asarray(K, dtype=np.float64)
    if Ks.ndim == 2:
        Ks = np.repeat(Ks[None], n, axis=0)
    if Ks.shape != (n, 3, 3):
        raise ValueError(f"K must be [3, 3] or [{n}, 3, 3], got {Ks.shape}")
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    x = (u[None] - Ks[:, 0, 2, None, None]) / Ks[:, 0, 0, None, None]
    y = (v[None] - Ks[:, 1, 2, None, None]) / Ks[:, 1, 1, None, None]
    dirs_cam = np.stack([x, y, np.ones_like(x)], axis=-1)  # [F, H, W, 3]
    d = np.einsum("fij,fhwj->fhwi", cam2world[:, :3, :3], dirs_cam)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(cam2world[:, None, None, :3, 3], d.shape)
    moment = np.cross(o, d)
    out = np.concatenate([moment, d], axis=-1).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def trajectory_plucker(
    trajectory: Trajectory, height: int, width: int, relative: bool = True
) -> npt.NDArray[np.float32]:
    """:func:`plucker_embedding` of a trajectory at a given image size."""
    K: FloatArray = trajectory.K(width, height)
    return plucker_embedding(K, height, width, w2c=trajectory.w2c, relative=relative)


__all__ = ["plucker_embedding", "trajectory_plucker"]
