"""The identities stage's detector: the YOLOX graph DWPose ships (``yolox_l.onnx``,
letterboxed 1x3x640x640 input, 1x8400x85 raw head output), decoded by annotators/yolox.py.

The pose stage runs the same graph for person boxes only; identities keeps every COCO class
(class-aware NMS) so that dogs, cups and balls can be main subjects too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from any2capins.annotators._models import model_file
from any2capins.annotators._onnx import open_model
from any2capins.annotators.base import MissingDependency
from any2capins.annotators.yolox import (
    COCO_CLASSES,
    DEFAULT_DETECTOR,
    DETECTOR_LICENSE,
    decode,
    letterbox,
    nms,
)

DETECTOR_SETTING = "the stage's `detector_model` param (or ANY2CAP_YOLOX_MODEL)"
DETECTOR_HOW = (
    "download yolox_l.onnx from https://huggingface.co/yzd-v/DWPose on a machine with "
    "network access and set the stage's `detector_model` to its local path (or put it "
    "in the Hugging Face cache)"
)


@dataclass(frozen=True)
class Detection:
    """One box in the coordinates of the frame it was found in."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    label: str


def detector_file(ref: str) -> Path:
    """The detector's .onnx file, found without loading it (a MissingDependency if not)."""
    return model_file(
        ref, "YOLOX detector", DETECTOR_SETTING, released=DEFAULT_DETECTOR, stage="identities"
    )


def per_label_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    frame_size: tuple[int, int],
    iou_threshold: float,
) -> list[Detection]:
    """Boxes [N, 4] (xyxy, frame pixels) with their scores and labels -> detections: boxes
    clipped to the frame (width, height), NMS within each label (labels taken in order of
    first appearance), boxes under a pixel wide or high dropped; best first."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)  # a copy: clipped in place
    w, h = frame_size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    found: list[Detection] = []
    for label in dict.fromkeys(labels):
        idx = np.array([i for i, other in enumerate(labels) if other == label])
        for k in nms(boxes[idx], scores[idx], iou_threshold):
            b = boxes[idx[k]]
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                continue
            found.append(
                Detection(
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    score=float(scores[idx[k]]),
                    label=label,
                )
            )
    found.sort(key=lambda d: -d.score)
    return found


def postprocess(
    raw: np.ndarray,
    ratio: float,
    frame_size: tuple[int, int],
    input_size: int,
    score_threshold: float,
    iou_threshold: float,
    classes: tuple[str, ...] = COCO_CLASSES,
) -> list[Detection]:
    """Class-aware NMS over decoded boxes, mapped back to the frame (width, height)."""
    boxes, scores = decode(raw, (input_size, input_size))
    if scores.shape[1] != len(classes):
        raise ValueError(f"detector scores {scores.shape[1]} classes, expected {len(classes)}")
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(scores.shape[0]), best]
    keep = np.flatnonzero(best_score >= score_threshold)
    keep = keep[np.argsort(best[keep], kind="stable")]  # classes in index order
    labels = [classes[int(c)] for c in best[keep]]
    return per_label_detections(
        boxes[keep] / ratio, best_score[keep], labels, frame_size, iou_threshold
    )


class YoloxDetector:
    """DWPose's YOLOX-L on onnxruntime: frames in, COCO boxes out."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        score_threshold: float = 0.3,
        iou_threshold: float = 0.45,
    ) -> None:
        import onnxruntime as ort

        self.path = detector_file(model)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.model = open_model(self.path, providers, None, "YOLOX detector", DETECTOR_HOW)
        h, w = self.model.input_hw
        if h != w:
            raise MissingDependency(
                f"{self.path} is not a YOLOX detector: input {h}x{w}, expected a square "
                "input (DWPose's yolox_l.onnx is 1x3x640x640); " + DETECTOR_HOW
            )
        self.input_size = h
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def __call__(self, frame_rgb: np.ndarray) -> list[Detection]:
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape}")
        chw, ratio = letterbox(frame_rgb, self.model.input_hw)
        (raw, *_) = self.model.run(chw[None].astype(np.float32))
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 3 or raw.shape[0] != 1:
            raise ValueError(f"detector output shape {raw.shape}, expected 1xAx(5+C)")
        h, w = frame_rgb.shape[:2]
        return postprocess(
            raw[0], ratio, (w, h), self.input_size, self.score_threshold, self.iou_threshold
        )


__all__ = [
    "COCO_CLASSES",
    "DEFAULT_DETECTOR",
    "DETECTOR_HOW",
    "DETECTOR_LICENSE",
    "Detection",
    "YoloxDetector",
    "detector_file",
    "per_label_detections",
    "postprocess",
]
