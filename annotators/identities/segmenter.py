"""SAM 2 video segmentation through transformers: box prompts on some frames in, one mask per
object per frame out.

Why transformers' ``Sam2VideoModel`` and not PyPI ``sam2``: the PyPI ``sam2`` 1.1.0 is a
third-party upload of Meta's code (not published by Meta), pulls hydra/iopath and compiles
an optional CUDA extension, and loads checkpoints by its own config names. transformers
ships the same architecture, is already a pinned dependency of this project (so the model
code moves with one version we test), loads ``facebook/sam2.1-hiera-*`` checkpoints with
``from_pretrained`` from a hub id or a local folder, runs on CPU in fp32, and builds from
its real config classes, which is how the tests run a tiny random SAM 2 offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from any2capins.annotators._models import fetch_hint, looks_like_path, model_folder_problem
from any2capins.annotators._models import hub_cache_only as offline
from any2capins.annotators.base import MissingDependency
from any2capins.annotators.model_catalog import DEFAULT_SAM2

SAM2_LICENSE = "Apache-2.0"


@dataclass(frozen=True)
class BoxPrompt:
    """Segment the object in ``box`` (x1, y1, x2, y2, frame pixels) on frame ``frame``."""

    object_id: int
    frame: int
    box: tuple[float, float, float, float]


def _missing(model: str, detail: str) -> MissingDependency:
    return MissingDependency(
        f"SAM 2 model {model!r} is not available ({detail}); download it on a machine with "
        f"network access (e.g. `hf download {DEFAULT_SAM2}`) and set the stage's `sam2_model` "
        "to the local folder (config.json, model.safetensors, processor_config.json), or put "
        "it in the Hugging Face cache. " + fetch_hint("identities")
    )


def check_sam2(model: str) -> None:
    """MissingDependency when ``model`` could not be loaded here (nothing is loaded)."""
    problem = model_folder_problem(model, local=looks_like_path(model))
    if problem is not None:
        raise _missing(model, problem)


class Sam2VideoSegmenter:
    """Loads a SAM 2 checkpoint once; :meth:`track` segments prompted objects in a clip."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        import torch
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        check_sam2(model)
        source = str(Path(model).expanduser()) if looks_like_path(model) else model
        try:
            self.processor = Sam2VideoProcessor.from_pretrained(source, local_files_only=offline())
            self.model = Sam2VideoModel.from_pretrained(
                source, dtype=torch.float32, local_files_only=offline()
            )
        except (OSError, ValueError) as e:
            raise _missing(model, f"{type(e).__name__}: {e}") from e
        # transformers' decorated `to` confuses mypy about `self`; the call is the plain one.
        self.model.to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self.model_id = model

    def track(
        self, frames: np.ndarray, prompts: Sequence[BoxPrompt]
    ) -> tuple[list[int], np.ndarray]:
        """Masks [N, T, H, W] bool for the prompted objects (ids in the returned order).

        Objects may be prompted on different frames. Frames are visited forward from the
        earliest prompt to the end, then backward from it to the start; SAM 2's memory holds
        each object's prompted frame whichever side of it a frame lies.
        """
        import torch

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected frames [T, H, W, 3], got {frames.shape}")
        if not prompts:
            return [], np.zeros((0, *frames.shape[:3]), dtype=bool)
        t, h, w = frames.shape[:3]
        by_frame: dict[int, list[BoxPrompt]] = {}
        for p in prompts:
            if not 0 <= p.frame < t:
                raise ValueError(f"prompt for object {p.object_id} on frame {p.frame} of {t}")
            by_frame.setdefault(p.frame, []).append(p)
        masks: dict[int, np.ndarray] = {}
        with torch.inference_mode():
            session = self.processor.init_video_session(
                video=list(frames), inference_device=self.device, dtype=torch.float32
            )
            for frame_idx in sorted(by_frame):
                group = by_frame[frame_idx]
                self.processor.add_inputs_to_inference_session(
                    inference_session=session,
                    frame_idx=frame_idx,
                    obj_ids=[p.object_id for p in group],
                    input_boxes=[[list(p.box) for p in group]],
                )
                # Conditioning output for the prompted objects on their own frame.
                self.model(inference_session=session, frame_idx=frame_idx)
            start = min(by_frame)
            passes: list[dict[str, Any]] = [{"start_frame_idx": start}]
            if start > 0:
                passes.append({"start_frame_idx": start, "reverse": True})
            for kwargs in passes:
                for out in self.model.propagate_in_video_iterator(session, **kwargs):
                    logits = self.processor.post_process_masks(  # type: ignore[no-untyped-call]
                        [out.pred_masks], original_sizes=[[h, w]], binarize=False
                    )[0]
                    masks[int(out.frame_idx)] = (logits[:, 0] > 0).cpu().numpy()
            ids = [int(i) for i in session.obj_ids]
        stacked = np.zeros((len(ids), t, h, w), dtype=bool)
        for frame_idx, frame_masks in masks.items():
            stacked[:, frame_idx] = frame_masks
        return ids, stacked


__all__ = ["DEFAULT_SAM2", "SAM2_LICENSE", "BoxPrompt", "Sam2VideoSegmenter"]
