"""Open-vocabulary detection with Grounding DINO (transformers): finds the nouns a recipe names
("juggling ball", "coffee pot") that COCO's 80 classes do not cover, as the same
:class:`Detection` boxes the YOLOX runner returns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from any2capins.annotators._models import fetch_hint, looks_like_path, model_folder_problem
from any2capins.annotators._models import hub_cache_only as offline
from any2capins.annotators.base import MissingDependency
from any2capins.annotators.identities.detector import Detection, per_label_detections
from any2capins.annotators.model_catalog import DEFAULT_GROUNDING

GROUNDING_LICENSE = "Apache-2.0"


def normalize_noun(noun: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' -]", " ", noun.lower()).split())


def text_prompt(nouns: Sequence[str]) -> str:
    """Grounding DINO's prompt: lower-case phrases, each ended by a full stop."""
    return " ".join(f"{normalize_noun(n)}." for n in nouns)


def match_noun(text: str, nouns: Sequence[str]) -> str | None:
    """The configured noun a decoded phrase stands for, or None.

    The model labels a box with the prompt tokens above the text threshold, which can be a
    part of a noun ("pot"), the whole noun, or run across two nouns; the longest noun whose
    words all appear in the phrase wins, else the noun containing the phrase.
    """
    words = set(normalize_noun(text).split())
    if not words:
        return None
    normalized = [(normalize_noun(n), n) for n in nouns]
    covered = [n for norm, n in normalized if set(norm.split()) <= words]
    if covered:
        return max(covered, key=len)
    phrase = " ".join(normalize_noun(text).split())
    containing = [n for norm, n in normalized if phrase in norm]
    return min(containing, key=len) if containing else None


def grounded_detections(
    results: dict[str, Any],
    nouns: Sequence[str],
    frame_size: tuple[int, int],
    iou_threshold: float,
) -> list[Detection]:
    """Detections from one image's ``post_process_grounded_object_detection`` result:
    phrases mapped to the configured nouns (unmatched ones dropped), boxes clipped to the
    frame (width, height), duplicates of one noun suppressed (its queries overlap)."""
    boxes = np.asarray(results["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(results["scores"], dtype=np.float64).reshape(-1)
    labels = [match_noun(t, nouns) for t in results["text_labels"]]
    matched = [i for i, lbl in enumerate(labels) if lbl is not None]
    return per_label_detections(
        boxes[matched],
        scores[matched],
        [str(labels[i]) for i in matched],
        frame_size,
        iou_threshold,
    )


GROUNDING_HOW = (
    f"download it on a machine with network access (e.g. `hf download "
    f"{DEFAULT_GROUNDING}`) and set the stage's `grounding_model` to the local folder, "
    "or put it in the Hugging Face cache; or leave `open_vocabulary` empty. "
    + fetch_hint("grounding-dino")
)


def check_grounding(model: str) -> None:
    """MissingDependency when ``model`` could not be loaded here (nothing is loaded)."""
    problem = model_folder_problem(model, local=looks_like_path(model))
    if problem is not None:
        raise MissingDependency(
            f"Grounding DINO model {model!r} is not available ({problem}); {GROUNDING_HOW}"
        )


class GroundingDinoDetector:
    """Grounding DINO for a fixed list of nouns: frames in, boxes labelled by noun out."""

    def __init__(
        self,
        model: str,
        nouns: Sequence[str],
        device: str = "cpu",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        iou_threshold: float = 0.5,
    ) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        if not nouns:
            raise ValueError("Grounding DINO needs at least one noun to look for")
        check_grounding(model)
        source = str(Path(model).expanduser()) if looks_like_path(model) else model
        try:
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=offline())  # type: ignore[no-untyped-call]
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
                source, dtype=torch.float32, local_files_only=offline()
            )
        except (OSError, ValueError) as e:
            raise MissingDependency(
                f"Grounding DINO model {model!r} is not available ({type(e).__name__}: {e}); "
                + GROUNDING_HOW
            ) from e
        self.model.to(device).eval()
        self.device = device
        self.nouns = list(nouns)
        self.prompt = text_prompt(nouns)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.iou_threshold = iou_threshold

    def __call__(self, frame_rgb: np.ndarray) -> list[Detection]:
        import torch

        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape}")
        h, w = frame_rgb.shape[:2]
        inputs = self.processor(images=frame_rgb, text=self.prompt, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        (results,) = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(h, w)],
        )
        plain = {
            "boxes": results["boxes"].cpu().numpy(),
            "scores": results["scores"].cpu().numpy(),
            "text_labels": results["text_labels"],
        }
        return grounded_detections(plain, self.nouns, (w, h), self.iou_threshold)


__all__ = [
    "DEFAULT_GROUNDING",
    "GROUNDING_LICENSE",
    "GroundingDinoDetector",
    "grounded_detections",
    "match_noun",
    "normalize_noun",
    "text_prompt",
]
