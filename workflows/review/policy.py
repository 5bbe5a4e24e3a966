"""A run's review policy: what is sampled for review, how many independent reviews an item
gets, what skipping does, how long a lease lasts and which reject reasons exist."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_REJECT_REASONS = (
    "hallucination",
    "contradicts_conditions",
    "wrong_subject",
    "bad_clip",
    "unsafe",
    "other",
)

# A record rejected for one of these is never sent back for a new caption: the clip itself,
# not the text, is the problem.
DEFAULT_FINAL_REJECT_REASONS = ("bad_clip", "unsafe")

SkipPolicy = Literal["requeue_others", "requeue", "drop"]
FieldRejectPolicy = Literal["regenerate", "reject"]


class ReviewPolicy(BaseModel):
    """Stored per run; ``any2cap review policy --run R --set FILE`` changes it.

    ``sample`` maps a condition type (``depth``, ``pose``, ..., ``none`` for records
    without conditions) to the fraction of its records that is reviewed; ``default`` covers
    the types not listed. A record with several condition types is reviewed when any of its
    types samples it. Records not sampled are **held back**: never accepted without a human.
    """

    model_config = ConfigDict(extra="forbid")

    sample: dict[str, float] = Field(default_factory=lambda: {"default": 1.0})
    reviews: int = Field(default=1, ge=1, le=5, description="independent reviews per item")
    overlap_reviews: int = Field(
        default=2, ge=1, le=5, description="independent reviews for the overlap sample"
    )
    overlap_fraction: float = Field(
        default=0.0, ge=0, le=1, description="fraction of reviewed items given overlap_reviews"
    )
    edit_tolerance: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="largest normalised word edit distance between two reviewers' texts that "
        "still counts as agreement (0: identical text)",
    )
    skip: SkipPolicy = Field(
        default="requeue_others",
        description="requeue_others: back in the queue, never offered to the skipper again; "
        "requeue: back at the end of the queue for everyone; drop: held back",
    )
    lease_ttl_s: int = Field(default=600, ge=10, le=86400)
    reject_reasons: list[str] = Field(default_factory=lambda: list(DEFAULT_REJECT_REASONS))
    on_field_reject: FieldRejectPolicy = Field(
        default="regenerate",
        description="what a rejected field (per-field verdicts) does to its item: regenerate "
        "(sent back for a new text of the rejected fields: any2cap captions regenerate) or "
        "reject (the item is rejected for good)",
    )
    max_regenerations: int = Field(
        default=2,
        ge=0,
        le=20,
        description="how many times one field may be regenerated; a field rejected again after "
        "that many regenerations is dropped for good: its item is rejected",
    )
    final_reject_reasons: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FINAL_REJECT_REASONS),
        description="reason codes that reject the item for good, never regenerated (the clip, "
        "not the text, is the problem)",
    )
    seed: str = "any2cap-review"

    @field_validator("sample")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for name, fraction in value.items():
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"sample.{name} must be within [0, 1], got {fraction}")
        return value

    @field_validator("reject_reasons")
    @classmethod
    def _reasons(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("reject_reasons must name at least one reason")
        for reason in value:
            if not reason or len(reason) > 100 or not reason.replace("_", "").isalnum():
                raise ValueError(f"reject reason codes are short words, got {reason!r}")
        return value

    @model_validator(mode="after")
    def _overlap(self) -> ReviewPolicy:
        if self.overlap_fraction > 0 and self.overlap_reviews < 2:
            raise ValueError("overlap_reviews must be at least 2 when overlap_fraction > 0")
        return self

    def fraction_for(self, condition_types: list[str]) -> float:
        names = condition_types or ["none"]
        default = self.sample.get("default", 1.0)
        return max(self.sample.get(name, default) for name in names)

    def _draw(self, salt: str, clip_id: str) -> float:
        """A stable number in [0, 1) per clip: the same clip is sampled the same way on every
        ingest and every machine."""
        digest = hashlib.sha256(f"{self.seed}:{salt}:{clip_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def is_sampled(self, clip_id: str, condition_types: list[str]) -> bool:
        return self._draw("sample", clip_id) < self.fraction_for(condition_types)

    def reviews_for(self, clip_id: str) -> int:
        if self._draw("overlap", clip_id) < self.overlap_fraction:
            return max(self.overlap_reviews, self.reviews)
        return self.reviews


def load_policy(path: str | Path) -> ReviewPolicy:
    """A policy from a YAML (or JSON) file; unknown keys are refused, naming the key."""
    data = yaml.safe_load(Path(path).read_text())
    return ReviewPolicy.model_validate(data or {})
