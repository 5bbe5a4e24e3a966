"""The pose condition type and its annotator: DWPose whole-body keypoints per sampled frame,
persons tracked across frames, stored as arrays plus a rendered pose video."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
from pydantic import BaseModel, Field, model_validator

from any2capins.annotators._media import decode_mp4, encode_mp4, playback_fps
from any2capins.annotators._models import files_digest, model_file
from any2capins.annotators._onnx import OnnxModel, open_model
from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
)
from any2capins.annotators.conditions import ConditionType, PayloadReader
from any2capins.annotators.keyframes import grid_field
from any2capins.annotators.model_catalog import DEFAULT_POSE_MODEL as DEFAULT_POSE_MODEL
from any2capins.annotators.model_catalog import ENV_DWPOSE_DET, ENV_DWPOSE_POSE
from any2capins.annotators.pose._draw import draw_pose
from any2capins.annotators.pose._facts import activity_facts, measure_activity
from any2capins.annotators.pose._keypoints import (
    BODY,
    NUM_OPENPOSE,
    SCORE_THRESHOLD,
    normalize_and_mask,
    select_tracks,
    track_boxes,
    wholebody_to_openpose,
)
from any2capins.annotators.pose._runner import detect_people, estimate_poses
from any2capins.annotators.yolox import DEFAULT_DETECTOR
from any2capins.schemas import FrameGrid, ModelInfo, PoseCondition, Record, Suitability

ENV_DETECTOR = ENV_DWPOSE_DET
ENV_POSE_MODEL = ENV_DWPOSE_POSE
# Both files come from the DWPose release (Apache-2.0); YOLOX itself is Apache-2.0 too.
KNOWN_LICENSES = {"yolox_l.onnx": "Apache-2.0", "dw-ll_ucoco_384.onnx": "Apache-2.0"}


class PoseConfig(AnnotatorConfig):
    detector: str = Field(
        default=DEFAULT_DETECTOR,
        description=f"YOLOX person detector: .onnx path or owner/repo:file ({ENV_DETECTOR})",
    )
    pose_model: str = Field(
        default=DEFAULT_POSE_MODEL,
        description=f"DWPose whole-body model: .onnx path or owner/repo:file ({ENV_POSE_MODEL})",
    )
    detector_license: str | None = None
    pose_license: str | None = None
    max_persons: int = Field(default=8, ge=1, le=64, description="people kept per clip")
    track_iou: float = Field(default=0.3, gt=0, lt=1, description="box IoU to continue a track")
    track_max_gap: int = Field(default=2, ge=0, description="sampled frames a track may miss")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="onnxruntime intra-op threads")
    render: bool = True
    frame_grid: FrameGrid | None = grid_field()

    @model_validator(mode="before")
    @classmethod
    def _env_override(cls, data: Any) -> Any:
        # Applied when the recipe is resolved, so the files used are in the config hash.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, var in (("detector", ENV_DETECTOR), ("pose_model", ENV_POSE_MODEL)):
            if os.environ.get(var):
                data[key] = os.environ[var]
        return data


def _model_files(cfg: PoseConfig) -> tuple[Path, Path]:
    """The detector and pose model files, found without loading them."""
    return (
        model_file(
            cfg.detector,
            "DWPose detector",
            f"the stage's `detector` param (or {ENV_DETECTOR})",
            released=DEFAULT_DETECTOR,
            stage="pose",
        ),
        model_file(
            cfg.pose_model,
            "DWPose pose model",
            f"the stage's `pose_model` param (or {ENV_POSE_MODEL})",
            released=DEFAULT_POSE_MODEL,
            stage="pose",
        ),
    )


def _license(spec: str, override: str | None) -> str:
    name = spec.replace(":", "/").rsplit("/", 1)[-1]
    return override or KNOWN_LICENSES.get(name, "unknown")


# --------------------------------------------------------------------------- condition type

# Limb-level posture and gesture wording that the pose sequence already shows.
_POSE_PHRASES = re.compile(
    r"\b((raises?|raising|raised|lifts?|lifting|lowers?|lowering|bends?|bending|stretch(es|ing)?"
    r"|extends?|extending|swings?|swinging|waves?|waving|crosses|crossing|spreads?|spreading)"
    r"\s+(?:\w+\s+){0,2}(arms?|hands?|legs?|knees?|elbows?|feet|foot)"
    r"|(arms?|legs?|hands?)\s+(raised|outstretched|crossed|apart|bent|extended|akimbo|"
    r"stretched)"
    r"|(left|right)\s+(arm|leg|hand|knee|elbow|foot|wrist)"
    r"|kneel(s|ing)?|squat(s|ting)?|crouch(es|ing)?)\b",
    re.IGNORECASE,
)


class PoseConditionType(ConditionType[PoseCondition]):
    name: ClassVar[str] = "pose"
    summary_model: ClassVar[type[BaseModel]] = PoseCondition
    description: ClassVar[str] = (
        "DWPose whole-body keypoints (OpenPose order, 134 per person) per sampled frame, "
        "persons tracked, plus the rendered pose video"
    )

    # A pose instance needs someone whose body the keypoints actually describe: a person
    # with at least 8 of the 18 body points confident, in at least half the sampled frames.
    default_thresholds: ClassVar[dict[str, float]] = {
        "min_body_keypoints": 8.0,
        "min_person_frames_fraction": 0.5,
    }

    def suitability(
        self, summary: BaseModel, record: Record, thresholds: Mapping[str, float]
    ) -> Suitability:
        s = self.summary_of(summary)
        min_points = float(thresholds["min_body_keypoints"])
        min_fraction = float(thresholds["min_person_frames_fraction"])
        frames = len(s.body_keypoints) or s.frames
        with_person = sum(n >= min_points for n in s.body_keypoints)
        fraction = with_person / frames if frames else 0.0
        ok = fraction >= min_fraction
        who = f"person with confident whole-body keypoints (>= {min_points:.0f} of 18 body points)"
        if with_person == 0:
            where = f"no {who} in any of the {frames} sampled frames"
        else:
            where = f"a {who} in {'' if ok else 'only '}{with_person} of {frames} sampled frames"
        return Suitability(
            suitable=ok,
            reason=f"{where} ({fraction:.0%}; needs >= {min_fraction:.0%})",
            measured={
                "person_frames_fraction": round(fraction, 4),
                "frames_with_person": float(with_person),
                "frames": float(frames),
                "people_max": float(s.people_max),
            },
            thresholds={
                "min_body_keypoints": min_points,
                "min_person_frames_fraction": min_fraction,
            },
        )

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """``keypoints`` [F, P, 134, 2] float32 in 0..1 (x / W, y / H; -1 = masked),
        ``scores`` [F, P, 134], ``person_ids`` [P], ``boxes`` [F, P, 4] (0..1 xyxy, -1 =
        absent), ``det_scores`` [F, P], ``frame_size`` [W, H], ``timestamps_s`` [F], and
        ``rendering`` [F, H, W, 3] uint8 when the record has one."""
        summary = self.summary_of(summary)
        with np.load(io.BytesIO(read(summary.keypoints))) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if summary.rendering is not None:
            arrays["rendering"] = decode_mp4(read(summary.rendering))
        return arrays

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        return activity_facts(s.frames, s.people_max, s.people_typical, s.activity)

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        return [
            "The pose sequence already shows each person's body posture and how their limbs "
            "move over time: do not describe postures, gestures or limb movements (raising an "
            "arm, bending the knees, which hand is where).",
            "Say who the people are and what they do or interact with; refer to them by "
            "position when useful ('the person on the left').",
        ]

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        phrases = sorted({m.group(0).lower() for m in _POSE_PHRASES.finditer(prompt)})
        if not phrases:
            return []
        return [
            "describes posture or limb movement, which the pose sequence shows: "
            + ", ".join(repr(p) for p in phrases)
        ]


# --------------------------------------------------------------------------- annotator


def body_keypoints_per_frame(scores: np.ndarray) -> list[int]:
    """[F, P, 134] scores -> per frame, the most body points (of 18) any person has above
    the masking threshold; 0 for a frame without people."""
    if scores.ndim != 3 or scores.shape[1] == 0:
        return [0] * int(scores.shape[0])
    counts = (scores[:, :, BODY] >= SCORE_THRESHOLD).sum(axis=2)
    return [int(v) for v in counts.max(axis=1)]


class PoseAnnotator(Annotator):
    """DWPose (YOLOX detector + RTMPose whole-body) over each clip's sampled frames."""

    name: ClassVar[str] = "pose"
    version: ClassVar[str] = "2"  # 2: the measurements suitability reads
    Config: ClassVar[type[AnnotatorConfig]] = PoseConfig
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=16, max_side=512)
    # CPU by default so a recipe runs anywhere; give num_gpus (e.g. 0.25) to use a GPU.
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=2, concurrency=1)
    writes: ClassVar[tuple[str, ...]] = (PoseConditionType.output_key(),)

    config: PoseConfig

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        cls.check_requires()
        cfg = cast(PoseConfig, config)
        _model_files(cfg)

    def setup(self) -> None:
        cfg = self.config
        providers = self._providers(cfg.device)
        det_path, pose_path = _model_files(cfg)
        self.detector = open_model(det_path, providers, cfg.threads, "DWPose detector")
        self.pose_model = open_model(pose_path, providers, cfg.threads, "DWPose pose model")
        self._check_signatures(self.detector, self.pose_model)
        self.versions = {
            "det": files_digest([det_path], with_names=False),
            "pose": files_digest([pose_path], with_names=False),
        }

    @staticmethod
    def _providers(device: str) -> list[str]:
        import onnxruntime as ort

        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda" and not has_cuda_ep:
            raise MissingDependency(
                "pose: device 'cuda' needs onnxruntime's CUDA provider (pip install "
                "onnxruntime-gpu instead of onnxruntime)"
            )
        if device == "auto" and has_cuda_ep:
            import torch

            # Ray hides GPUs from actors of stages that declared num_gpus: 0.
            has_cuda_ep = torch.cuda.is_available()
        return (["CUDAExecutionProvider"] if has_cuda_ep else []) + ["CPUExecutionProvider"]

    @staticmethod
    def _check_signatures(det: OnnxModel, pose: OnnxModel) -> None:
        (det_out, *_) = det.output_dims()
        if len(det_out) != 3 or (isinstance(det_out[2], int) and det_out[2] < 6):
            raise ValueError(
                f"DWPose detector {det.path}: output {det_out} is not YOLOX's "
                "[N, anchors, 5 + classes]"
            )
        pose_out = pose.output_dims()
        if len(pose_out) != 2 or any(len(d) != 3 for d in pose_out):
            raise ValueError(
                f"DWPose pose model {pose.path}: outputs {pose_out} are not SimCC's "
                "[N, K, Wx] and [N, K, Wy]"
            )

    def models(self) -> list[ModelInfo]:
        cfg = self.config
        return [
            ModelInfo(
                model_id=cfg.detector,
                version=self.versions["det"],
                license=_license(cfg.detector, cfg.detector_license),
            ),
            ModelInfo(
                model_id=cfg.pose_model,
                version=self.versions["pose"],
                license=_license(cfg.pose_model, cfg.pose_license),
            ),
        ]

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            try:
                out.append(self._annotate(item))
            except Exception as e:  # noqa: BLE001 - one bad clip must not fail its batch
                out.append(e)
        return out

    def estimate(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """[F, H, W, 3] uint8 RGB -> the payload arrays (see :meth:`PoseConditionType.decode_payload`)."""
        cfg = self.config
        if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
        f_count, height, width = frames.shape[:3]
        dets = detect_people(self.detector, list(frames))
        # Detections come best first; more than max_persons per frame are never kept.
        boxes = [b[: cfg.max_persons] for b, _ in dets]
        det_scores = [s[: cfg.max_persons] for _, s in dets]
        poses = [
            wholebody_to_openpose(kp, sc) if len(kp) else (kp, sc)
            for kp, sc in estimate_poses(self.pose_model, list(frames), boxes)
        ]
        tracks = select_tracks(
            track_boxes(boxes, cfg.track_iou, cfg.track_max_gap), boxes, cfg.max_persons
        )
        p_count = len(tracks)
        keypoints = np.full((f_count, p_count, NUM_OPENPOSE, 2), -1.0, np.float32)
        scores = np.zeros((f_count, p_count, NUM_OPENPOSE), np.float32)
        norm_boxes = np.full((f_count, p_count, 4), -1.0, np.float32)
        box_scores = np.zeros((f_count, p_count), np.float32)
        scale = np.array([width, height, width, height], np.float64)
        for p, track in enumerate(tracks):
            for f, d in track.items():
                kp, sc = poses[f]
                keypoints[f, p] = normalize_and_mask(kp[d], sc[d], width, height)
                scores[f, p] = sc[d]
                norm_boxes[f, p] = boxes[f][d] / scale
                box_scores[f, p] = det_scores[f][d]
        return {
            "keypoints": keypoints,
            "scores": scores,
            "person_ids": np.arange(p_count, dtype=np.int32),
            "boxes": norm_boxes,
            "det_scores": box_scores,
            "frame_size": np.array([width, height], np.int32),
        }

    def _annotate(self, item: ClipInput) -> dict[str, Any]:
        arrays = self.estimate(item.frames)
        arrays["timestamps_s"] = np.asarray(item.timestamps_s, np.float64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **cast(dict[str, Any], arrays))
        payload = item.artifacts.put("pose.npz", buf.getvalue(), "application/x-npz")
        rendering = None
        if self.config.render:
            width, height = (int(v) for v in arrays["frame_size"])
            maps = np.stack(
                [
                    draw_pose(kp, sc, height, width)
                    for kp, sc in zip(arrays["keypoints"], arrays["scores"], strict=True)
                ]
            )
            video = encode_mp4(maps, playback_fps(len(maps), item.clip.duration_s), crf=15)
            rendering = item.artifacts.put("pose.mp4", video, "video/mp4")
        people_max, people_typical, activity = measure_activity(
            arrays["keypoints"], arrays["scores"], *(int(v) for v in arrays["frame_size"])
        )
        summary = PoseCondition(
            model_id=self.config.pose_model,
            frames=int(arrays["keypoints"].shape[0]),
            max_persons=int(arrays["keypoints"].shape[1]),
            timestamps_s=[round(t, 4) for t in item.timestamps_s],
            keypoints=payload,
            rendering=rendering,
            people_max=people_max,
            people_typical=people_typical,
            activity=activity,
            body_keypoints=body_keypoints_per_frame(arrays["scores"]),
            frame_grid=self.config.frame_grid,
        )
        return PoseConditionType.to_output(summary)


PoseConditionType.annotators = (PoseAnnotator,)
