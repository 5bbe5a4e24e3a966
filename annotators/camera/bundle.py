"""A small bundle adjuster: robust Levenberg-Marquardt over camera poses and 3D points with
the Schur complement, in numpy. It removes the bias that the first short-baseline two-view
estimate leaves in every later PnP pose (a truck read as a slight pan, and the like)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from any2capins.annotators.camera.trajectory import FloatArray, matrix_from_rotvec

IntArray = npt.NDArray[np.int64]


@dataclass
class BundleProblem:
    """Poses ``R [F,3,3]``, ``t [F,3]`` (world-to-camera), points ``X [P,3]``, and the
    observations: frame index, point index and pixel position of each, with per-frame K."""

    R: FloatArray
    t: FloatArray
    X: FloatArray
    K: FloatArray  # [F, 3, 3]
    frame: IntArray
    point: IntArray
    uv: FloatArray  # [O, 2]
    fixed: IntArray  # frames whose pose is held (the gauge)


def _skew(v: FloatArray) -> FloatArray:
    z = np.zeros(v.shape[:-1])
    return np.stack(
        [
            np.stack([z, -v[..., 2], v[..., 1]], -1),
            np.stack([v[..., 2], z, -v[..., 0]], -1),
            np.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def _scatter_sum(index: IntArray, values: FloatArray, n: int) -> FloatArray:
    """``out[index[o]] += values[o]`` (np.add.at, but with bincount's speed)."""
    flat = values.reshape(len(values), -1)
    out = np.stack(
        [np.bincount(index, weights=flat[:, c], minlength=n) for c in range(flat.shape[1])],
        axis=1,
    )
    return out.reshape((n, *values.shape[1:]))


def _residuals(p: BundleProblem, R: FloatArray, t: FloatArray, X: FloatArray) -> FloatArray:
    cam = np.einsum("oij,oj->oi", R[p.frame], X[p.point]) + t[p.frame]
    K = p.K[p.frame]
    z = np.where(cam[:, 2] > 1e-9, cam[:, 2], 1e-9)
    u = K[:, 0, 0] * cam[:, 0] / z + K[:, 0, 2]
    v = K[:, 1, 1] * cam[:, 1] / z + K[:, 1, 2]
    out: FloatArray = np.stack([u, v], 1) - p.uv
    return out


def reprojection_residuals(
    R: FloatArray, t: FloatArray, X: FloatArray, p: BundleProblem
) -> FloatArray:
    """Pixel residual ``[O, 2]`` of every observation for the given poses and points."""
    return _residuals(p, R, t, X)


def _cost(r: FloatArray, delta: float) -> float:
    e = np.linalg.norm(r, axis=1)
    huber = np.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta))
    return float(huber.sum())


def bundle_adjust(
    p: BundleProblem, iterations: int = 15, huber_px: float = 2.0
) -> tuple[FloatArray, FloatArray, FloatArray, float, float]:
    """Refined ``(R, t, X, cost_before, cost_after)`` (Huber cost in pixels squared)."""
    n_f, n_p = len(p.R), len(p.X)
    free = np.ones(n_f, bool)
    free[p.fixed] = False
    slot = np.full(n_f, -1)
    slot[free] = np.arange(int(free.sum()))
    nf = int(free.sum())
    R, t, X = p.R.copy(), p.t.copy(), p.X.copy()
    r = _residuals(p, R, t, X)
    cost0 = cost = _cost(r, huber_px)
    lam = 1e-3
    improved = 1.0
    for _ in range(iterations):
        RX = np.einsum("oij,oj->oi", R[p.frame], X[p.point])
        cam = RX + t[p.frame]
        K = p.K[p.frame]
        z = np.maximum(cam[:, 2], 1e-9)
        Jpi = np.zeros((len(z), 2, 3))
        Jpi[:, 0, 0] = K[:, 0, 0] / z
        Jpi[:, 0, 2] = -K[:, 0, 0] * cam[:, 0] / z**2
        Jpi[:, 1, 1] = K[:, 1, 1] / z
        Jpi[:, 1, 2] = -K[:, 1, 1] * cam[:, 1] / z**2
        Jpose = np.concatenate([Jpi @ -_skew(RX), Jpi], axis=2)  # [O, 2, 6]
        Jx = Jpi @ R[p.frame]  # [O, 2, 3]
        e = np.linalg.norm(r, axis=1)
        w = np.where(e <= huber_px, 1.0, huber_px / np.maximum(e, 1e-12))  # IRLS Huber weights
        obs_free = slot[p.frame] >= 0
        JpT = Jpose.transpose(0, 2, 1) * w[:, None, None]
        JxT = Jx.transpose(0, 2, 1) * w[:, None, None]
        V = _scatter_sum(p.point, JxT @ Jx, n_p)
        gx = _scatter_sum(p.point, np.einsum("oij,oj->oi", JxT, r), n_p)
        fo = np.flatnonzero(obs_free)
        fslot = slot[p.frame[fo]]
        U = _scatter_sum(fslot, JpT[fo] @ Jpose[fo], nf)
        gp = _scatter_sum(fslot, np.einsum("oij,oj->oi", JpT[fo], r[fo]), nf)
        W = JpT[fo] @ Jx[fo]  # [Of, 6, 3]
        while True:
            Ud = U + lam * np.einsum("fii->fi", U)[:, :, None] * np.eye(6) + 1e-9 * np.eye(6)
            Vd = V + lam * np.einsum("pii->pi", V)[:, :, None] * np.eye(3) + 1e-9 * np.eye(3)
            Vinv = np.linalg.inv(Vd)
            Y = W @ Vinv[p.point[fo]]  # [Of, 6, 3]
            b = gp - _scatter_sum(fslot, np.einsum("oij,oj->oi", Y, gx[p.point[fo]]), nf)
            # S = U - sum_p Y_p W_p^T, every point's frames at once: one (6F x 3P) product
            Yfull = np.zeros((nf, 6, n_p, 3))
            Wfull = np.zeros((nf, 6, n_p, 3))
            Yfull[fslot, :, p.point[fo], :] = Y
            Wfull[fslot, :, p.point[fo], :] = W
            Sm = -(Yfull.reshape(nf * 6, n_p * 3) @ Wfull.reshape(nf * 6, n_p * 3).T)
            S = Sm.reshape(nf, 6, nf, 6)
            S[np.arange(nf), :, np.arange(nf), :] += Ud
            Sm = S.reshape(nf * 6, nf * 6)
            try:
                dp = np.linalg.solve(Sm, -b.reshape(-1)).reshape(nf, 6)
            except np.linalg.LinAlgError:
                lam *= 10
                if lam > 1e8:
                    return R, t, X, cost0, cost
                continue
            rhs = gx + _scatter_sum(p.point[fo], np.einsum("oji,oj->oi", W, dp[fslot]), n_p)
            dx = -np.einsum("pij,pj->pi", Vinv, rhs)
            Rn, tn = R.copy(), t.copy()
            for f in np.flatnonzero(free):
                d = dp[slot[f]]
                Rn[f] = matrix_from_rotvec(d[:3]) @ R[f]
                tn[f] = t[f] + d[3:]
            Xn = X + dx
            rn = _residuals(p, Rn, tn, Xn)
            new_cost = _cost(rn, huber_px)
            if new_cost < cost:
                improved = (cost - new_cost) / max(cost, 1e-12)
                R, t, X, r, cost = Rn, tn, Xn, rn, new_cost
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
            if lam > 1e8:
                return R, t, X, cost0, cost
        if improved < 1e-6:
            break
    return R, t, X, cost0, cost


__all__ = ["BundleProblem", "bundle_adjust", "reprojection_residuals"]
