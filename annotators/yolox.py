"""The YOLOX-L detector DWPose ships (``yolox_l.onnx``, COCO classes, exported without
in-graph decoding): its input letterbox, head decoding and NMS, shared by the pose stage
(person boxes, DWPose's thresholds) and the identities stage (every COCO class).

Behaviour follows mmdet inference for this checkpoint: the detector sees the frame
letterboxed into the top-left of a grey (114) canvas as BGR 0..255 (YOLOX was trained on
OpenCV images, without normalisation); its head gives per anchor [cx, cy, log w, log h]
relative to the anchor cell, then sigmoid objectness and class scores.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from any2capins.annotators.model_catalog import DEFAULT_DETECTOR

DETECTOR_LICENSE = "Apache-2.0"

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip

STRIDES: tuple[int, ...] = (8, 16, 32)
PAD_VALUE = 114  # YOLOX's letterbox grey


def letterbox(frame_rgb: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The detector's input for one RGB frame, as a [3, H, W] uint8 BGR view: the frame
    resized keeping its aspect ratio into the top-left of a grey canvas; and that ratio
    (frame pixels = input pixels / ratio). Callers stack frames, then convert the batch to
    float32 once (a 640x640 float frame is 4.9 MB; converting each before stacking copies
    four times the bytes)."""
    h, w = frame_rgb.shape[:2]
    ratio = min(size_hw[0] / h, size_hw[1] / w)
    new_w, new_h = max(1, int(w * ratio)), max(1, int(h * ratio))
    resized = cv2.resize(frame_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((*size_hw, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.cvtColor(resized, cv2.COLOR_RGB2BGR)
    return canvas.transpose(2, 0, 1), ratio


@functools.lru_cache(maxsize=8)
def anchor_grid(size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets [A, 2] (x, y) and strides [A, 1] of the head, in the order of its rows.
    Cached per input size, so read-only."""
    cells, strides = [], []
    for s in STRIDES:
        gh, gw = size_hw[0] // s, size_hw[1] // s
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((gh * gw, 1), s))
    grid = np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)
    for array in grid:
        array.flags.writeable = False
    return grid


def decode(
    raw: np.ndarray, size_hw: tuple[int, int], class_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw head rows [A, 5 + C] -> boxes [A, 4] (xyxy, input pixels) and scores
    (objectness x class): [A, C], or [A] for ``class_index`` alone (the pose stage's persons,
    without scoring 80 classes it drops)."""
    cells, strides = anchor_grid(size_hw)
    if raw.ndim != 2 or raw.shape[0] != cells.shape[0] or raw.shape[1] < 6:
        raise ValueError(
            f"detector output has shape {raw.shape}; a YOLOX detector with a {size_hw} input "
            f"gives [{cells.shape[0]}, 5 + classes]"
        )
    centre = (raw[:, :2] + cells) * strides
    wh = np.exp(np.clip(raw[:, 2:4], -20.0, 20.0)) * strides
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    if class_index is not None:
        return boxes, raw[:, 4] * raw[:, 5 + class_index]
    return boxes, raw[:, 4:5] * raw[:, 5:]


def box_iou(box: np.ndarray, others: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU of one xyxy box against [N, 4] boxes. ``plus_one`` counts both end pixels (the
    area convention of DWPose's own NMS)."""
    one = 1.0 if plus_one else 0.0
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]) + one, 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]) + one, 0, None)
    inter = iw * ih
    area = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    areas = (others[:, 2] - others[:, 0] + one) * (others[:, 3] - others[:, 1] + one)
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9), dtype=np.float64)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, plus_one: bool = False
) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest], plus_one) <= iou_threshold]
    return keep


__all__ = [
    "COCO_CLASSES",
    "DEFAULT_DETECTOR",
    "DETECTOR_LICENSE",
    "PAD_VALUE",
    "STRIDES",
    "anchor_grid",
    "box_iou",
    "decode",
    "letterbox",
    "nms",
]
