"""Camera trajectories estimated from video frames with OpenCV: KLT feature tracks, a
rotation(+zoom) model against an essential-matrix model to tell pure rotation from
translation, triangulated map points and PnP for a scale that stays consistent over the clip.

How a clip is processed, frame by frame:

1. **Tracks.** Shi-Tomasi corners tracked with pyramidal Lucas-Kanade, kept only when the
   backward flow returns to the start (forward-backward check). Points on moving subjects are
   never tracked: the identity/pose masks (dilated) exclude them when given, and RANSAC
   rejects what the masks miss.
2. **Until there is parallax** every frame is related to a keyframe by a rotation (plus a
   focal-length ratio for zoom) fitted with RANSAC on unit bearing vectors: the calibrated
   form of the infinite homography. A static tripod shot stays here, so people moving in
   front of it cannot create a translation.
3. **Translation** is accepted only when an essential matrix (RANSAC) explains the tracks
   and most of its inliers, spread over the image, show parallax the rotation model cannot
   explain. Moving subjects are a minority blob, so they fail the share and the spread test.
   ``recoverPose`` then gives the relative pose, the inliers are triangulated and the scale
   is fixed so that their median depth matches the depth known so far (1 at the start).
4. **With a map**, each frame is located by PnP (RANSAC, then Levenberg-Marquardt) against
   the triangulated points, and new tracks are triangulated once their rays span enough
   angle; PnP outliers (things that moved) leave the map. When too few map points remain in
   view, the estimator falls back to step 2/3 from the last good frame, rescaling any new
   points by the depth of the map points it still sees.

The result is scaled so that the median depth of the scene is 1 (``scene_depth=1.0``);
a clip that never shows parallax has no translation and ``scene_depth=None``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from any2capins.annotators.camera.bundle import BundleProblem, bundle_adjust
from any2capins.annotators.camera.bundle import reprojection_residuals as _project
from any2capins.annotators.camera.trajectory import FloatArray, Trajectory, project_to_rotation

DEFAULT_FOV_DEG = 60.0


class EstimationError(RuntimeError):
    """Frames from which no camera path can be estimated (too short, blank, untrackable)."""


class UntrackableError(EstimationError):
    """Too few features to track: a blank or textureless clip, or one where tracking is lost
    in most frames. The clip has no trustworthy camera path, which is a property of the clip
    rather than a fault (the camera stage records it as an unusable condition)."""


@dataclass(frozen=True)
class EstimatorSettings:
    """Every tunable of the estimator; pixel values refer to the working resolution."""

    max_side: int = 640  # frames larger than this are downscaled first
    max_corners: int = 600
    quality_level: float = 0.01
    min_distance_px: int = 8
    lk_window: int = 21
    lk_levels: int = 4
    forward_backward_px: float = 1.0
    mask_dilate_px: int = 9
    min_tracks: int = 30  # fewer correspondences than this cannot be trusted
    rotation_inlier_px: float = 1.5
    essential_inlier_px: float = 1.0
    parallax_px: float = 2.0  # residual of the rotation model that counts as parallax
    min_parallax_share: float = 0.3  # of the essential-matrix inliers
    min_parallax_cover: float = 0.5  # of the 4x4 image cells those inliers occupy
    still_px: float = 0.6  # a track that moved less than this since the keyframe is still
    still_share: float = 0.1  # of the tracks, still, for a static camera ...
    still_cover: float = 0.3  # ... spread over this share of the occupied 4x4 cells
    pnp_px: float = 2.0
    min_pnp_points: int = 20
    min_triangulation_deg: float = 1.5
    bundle_every: int = 10  # located frames between bundle adjustments
    bundle_max_points: int = 1500
    estimate_zoom: bool = True
    min_zoom_step: float = 0.002  # |log focal ratio| below this is noise
    ransac_hypotheses: int = 200
    seed: int = 0
    quality_inlier_px: float = 3.0  # final reprojection residual that counts as an inlier


@dataclass
class EstimationReport:
    """What the estimator did, per frame and overall (for provenance and benchmarks)."""

    frames: int
    width: int
    height: int
    seconds: float = 0.0
    modes: list[str] = field(default_factory=list)  # first|still|rotation|bootstrap|pnp|lost
    tracks: list[int] = field(default_factory=list)
    map_points: int = 0
    masks_used: bool = False
    # Of the final cameras, over the correspondences of every located frame (see
    # _Estimator.quality): the share within ``quality_inlier_px``, and their RMS residual.
    inlier_ratio: float = 0.0
    reprojection_rms_px: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_tracks(self) -> float:
        return sum(self.tracks) / max(1, len(self.tracks))

    @property
    def lost_fraction(self) -> float:
        return self.modes.count("lost") / max(1, len(self.modes))

    def quality(self) -> dict[str, float]:
        """The figures a camera suitability rule judges an estimate by."""
        return {
            "mean_tracks": round(self.mean_tracks, 1),
            "inlier_ratio": round(self.inlier_ratio, 4),
            "reprojection_rms_px": round(self.reprojection_rms_px, 4),
            "lost_fraction": round(self.lost_fraction, 4),
        }

    def summary(self) -> dict[str, str]:
        counts = {m: self.modes.count(m) for m in dict.fromkeys(self.modes)}
        return {
            "frames": str(self.frames),
            "modes": ",".join(f"{k}={v}" for k, v in counts.items()),
            "mean_tracks": f"{self.mean_tracks:.0f}",
            "map_points": str(self.map_points),
            "inlier_ratio": f"{self.inlier_ratio:.3f}",
            "reprojection_rms_px": f"{self.reprojection_rms_px:.3f}",
            "masks": "used" if self.masks_used else "none",
            "seconds": f"{self.seconds:.3f}",
        }


def _bearings(pts: FloatArray, K: FloatArray) -> FloatArray:
    x = (pts[:, 0] - K[0, 2]) / K[0, 0]
    y = (pts[:, 1] - K[1, 2]) / K[1, 1]
    b = np.stack([x, y, np.ones_like(x)], axis=1)
    out: FloatArray = b / np.linalg.norm(b, axis=1, keepdims=True)
    return out


def _kabsch(b1: FloatArray, b2: FloatArray) -> FloatArray:
    """Rotation R maximising sum b2 . (R b1)."""
    return project_to_rotation(b2.T @ b1)


def _angles(R: FloatArray, b1: FloatArray, b2: FloatArray) -> FloatArray:
    cos = np.clip(np.sum((b1 @ R.T) * b2, axis=1), -1.0, 1.0)
    out: FloatArray = np.arccos(cos)
    return out


@dataclass
class _RotationFit:
    R: FloatArray
    scale: float  # focal ratio frame j / keyframe
    inliers: npt.NDArray[np.bool_]
    residual_px: FloatArray  # per correspondence, at frame j's focal length
    score: float


class _Estimator:
    def __init__(
        self,
        frames: npt.NDArray[np.uint8],
        K: FloatArray,
        masks: npt.NDArray[np.bool_] | None,
        settings: EstimatorSettings,
    ) -> None:
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)
        n, h, w = frames.shape[:3]
        scale = min(1.0, settings.max_side / max(h, w))
        self.scale = scale
        self.w, self.h = max(16, round(w * scale)), max(16, round(h * scale))
        self.K0 = K.copy()
        self.K0[:2] *= np.array([[self.w / w], [self.h / h]])
        self.gray = [self._gray(f) for f in frames]
        self.masks = self._masks(masks, n)
        self.n = n
        self.R = [np.eye(3) for _ in range(n)]
        self.t = [np.zeros(3) for _ in range(n)]
        self.focal = np.ones(n)  # focal length relative to frame 0
        self.modes = ["first"] + ["lost"] * (n - 1)
        self.tracks_per_frame = [0] * n
        # tracks: per frame the ids and positions seen there
        self.frame_ids: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)] * n
        self.frame_pts: list[FloatArray] = [np.zeros((0, 2))] * n
        self.frame_row: list[dict[int, int]] = [{} for _ in range(n)]
        self.start: dict[int, int] = {}
        self.next_id = 0
        self.points: dict[int, FloatArray] = {}
        self.bad: set[int] = set()
        self.keyframe = 0
        self.key_count = 0
        self.anchor: dict[int, tuple[int, FloatArray]] = {}  # rotation-only frame -> keyframe
        self.depth_ref = 1.0

    # inputs
    def _gray(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        if g.shape != (self.h, self.w):
            g = cv2.resize(g, (self.w, self.h), interpolation=cv2.INTER_AREA)
        return np.asarray(g, dtype=np.uint8)

    def _masks(
        self, masks: npt.NDArray[np.bool_] | None, n: int
    ) -> list[npt.NDArray[np.bool_]] | None:
        if masks is None:
            return None
        if masks.shape[0] != n or masks.ndim != 3:
            raise ValueError(f"masks must be [T, H, W] with T = {n}, got {masks.shape}")
        size = 2 * self.s.mask_dilate_px + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        out = []
        for m in masks:
            m8 = m.astype(np.uint8)
            if m8.shape != (self.h, self.w):
                m8 = cv2.resize(m8, (self.w, self.h), interpolation=cv2.INTER_NEAREST)
            out.append(cv2.dilate(m8, kernel).astype(bool))
        return out

    def K(self, i: int) -> FloatArray:
        K = self.K0.copy()
        K[0, 0] *= self.focal[i]
        K[1, 1] *= self.focal[i]
        return K

    def C(self, i: int) -> FloatArray:
        out: FloatArray = -self.R[i].T @ self.t[i]
        return out

    # tracking
    def _set_frame(self, i: int, ids: npt.NDArray[np.int64], pts: FloatArray) -> None:
        self.frame_ids[i], self.frame_pts[i] = ids, pts
        self.frame_row[i] = {int(k): r for r, k in enumerate(ids)}
        self.tracks_per_frame[i] = len(ids)

    def _detect(self, i: int, ids: npt.NDArray[np.int64], pts: FloatArray) -> None:
        """Add new corners in frame ``i`` away from the tracked ones and from subjects."""
        s = self.s
        if len(ids) >= 0.8 * s.max_corners:
            self._set_frame(i, ids, pts)
            return
        allow = np.full((self.h, self.w), 255, np.uint8)
        if self.masks is not None:
            allow[self.masks[i]] = 0
        for x, y in pts:
            cv2.circle(allow, (round(x), round(y)), s.min_distance_px, 0, -1)
        new = cv2.goodFeaturesToTrack(
            self.gray[i],
            maxCorners=s.max_corners - len(ids),
            qualityLevel=s.quality_level,
            minDistance=s.min_distance_px,
            mask=allow,
            blockSize=7,
        )
        if new is not None and len(new):
            new = new.reshape(-1, 2).astype(np.float64)
            new_ids = np.arange(self.next_id, self.next_id + len(new), dtype=np.int64)
            self.next_id += len(new)
            for k in new_ids:
                self.start[int(k)] = i
            ids = np.concatenate([ids, new_ids])
            pts = np.vstack([pts, new])
        self._set_frame(i, ids, pts)

    def _track(self, j: int) -> None:
        s = self.s
        ids, p0 = self.frame_ids[j - 1], self.frame_pts[j - 1]
        keep = np.array([int(k) not in self.bad for k in ids], bool)
        ids, p0 = ids[keep], p0[keep]
        if len(ids) == 0:
            self._detect(j, np.zeros(0, np.int64), np.zeros((0, 2)))
            return
        win = (s.lk_window, s.lk_window)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
        a = p0.astype(np.float32).reshape(-1, 1, 2)
        fwd, st1, _ = cv2.calcOpticalFlowPyrLK(
            self.gray[j - 1],
            self.gray[j],
            a,
            a.copy(),  # output buffer; without OPTFLOW_USE_INITIAL_FLOW it is not a guess
            winSize=win,
            maxLevel=s.lk_levels,
            criteria=crit,
        )
        back, st2, _ = cv2.calcOpticalFlowPyrLK(
            self.gray[j],
            self.gray[j - 1],
            fwd,
            a.copy(),
            winSize=win,
            maxLevel=s.lk_levels,
            criteria=crit,
        )
        p1 = np.asarray(fwd, np.float64).reshape(-1, 2)
        fb = np.linalg.norm(np.asarray(back, np.float64).reshape(-1, 2) - p0, axis=1)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < s.forward_backward_px)
        ok &= (
            (p1[:, 0] >= 0) & (p1[:, 0] <= self.w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= self.h - 1)
        )
        if self.masks is not None:
            xi = np.clip(np.round(p1[:, 0]).astype(int), 0, self.w - 1)
            yi = np.clip(np.round(p1[:, 1]).astype(int), 0, self.h - 1)
            on_subject = self.masks[j][yi, xi]
            for k in ids[ok & on_subject]:
                self.bad.add(int(k))
                self.points.pop(int(k), None)
            ok &= ~on_subject
        self._detect(j, ids[ok], p1[ok])

    def _common(self, a: int, b: int) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray]:
        ids, ia, ib = np.intersect1d(self.frame_ids[a], self.frame_ids[b], return_indices=True)
        keep = np.array([int(k) not in self.bad for k in ids], bool)
        return ids[keep], self.frame_pts[a][ia[keep]], self.frame_pts[b][ib[keep]]

    # two-view models
    def _rotation_ransac(self, b1: FloatArray, b2: FloatArray, thr: float) -> FloatArray:
        n = len(b1)
        m = self.s.ransac_hypotheses
        i = self.rng.integers(0, n, m)
        j = (i + self.rng.integers(1, n, m)) % n
        H = np.einsum("mi,mj->mij", b2[i], b1[i]) + np.einsum("mi,mj->mij", b2[j], b1[j])
        U, _, Vt = np.linalg.svd(H)
        d = np.sign(np.linalg.det(U @ Vt))
        D = np.tile(np.eye(3), (m, 1, 1))
        D[:, 2, 2] = d
        Rs = U @ D @ Vt
        cos = np.einsum("mij,nj,ni->mn", Rs, b1, b2)
        counts = (cos > math.cos(thr)).sum(axis=1)
        R = Rs[int(np.argmax(counts))]
        for _ in range(2):
            inl = _angles(R, b1, b2) < thr
            if inl.sum() < 3:
                break
            R = _kabsch(b1[inl], b2[inl])
        out: FloatArray = R
        return out

    def _fit_rotation(self, k: int, pk: FloatArray, pj: FloatArray, scale: float) -> _RotationFit:
        Kk = self.K(k)
        Kj = Kk.copy()
        Kj[0, 0] *= scale
        Kj[1, 1] *= scale
        f = float(Kj[0, 0])
        b1, b2 = _bearings(pk, Kk), _bearings(pj, Kj)
        thr = self.s.rotation_inlier_px / f
        R = self._rotation_ransac(b1, b2, thr)
        ang = _angles(R, b1, b2)
        score = float(np.minimum(ang, thr) ** 2 @ np.ones(len(ang)))
        return _RotationFit(R, scale, ang < thr, ang * f, score)

    def _best_rotation(self, k: int, j: int, pk: FloatArray, pj: FloatArray) -> _RotationFit:
        fit = self._fit_rotation(k, pk, pj, 1.0)
        prev = self.focal[j - 1] / self.focal[k] if j - 1 >= k else 1.0
        if not self.s.estimate_zoom:
            return fit
        if prev == 1.0 and np.percentile(fit.residual_px, 90) < self.s.parallax_px / 4:
            return fit  # a rotation already explains everything: no zoom to look for
        grid = prev * np.exp(np.linspace(-0.06, 0.06, 13))
        fits = [self._fit_rotation(k, pk, pj, float(sc)) for sc in grid]
        b = int(np.argmin([f.score for f in fits]))
        best = fits[b]
        if abs(math.log(best.scale)) < self.s.min_zoom_step or best.score >= fit.score:
            return fit
        # Golden-section search of the focal ratio on the grid winner's inliers: the squared
        # angles after a Kabsch fit are smooth in the ratio, the RANSAC score is not.
        inl = best.inliers
        Kk = self.K(k)
        b1 = _bearings(pk[inl], Kk)

        def cost(log_s: float) -> float:
            Kj = Kk.copy()
            Kj[:2, :2] *= math.exp(log_s)
            b2 = _bearings(pj[inl], Kj)
            return float(np.sum(_angles(_kabsch(b1, b2), b1, b2) ** 2))

        lo = math.log(grid[max(b - 1, 0)])
        hi = math.log(grid[min(b + 1, len(grid) - 1)])
        g = (math.sqrt(5) - 1) / 2
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        f1, f2 = cost(x1), cost(x2)
        for _ in range(24):
            if f1 < f2:
                hi, x2, f2 = x2, x1, f1
                x1 = hi - g * (hi - lo)
                f1 = cost(x1)
            else:
                lo, x1, f1 = x1, x2, f2
                x2 = lo + g * (hi - lo)
                f2 = cost(x2)
        refined = self._fit_rotation(k, pk, pj, math.exp((lo + hi) / 2))
        return refined if refined.score <= best.score else best

    def _parallax_ok(
        self, pj: FloatArray, residual_px: FloatArray, inliers: npt.NDArray[np.bool_]
    ) -> bool:
        s = self.s
        if inliers.sum() < s.min_tracks:
            return False
        par = residual_px[inliers] > s.parallax_px
        if par.mean() < s.min_parallax_share:
            return False
        cells = (np.minimum(pj[inliers, 0] * 4 // self.w, 3) * 4) + np.minimum(
            pj[inliers, 1] * 4 // self.h, 3
        )
        occupied = set(cells.astype(int).tolist())
        moving = set(cells[par].astype(int).tolist())
        return len(moving) >= s.min_parallax_cover * len(occupied)

    def _still(self, pj: FloatArray, still: npt.NDArray[np.bool_]) -> bool:
        """Enough tracks, spread over the image, have not moved: a static camera."""
        s = self.s
        if still.sum() < max(s.min_tracks // 2, s.still_share * len(still)):
            return False
        cells = np.minimum(pj[:, 0] * 4 // self.w, 3) * 4 + np.minimum(pj[:, 1] * 4 // self.h, 3)
        occupied = len(set(cells.astype(int).tolist()))
        steady = len(set(cells[still].astype(int).tolist()))
        return steady >= 4 and steady >= s.still_cover * occupied

    def _two_view(self, j: int) -> None:
        s = self.s
        k = self.keyframe
        ids, pk, pj = self._common(k, j)
        if len(ids) < max(s.min_tracks, 0.5 * self.key_count) and k != j - 1:
            self._set_keyframe(j - 1)
            k = j - 1
            ids, pk, pj = self._common(k, j)
        if len(ids) < 8:
            self.R[j], self.t[j], self.focal[j] = self.R[j - 1], self.t[j - 1], self.focal[j - 1]
            self.modes[j] = "lost"
            self._set_keyframe(j)
            return
        if self._still(pj, np.linalg.norm(pj - pk, axis=1) < s.still_px):
            # the background has not moved since the keyframe: whatever moves is a subject
            self.R[j], self.t[j], self.focal[j] = self.R[k], self.t[k], self.focal[k]
            self.anchor[j] = (k, np.eye(3))
            self.modes[j] = "still"
            return
        rot = self._best_rotation(k, j, pk, pj)
        translated = False
        # The essential matrix assumes one focal length; a zoom-only fit that leaves parallax
        # unexplained is a dolly, so the test runs against the rotation(+zoom) residuals.
        if len(ids) >= s.min_tracks:
            E, inl = cv2.findEssentialMat(
                pk, pj, self.K(k), method=cv2.RANSAC, prob=0.999, threshold=s.essential_inlier_px
            )
            if E is not None and E.shape[0] >= 3 and inl is not None:
                inl_b = inl.ravel().astype(bool)
                if self._parallax_ok(pj, rot.residual_px, inl_b):
                    E3 = np.asarray(E[:3], np.float64)
                    translated = self._bootstrap(k, j, ids, pk, pj, E3, inl_b)
        if not translated:
            self.R[j] = rot.R @ self.R[k]
            self.t[j] = rot.R @ self.t[k]  # same centre as the keyframe
            self.anchor[j] = (k, rot.R)
            self.focal[j] = self.focal[k] * rot.scale
            self.modes[j] = "rotation"
            # a new keyframe only when the old one's tracks run out: keeping it lets the
            # baseline, and so the parallax of a slow translation, grow
            if len(ids) < max(s.min_tracks, 0.6 * self.key_count):
                self._set_keyframe(j)

    def _set_keyframe(self, k: int) -> None:
        self.keyframe = k
        self.key_count = len(self.frame_ids[k])

    def _triangulate(
        self,
        Ra: FloatArray,
        ta: FloatArray,
        Ka: FloatArray,
        Rb: FloatArray,
        tb: FloatArray,
        Kb: FloatArray,
        pa: FloatArray,
        pb: FloatArray,
    ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """World points from two views, and which pass depth and reprojection checks."""
        Pa = Ka @ np.hstack([Ra, ta[:, None]])
        Pb = Kb @ np.hstack([Rb, tb[:, None]])
        Xh = cv2.triangulatePoints(Pa, Pb, pa.T.astype(np.float64), pb.T.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            X = (Xh[:3] / Xh[3]).T
        ok = np.isfinite(X).all(axis=1)
        X = np.where(ok[:, None], X, 0.0)
        for R, t, K, p in ((Ra, ta, Ka, pa), (Rb, tb, Kb, pb)):
            cam = X @ R.T + t
            z = cam[:, 2]
            ok &= z > 1e-6
            with np.errstate(divide="ignore", invalid="ignore"):
                proj = (cam @ K.T)[:, :2] / z[:, None]
            ok &= np.linalg.norm(proj - p, axis=1) < 1.5 * self.s.pnp_px
        return X, ok

    def _bootstrap(
        self,
        k: int,
        j: int,
        ids: npt.NDArray[np.int64],
        pk: FloatArray,
        pj: FloatArray,
        E: FloatArray,
        inl: npt.NDArray[np.bool_],
    ) -> bool:
        Kk = self.K(k)
        n_ok, R_cv, t_cv, _ = cv2.recoverPose(E, pk[inl], pj[inl], Kk)
        if n_ok < self.s.min_tracks // 2:
            return False
        R = np.asarray(R_cv, np.float64)
        t = np.asarray(t_cv, np.float64).ravel()
        sel = np.flatnonzero(inl)
        X, ok = self._triangulate(np.eye(3), np.zeros(3), Kk, R, t, Kk, pk[sel], pj[sel])
        if ok.sum() < self.s.min_tracks // 2:
            return False
        sel, X = sel[ok], X[ok]
        z_new = X[:, 2]
        # scale: the depths of map points still seen in the keyframe, else the running reference
        known = [(i, int(ids[i])) for i in sel if int(ids[i]) in self.points]
        if len(known) >= 5:
            row = {int(ids[i]): r for r, i in enumerate(sel)}
            old = np.array([(self.R[k] @ self.points[pid] + self.t[k])[2] for _, pid in known])
            new = np.array([z_new[row[pid]] for _, pid in known])
            good = (old > 0) & (new > 0)
            scale = float(np.median(old[good] / new[good])) if good.sum() >= 5 else 0.0
        else:
            scale = 0.0
        if not scale > 0:
            scale = self.depth_ref / float(np.median(z_new))
        t_rel = t * scale
        X = X * scale
        self.R[j] = R @ self.R[k]
        self.t[j] = R @ self.t[k] + t_rel
        self.focal[j] = self.focal[k]
        world = (X - self.t[k]) @ self.R[k]  # R^T (x - t) per row
        for i, Xw in zip(sel, world, strict=True):
            pid = int(ids[i])
            if pid not in self.points and pid not in self.bad:
                self.points[pid] = Xw
        self.depth_ref = float(np.median(X[:, 2]))
        self.modes[j] = "bootstrap"
        for m in range(k + 1, j):
            self.focal[m] = self.focal[k]
            if self._pnp(m):
                self.modes[m] = "pnp"
        return True

    # with a map
    def _pnp(self, j: int, guess: int | None = None) -> bool:
        s = self.s
        ids = self.frame_ids[j]
        sel = [r for r, k in enumerate(ids) if int(k) in self.points]
        if len(sel) < s.min_pnp_points:
            return False
        obj = np.array([self.points[int(ids[r])] for r in sel], np.float64)
        img = self.frame_pts[j][sel].astype(np.float64)
        if guess is None:
            guess = j - 1 if self.modes[j] == "lost" else j
        rvec0, _ = cv2.Rodrigues(self.R[guess])
        tvec0 = self.t[guess].reshape(3, 1).copy()
        K = self.K(guess if guess == j else j - 1)
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj,
            img,
            K,
            None,
            rvec0,
            tvec0,
            useExtrinsicGuess=True,
            iterationsCount=100,
            reprojectionError=s.pnp_px,
            confidence=0.999,
            flags=cv2.SOLVEPNP_ITERATIVE,
        )
        if not ok or inliers is None:
            return False
        inl = inliers.ravel()
        if len(inl) < max(0.75 * s.min_pnp_points, 0.5 * len(sel)):
            return False
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
        R = np.asarray(cv2.Rodrigues(rvec)[0], np.float64)
        t = np.asarray(tvec, np.float64).ravel()
        proj = (obj @ R.T + t) @ K.T
        err = np.linalg.norm(proj[:, :2] / proj[:, 2:3] - img, axis=1)
        for r, e in zip(sel, err, strict=True):
            if not e < 3 * s.pnp_px:
                pid = int(ids[r])
                self.points.pop(pid, None)
                self.bad.add(pid)
        self.R[j], self.t[j] = R, t
        self.anchor.pop(j, None)
        if guess != j:
            self.focal[j] = self.focal[j - 1]
        return True

    def _extend_map(self, j: int) -> None:
        """Triangulate tracks seen in frame ``j`` whose rays now span enough angle."""
        s = self.s
        Kj = self.K(j)
        Cj = self.C(j)
        groups: dict[int, list[int]] = {}
        for r, k in enumerate(self.frame_ids[j]):
            pid = int(k)
            a = self.start.get(pid, j)
            if pid in self.points or pid in self.bad or a >= j or self.modes[a] == "lost":
                continue
            groups.setdefault(a, []).append(r)
        min_cos = math.cos(math.radians(s.min_triangulation_deg))
        for a, rows in groups.items():
            Ka = self.K(a)
            pids = self.frame_ids[j][rows]
            pa = np.array([self.frame_pts[a][self.frame_row[a][int(p)]] for p in pids])
            pj = self.frame_pts[j][rows]
            da = _bearings(pa, Ka) @ self.R[a]  # world directions: R^T b
            dj = _bearings(pj, Kj) @ self.R[j]
            if np.linalg.norm(Cj - self.C(a)) < 1e-9:
                continue
            wide = np.sum(da * dj, axis=1) < min_cos
            if not wide.any():
                continue
            X, ok = self._triangulate(
                self.R[a], self.t[a], Ka, self.R[j], self.t[j], Kj, pa[wide], pj[wide]
            )
            mid = (a + j) // 2
            for pid, Xw, good in zip(pids[wide], X, ok, strict=True):
                if not good:
                    continue
                row = self.frame_row[mid].get(int(pid))
                if row is not None and mid not in (a, j):
                    cam = self.R[mid] @ Xw + self.t[mid]
                    if cam[2] <= 0:
                        continue
                    pr = self.K(mid) @ cam
                    if np.linalg.norm(pr[:2] / pr[2] - self.frame_pts[mid][row]) > 2 * s.pnp_px:
                        self.bad.add(int(pid))  # inconsistent over three views: it moved
                        continue
                self.points[int(pid)] = Xw

    def run(self) -> None:
        self._detect(0, np.zeros(0, np.int64), np.zeros((0, 2)))
        if len(self.frame_ids[0]) < self.s.min_tracks:
            raise UntrackableError(
                f"only {len(self.frame_ids[0])} trackable corners in the first frame "
                f"(need {self.s.min_tracks}): blank or textureless video"
            )
        self._set_keyframe(0)
        since_ba = 0
        for j in range(1, self.n):
            self._track(j)
            located = bool(self.points) and self._pnp(j)
            if not located and self.points and since_ba:
                # early map points come from a short baseline; refine them before giving up
                self.refine()
                since_ba = 0
                located = self._pnp(j)
            if located:
                self.modes[j] = "pnp"
            else:
                if self.modes[j - 1] in ("pnp", "bootstrap"):
                    # the map no longer covers the view: restart from the last located frame
                    self._set_keyframe(j - 1)
                self._two_view(j)
            if self.points and self.modes[j] in ("pnp", "bootstrap"):
                self._extend_map(j)
                since_ba += 1
                if since_ba >= self.s.bundle_every:
                    self.refine()
                    since_ba = 0
        lost = self.modes.count("lost")
        if lost > self.n // 2:
            raise UntrackableError(
                f"tracking was lost in {lost} of {self.n} frames: too little texture or too "
                "much motion between samples (sample more frames per second)"
            )

    def refine(self) -> None:
        """Bundle-adjust every frame located against the map together with the map points
        (frame 0 fixed), then re-chain the rotation-only frames onto their refined keyframes."""
        located = [i for i in range(self.n) if self.modes[i] in ("first", "pnp", "bootstrap")]
        if len(located) < 3 or len(self.points) < self.s.min_pnp_points:
            return
        seen: dict[int, int] = {}
        for i in located:
            for k in self.frame_ids[i]:
                if int(k) in self.points:
                    seen[int(k)] = seen.get(int(k), 0) + 1
        # the best-observed points carry the geometry; a cap keeps the Schur system small
        pids = sorted(sorted(seen, key=lambda k: -seen[k])[: self.s.bundle_max_points])
        col = {pid: c for c, pid in enumerate(pids)}
        frames, points, uv = [], [], []
        for i in located:
            for r, k in enumerate(self.frame_ids[i]):
                c = col.get(int(k))
                if c is not None:
                    frames.append(i)
                    points.append(c)
                    uv.append(self.frame_pts[i][r])
        problem = BundleProblem(
            R=np.stack(self.R),
            t=np.stack(self.t),
            X=np.stack([self.points[pid] for pid in pids]),
            K=np.stack([self.K(i) for i in range(self.n)]),
            frame=np.asarray(frames, np.int64),
            point=np.asarray(points, np.int64),
            uv=np.asarray(uv, np.float64),
            fixed=np.asarray([i for i in range(self.n) if i not in set(located[1:])], np.int64),
        )
        R, t, X, before, after = bundle_adjust(problem, huber_px=self.s.pnp_px)
        if not after < before:
            return
        # Points whose views disagree after adjustment moved during the clip (a subject the
        # masks missed): they leave the map, and the rest is adjusted again without them.
        err = np.linalg.norm(_project(R, t, X, problem), axis=1)
        worst = np.zeros(len(pids))
        np.maximum.at(worst, problem.point, err)
        moved = worst > 3 * self.s.pnp_px
        if moved.any() and (~moved).sum() >= self.s.min_pnp_points:
            keep_obs = ~moved[problem.point]
            remap = np.cumsum(~moved) - 1
            problem = BundleProblem(
                R=R,
                t=t,
                X=X[~moved],
                K=problem.K,
                frame=problem.frame[keep_obs],
                point=remap[problem.point[keep_obs]],
                uv=problem.uv[keep_obs],
                fixed=problem.fixed,
            )
            for c in np.flatnonzero(moved).tolist():
                self.points.pop(pids[c], None)
                self.bad.add(pids[c])
            pids = [pid for c, pid in enumerate(pids) if not moved[c]]
            R, t, X, _, _ = bundle_adjust(problem, huber_px=self.s.pnp_px)
        for i in located[1:]:
            self.R[i], self.t[i] = R[i], t[i]
        for pid, Xw in zip(pids, X, strict=True):
            self.points[pid] = Xw
        for j in range(self.n):
            if j in self.anchor:
                k, R_rel = self.anchor[j]
                self.R[j] = R_rel @ self.R[k]
                self.t[j] = R_rel @ self.t[k]

    def quality(self) -> tuple[float, float]:
        """(inlier ratio, RMS px of the inliers) of the final cameras: every located frame's
        map points projected with its camera, and every rotation-only or still frame's tracks
        carried from its keyframe by the rotation(+zoom) between them; working pixels."""
        thr = self.s.quality_inlier_px
        errors: list[FloatArray] = []
        for j in range(1, self.n):
            mode = self.modes[j]
            if mode == "lost":
                continue
            if mode in ("pnp", "bootstrap"):
                ids = self.frame_ids[j]
                rows = [r for r, k in enumerate(ids) if int(k) in self.points]
                if not rows:
                    continue
                X = np.array([self.points[int(ids[r])] for r in rows])
                cam = X @ self.R[j].T + self.t[j]
                with np.errstate(divide="ignore", invalid="ignore"):
                    proj = (cam @ self.K(j).T)[:, :2] / cam[:, 2:3]
                err = np.linalg.norm(proj - self.frame_pts[j][rows], axis=1)
                errors.append(np.where(cam[:, 2] > 0, err, np.inf))
                continue
            k = self.anchor[j][0] if j in self.anchor else j - 1
            _, pk, pj = self._common(k, j)
            if len(pk) == 0:
                continue
            H = self.K(j) @ self.R[j] @ self.R[k].T @ np.linalg.inv(self.K(k))
            ph = np.hstack([pk, np.ones((len(pk), 1))]) @ H.T
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.linalg.norm(ph[:, :2] / ph[:, 2:3] - pj, axis=1)
            errors.append(err)
        if not errors:
            return 0.0, 0.0
        allerr = np.concatenate(errors)
        inl = np.isfinite(allerr) & (allerr < thr)
        if not inl.any():
            return 0.0, 0.0
        return float(inl.mean()), float(np.sqrt(np.mean(allerr[inl] ** 2)))

    def scene_depth(self) -> float | None:
        if not self.points:
            return None
        depths = []
        for i in range(self.n):
            ids = [int(k) for k in self.frame_ids[i] if int(k) in self.points]
            if ids:
                P = np.array([self.points[k] for k in ids])
                z = P @ self.R[i][2] + self.t[i][2]
                depths.append(z[z > 0])
        if not depths:
            return None
        allz = np.concatenate(depths)
        return float(np.median(allz)) if allz.size else None


def estimate_with_report(
    frames: npt.NDArray[np.uint8],
    timestamps_s: npt.ArrayLike,
    *,
    K: npt.ArrayLike | None = None,
    fov_deg: float | None = None,
    masks: npt.NDArray[np.bool_] | None = None,
    settings: EstimatorSettings | None = None,
) -> tuple[Trajectory, EstimationReport]:
    """:func:`estimate_camera_trajectory` plus a report of what the estimator did."""
    s = settings or EstimatorSettings()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    ts = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
    if ts.shape[0] != n:
        raise ValueError(f"{n} frames but {ts.shape[0]} timestamps")
    if n < 2:
        raise EstimationError(f"need at least 2 frames to estimate camera motion, got {n}")
    if K is not None and fov_deg is not None:
        raise ValueError("give K or fov_deg, not both")
    if K is None:
        fov = DEFAULT_FOV_DEG if fov_deg is None else float(fov_deg)
        if not 1.0 <= fov <= 179.0:
            raise ValueError(f"fov_deg must be in [1, 179], got {fov}")
        f = 0.5 * w / math.tan(math.radians(fov) / 2)
        Kp = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    else:
        Kp = np.asarray(K, dtype=np.float64)
        if Kp.shape != (3, 3) or Kp[0, 0] <= 0 or Kp[1, 1] <= 0:
            raise ValueError("K must be a 3x3 camera matrix with positive focal lengths")
    if masks is not None:
        masks = np.asarray(masks).astype(bool)
    started = time.perf_counter()
    # The linear algebra here is many tiny problems: BLAS threads only contend for the
    # cores that other clips' actors use (a 174x174 solve ran 80x slower with them).
    with threadpool_limits(limits=1):
        est = _Estimator(frames, Kp, masks, s)
        est.run()
        if est.points and s.estimate_zoom and np.ptp(np.log(est.focal)) > s.min_zoom_step:
            # Before parallax shows, a dolly looks like a zoom; once the clip turned out to
            # translate, the zoom is not trusted and the clip is estimated with a fixed focal.
            est = _Estimator(frames, Kp, masks, replace(s, estimate_zoom=False))
            est.run()
        est.refine()
    depth = est.scene_depth()
    unit = depth if depth is not None and depth > 0 else 1.0
    w2c = np.stack([np.hstack([est.R[i], (est.t[i] / unit)[:, None]]) for i in range(n)])
    if depth is None:
        w2c[:, :, 3] = 0.0
    Ks = np.stack([est.K(i) for i in range(n)])
    traj = Trajectory.from_pixel_K(
        Ks,
        est.w,
        est.h,
        w2c,
        ts,
        scene_depth=1.0 if depth is not None else None,
        meta={"format": "estimated"},
    )
    report = EstimationReport(
        frames=n,
        width=est.w,
        height=est.h,
        seconds=time.perf_counter() - started,
        modes=list(est.modes),
        tracks=list(est.tracks_per_frame),
        map_points=len(est.points),
        masks_used=masks is not None,
    )
    report.inlier_ratio, report.reprojection_rms_px = est.quality()
    return traj, report


def estimate_camera_trajectory(
    frames: npt.NDArray[np.uint8],
    timestamps_s: npt.ArrayLike,
    *,
    K: npt.ArrayLike | None = None,
    fov_deg: float | None = None,
    masks: npt.NDArray[np.bool_] | None = None,
    settings: EstimatorSettings | None = None,
) -> Trajectory:
    """Per-frame cameras of a clip: ``frames`` uint8 RGB ``[T, H, W, 3]``, their timestamps,
    pixel intrinsics ``K`` for that frame size or a horizontal ``fov_deg`` guess (default 60),
    and optional ``masks`` ``[T, H, W]`` (True on moving subjects, excluded from tracking).

    Translations are in units of the scene's median depth (``scene_depth = 1``).
    """
    return estimate_with_report(
        frames, timestamps_s, K=K, fov_deg=fov_deg, masks=masks, settings=settings
    )[0]


__all__ = [
    "DEFAULT_FOV_DEG",
    "EstimationError",
    "EstimationReport",
    "EstimatorSettings",
    "UntrackableError",
    "estimate_camera_trajectory",
    "estimate_with_report",
]
