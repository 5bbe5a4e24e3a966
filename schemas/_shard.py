"""One row of an exported training shard: the reviewed record plus what training needs.

The human-reviewed text is in ``caption``/``short_prompt``; what the machine wrote stays in
``machine_caption``/``machine_short_prompt`` for evaluation. ``payloads`` holds the payload
files' bytes keyed by their ``PayloadRef.uri`` when the export embeds them, and is empty
when it references the artifact store instead.
"""

from __future__ import annotations

from pydantic import Field

from schemas._record import (
    ClipRef,
    ClipStats,
    Conditions,
    Keyframes,
    Provenance,
    ReviewState,
    StructuredCaption,
    _Model,
)


class ShardRow(_Model):
    clip_id: str
    partition: str = Field(description="condition types present, e.g. 'camera+depth', or 'none'")
    schema_version: str
    clip: ClipRef
    stats: ClipStats | None = None
    keyframes: Keyframes | None = None
    conditions: Conditions
    caption: StructuredCaption
    short_prompt: str
    structured_caption: str = Field(description="the paper's numbered text form")
    machine_caption: StructuredCaption | None = None
    machine_short_prompt: str | None = None
    provenance: Provenance
    review: ReviewState
    payloads: dict[str, bytes] = Field(default_factory=dict)
