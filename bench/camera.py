"""Camera estimation on CPU: speed and accuracy on synthetic renders with known cameras, and
speed on the real demo clips.

Accuracy per synthetic motion: mean / max rotation error (degrees, orientation relative to
the first frame), ATE after a Sim(3) (Umeyama) alignment as a share of the true path length,
and whether the labels match those of the true trajectory. Speed: estimated frames per second
against the baseline of KLT tracking alone on the same frames (the part every feature-based
estimator pays), and seconds of video per second at the stage's 5 samples per second.
BLAS is limited to one thread, as in the stage.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from any2capins.annotators.base import FrameSampling
from any2capins.annotators.camera import estimate_with_report, label_trajectory
from any2capins.annotators.camera.metrics import trajectory_accuracy
from any2capins.annotators.camera.synthetic import render_clip
from any2capins.pipeline.video import probe_video, sample_frames

REPO = Path(__file__).resolve().parents[1]
# (motion, moving objects, masks given)
SYNTHETIC: list[tuple[str, int, bool]] = [
    ("static", 3, False),
    ("pan_right", 0, False),
    ("tilt_up", 0, False),
    ("truck_right", 0, False),
    ("pedestal_up", 0, False),
    ("dolly_in", 0, False),
    ("dolly_out", 0, False),
    ("orbit_left", 0, False),
    ("pan_dolly", 0, False),
    ("zoom_in", 0, False),
    ("shaky", 0, False),
    ("truck_right", 3, False),
    ("dolly_in", 3, False),
    ("dolly_in", 3, True),
]
SAMPLES_PER_SECOND = 5.0


def _klt_only(frames: npt.NDArray[np.uint8]) -> float:
    """Seconds for the tracking part alone: corners once, forward-backward LK every step."""
    started = time.perf_counter()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    pts = cv2.goodFeaturesToTrack(gray[0], 600, 0.01, 8, blockSize=7)
    for i in range(1, len(gray)):
        if pts is None or len(pts) < 30:
            pts = cv2.goodFeaturesToTrack(gray[i - 1], 600, 0.01, 8, blockSize=7)
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(gray[i - 1], gray[i], pts, pts.copy(), maxLevel=4)
        cv2.calcOpticalFlowPyrLK(gray[i], gray[i - 1], nxt, pts.copy(), maxLevel=4)
        pts = nxt[st.ravel() == 1].reshape(-1, 1, 2)
    return time.perf_counter() - started


def run(repeats: int = 1) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    est_s = klt_s = 0.0
    n_frames = 0
    for motion, objects, use_masks in SYNTHETIC:
        clip = render_clip(motion, moving_objects=objects, seed=1)
        best = float("inf")
        traj = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            traj, _report = estimate_with_report(
                clip.frames,
                clip.truth.timestamps_s,
                K=clip.K,
                masks=clip.masks if use_masks else None,
            )
            best = min(best, time.perf_counter() - t0)
        assert traj is not None
        klt = min(_klt_only(clip.frames) for _ in range(repeats))
        acc = trajectory_accuracy(traj, clip.truth)
        labels, truth_labels = label_trajectory(traj)[0], label_trajectory(clip.truth)[0]
        rows.append(
            {
                "motion": motion,
                "moving_objects": objects,
                "masks": use_masks,
                "frames": len(clip.truth),
                "rotation_mean_deg": round(acc.rotation_mean_deg, 3),
                "rotation_max_deg": round(acc.rotation_max_deg, 3),
                "ate_relative": None if acc.ate_relative is None else round(acc.ate_relative, 4),
                "labels": labels,
                "true_labels": truth_labels,
                "labels_match": labels == truth_labels,
                "fps": round(len(clip.truth) / best, 1),
            }
        )
        est_s += best
        klt_s += klt
        n_frames += len(clip.truth)
    real = _real_clips()
    ate = [r["ate_relative"] for r in rows if r["ate_relative"] is not None]
    fps = n_frames / est_s
    return {
        "synthetic": rows,
        "synthetic_frames": n_frames,
        "frame_size": "480x272",
        "estimator_fps": round(fps, 1),
        "klt_only_fps": round(n_frames / klt_s, 1),
        "ratio_estimator_over_klt": round((n_frames / est_s) / (n_frames / klt_s), 3),
        "video_seconds_per_second": round(fps / SAMPLES_PER_SECOND, 2),
        "rotation_mean_deg": round(statistics.mean(r["rotation_mean_deg"] for r in rows), 3),
        "rotation_max_deg": round(max(r["rotation_max_deg"] for r in rows), 3),
        "ate_relative_mean": round(statistics.mean(ate), 4) if ate else None,
        "ate_relative_max": round(max(ate), 4) if ate else None,
        "labels_correct": sum(r["labels_match"] for r in rows),
        "labels_total": len(rows),
        "real_clips": real,
    }


def _real_clips() -> dict[str, Any]:
    """Estimator speed and labels on the demo clips at the stage's default sampling."""
    sampling = FrameSampling(num_frames=None, fps=SAMPLES_PER_SECOND, max_frames=96, max_side=480)
    frames_total, seconds = 0, 0.0
    labels: dict[str, list[str]] = {}
    for path in sorted((REPO / "demo" / "clips").glob("*.mp4")):
        info = probe_video(str(path))
        sampled = sample_frames(str(path), info, 0.0, info.duration_s, sampling, ("decord", "pyav"))
        t0 = time.perf_counter()
        traj, _ = estimate_with_report(sampled.frames, sampled.timestamps_s)
        seconds += time.perf_counter() - t0
        frames_total += len(traj)
        labels[path.name] = label_trajectory(traj)[0]
    return {
        "frames": frames_total,
        "fps": round(frames_total / seconds, 1) if seconds else None,
        "labels": labels,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
