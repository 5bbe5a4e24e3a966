"""Accuracy measures for estimated trajectories against known ones: per-frame rotation
error and the absolute trajectory error after a similarity (Sim(3), Umeyama) alignment."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from any2capins.annotators.camera.trajectory import FloatArray, Trajectory, rotation_angle_deg


def umeyama_sim3(src: FloatArray, dst: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """``(s, R, t)`` minimising ``sum |dst - (s R src + t)|^2`` (Umeyama 1991)."""
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"expected two [N, 3] arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = float((xs**2).sum() / len(src))
    if var_s < 1e-18:
        raise ValueError("the source points do not spread: a similarity is undefined")
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def ate_sim3(estimated: FloatArray, truth: FloatArray) -> float:
    """RMS camera-centre error after aligning ``estimated`` onto ``truth`` with a Sim(3)."""
    s, R, t = umeyama_sim3(estimated, truth)
    aligned = (s * (R @ estimated.T)).T + t
    return float(np.sqrt(np.mean(np.sum((aligned - truth) ** 2, axis=1))))


def rotation_errors_deg(estimated: Trajectory, truth: Trajectory) -> FloatArray:
    """Per frame, the angle between the estimated and true orientation relative to frame 0."""
    if len(estimated) != len(truth):
        raise ValueError(f"{len(estimated)} estimated frames against {len(truth)} true ones")
    Re, Rt = estimated.rotations, truth.rotations
    out = [rotation_angle_deg((Re[0] @ Re[i].T) @ (Rt[0] @ Rt[i].T).T) for i in range(len(truth))]
    return np.asarray(out)


@dataclass(frozen=True)
class Accuracy:
    rotation_mean_deg: float
    rotation_max_deg: float
    ate: float | None  # in the true trajectory's units; None when it does not translate
    ate_relative: float | None  # ATE / true path length


def trajectory_accuracy(estimated: Trajectory, truth: Trajectory) -> Accuracy:
    rot = rotation_errors_deg(estimated, truth)
    C = truth.centers()
    path = float(np.linalg.norm(np.diff(C, axis=0), axis=1).sum())
    ate: float | None = None
    rel: float | None = None
    est_c = estimated.centers()
    if path > 1e-9 and float(np.ptp(est_c, axis=0).max()) > 1e-12:
        ate = ate_sim3(est_c, C)
        rel = ate / path
    elif path > 1e-9:
        # nothing estimated to align: the error is the whole true motion
        ate = float(np.sqrt(np.mean(np.sum((C - C.mean(axis=0)) ** 2, axis=1))))
        rel = ate / path
    return Accuracy(
        rotation_mean_deg=float(rot.mean()),
        rotation_max_deg=float(rot.max()),
        ate=ate,
        ate_relative=rel if rel is None or math.isfinite(rel) else None,
    )


__all__ = ["Accuracy", "ate_sim3", "rotation_errors_deg", "trajectory_accuracy", "umeyama_sim3"]
