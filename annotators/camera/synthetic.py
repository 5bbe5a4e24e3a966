"""Synthetic clips with known cameras: a textured 3D scene of planar layers (and optional
moving "people") rendered with OpenCV along a chosen camera motion. Tests and the camera
benchmark measure the estimator against these known trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from any2capins.annotators.camera.trajectory import FloatArray, Trajectory, matrix_from_rotvec

MOTIONS: tuple[str, ...] = (
    "static",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "dolly_in",
    "dolly_out",
    "orbit_left",
    "zoom_in",
    "shaky",
    "pan_dolly",
)

# Every camera motion stays within these so the scene always fills the frame.
PAN_DEG = 20.0
TILT_DEG = 12.0
DOLLY = 1.2
TRUCK = 1.0
PEDESTAL = 0.7
ORBIT_DEG = 15.0
ORBIT_TARGET_Z = 7.0
ZOOM = 1.3
SHAKE_DEG = 0.8


@dataclass(frozen=True)
class _Quad:
    corners: FloatArray  # [4, 3] world, order: top-left, top-right, bottom-right, bottom-left
    texture: npt.NDArray[np.uint8]
    velocity: FloatArray  # world units per second (zero for the static scene)


@dataclass(frozen=True)
class SyntheticClip:
    name: str
    frames: npt.NDArray[np.uint8]  # [T, H, W, 3] RGB
    masks: npt.NDArray[np.bool_]  # [T, H, W] True on moving objects
    truth: Trajectory  # scene_depth = median depth of the rendered scene
    K: FloatArray  # [3, 3] pixel intrinsics of frame 0
    fov_deg: float


def _texture(rng: np.random.Generator, h: int, w: int) -> npt.NDArray[np.uint8]:
    """Blobs, bars and fine noise: plenty of corners for a feature tracker."""
    base = rng.integers(40, 215, size=3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    coarse = rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    noise = np.asarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
    img = np.clip(img + 18 * noise, 0, 255).astype(np.uint8)
    area = h * w
    for _ in range(max(20, area // 2500)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(4, max(6, min(h, w) // 12)))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(img, (x, y), s, color, -1)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + s, y + int(rng.integers(3, s + 4))), color, -1)
        else:
            cv2.line(img, (x, y), (x + int(rng.integers(-3 * s, 3 * s)), y + s), color, 2)
    out: npt.NDArray[np.uint8] = img
    return out


def _plane(
    center: FloatArray, width: float, height: float, yaw_deg: float, tex: npt.NDArray[np.uint8]
) -> _Quad:
    R = matrix_from_rotvec([0.0, math.radians(yaw_deg), 0.0])
    hw, hh = width / 2, height / 2
    local = np.array([[-hw, -hh, 0], [hw, -hh, 0], [hw, hh, 0], [-hw, hh, 0]], dtype=np.float64)
    return _Quad(center + local @ R.T, tex, np.zeros(3))


def _scene(
    rng: np.random.Generator, moving_objects: int, seconds: float
) -> tuple[list[_Quad], float]:
    quads = [_plane(np.array([0.0, 0.0, 14.0]), 56.0, 30.0, 0.0, _texture(rng, 880, 1600))]
    depths = [14.0]
    for _ in range(12):
        z = float(rng.uniform(3.8, 10.0))
        w, h = float(rng.uniform(1.2, 3.2)), float(rng.uniform(1.0, 2.4))
        c = np.array([rng.uniform(-1.1, 1.1) * z * 0.6, rng.uniform(-0.35, 0.35) * z, z])
        yaw = float(rng.uniform(-30, 30))
        quads.append(_plane(c, w, h, yaw, _texture(rng, 384, 448)))
        depths.append(z)
    for k in range(moving_objects):
        z = 4.2 + 0.6 * k
        speed = (0.9 if k % 2 == 0 else -0.9) * (1 + 0.2 * k)
        x0 = -speed * seconds / 2
        q = _plane(np.array([x0, 0.3, z]), 1.1, 2.4, 0.0, _texture(rng, 320, 160))
        quads.append(_Quad(q.corners, q.texture, np.array([speed, 0.0, 0.0])))
    return quads, float(np.median(depths))


def _camera(motion: str, tau: float, rng_shake: FloatArray) -> tuple[FloatArray, FloatArray, float]:
    """Camera-to-world rotation, centre and focal factor at normalised time ``tau``."""
    Rc = np.eye(3)
    C = np.zeros(3)
    zoom = 1.0
    if motion in ("pan_left", "pan_right"):
        sign = 1.0 if motion == "pan_right" else -1.0
        Rc = matrix_from_rotvec([0, sign * math.radians(PAN_DEG) * tau, 0])
    elif motion in ("tilt_up", "tilt_down"):
        sign = 1.0 if motion == "tilt_up" else -1.0
        Rc = matrix_from_rotvec([sign * math.radians(TILT_DEG) * tau, 0, 0])
    elif motion in ("truck_left", "truck_right"):
        C = np.array([(TRUCK if motion == "truck_right" else -TRUCK) * tau, 0, 0])
    elif motion == "pedestal_up":
        C = np.array([0, -PEDESTAL * tau, 0])
    elif motion in ("dolly_in", "dolly_out"):
        C = np.array([0, 0, (DOLLY if motion == "dolly_in" else -DOLLY) * tau])
    elif motion == "orbit_left":
        phi = math.radians(ORBIT_DEG) * tau
        Rc = matrix_from_rotvec([0, phi, 0])
        C = np.array([0, 0, ORBIT_TARGET_Z]) + Rc @ np.array([0, 0, -ORBIT_TARGET_Z])
    elif motion == "zoom_in":
        zoom = 1.0 + (ZOOM - 1.0) * tau
    elif motion == "shaky":
        Rc = matrix_from_rotvec(rng_shake)
    elif motion == "pan_dolly":
        Rc = matrix_from_rotvec([0, -math.radians(PAN_DEG) * tau, 0])
        C = np.array([0, 0, DOLLY * tau])
    elif motion != "static":
        raise ValueError(f"unknown synthetic motion {motion!r} (known: {', '.join(MOTIONS)})")
    return Rc, C, zoom


def render_clip(
    motion: str,
    *,
    width: int = 480,
    height: int = 272,
    fps: float = 10.0,
    seconds: float = 3.0,
    fov_deg: float = 60.0,
    moving_objects: int = 0,
    noise: float = 2.0,
    seed: int = 0,
) -> SyntheticClip:
    """Render ``motion`` (one of :data:`MOTIONS`) through a random textured scene."""
    rng = np.random.default_rng(seed)
    quads, median_depth = _scene(rng, moving_objects, seconds)
    n = max(2, round(seconds * fps) + 1)
    times = np.arange(n) / fps
    f0 = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    shake = np.cumsum(rng.normal(0, 1, (n, 3)), axis=0) * 0.25
    shake = np.radians(SHAKE_DEG) * (rng.normal(0, 1, (n, 3)) + shake - shake.mean(axis=0))
    frames = np.empty((n, height, width, 3), np.uint8)
    masks = np.zeros((n, height, width), bool)
    w2cs, Ks = [], []
    for i, t in enumerate(times):
        Rc, C, zoom = _camera(motion, float(t / times[-1]), shake[i])
        R = Rc.T
        tvec = -R @ C
        K = np.array([[f0 * zoom, 0, width / 2], [0, f0 * zoom, height / 2], [0, 0, 1.0]])
        img = np.zeros((height, width, 3), np.uint8)
        placed = []
        for q in quads:
            corners = q.corners + q.velocity * t
            cam = corners @ R.T + tvec
            placed.append((float(cam[:, 2].mean()), cam, q))
        for _, cam, q in sorted(placed, key=lambda p: -p[0]):
            if np.any(cam[:, 2] < 0.2):
                continue
            pix = (cam @ K.T)[:, :2] / cam[:, 2:3]
            th, tw = q.texture.shape[:2]
            src = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
            H = cv2.getPerspectiveTransform(src, pix.astype(np.float32))
            cv2.warpPerspective(
                q.texture,
                H,
                (width, height),
                dst=img,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_TRANSPARENT,
            )
            if np.any(q.velocity):
                cover = np.zeros((height, width), np.uint8)
                cv2.fillConvexPoly(cover, np.round(pix).astype(np.int32), 1)
                masks[i] |= cover.astype(bool)
        img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0.6), dtype=np.uint8)
        if noise > 0:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        frames[i] = img
        w2cs.append(np.hstack([R, tvec[:, None]]))
        Ks.append(K)
    truth = Trajectory.from_pixel_K(
        np.stack(Ks), width, height, np.stack(w2cs), times, scene_depth=median_depth
    )
    return SyntheticClip(motion, frames, masks, truth, Ks[0], fov_deg)


__all__ = ["MOTIONS", "SyntheticClip", "render_clip"]
