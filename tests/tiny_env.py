"""Every condition model of the ``any2capins`` recipe as a tiny stand-in, with the environment
variables that point the stages at them (no test downloads anything).

The detectors are constant graphs: the pose detector always finds one standing person and
the identities detector a person and a dog, whatever the frames show.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import tiny_aesthetic_head, tiny_clip_model, tiny_depth_model, tiny_dwpose
from tests.tiny_sam2 import tiny_coco_detector, tiny_sam2

# 640x640 detector-input boxes: a person left of centre, a dog on the right
PERSON_BOX = (120.0, 150.0, 300.0, 560.0)
DOG_BOX = (380.0, 360.0, 600.0, 560.0)


def tiny_model_env(folder: Path) -> dict[str, str]:
    """Build the tiny models under ``folder`` (once) and return the variables to set."""
    folder.mkdir(parents=True, exist_ok=True)
    depth = folder / "depth"
    if not (depth / "config.json").exists():
        tiny_depth_model(depth)
    det, pose = folder / "dwpose" / "yolox_l.onnx", folder / "dwpose" / "dw-ll_ucoco_384.onnx"
    if not pose.exists():
        tiny_dwpose(folder / "dwpose")
    sam2 = folder / "sam2"
    if not (sam2 / "config.json").exists():
        tiny_sam2(sam2)
    coco = folder / "coco_yolox.onnx"
    if not coco.exists():
        tiny_coco_detector(coco, [PERSON_BOX, DOG_BOX], ["person", "dog"])
    clip, head = folder / "clip", folder / "aesthetic" / "aesthetic-model.pth"
    if not head.exists():
        tiny_clip_model(clip)
        tiny_aesthetic_head(head, in_features=16)
    return {
        "ANY2CAP_CLIP_MODEL": str(clip),
        "ANY2CAP_AESTHETIC_HEAD": str(head),
        "ANY2CAP_DEPTH_MODEL": str(depth),
        "ANY2CAP_DWPOSE_DET": str(det),
        "ANY2CAP_DWPOSE_POSE": str(pose),
        "ANY2CAP_YOLOX_MODEL": str(coco),
        "ANY2CAP_SAM2_MODEL": str(sam2),
    }
