"""The camera trajectory model: per-frame intrinsics, world-to-camera extrinsics and
timestamps, plus the small rotation helpers the rest of the camera package shares.

Conventions (see docs/camera.md): OpenCV camera axes (x right, y down, z forward);
extrinsics are world-to-camera ``[R|t]`` (``x_cam = R @ x_world + t``), as in RealEstate10K;
intrinsics are ``fx, fy, cx, cy`` normalised by the image width and height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Rotations read from text files carry ~1e-9 rounding; anything further off is not a rotation.
_ORTHONORMAL_TOL = 1e-3


class TrajectoryError(ValueError):
    """Arrays that do not make a valid camera trajectory."""


def _frozen(a: npt.ArrayLike, dtype: Any = np.float64) -> FloatArray:
    out: FloatArray = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def normalized_intrinsics(fov_deg: float, width: int, height: int) -> FloatArray:
    """``[fx, fy, cx, cy]`` normalised by width/height for a horizontal field of view.

    Square pixels and a centred principal point are assumed.
    """
    if not 1.0 <= fov_deg <= 179.0:
        raise TrajectoryError(
            f"horizontal field of view must be in [1, 179] degrees, got {fov_deg}"
        )
    if width <= 0 or height <= 0:
        raise TrajectoryError(f"image size must be positive, got {width}x{height}")
    fx_px = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([fx_px / width, fx_px / height, 0.5, 0.5])


def pixel_K(intrinsics: FloatArray, width: int, height: int) -> FloatArray:
    """Pixel camera matrices ``[F, 3, 3]`` from normalised ``[F, 4]`` intrinsics."""
    intr = np.atleast_2d(intrinsics)
    K = np.zeros((intr.shape[0], 3, 3))
    K[:, 0, 0] = intr[:, 0] * width
    K[:, 1, 1] = intr[:, 1] * height
    K[:, 0, 2] = intr[:, 2] * width
    K[:, 1, 2] = intr[:, 3] * height
    K[:, 2, 2] = 1.0
    return K


def rotvec_from_matrix(R: FloatArray) -> FloatArray:
    """Axis-angle vector (radians) of a rotation matrix; stable near 0 and near pi."""
    cos = float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-8:
        return 0.5 * w
    if math.pi - angle < 1e-4:
        # sin(angle) ~ 0: recover the axis from the symmetric part instead.
        B = (R + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(B), 0.0, None))
        i = int(np.argmax(axis))
        axis = B[:, i] / math.sqrt(max(B[i, i], 1e-12))
        if np.dot(axis, w) < 0:
            axis = -axis
        return axis / np.linalg.norm(axis) * angle
    return w * (angle / (2.0 * math.sin(angle)))


def matrix_from_rotvec(v: npt.ArrayLike) -> FloatArray:
    """Rotation matrix of an axis-angle vector (radians), Rodrigues' formula."""
    r = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    out: FloatArray = np.eye(3) + math.sin(angle) * Kx + (1 - math.cos(angle)) * (Kx @ Kx)
    return out


def rotation_angle_deg(R: FloatArray) -> float:
    """Angle of a rotation matrix, degrees."""
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def project_to_rotation(M: FloatArray) -> FloatArray:
    """The rotation nearest to a 3x3 matrix (Frobenius norm)."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(U @ Vt)) or 1.0)])
    out: FloatArray = U @ D @ Vt
    return out


@dataclass(frozen=True, eq=False)
class Trajectory:
    """A camera path: ``F`` frames of intrinsics, world-to-camera extrinsics and timestamps.

    ``scene_depth`` is the median depth of the scene in the trajectory's own length unit when
    it is known (estimated trajectories are scaled so that it is 1.0); imported trajectories
    have ``None`` because their files do not say how far away the scene was.
    """

    intrinsics: FloatArray  # [F, 4] fx/W, fy/H, cx/W, cy/H
    w2c: FloatArray  # [F, 3, 4] world-to-camera [R|t]
    timestamps_s: FloatArray  # [F] seconds
    scene_depth: float | None = None
    source_uri: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        intr = np.asarray(self.intrinsics, dtype=np.float64)
        w2c = np.asarray(self.w2c, dtype=np.float64)
        ts = np.asarray(self.timestamps_s, dtype=np.float64).reshape(-1)
        if w2c.ndim != 3 or w2c.shape[1:] != (3, 4) or w2c.shape[0] < 1:
            raise TrajectoryError(f"w2c must be [F, 3, 4] with F >= 1, got {w2c.shape}")
        n = w2c.shape[0]
        if intr.shape == (4,):
            intr = np.repeat(intr[None], n, axis=0)
        if intr.shape != (n, 4):
            raise TrajectoryError(f"intrinsics must be [F, 4] = [{n}, 4], got {intr.shape}")
        if ts.shape != (n,):
            raise TrajectoryError(f"timestamps must have {n} entries, got {ts.shape[0]}")
        for name, arr in (("intrinsics", intr), ("w2c", w2c), ("timestamps", ts)):
            if not np.all(np.isfinite(arr)):
                raise TrajectoryError(f"{name} contain NaN or infinite values")
        if np.any(intr[:, :2] <= 0):
            raise TrajectoryError("focal lengths must be positive")
        if np.any(np.diff(ts) < 0):
            raise TrajectoryError("timestamps must not decrease")
        R = w2c[:, :, :3]
        err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
        bad = np.flatnonzero((err > _ORTHONORMAL_TOL) | (np.linalg.det(R) < 0))
        if bad.size:
            raise TrajectoryError(
                f"frame {int(bad[0])}: the 3x3 part of w2c is not a rotation "
                f"(|R R^T - I| = {err[bad[0]]:.3g})"
            )
        if self.scene_depth is not None and not (
            math.isfinite(self.scene_depth) and self.scene_depth > 0
        ):
            raise TrajectoryError(f"scene_depth must be positive, got {self.scene_depth}")
        object.__setattr__(self, "intrinsics", _frozen(intr))
        object.__setattr__(self, "w2c", _frozen(w2c))
        object.__setattr__(self, "timestamps_s", _frozen(ts))

    @classmethod
    def from_pixel_K(
        cls,
        K: npt.ArrayLike,
        width: int,
        height: int,
        w2c: npt.ArrayLike,
        timestamps_s: npt.ArrayLike,
        **kwargs: Any,
    ) -> Trajectory:
        """Build from pixel camera matrices (``[3, 3]`` or ``[F, 3, 3]``)."""
        Ka = np.asarray(K, dtype=np.float64)
        if Ka.ndim == 2:
            Ka = Ka[None]
        intr = np.stack(
            [Ka[:, 0, 0] / width, Ka[:, 1, 1] / height, Ka[:, 0, 2] / width, Ka[:, 1, 2] / height],
            axis=1,
        )
        return cls(intr, np.asarray(w2c, dtype=np.float64), np.asarray(timestamps_s), **kwargs)

    # views of the arrays
    def __len__(self) -> int:
        return int(self.w2c.shape[0])

    @property
    def rotations(self) -> FloatArray:
        """World-to-camera rotations ``[F, 3, 3]``."""
        return self.w2c[:, :, :3]

    @property
    def translations(self) -> FloatArray:
        return self.w2c[:, :, 3]

    def centers(self) -> FloatArray:
        """Camera centres in world coordinates ``[F, 3]`` (``C = -R^T t``)."""
        out: FloatArray = -np.einsum("nji,nj->ni", self.rotations, self.translations)
        return out

    def c2w(self) -> FloatArray:
        """Camera-to-world 4x4 matrices ``[F, 4, 4]``."""
        out = np.zeros((len(self), 4, 4))
        out[:, :3, :3] = self.rotations.transpose(0, 2, 1)
        out[:, :3, 3] = self.centers()
        out[:, 3, 3] = 1.0
        return out

    def w2c_4x4(self) -> FloatArray:
        out = np.zeros((len(self), 4, 4))
        out[:, :3, :] = self.w2c
        out[:, 3, 3] = 1.0
        return out

    def K(self, width: int, height: int) -> FloatArray:
        """Pixel camera matrices ``[F, 3, 3]`` for an image of ``width`` x ``height``."""
        return pixel_K(self.intrinsics, width, height)

    @property
    def duration_s(self) -> float:
        return float(self.timestamps_s[-1] - self.timestamps_s[0])

    # new trajectories
    def replace(self, **changes: Any) -> Trajectory:
        values: dict[str, Any] = {
            "intrinsics": self.intrinsics,
            "w2c": self.w2c,
            "timestamps_s": self.timestamps_s,
            "scene_depth": self.scene_depth,
            "source_uri": self.source_uri,
            "meta": dict(self.meta),
        }
        values.update(changes)
        return Trajectory(**values)

    def scaled(self, factor: float) -> Trajectory:
        """The same path with every length (translations, scene depth) multiplied."""
        if not (math.isfinite(factor) and factor > 0):
            raise TrajectoryError(f"scale factor must be positive, got {factor}")
        w2c = np.array(self.w2c)
        w2c[:, :, 3] *= factor
        depth = None if self.scene_depth is None else self.scene_depth * factor
        return self.replace(w2c=w2c, scene_depth=depth)

    def relative_to_first(self) -> Trajectory:
        """The same path in the first camera's coordinates (frame 0 is ``[I|0]``)."""
        first_c2w = self.c2w()[0]
        w2c = self.w2c_4x4() @ first_c2w
        return self.replace(w2c=w2c[:, :3, :])

    def select(self, indices: npt.ArrayLike) -> Trajectory:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise TrajectoryError("selecting no frames")
        return self.replace(
            intrinsics=self.intrinsics[idx],
            w2c=self.w2c[idx],
            timestamps_s=self.timestamps_s[idx],
        )

    def at(self, times: npt.ArrayLike, tolerance_s: float = 0.0) -> Trajectory:
        """The cameras at TIMES (ascending seconds): between two cameras the rotation turns
        along the shortest arc and the centre and intrinsics move linearly. A time before
        the first or after the last camera by at most ``tolerance_s`` takes that end camera;
        further out raises :class:`TrajectoryError`."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        ts = self.timestamps_s
        if t.size == 0:
            raise TrajectoryError("no times to resample at")
        if t.min() < ts[0] - tolerance_s or t.max() > ts[-1] + tolerance_s:
            raise TrajectoryError(
                f"times {t.min():.3f}-{t.max():.3f} s lie outside the cameras' "
                f"{ts[0]:.3f}-{ts[-1]:.3f} s"
            )
        tc = np.clip(t, ts[0], ts[-1])
        if len(self) == 1:
            idx = np.zeros(t.size, dtype=np.int64)
            return self.select(idx).replace(timestamps_s=t)
        j = np.clip(np.searchsorted(ts, tc, side="right") - 1, 0, len(self) - 2)
        gap = ts[j + 1] - ts[j]
        a = np.where(gap > 0, (tc - ts[j]) / np.where(gap > 0, gap, 1.0), 0.0)
        R0, R1 = self.rotations[j], self.rotations[j + 1]
        centers = self.centers()
        C = (1 - a)[:, None] * centers[j] + a[:, None] * centers[j + 1]
        w2c = np.empty((t.size, 3, 4))
        for i in range(t.size):
            step = rotvec_from_matrix(R1[i] @ R0[i].T)
            R = project_to_rotation(matrix_from_rotvec(a[i] * step) @ R0[i])
            w2c[i, :, :3] = R
            w2c[i, :, 3] = -R @ C[i]
        intr = (1 - a)[:, None] * self.intrinsics[j] + a[:, None] * self.intrinsics[j + 1]
        return self.replace(intrinsics=intr, w2c=w2c, timestamps_s=t)

    def to_json(self) -> dict[str, Any]:
        """Per-frame cameras as plain JSON (what ``any2cap camera estimate --json`` prints)."""
        return {
            "convention": "opencv axes (x right, y down, z forward); w2c = [R|t]; "
            "intrinsics fx/W, fy/H, cx/W, cy/H",
            "scene_depth": self.scene_depth,
            "frames": [
                {
                    "timestamp_s": round(float(t), 6),
                    "intrinsics": [round(float(v), 9) for v in k],
                    "w2c": [[round(float(v), 9) for v in row] for row in m],
                }
                for t, k, m in zip(self.timestamps_s, self.intrinsics, self.w2c, strict=True)
            ],
        }


__all__ = [
    "FloatArray",
    "Trajectory",
    "TrajectoryError",
    "matrix_from_rotvec",
    "normalized_intrinsics",
    "pixel_K",
    "project_to_rotation",
    "rotation_angle_deg",
    "rotvec_from_matrix",
]
