"""The cross-checks' switches and thresholds, and the names of the checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CHECKS: tuple[str, ...] = (
    "camera_direction",
    "camera_motion",
    "subject_count",
    "people_without_pose",
    "near_copy",
    "off_topic",
)


class CrossCheckSettings(BaseModel):
    """Thresholds and switches of :func:`cross_check`."""

    model_config = ConfigDict(extra="forbid")

    camera_direction: bool = True
    camera_motion: bool = True
    subject_count: bool = True
    people_without_pose: bool = True
    near_copy: bool = True
    off_topic: bool = True
    camera_components: tuple[str, ...] = Field(
        default=("camera",), description="components read by the two camera checks"
    )
    near_copy_ratio: float = Field(
        default=0.8, gt=0, le=1, description="word-level SequenceMatcher ratio for a near-copy"
    )
    near_copy_min_words: int = Field(
        default=6, ge=1, description="shorter components are never compared"
    )
    negation_window_words: int = Field(
        default=8, ge=0, description="a negator this many words before a phrase negates it"
    )
    identities_cap: int = Field(
        default=3, ge=1, description="the most identities the annotator keeps (1-3)"
    )
    words_max_chars: int = Field(default=120, ge=20, description="flag.words is cut to this")


DEFAULT_SETTINGS = CrossCheckSettings()
