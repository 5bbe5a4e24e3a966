"""The dataset record and the failure row: the data contract every layer shares.

A record is one clip with whatever conditions, statistics, caption and review state the
pipeline has produced for it so far; every optional part stays ``None`` until a stage
fills it. A failure row is what a clip becomes when a stage cannot process it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# 1.2.0: frame_grid on the built-in conditions, timestamps_s on identities and camera
SCHEMA_VERSION = "1.2.0"

# Fixed namespace so clip ids are stable across machines, runs and versions.
CLIP_NAMESPACE = uuid.UUID("6f1c3c4e-8a51-4c59-9d0e-2b7f3a1d9e42")

CAPTION_COMPONENTS: tuple[str, ...] = (
    "dense",
    "main_object",
    "background",
    "camera",
    "style",
    "action",
)


def make_clip_id(source_uri: str, start_s: float | None, end_s: float | None) -> str:
    """uuid5 of the source URI and the span, rounded to the millisecond.

    ``start_s``/``end_s`` of ``None`` names the source as a whole (used for failures
    that happen before any span is known, such as an unreadable file).
    """
    if start_s is None or end_s is None:
        key = f"{source_uri}#source"
    else:
        key = f"{source_uri}#{start_s:.3f}-{end_s:.3f}"
    return str(uuid.uuid5(CLIP_NAMESPACE, key))


def make_instance_id(clip_id: str, condition_types: list[str] | tuple[str, ...]) -> str:
    """uuid5 of the clip id and the sorted condition types: one id per (clip, set)."""
    key = f"{clip_id}#instance#{'+'.join(sorted(condition_types))}"
    return str(uuid.uuid5(CLIP_NAMESPACE, key))


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ClipRef(_Model):
    """Where a clip comes from and what its video stream looks like."""

    clip_id: str
    source_uri: str
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    fps: float = Field(gt=0)
    width: int = Field(gt=0, description="display width, after rotation")
    height: int = Field(gt=0, description="display height, after rotation")
    num_frames: int = Field(ge=0, description="frames inside [start_s, end_s)")
    rotation: int = Field(default=0, description="display rotation in degrees (0/90/180/270)")
    codec: str = ""
    variable_frame_rate: bool = False

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class PayloadRef(_Model):
    """A file in the artifact store that belongs to one clip."""

    uri: str
    media_type: str
    bytes: int = Field(ge=0)
    sha256: str


class ColorSwatch(_Model):
    hex: str
    fraction: float = Field(ge=0, le=1)


class ClipStats(_Model):
    """Cheap statistics over the sampled frames."""

    frames_sampled: int
    mean_brightness: float = Field(ge=0, le=1, description="mean Rec.601 luma, 0..1")
    palette: list[ColorSwatch]
    motion_magnitude: float = Field(
        ge=0, description="mean absolute luma difference between consecutive samples, 0..1"
    )


class FilterDecision(_Model):
    """Why a clip was dropped by the recipe's curation filters: not a failure, never silent."""

    clip_id: str
    source_uri: str
    rule: str = Field(description="the score and its condition, e.g. 'motion_fraction >= 0.05'")
    score: str
    value: float | None = Field(description="the measured value (None: the score is missing)")
    threshold: str = Field(description="the condition, e.g. '>= 0.05'")
    stage: str = Field(default="", description="the stage after which it was decided")
    time: datetime = Field(default_factory=utc_now)


class Keyframes(_Model):
    """JPEG keyframes of the clip, shown to the caption writer and the reviewer."""

    timestamps_s: list[float]
    frames: list[PayloadRef]


class FrameGrid(_Model):
    """The frames every condition stage samples when a recipe sets ``frame_grid``: at a rate
    (``fps``) or a fixed count per clip (``num_frames``), exactly one of them, at most
    ``max_frames``; ``size`` is the longest side of the sampled frames (None: each stage's
    own). A condition records the grid it was sampled on, so an export can check that depth,
    pose, identity masks and cameras share the same timestamps."""

    fps: float | None = Field(default=None, gt=0, description="frames at this rate")
    num_frames: int | None = Field(default=None, ge=1, description="or N frames per clip")
    size: int | None = Field(
        default=None, ge=16, description="longest side of the frames (None: each stage's own)"
    )
    max_frames: int = Field(default=256, ge=1, description="at most this many frames a clip")

    @model_validator(mode="after")
    def _one_rule(self) -> FrameGrid:
        if (self.fps is None) == (self.num_frames is None):
            raise ValueError("set exactly one of fps and num_frames")
        return self

    def describe(self) -> str:
        """``fps=8`` / ``num_frames=49, size=480``: the grid in words, for messages."""
        parts = [f"fps={self.fps:g}" if self.fps is not None else f"num_frames={self.num_frames}"]
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.max_frames != 256:
            parts.append(f"max_frames={self.max_frames}")
        return ", ".join(parts)


class DepthLayout(_Model):
    """Scene layout measured from the depth maps, each frame scaled to 0..1 on its own.

    Regions name a cell of a 3x3 grid: "top left" ... "center" ... "bottom right".
    """

    nearest_region: str
    farthest_region: str
    near_fraction: float = Field(ge=0, le=1, description="pixels in the nearest third")
    far_fraction: float = Field(ge=0, le=1, description="pixels in the farthest third")
    foreground_fraction: float = Field(ge=0, le=1, description="nearer than the Otsu split")
    foreground_region: str = Field(default="", description="where the foreground's centre is")
    mean_change: float = Field(ge=0, description="mean change between frames, 0..1 of range")
    flat: bool = Field(default=False, description="no measurable depth variation")


class DepthCondition(_Model):
    model_id: str
    frames: int
    timestamps_s: list[float]
    normalization: str = Field(description="how stored values map back to relative inverse depth")
    payload: PayloadRef
    preview: PayloadRef | None = None
    layout: DepthLayout | None = None
    frame_grid: FrameGrid | None = Field(
        default=None, description="the recipe's frame grid the frames were sampled on"
    )


class PersonActivity(_Model):
    """One tracked person's activity, measured from OpenPose body keypoints."""

    person_id: int
    frames_present: int = Field(ge=0)
    position: str = Field(description="left / center / right third of the frame")
    horizontal_drift: float = Field(description="mean x, last minus first frame, of width")
    posture: str = Field(description="standing / sitting / lying / unknown (majority)")
    posture_frames: int = Field(default=0, ge=0, description="frames voting for the posture")
    arm_raised_frames: dict[str, int] = Field(
        default_factory=dict, description="'right'/'left': frames with the wrist above the shoulder"
    )
    arm_seen_frames: dict[str, int] = Field(
        default_factory=dict, description="'right'/'left': frames with wrist and shoulder seen"
    )
    limb_motion: dict[str, float] = Field(
        default_factory=dict,
        description="limb -> mean motion relative to the neck, torso lengths per sampled step",
    )


class PoseCondition(_Model):
    model_id: str
    frames: int
    max_persons: int = Field(description="persons (tracks) in the keypoint arrays")
    timestamps_s: list[float]
    keypoints: PayloadRef
    rendering: PayloadRef | None = None
    people_max: int = Field(default=0, ge=0, description="most persons visible in one frame")
    people_typical: int = Field(default=0, ge=0, description="median persons per frame")
    activity: list[PersonActivity] = Field(default_factory=list)
    body_keypoints: list[int] = Field(
        default_factory=list,
        description="per sampled frame, the most confident body keypoints (of 18) of any person",
    )
    frame_grid: FrameGrid | None = Field(
        default=None, description="the recipe's frame grid the frames were sampled on"
    )


class Identity(_Model):
    identity_id: int
    label: str
    frames_present: int
    mean_area_fraction: float = Field(ge=0, le=1)
    crop: PayloadRef
    boxes: PayloadRef | None = None
    crop_source: Literal["mask", "box"] = Field(
        default="mask", description="box: the mask was empty, the crop is the detector box"
    )
    center: list[float] = Field(
        default_factory=list,
        description="mean box centre (x, y) where present, as fractions of width and height",
    )
    area_cv: float = Field(
        default=0.0,
        ge=0,
        description="mask stability: coefficient of variation of the mask area where present",
    )


class IdentitiesCondition(_Model):
    model_ids: list[str]
    identities: list[Identity]
    stitched_reference: PayloadRef
    frames: int = Field(
        default=0, ge=0, description="sampled frames the identities were tracked on"
    )
    masks: PayloadRef | None = Field(
        default=None, description="per-frame low-resolution masks of every identity (.npz)"
    )
    timestamps_s: list[float] = Field(
        default_factory=list, description="time of each tracked frame (empty before 1.2.0)"
    )
    frame_grid: FrameGrid | None = Field(
        default=None, description="the recipe's frame grid the frames were sampled on"
    )


class CameraCondition(_Model):
    source: Literal["estimated", "realestate10k", "motionctrl"]
    frames: int
    labels: list[str]
    description: str
    trajectory: PayloadRef
    speed: str = Field(default="", description="slowly / moderately / quickly; '' when static")
    usable: bool = Field(
        default=True, description="False: too little texture to track, no trajectory measured"
    )
    quality: dict[str, float] = Field(
        default_factory=dict,
        description="estimates only: mean_tracks, inlier_ratio, reprojection_rms_px, lost_fraction",
    )
    timestamps_s: list[float] = Field(
        default_factory=list,
        description="time of each camera of the trajectory (empty before 1.2.0)",
    )
    frame_grid: FrameGrid | None = Field(
        default=None, description="the recipe's frame grid the frames were sampled on"
    )


class Conditions(_Model):
    depth: DepthCondition | None = None
    pose: PoseCondition | None = None
    identities: IdentitiesCondition | None = None
    camera: CameraCondition | None = None
    # third-party condition types: name -> their summary model as JSON
    extra: dict[str, str] = Field(default_factory=dict)

    def present(self) -> list[str]:
        builtin = [
            name for name in type(self).model_fields if name != "extra" and getattr(self, name)
        ]
        return builtin + sorted(self.extra)


class StructuredCaption(_Model):
    """The six components of Any2Caption's structured caption."""

    dense: str = Field(min_length=1)
    main_object: str = Field(min_length=1)
    background: str = Field(min_length=1)
    camera: str = Field(min_length=1)
    style: str = Field(min_length=1)
    action: str = Field(min_length=1)

    def numbered_text(self) -> str:
        titles = ("Dense", "Main object", "Background", "Camera", "Style", "Action")
        return "\n".join(
            f"{i}. {title} caption: {getattr(self, name)}"
            for i, (title, name) in enumerate(zip(titles, CAPTION_COMPONENTS, strict=True), 1)
        )


_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?%?")


def reason_category(reason: str) -> str:
    """A short category for a suitability reason, to count clips turned away per cause: the
    first clause, numbers as N ("2 people at most, need 3" -> "N people at most")."""
    text = _NUMBER.sub("N", reason.strip())
    first = re.split(r"[;:,(]|\s[-–]\s", text, maxsplit=1)[0]
    return " ".join(first.split()).rstrip(".") or "(no reason given)"


class Suitability(_Model):
    """Whether a clip suits one condition type, judged by that type's own rule.

    ``measured`` holds the values the rule looked at and ``thresholds`` the recipe's limits,
    so a reviewer or the dataset card can see why a clip was turned away.
    """

    suitable: bool
    reason: str
    measured: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)

    @property
    def category(self) -> str:
        return reason_category(self.reason)


class Instance(_Model):
    """One training instance: this clip, a set of condition types and a short prompt
    written for that set (the paper's shape: one condition type; test compositions: more).
    The target is the clip's structured caption, shared by all of the clip's instances."""

    instance_id: str
    condition_types: list[str] = Field(min_length=1, description="sorted")
    composition: bool = Field(default=False, description="more than one condition type")
    short_prompt: str | None = None

    @property
    def key(self) -> str:
        """``camera+depth``: the condition set as one name."""
        return "+".join(self.condition_types)


class CaptionFlag(_Model):
    """A place where the caption contradicts what a condition measured."""

    check: str = Field(description="camera_direction, camera_motion, subject_count, ...")
    component: str
    fact: str = Field(description="the measured fact, in words")
    words: str = Field(description="the caption's words that disagree")


class ModelInfo(_Model):
    model_id: str
    version: str = ""
    license: str = ""


class StageProvenance(_Model):
    """What one stage did to a record, and with what."""

    stage: str
    annotator_version: str
    config_hash: str
    run_id: str
    seconds: float = Field(ge=0)
    finished_at: datetime
    models: list[ModelInfo] = Field(default_factory=list)
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    node: str = ""
    details: dict[str, str] = Field(default_factory=dict)


class Provenance(_Model):
    recipe: str
    recipe_hash: str
    run_id: str
    schema_version: str = SCHEMA_VERSION
    stages: list[StageProvenance] = Field(default_factory=list)
    # stages of the recipe left out of this run (stage -> why), e.g. a missing model
    stages_left_out: dict[str, str] = Field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class ReviewState(_Model):
    status: Literal["pending", "accepted", "rejected", "edited"] = "pending"
    reviewer: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    edits: dict[str, str] = Field(default_factory=dict)


class Record(_Model):
    """One clip of the dataset, as far as the pipeline has got with it."""

    schema_version: str = SCHEMA_VERSION
    clip: ClipRef
    stats: ClipStats | None = None
    scores: dict[str, float] = Field(
        default_factory=dict,
        description="curation scores by name (motion_fraction, sharpness, text_fraction, ...)",
    )
    phashes: list[str] = Field(
        default_factory=list,
        description="64-bit DCT perceptual hash per sampled frame, 16 hex digits each "
        "(near-duplicate grouping)",
    )
    keyframes: Keyframes | None = None
    conditions: Conditions = Field(default_factory=Conditions)
    suitability: dict[str, Suitability] = Field(
        default_factory=dict, description="condition type -> whether this clip suits it"
    )
    caption: StructuredCaption | None = None
    short_prompt: str | None = Field(
        default=None,
        description="one prompt for the whole clip (recipes without instance planning)",
    )
    instances: list[Instance] | None = Field(
        default=None,
        description="None: the recipe plans no instances; []: planned, none suitable",
    )
    checks: list[CaptionFlag] = Field(
        default_factory=list, description="caption-condition cross-check flags"
    )
    provenance: Provenance
    review: ReviewState = Field(default_factory=ReviewState)

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


class Failure(_Model):
    """A clip that a stage could not process: recorded, never dropped."""

    clip_id: str
    source_uri: str
    stage: str
    error_type: str
    message: str
    attempt: int = Field(default=1, ge=1)
    time: datetime = Field(default_factory=utc_now)
