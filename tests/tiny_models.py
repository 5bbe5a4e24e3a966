"""Tiny stand-ins for the condition models, built at test time so no test downloads anything.

- :func:`tiny_depth_model`: a randomly initialised Depth Anything (real ``DepthAnythingConfig``
  with a small ``Dinov2Config`` backbone) saved with its image processor, loadable through
  ``from_pretrained`` exactly like the published checkpoints.
- :func:`tiny_detector` / :func:`tiny_pose_model`: ONNX graphs with DWPose's signatures
  (YOLOX ``input`` Nx3x640x640 -> ``output`` Nx8400x85; RTMPose ``input`` Nx3x384x288 ->
  ``simcc_x`` Nx133x576, ``simcc_y`` Nx133x768) whose outputs are constants chosen by the
  test, so the decoded boxes and keypoints are known exactly. The input still flows into the
  outputs (times zero), so onnxruntime runs a real graph over real inputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DET_SIZE = (640, 640)  # (h, w)
POSE_SIZE = (384, 288)  # (h, w)
NUM_ANCHORS = sum((640 // s) * (640 // s) for s in (8, 16, 32))  # 8400
NUM_CLASSES = 80
NUM_KEYPOINTS = 133
SIMCC_SPLIT = 2.0

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- depth


def save_depth_processor(folder: Path, size: int) -> None:
    """Depth Anything's published image processor settings, at input ``size``."""
    from transformers import DPTImageProcessor

    DPTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_pad=False,
    ).save_pretrained(folder)


def tiny_depth_model(folder: Path, seed: int = 0, input_size: int = 56) -> Path:
    """A ~0.5 MB Depth Anything saved in ``folder`` (config, safetensors, preprocessor)."""
    import torch
    from transformers import (
        AutoModelForDepthEstimation,
        DepthAnythingConfig,
        Dinov2Config,
    )

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=input_size,
        patch_size=14,
        reshape_hidden_states=False,  # as in the published Depth Anything configs
    )
    backbone.out_indices = [1, 2, 3, 4]
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    torch.manual_seed(seed)
    model = AutoModelForDepthEstimation.from_config(config)  # type: ignore[no-untyped-call]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_depth_processor(folder, input_size)
    return folder


# --------------------------------------------------------------------------- ONNX helpers


def _constant_graph(
    path: Path,
    input_shape: Sequence[int],
    outputs: dict[str, np.ndarray],
    dynamic_batch: bool,
    name: str,
) -> Path:
    """``out_k = const_k + 0 * mean(input over C, H, W)``, broadcast over the batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch: int | str = "batch" if dynamic_batch else 1
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *input_shape])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "shape3"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeroed"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    outs = []
    for out_name, value in outputs.items():
        const = value.astype(np.float32)[None]
        inits.append(numpy_helper.from_array(const, f"{out_name}_const"))
        nodes.append(helper.make_node("Add", [f"{out_name}_const", "zeroed"], [out_name]))
        outs.append(
            helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, *value.shape])
        )
    graph = helper.make_graph(nodes, name, [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- detector


def detector_output(boxes: Sequence[Box], scores: Sequence[float] | None = None) -> np.ndarray:
    """Raw YOLOX rows [8400, 85] that decode to ``boxes`` (x1, y1, x2, y2 in the 640x640
    letterboxed input) as persons with objectness ``scores`` (default 0.9).

    Each box sits on the anchor under its centre, at stride 32 unless another box took that
    cell (then 16, then 8): ``cx = (dx + gx) * stride``, ``w = exp(dw) * stride``. Rows left
    at zero score zero and are filtered out.
    """
    rows = np.zeros((NUM_ANCHORS, 5 + NUM_CLASSES), np.float32)
    scores = list(scores) if scores is not None else [0.9] * len(boxes)
    offsets = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}
    used: set[int] = set()
    for (x1, y1, x2, y2), score in zip(boxes, scores, strict=True):
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        for stride in (32, 16, 8):
            cells = 640 // stride
            gx, gy = min(cells - 1, int(cx // stride)), min(cells - 1, int(cy // stride))
            idx = offsets[stride] + gy * cells + gx
            if idx not in used:
                break
        else:
            raise ValueError("too many tiny-detector boxes share one centre")
        used.add(idx)
        rows[idx, :4] = [
            cx / stride - gx,
            cy / stride - gy,
            math.log(w / stride),
            math.log(h / stride),
        ]
        rows[idx, 4] = score
        rows[idx, 5] = 1.0  # class 0: person
    return rows


def tiny_detector(
    path: Path,
    boxes: Sequence[Box] = ((224.0, 64.0, 416.0, 320.0),),
    scores: Sequence[float] | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """A YOLOX-signature ONNX detector that always finds ``boxes`` (640x640 input coords)."""
    return _constant_graph(
        path,
        (3, *DET_SIZE),
        {"output": detector_output(boxes, scores)},
        dynamic_batch,
        "tiny_yolox",
    )


# --------------------------------------------------------------------------- pose model


def standing_person() -> tuple[np.ndarray, np.ndarray]:
    """A person facing the camera in the 288x384 pose crop: COCO-WholeBody points [133, 2]
    (crop pixels, multiples of 0.5 so SimCC bins hit them exactly) and scores [133].

    The right ankle (16) scores 0.2 and face point 0 (23) 0.1, below the 0.3 mask.
    """
    pts = np.zeros((NUM_KEYPOINTS, 2), np.float64)
    body = {
        0: (144, 70), 1: (152, 62), 2: (136, 62), 3: (162, 66), 4: (126, 66),
        5: (174, 110), 6: (114, 110), 7: (190, 160), 8: (98, 160), 9: (196, 205),
        10: (92, 205), 11: (162, 205), 12: (126, 205), 13: (164, 270), 14: (124, 270),
        15: (166, 335), 16: (122, 335),
        17: (172, 345), 18: (178, 343), 19: (162, 340),
        20: (116, 345), 21: (110, 343), 22: (126, 340),
    }  # fmt: skip
    for k, xy in body.items():
        pts[k] = xy
    angles = np.linspace(0.0, 2 * np.pi, 68, endpoint=False)
    pts[23:91, 0] = np.round((144 + 14 * np.cos(angles)) * 2) / 2
    pts[23:91, 1] = np.round((68 + 18 * np.sin(angles)) * 2) / 2
    for start, (wx, wy) in ((91, (196, 205)), (112, (92, 205))):
        pts[start] = (wx, wy)
        for finger in range(5):
            for joint in range(1, 5):
                pts[start + 1 + finger * 4 + joint - 1] = (wx + (finger - 2) * 5, wy + 6 * joint)
    scores = np.full(NUM_KEYPOINTS, 0.9)
    scores[16] = 0.2
    scores[23] = 0.1
    return pts, scores


def simcc_outputs(
    points: np.ndarray, scores: np.ndarray, y_margin: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors [133, 576] and [133, 768] peaking at ``points`` (crop pixels).

    The y peak is ``y_margin`` higher than the x peak, so a decoder taking the smaller of the
    two maxima (as mmpose does) reports exactly ``scores``.
    """
    w, h = POSE_SIZE[1], POSE_SIZE[0]
    sx = np.zeros((NUM_KEYPOINTS, int(w * SIMCC_SPLIT)), np.float32)
    sy = np.zeros((NUM_KEYPOINTS, int(h * SIMCC_SPLIT)), np.float32)
    for k, ((x, y), s) in enumerate(zip(points, scores, strict=True)):
        sx[k, round(x * SIMCC_SPLIT)] = s
        sy[k, round(y * SIMCC_SPLIT)] = s + y_margin
    return sx, sy


def tiny_pose_model(
    path: Path,
    points: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """An RTMPose-signature ONNX model that always outputs the given keypoints."""
    if points is None or scores is None:
        points, scores = standing_person()
    sx, sy = simcc_outputs(points, scores)
    return _constant_graph(
        path, (3, *POSE_SIZE), {"simcc_x": sx, "simcc_y": sy}, dynamic_batch, "tiny_rtmpose"
    )


def crop_to_image(points: np.ndarray, box: Box) -> np.ndarray:
    """Where crop pixels land in the image for a detection ``box`` (what a correct top-down
    decoder must report): the box grown by 1.25, widened to the crop's 3:4 aspect, centred."""
    x1, y1, x2, y2 = box
    sw, sh = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    aspect = POSE_SIZE[1] / POSE_SIZE[0]
    if sw > sh * aspect:
        sh = sw / aspect
    else:
        sw = sh * aspect
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    out = np.empty_like(points, dtype=np.float64)
    out[:, 0] = points[:, 0] / POSE_SIZE[1] * sw + cx - sw / 2
    out[:, 1] = points[:, 1] / POSE_SIZE[0] * sh + cy - sh / 2
    return out


def tiny_dwpose(folder: Path, dynamic_batch: bool = False) -> tuple[Path, Path]:
    """Detector + pose model for one standing person, as (yolox_l.onnx, dw-ll_ucoco_384.onnx)."""
    return (
        tiny_detector(folder / "yolox_l.onnx", dynamic_batch=dynamic_batch),
        tiny_pose_model(folder / "dw-ll_ucoco_384.onnx", dynamic_batch=dynamic_batch),
    )


__all__ = [
    "crop_to_image",
    "detector_output",
    "simcc_outputs",
    "standing_person",
    "tiny_depth_model",
    "tiny_detector",
    "tiny_dwpose",
    "tiny_pose_model",
]


# --------------------------------------------------------------------------- aesthetics


def tiny_clip_model(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A ~0.3 MB CLIP saved as the published ``openai/clip-vit-large-patch14`` is: a whole
    ``CLIPModel`` (text and vision towers, ``model_type: clip``) with its image processor,
    projection dimension 16 instead of 768."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": 99,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    ).save_pretrained(folder)
    return folder


def tiny_aesthetic_head(path: Path, in_features: int = 16, seed: int = 0) -> Path:
    """A torch state dict with the LAION aesthetic predictor's keys (``layers.{0,2,4,6,7}``)
    and sizes ``in_features`` -> 32 -> 16 -> 8 -> 4 -> 1 (the published one: 768 -> 1024 ->
    128 -> 64 -> 16 -> 1); the bias of the last layer puts ratings near 5."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sizes = [in_features, 32, 16, 8, 4, 1]
    state: dict[str, torch.Tensor] = {}
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), itertools.pairwise(sizes), strict=True):
        state[f"layers.{index}.weight"] = torch.randn(n_out, n_in, generator=gen) / n_in**0.5
        state[f"layers.{index}.bias"] = torch.zeros(n_out)
    state["layers.7.bias"] = torch.tensor([5.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
