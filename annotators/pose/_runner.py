"""DWPose on onnxruntime: the YOLOX person detector (annotators/yolox.py, shared with the
identities stage) and the RTMPose whole-body model run directly, with the pre- and
post-processing the DWPose checkpoints were exported for.

Written for this project (controlnet_aux's DWposeDetector needs mmcv/mmpose/mmdet, which do
not install against current torch). Behaviour follows mmdet/mmpose inference for these
checkpoints: the detector sees the frame letterboxed to its input size as BGR 0..255 (YOLOX
was trained on OpenCV images, without normalisation); the pose model sees each person's box
grown by 1.25, widened to its 3:4 input, as RGB normalised by the ImageNet mean/std (its
mmpose config sets ``bgr_to_rgb=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from any2capins.annotators._onnx import OnnxModel
from any2capins.annotators.yolox import decode, letterbox, nms

# YOLOX filtering as in DWPose's inference code.
PRE_NMS_SCORE = 0.1
NMS_IOU = 0.45
PERSON_SCORE = 0.3
PERSON_CLASS = 0

BBOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
NUM_WHOLEBODY = 133
# Images per forward pass: bounds memory (a 640x640 float input is 4.9 MB) on long clips.
MAX_BATCH = 8


# --------------------------------------------------------------------------- detector


def decode_yolox(
    raw: np.ndarray, ratio: float, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw rows [A, 5 + classes] -> person boxes [N, 4] (xyxy, image pixels) and
    scores [N], best first."""
    # Only the person class is kept; class-aware NMS treats each class on its own, so running
    # it on the person scores alone gives the same boxes.
    boxes, scores = decode(raw, size_hw, class_index=PERSON_CLASS)
    boxes = boxes / ratio
    valid = scores > PRE_NMS_SCORE
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, NMS_IOU, plus_one=True) if len(scores) else []
    boxes, scores = boxes[keep], scores[keep]
    final = scores > PERSON_SCORE
    return boxes[final].astype(np.float64), scores[final].astype(np.float64)


def detect_people(
    model: OnnxModel, frames_rgb: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Person boxes and scores for each frame, ``MAX_BATCH`` frames per forward pass."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(frames_rgb), MAX_BATCH):
        inputs = [
            letterbox(frame, model.input_hw) for frame in frames_rgb[start : start + MAX_BATCH]
        ]
        (raw, *_) = model.run(np.stack([chw for chw, _ in inputs]).astype(np.float32))
        out.extend(decode_yolox(raw[i], r, model.input_hw) for i, (_, r) in enumerate(inputs))
    return out


# --------------------------------------------------------------------------- pose model


def crop_transform(box: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The box's centre and its scale: grown by 1.25 and widened to the input's aspect."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * BBOX_PADDING, (y2 - y1) * BBOX_PADDING
    aspect = input_hw[1] / input_hw[0]
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def crop_person(
    frame_rgb: np.ndarray, center: np.ndarray, scale: np.ndarray, input_hw: tuple[int, int]
) -> np.ndarray:
    """The person crop as the pose model's CHW float32 input."""
    h, w = input_hw
    k = w / scale[0]  # the aspect fix makes the scale uniform
    warp = np.array([[k, 0.0, w / 2 - center[0] * k], [0.0, k, h / 2 - center[1] * k]])
    crop = cv2.warpAffine(frame_rgb, warp, (w, h), flags=cv2.INTER_LINEAR)
    normed = (crop.astype(np.float32) - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(normed.transpose(2, 0, 1))


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, K, Wx], [N, K, Wy] -> crop locations [N, K, 2] and scores [N, K].

    The location is the arg-max along each axis divided by the split ratio; the score is the
    smaller of the two maxima (mmpose's ``get_simcc_maximum``); a point scoring <= 0 gets
    location -1.
    """
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float64)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float64)
    locs[scores <= 0] = -1
    return locs / SIMCC_SPLIT_RATIO, scores


def estimate_poses(
    model: OnnxModel, frames_rgb: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each frame, COCO-WholeBody keypoints [N, 133, 2] (image pixels) and scores
    [N, 133] of the persons in its boxes [N, 4]; the crops of all frames share forward passes.
    """
    jobs = [(i, *crop_transform(b, model.input_hw)) for i, bs in enumerate(boxes) for b in bs]
    empty = (np.zeros((0, NUM_WHOLEBODY, 2)), np.zeros((0, NUM_WHOLEBODY)))
    if not jobs:
        return [empty for _ in frames_rgb]
    chunks = [
        model.run(np.stack([crop_person(frames_rgb[i], c, s, model.input_hw) for i, c, s in part]))
        for part in (jobs[k : k + MAX_BATCH] for k in range(0, len(jobs), MAX_BATCH))
    ]
    outs = [np.concatenate([c[k] for c in chunks]) for k in range(len(model.output_names))]
    named = dict(zip(model.output_names, outs, strict=True))
    if "simcc_x" in named and "simcc_y" in named:
        simcc_x, simcc_y = named["simcc_x"], named["simcc_y"]
    elif len(outs) == 2:
        simcc_x, simcc_y = outs
    else:
        raise ValueError(f"pose model outputs {model.output_names}; expected simcc_x, simcc_y")
    locs, scores = decode_simcc(simcc_x, simcc_y)
    if locs.shape[1] != NUM_WHOLEBODY:
        raise ValueError(
            f"pose model gives {locs.shape[1]} keypoints; DWPose whole-body gives {NUM_WHOLEBODY}"
        )
    h, w = model.input_hw
    keypoints = np.empty_like(locs)
    for j, (_, center, scale) in enumerate(jobs):
        keypoints[j] = locs[j] / np.array([w, h]) * scale + center - scale / 2
    owner = np.array([i for i, _, _ in jobs])
    return [(keypoints[owner == i], scores[owner == i]) for i in range(len(frames_rgb))]


__all__ = [
    "crop_person",
    "crop_transform",
    "decode_simcc",
    "decode_yolox",
    "detect_people",
    "estimate_poses",
]
