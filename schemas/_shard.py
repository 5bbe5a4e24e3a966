"""One row of an exported training shard: one instance of a reviewed record plus what
training needs.

An instance is a clip, a set of condition types (one, or several for a test composition)
and a short prompt written for that set; its target is the clip's structured caption. A
record of a recipe without instance planning goes out as one implicit instance whose
condition types are the record's present conditions.

The human-reviewed text is in ``caption``/``short_prompt``; what the machine wrote stays in
``machine_caption``/``machine_short_prompt`` for evaluation. ``conditions`` holds the
instance's condition types only; ``payloads`` holds the bytes of the keyframes and of those
conditions' payload files keyed by their ``PayloadRef.uri`` when the export embeds them,
and is empty when it references the artifact store instead.
"""

from __future__ import annotations

from pydantic import Field

from any2capins.schemas._record import (
    CaptionFlag,
    ClipRef,
    ClipStats,
    Conditions,
    Keyframes,
    Provenance,
    ReviewState,
    StructuredCaption,
    Suitability,
    _Model,
)


class ShardRow(_Model):
    clip_id: str
    instance_id: str = Field(
        description="any2capins.schemas.make_instance_id(clip_id, condition types)"
    )
    partition: str = Field(
        description="the instance key: its condition types joined with '+' ('camera+depth'), "
        "or 'none' for an implicit instance of a record without conditions"
    )
    condition_types: list[str] = Field(description="sorted; empty for 'none'")
    composition: bool = Field(description="more than one condition type")
    schema_version: str
    clip: ClipRef
    stats: ClipStats | None = None
    keyframes: Keyframes | None = None
    conditions: Conditions = Field(description="the instance's condition types only")
    suitability: dict[str, Suitability] = Field(
        default_factory=dict, description="the clip's suitability per condition type"
    )
    caption: StructuredCaption
    short_prompt: str = Field(description="the instance's short prompt (human text wins)")
    structured_caption: str = Field(description="the paper's numbered text form")
    machine_caption: StructuredCaption | None = None
    machine_short_prompt: str | None = None
    checks: list[CaptionFlag] = Field(
        default_factory=list, description="the clip's caption-condition cross-check flags"
    )
    provenance: Provenance
    review: ReviewState
    payloads: dict[str, bytes] = Field(default_factory=dict)
