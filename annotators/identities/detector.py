"""A small onnxruntime runner for the YOLOX detector that DWPose ships (``yolox_l.onnx``):
letterboxed 1x3x640x640 input, 1x8400x85 raw head output decoded to COCO-class boxes.

The pose stage uses the same graph for person boxes only; identities keeps every COCO class
so that dogs, cups and balls can be main subjects too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from annotators._models import hf_offline as offline
from annotators.base import MissingDependency

# DWPose's detector: YOLOX-L trained on COCO, exported without in-graph decoding.
DEFAULT_DETECTOR = "yzd-v/DWPose:yolox_l.onnx"
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


@dataclass(frozen=True)
class Detection:
    """One box in the coordinates of the frame it was found in."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    label: str


def looks_like_path(ref: str) -> bool:
    """A model reference that names a local file or folder rather than a hub id."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref)


DETECTOR_HOW = (
    "download yolox_l.onnx from https://huggingface.co/yzd-v/DWPose on a machine with "
    "network access and set the stage's `detector_model` to its local path (or put it "
    "in the Hugging Face cache)"
)


def resolve_model_file(ref: str, what: str, how: str) -> Path:
    """A local path, or ``repo_id:filename`` from the Hugging Face cache (or hub when online).

    A model that cannot be found is a :class:`MissingDependency` naming it and how to provide
    it; nothing weaker is substituted.
    """
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise MissingDependency(f"{what} model file {ref} does not exist; {how}")
        return path
    repo_id, sep, filename = ref.partition(":")
    if not sep or not filename:
        raise MissingDependency(
            f"{what} model {ref!r} is neither a local file nor 'repo_id:filename'; {how}"
        )
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, local_files_only=offline()))
    except Exception as e:  # offline, missing repo, auth: all mean "not here"
        raise MissingDependency(
            f"{what} model {ref} is not available ({type(e).__name__}: {e}); {how}"
        ) from e


def letterbox(image_rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """YOLOX input: BGR (its training order), resized to fit ``size``, padded bottom-right."""
    h, w = image_rgb.shape[:2]
    ratio = min(size / h, size / w)
    new_w, new_h = max(1, int(w * ratio)), max(1, int(h * ratio))
    resized = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized[..., ::-1]
    chw = canvas.transpose(2, 0, 1).astype(np.float32)[None]
    return np.ascontiguousarray(chw), ratio


def anchor_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets [A, 2] and strides [A, 1] of the YOLOX head, in output order."""
    grids, strides = [], []
    for stride in STRIDES:
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode(raw: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw head output [A, 5 + C] -> boxes xyxy [A, 4] in input pixels, scores [A, C].

    The exported head has sigmoid applied to objectness and classes but leaves the box
    regression relative to its anchor cell: centre = (offset + cell) * stride, size =
    exp(log-size) * stride.
    """
    grid, stride = anchor_grid(size)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"detector output has {raw.shape[0]} anchors, expected {grid.shape[0]}")
    centre = (raw[:, :2] + grid) * stride
    wh = np.exp(np.clip(raw[:, 2:4], -20.0, 20.0)) * stride
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    scores = raw[:, 4:5] * raw[:, 5:]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ious = box_iou(boxes[i], boxes[rest])
        order = rest[ious <= iou_threshold]
    return keep


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against [N, 4] boxes."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9), dtype=np.float32)


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
    boxes, scores = decode(raw, input_size)
    if scores.shape[1] != len(classes):
        raise ValueError(f"detector scores {scores.shape[1]} classes, expected {len(classes)}")
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(scores.shape[0]), best]
    mask = best_score >= score_threshold
    boxes, best, best_score = boxes[mask] / ratio, best[mask], best_score[mask]
    w, h = frame_size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    found: list[Detection] = []
    for cls in np.unique(best):
        idx = np.flatnonzero(best == cls)
        for k in nms(boxes[idx], best_score[idx], iou_threshold):
            b = boxes[idx[k]]
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                continue
            found.append(
                Detection(
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    score=float(best_score[idx[k]]),
                    label=classes[int(cls)],
                )
            )
    found.sort(key=lambda d: -d.score)
    return found


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

        how = DETECTOR_HOW
        self.path = resolve_model_file(model, "YOLOX detector", how)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers
            )
        except Exception as e:  # a corrupt or foreign file is a setup error
            raise MissingDependency(
                f"YOLOX detector model {self.path} cannot be loaded by onnxruntime "
                f"({type(e).__name__}: {e}); {how}"
            ) from e
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        shape = list(inp.shape)
        if (
            len(shape) != 4
            or shape[1] != 3
            or shape[2] != shape[3]
            or not isinstance(shape[2], int)
        ):
            raise MissingDependency(
                f"{self.path} is not a YOLOX detector: input shape {shape}, "
                "expected 1x3xSxS (DWPose's yolox_l.onnx is 1x3x640x640); " + how
            )
        self.input_name = inp.name
        self.output_name = out.name
        self.input_size = int(shape[2])
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

    def __call__(self, frame_rgb: np.ndarray) -> list[Detection]:
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape}")
        blob, ratio = letterbox(frame_rgb, self.input_size)
        (raw,) = self.session.run([self.output_name], {self.input_name: blob})
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
    "box_iou",
    "decode",
    "letterbox",
    "looks_like_path",
    "nms",
    "offline",
    "postprocess",
    "resolve_model_file",
]
