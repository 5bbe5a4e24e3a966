"""The ``identities`` stage: detect subjects (YOLOX, COCO classes), segment and track them
through the clip (SAM 2), keep the 1-3 main ones and store their reference images, per-frame
boxes and masks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
from pydantic import Field, field_validator, model_validator

from any2capins.annotators.base import (
    PROVENANCE_KEY,
    Annotator,
    AnnotatorConfig,
    ArtifactSink,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
)
from any2capins.annotators.identities.condition import IdentitiesConditionType
from any2capins.annotators.identities.detector import (
    COCO_CLASSES,
    DEFAULT_DETECTOR,
    DETECTOR_LICENSE,
    Detection,
    YoloxDetector,
    detector_file,
)
from any2capins.annotators.identities.grounding import (
    DEFAULT_GROUNDING,
    GROUNDING_LICENSE,
    GroundingDinoDetector,
    check_grounding,
    normalize_noun,
)
from any2capins.annotators.identities.segmenter import (
    DEFAULT_SAM2,
    SAM2_LICENSE,
    BoxPrompt,
    Sam2VideoSegmenter,
    check_sam2,
)
from any2capins.annotators.identities.selection import (
    IdentityTrack,
    Tracklet,
    boxes_json,
    clearest_frame,
    encode_png,
    link_tracklets,
    pack_masks,
    pick_candidates,
    rgba_crop,
    select_identities,
    stitch,
    tracks_from_masks,
)
from any2capins.annotators.keyframes import grid_field
from any2capins.annotators.model_catalog import ENV_GROUNDING_MODEL, ENV_SAM2_MODEL, ENV_YOLOX_MODEL
from any2capins.schemas import FrameGrid, IdentitiesCondition, Identity, ModelInfo

log = logging.getLogger(__name__)


class IdentitiesConfig(AnnotatorConfig):
    detector_model: str = Field(
        default=DEFAULT_DETECTOR,
        description=(
            "YOLOX ONNX file: a local path or 'repo_id:filename' in the HF cache; "
            f"the env var {ENV_YOLOX_MODEL} overrides it"
        ),
    )
    sam2_model: str = Field(
        default=DEFAULT_SAM2,
        description=f"SAM 2 checkpoint: hub id or local folder; the env var {ENV_SAM2_MODEL} overrides it",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto: the GPU this actor was given (stage num_gpus > 0), else CPU",
    )
    classes: list[str] | None = Field(
        default=None, description="COCO classes that can be subjects (default: all 80)"
    )
    open_vocabulary: list[str] = Field(
        default_factory=list,
        description="nouns beyond COCO to detect with Grounding DINO, e.g. ['juggling ball']",
    )
    grounding_model: str = Field(
        default=DEFAULT_GROUNDING,
        description=(
            "Grounding DINO checkpoint (used when open_vocabulary is set): hub id or local "
            f"folder; the env var {ENV_GROUNDING_MODEL} overrides it"
        ),
    )
    grounding_box_threshold: float = Field(default=0.35, gt=0, lt=1)
    grounding_text_threshold: float = Field(default=0.25, gt=0, lt=1)
    score_threshold: float = Field(default=0.35, gt=0, lt=1)
    nms_iou: float = Field(default=0.45, gt=0, le=1)
    detection_frames: int = Field(
        default=8, ge=1, description="sampled frames the detector runs on, spread evenly"
    )
    link_iou: float = Field(default=0.3, gt=0, le=1, description="box IoU to link detections")
    min_box_fraction: float = Field(
        default=0.002, ge=0, lt=1, description="smaller detections are not candidates"
    )
    max_candidates: int = Field(default=6, ge=1, le=16, description="objects given to SAM 2")
    max_identities: int = Field(default=3, ge=1, le=3)
    min_area_fraction: float = Field(
        default=0.004, ge=0, lt=1, description="mean mask share of the frame where present"
    )
    min_frames_fraction: float = Field(
        default=0.25, ge=0, le=1, description="present on at least this share of frames"
    )
    min_relative_score: float = Field(
        default=0.1, ge=0, le=1, description="score (area x frames) relative to the best"
    )
    duplicate_iou: float = Field(default=0.6, gt=0, le=1)
    min_box_agreement: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="mean IoU of mask boxes with the detections; below it the box is used",
    )
    crop_margin: float = Field(default=0.04, ge=0, le=0.5)
    reference_height: int = Field(default=384, ge=32, le=2048)
    mask_max_side: int = Field(default=128, ge=16, le=1024)
    frame_grid: FrameGrid | None = grid_field()

    @model_validator(mode="before")
    @classmethod
    def _env_override(cls, data: Any) -> Any:
        # Applied when the recipe is resolved (on the driver), so the models actually used are
        # in the stage's config hash and travel to every worker.
        if not isinstance(data, dict):
            return data
        overrides = {
            key: os.environ[env]
            for key, env in (
                ("detector_model", ENV_YOLOX_MODEL),
                ("sam2_model", ENV_SAM2_MODEL),
                ("grounding_model", ENV_GROUNDING_MODEL),
            )
            if os.environ.get(env)
        }
        return {**data, **overrides}

    @field_validator("open_vocabulary")
    @classmethod
    def _nouns(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not normalize_noun(n)]
        if bad:
            raise ValueError(f"nouns must contain letters or digits: {bad}")
        return [n.strip() for n in value]

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        unknown = [c for c in value if c not in COCO_CLASSES]
        if unknown:
            raise ValueError(f"not COCO classes: {unknown} (known: {', '.join(COCO_CLASSES)})")
        if not value:
            raise ValueError("give at least one class, or leave classes unset for all")
        return value


def resolve_device(setting: str) -> str:
    """``auto`` is the GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES from the
    stage's ``num_gpus``), or the CPU when it gave none."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependency(
            f"identities: device {setting!r} was asked for but this worker sees no CUDA GPU "
            "(give the stage num_gpus > 0, or use device: auto)"
        )
    return setting


def detection_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames``, first and last included."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({round(x) for x in np.linspace(0, num_frames - 1, count)})


@dataclass
class ClipIdentities:
    """What the models found in one clip, before anything is written."""

    candidates: list[Tracklet]
    tracks: list[IdentityTrack]
    selected: list[IdentityTrack]


def write_identities(
    frames: np.ndarray,
    timestamps_s: list[float],
    selected: list[IdentityTrack],
    frame_size: tuple[int, int],
    artifacts: ArtifactSink,
    config: IdentitiesConfig,
    model_ids: list[str],
) -> IdentitiesCondition:
    """Payload files and summary for the chosen identities (ids 1.. in the given order)."""
    t, h, w = frames.shape[:3]
    identities: list[Identity] = []
    crops: list[np.ndarray] = []
    for k, track in enumerate(selected, start=1):
        best = clearest_frame(frames, track.masks)
        crop = rgba_crop(frames[best], track.masks[best], config.crop_margin)
        crops.append(crop)
        crop_ref = artifacts.put(f"identity_{k}.png", encode_png(crop), "image/png")
        boxes_ref = artifacts.put(
            f"identity_{k}_boxes.json",
            boxes_json(
                k, track.label, track.boxes(), timestamps_s, (w, h), frame_size, track.source
            ),
            "application/json",
        )
        cx, cy = track.center()
        areas = track.areas[track.present]
        area_cv = float(areas.std() / areas.mean()) if areas.size else 0.0
        identities.append(
            Identity(
                identity_id=k,
                label=track.label,
                frames_present=track.frames_present,
                mean_area_fraction=round(min(1.0, track.mean_area_fraction), 5),
                crop=crop_ref,
                boxes=boxes_ref,
                crop_source=track.source,
                center=[round(cx, 4), round(cy, 4)],
                area_cv=round(area_cv, 4),
            )
        )
    height = min(config.reference_height, max(c.shape[0] for c in crops))
    stitched = artifacts.put("reference.png", encode_png(stitch(crops, height)), "image/png")
    masks_ref = artifacts.put(
        "masks.npz",
        pack_masks(
            np.stack([s.masks for s in selected]),
            [i.identity_id for i in identities],
            [i.label for i in identities],
            timestamps_s,
            config.mask_max_side,
        ),
        "application/x-npz",
    )
    return IdentitiesCondition(
        model_ids=model_ids,
        identities=identities,
        stitched_reference=stitched,
        frames=t,
        masks=masks_ref,
        timestamps_s=[round(x, 4) for x in timestamps_s],
        frame_grid=config.frame_grid,
    )


class IdentitiesAnnotator(Annotator):
    name: ClassVar[str] = "identities"
    version: ClassVar[str] = "2"  # 2: the measurements suitability reads
    Config: ClassVar[type[AnnotatorConfig]] = IdentitiesConfig
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime", "torch", "transformers")
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=16, max_side=640)
    default_resources: ClassVar[Resources] = Resources(
        num_cpus=1, num_gpus=0, memory_gb=4, batch_size=1, concurrency=1
    )
    writes: ClassVar[tuple[str, ...]] = (IdentitiesConditionType.output_key(),)

    config: IdentitiesConfig

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        cls.check_requires()
        cfg = cast(IdentitiesConfig, config)
        detector_file(cfg.detector_model)
        check_sam2(cfg.sam2_model)
        if cfg.open_vocabulary:
            check_grounding(cfg.grounding_model)

    def setup(self) -> None:
        self.device = resolve_device(self.config.device)
        self.detector = YoloxDetector(
            self.config.detector_model,
            device=self.device,
            score_threshold=self.config.score_threshold,
            iou_threshold=self.config.nms_iou,
        )
        self.segmenter = Sam2VideoSegmenter(self.config.sam2_model, device=self.device)
        self._classes = set(self.config.classes or COCO_CLASSES)
        self.grounding: GroundingDinoDetector | None = None
        if self.config.open_vocabulary:
            self.grounding = GroundingDinoDetector(
                self.config.grounding_model,
                self.config.open_vocabulary,
                device=self.device,
                box_threshold=self.config.grounding_box_threshold,
                text_threshold=self.config.grounding_text_threshold,
            )

    def models(self) -> list[ModelInfo]:
        used = [
            ModelInfo(model_id=self.config.detector_model, license=DETECTOR_LICENSE),
            ModelInfo(model_id=self.config.sam2_model, license=SAM2_LICENSE),
        ]
        if self.grounding is not None:
            used.append(ModelInfo(model_id=self.config.grounding_model, license=GROUNDING_LICENSE))
        return used

    def detect(self, frames: np.ndarray) -> list[tuple[int, list[Detection]]]:
        """YOLOX (COCO classes) plus, when nouns are configured, Grounding DINO; one object
        found by both survives linking as two tracklets and is merged by mask overlap."""
        found = []
        for i in detection_indices(frames.shape[0], self.config.detection_frames):
            dets = [d for d in self.detector(frames[i]) if d.label in self._classes]
            if self.grounding is not None:
                dets.extend(self.grounding(frames[i]))
            found.append((i, dets))
        return found

    def find(self, frames: np.ndarray) -> ClipIdentities:
        """Detect, link, segment and select; nothing is written."""
        c = self.config
        h, w = frames.shape[1:3]
        tracklets = link_tracklets(self.detect(frames), c.link_iou)
        candidates = pick_candidates(tracklets, float(h * w), c.max_candidates, c.min_box_fraction)
        if not candidates:
            return ClipIdentities([], [], [])
        prompts = []
        for k, cand in enumerate(candidates, start=1):
            frame, box = cand.anchor()
            prompts.append(BoxPrompt(object_id=k, frame=frame, box=box))
        ids, masks = self.segmenter.track(frames, prompts)
        order = [ids.index(p.object_id) for p in prompts]
        tracks = tracks_from_masks(candidates, masks[order], min_box_agreement=c.min_box_agreement)
        selected = select_identities(
            tracks,
            max_identities=c.max_identities,
            min_area_fraction=c.min_area_fraction,
            min_frames_fraction=c.min_frames_fraction,
            min_relative_score=c.min_relative_score,
            duplicate_iou=c.duplicate_iou,
        )
        return ClipIdentities(candidates, tracks, selected)

    def annotate(self, item: ClipInput) -> dict[str, Any]:
        frames = item.frames
        if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
        found = self.find(frames)
        details = {
            "candidates": ", ".join(c.label for c in found.candidates) or "none",
            "box_fallbacks": str(sum(tr.source == "box" for tr in found.selected)),
            "mask_box_agreement": ", ".join(f"{tr.box_agreement:.2f}" for tr in found.tracks),
        }
        if not found.selected:
            # No main subject: the clip simply has no identities condition.
            details["identities"] = "none found"
            return {IdentitiesConditionType.output_key(): None, PROVENANCE_KEY: details}
        summary = write_identities(
            frames,
            list(item.timestamps_s),
            found.selected,
            (item.clip.width, item.clip.height),
            item.artifacts,
            self.config,
            [m.model_id for m in self.models()],
        )
        return {**IdentitiesConditionType.to_output(summary), PROVENANCE_KEY: details}

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            try:
                out.append(self.annotate(item))
            except Exception as e:  # noqa: BLE001 - one bad clip must not fail its batch
                log.warning("identities failed on %s: %s", item.clip.clip_id, e)
                out.append(e)
        return out


__all__ = [
    "ENV_GROUNDING_MODEL",
    "ENV_SAM2_MODEL",
    "ENV_YOLOX_MODEL",
    "ClipIdentities",
    "IdentitiesAnnotator",
    "IdentitiesConfig",
    "detection_indices",
    "resolve_device",
    "write_identities",
]
