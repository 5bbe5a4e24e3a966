"""Keypoint conventions and person tracking for the pose condition.

DWPose predicts COCO-WholeBody's 133 points; ControlNet-style pose maps use OpenPose order.
The conversion is controlnet_aux's: insert a neck (mean of the shoulders, confident only when
both shoulders are) after the 17 body points and reorder the body into OpenPose's 18, giving
134 points per person: 0-17 body, 18-23 feet, 24-91 face, 92-112 left hand, 113-133 right
hand. Points scoring under 0.3 are masked to -1 once coordinates are normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUM_OPENPOSE = 134
SCORE_THRESHOLD = 0.3

# OpenPose body order (indices into the 134 points). "Right"/"left" are the person's own.
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)

# OpenPose body slot <- COCO index, after the neck has been inserted at 17.
_OPENPOSE_SLOTS = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
_COCO_SOURCES = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)


def wholebody_to_openpose(
    keypoints: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody [N, 133, 2], [N, 133] -> OpenPose order with a neck [N, 134, 2], [N, 134]."""
    if keypoints.shape[1:] != (133, 2) or scores.shape != keypoints.shape[:2]:
        raise ValueError(
            f"expected [N, 133, 2] and [N, 133], got {keypoints.shape}, {scores.shape}"
        )
    neck_xy = keypoints[:, [5, 6]].mean(axis=1)
    confident = (scores[:, 5] > SCORE_THRESHOLD) & (scores[:, 6] > SCORE_THRESHOLD)
    kp = np.insert(keypoints, 17, neck_xy, axis=1)
    sc = np.insert(scores, 17, confident.astype(scores.dtype), axis=1)
    # Fancy indexing on the right copies first, so the permutation is applied in one step.
    kp[:, _OPENPOSE_SLOTS] = kp[:, _COCO_SOURCES]
    sc[:, _OPENPOSE_SLOTS] = sc[:, _COCO_SOURCES]
    return kp, sc


def normalize_and_mask(
    keypoints: np.ndarray, scores: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Pixel keypoints -> 0..1 coordinates (x / W, y / H), points under 0.3 set to -1."""
    out = keypoints.astype(np.float32) / np.array([width, height], np.float32)
    out[scores < SCORE_THRESHOLD] = -1.0
    return out


# --------------------------------------------------------------------------- tracking


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


@dataclass
class _Track:
    track_id: int
    last_box: np.ndarray
    last_frame: int
    frames: dict[int, int] = field(default_factory=dict)  # frame -> detection index


def track_boxes(
    boxes: list[np.ndarray], iou_threshold: float = 0.3, max_gap: int = 2
) -> list[dict[int, int]]:
    """Greedy IoU tracking of per-frame boxes [N_f, 4].

    Each frame's detections are matched, highest IoU first, to the tracks seen within the last
    ``max_gap`` frames; a detection overlapping no track by ``iou_threshold`` starts a new one.
    Returns one ``{frame: detection index}`` per track, in order of first appearance.
    Sampled frames can be far apart in time, so the gap is counted in sampled frames.
    """
    tracks: list[_Track] = []
    for f, frame_boxes in enumerate(boxes):
        live = [t for t in tracks if f - t.last_frame - 1 <= max_gap]
        iou = box_iou(
            np.stack([t.last_box for t in live]) if live else np.zeros((0, 4)), frame_boxes
        )
        matched_dets: set[int] = set()
        matched_tracks: set[int] = set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            ti, di = (int(v) for v in np.unravel_index(int(flat), iou.shape))
            if iou[ti, di] < iou_threshold:
                break
            if ti in matched_tracks or di in matched_dets:
                continue
            matched_tracks.add(ti)
            matched_dets.add(di)
            track = live[ti]
            track.frames[f] = di
            track.last_box, track.last_frame = frame_boxes[di], f
        for di in range(len(frame_boxes)):
            if di not in matched_dets:
                tracks.append(_Track(len(tracks), frame_boxes[di], f, {f: di}))
    return [t.frames for t in tracks]


def select_tracks(
    tracks: list[dict[int, int]], boxes: list[np.ndarray], max_persons: int
) -> list[dict[int, int]]:
    """The ``max_persons`` tracks seen in most frames (larger mean box area breaks ties),
    kept in order of first appearance."""

    def weight(t: dict[int, int]) -> tuple[int, float]:
        areas = [float(np.prod(boxes[f][d, 2:] - boxes[f][d, :2])) for f, d in t.items()]
        return len(t), float(np.mean(areas))

    ranked = sorted(range(len(tracks)), key=lambda i: weight(tracks[i]), reverse=True)
    keep = sorted(ranked[:max_persons])
    return [tracks[i] for i in keep]


__all__ = [
    "BODY",
    "FACE",
    "FEET",
    "LEFT_HAND",
    "NUM_OPENPOSE",
    "RIGHT_HAND",
    "SCORE_THRESHOLD",
    "box_iou",
    "normalize_and_mask",
    "select_tracks",
    "track_boxes",
    "wholebody_to_openpose",
]
