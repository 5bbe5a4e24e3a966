"""DWPose on onnxruntime: the YOLOX person detector and the RTMPose whole-body model run
directly, with the pre- and post-processing the DWPose checkpoints were exported for.

Written for this project (controlnet_aux's DWposeDetector needs mmcv/mmpose/mmdet, which do
not install against current torch). Behaviour follows mmdet/mmpose inference for these
checkpoints: the detector sees the frame letterboxed to its input size as BGR 0..255 (YOLOX
was trained on OpenCV images, without normalisation); the pose model sees each person's box
grown by 1.25, widened to its 3:4 input, as RGB normalised by the ImageNet mean/std (its
mmpose config sets ``bgr_to_rgb=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from annotators._models import hf_offline as offline
from annotators.base import MissingDependency

# YOLOX decoding and filtering as in DWPose's inference code.
YOLOX_STRIDES = (8, 16, 32)
PRE_NMS_SCORE = 0.1
NMS_IOU = 0.45
PERSON_SCORE = 0.3
PERSON_CLASS = 0
LETTERBOX_PAD = 114

BBOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
NUM_WHOLEBODY = 133
# Images per forward pass: bounds memory (a 640x640 float input is 4.9 MB) on long clips.
MAX_BATCH = 8


# --------------------------------------------------------------------------- model files


def hub_file(spec: str) -> tuple[str, str] | None:
    """``owner/repo:file`` or ``owner/repo/file`` -> (repo id, file name); None for a path."""
    if spec.startswith(("/", ".", "~")):
        return None
    if ":" in spec:
        repo, _, name = spec.partition(":")
    else:
        parts = spec.split("/")
        repo, name = "/".join(parts[:2]), "/".join(parts[2:])
    if repo.count("/") != 1 or not all(repo.split("/")) or not name:
        return None
    return repo, name


def locate_model_file(spec: str, what: str, env_var: str) -> Path:
    """A local ``.onnx`` path, or a hub file ``owner/repo:file.onnx`` fetched with
    huggingface_hub (from its cache only when HF_HUB_OFFLINE is set). Raises
    MissingDependency saying how to get it.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    hub = hub_file(spec)
    if hub is None:
        raise MissingDependency(
            f"{what} {spec!r}: no such file. Give a local .onnx file or a hub file "
            f"owner/repo:file.onnx (params or {env_var})."
        )
    repo, name = hub
    help_text = (
        f"On a machine with internet access run `hf download {repo} {name} --local-dir DIR`, "
        f"copy the file here and point the stage at it (params or {env_var}=DIR/{name})."
    )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, local_files_only=offline()))
    except Exception as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise MissingDependency(f"{what} {spec!r} is not available ({first}). {help_text}") from e


@dataclass
class OnnxModel:
    """An onnxruntime session with its single image input described."""

    session: object  # onnxruntime.InferenceSession (kept untyped: ort ships no stubs)
    input_name: str
    input_hw: tuple[int, int]
    fixed_batch: int | None  # None when the batch dimension is dynamic
    output_names: list[str]
    path: Path

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """[N, 3, H, W] float32 -> outputs, in chunks the model accepts."""
        if self.fixed_batch is None or images.shape[0] == self.fixed_batch:
            outs = self.session.run(self.output_names, {self.input_name: images})  # type: ignore[attr-defined]
            return [np.asarray(o) for o in outs]
        step = self.fixed_batch
        parts = [self.run(images[i : i + step]) for i in range(0, images.shape[0], step)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]


def open_model(path: Path, providers: Sequence[str], threads: int | None, what: str) -> OnnxModel:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as e:
        raise MissingDependency(f"{what} {path} cannot be loaded by onnxruntime: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(f"{what} {path}: expected one NCHW image input, got {inputs}")
    n, c, h, w = inputs[0].shape
    if c != 3 or not isinstance(h, int) or not isinstance(w, int):
        raise ValueError(
            f"{what} {path}: expected a 3-channel input of fixed size, got {inputs[0].shape}"
        )
    return OnnxModel(
        session=session,
        input_name=inputs[0].name,
        input_hw=(h, w),
        fixed_batch=n if isinstance(n, int) and n > 0 else None,
        output_names=[o.name for o in session.get_outputs()],
        path=path,
    )


def output_dims(model: OnnxModel) -> list[list[int | str | None]]:
    session = model.session
    return [list(o.shape) for o in session.get_outputs()]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- detector


def letterbox(image_bgr: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left of a grey (114) canvas."""
    h, w = image_bgr.shape[:2]
    ratio = min(size_hw[0] / h, size_hw[1] / w)
    nh, nw = int(h * ratio), int(w * ratio)
    canvas = np.full((*size_hw, 3), LETTERBOX_PAD, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, ratio


def yolox_grid(size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor cell offsets [A, 2] and strides [A, 1] in the order YOLOX emits its rows."""
    cells, strides = [], []
    for s in YOLOX_STRIDES:
        gh, gw = size_hw[0] // s, size_hw[1] // s
        xs, ys = np.meshgrid(np.arange(gw), np.arange(gh))
        cells.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS, highest score first, with the +1 pixel area convention of DWPose's code."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def decode_yolox(
    raw: np.ndarray, ratio: float, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw rows [A, 5 + classes] -> person boxes [N, 4] (xyxy, image pixels) and
    scores [N], best first."""
    cells, strides = yolox_grid(size_hw)
    if raw.ndim != 2 or raw.shape[0] != cells.shape[0] or raw.shape[1] < 6:
        raise ValueError(
            f"detector output has shape {raw.shape}; a YOLOX detector with a {size_hw} input "
            f"gives [{cells.shape[0]}, 5 + classes]"
        )
    xy = (raw[:, :2] + cells) * strides
    wh = np.exp(raw[:, 2:4]) * strides
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / ratio
    # Only the person class is kept; class-aware NMS treats each class on its own, so running
    # it on the person scores alone gives the same boxes.
    scores = raw[:, 4] * raw[:, 5 + PERSON_CLASS]
    valid = scores > PRE_NMS_SCORE
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, NMS_IOU) if len(scores) else []
    boxes, scores = boxes[keep], scores[keep]
    final = scores > PERSON_SCORE
    return boxes[final].astype(np.float64), scores[final].astype(np.float64)


def detect_people(
    model: OnnxModel, frames_rgb: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Person boxes and scores for each frame, ``MAX_BATCH`` frames per forward pass."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(frames_rgb), MAX_BATCH):
        batch, ratios = [], []
        for frame in frames_rgb[start : start + MAX_BATCH]:
            canvas, ratio = letterbox(np.ascontiguousarray(frame[..., ::-1]), model.input_hw)
            batch.append(canvas.transpose(2, 0, 1))
            ratios.append(ratio)
        (raw, *_) = model.run(np.ascontiguousarray(np.stack(batch), dtype=np.float32))
        out.extend(decode_yolox(raw[i], r, model.input_hw) for i, r in enumerate(ratios))
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
    "OnnxModel",
    "crop_person",
    "crop_transform",
    "decode_simcc",
    "decode_yolox",
    "detect_people",
    "estimate_poses",
    "letterbox",
    "locate_model_file",
    "nms",
    "open_model",
]
