"""What a condition-type plugin imports: the annotator and condition-type contracts and the
record types they read and write (docs/adding-a-condition-type.md walks through one)."""

from any2capins.annotators.base import (
    PROVENANCE_KEY,
    Annotator,
    AnnotatorConfig,
    ArtifactSink,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
    config_hash,
)
from any2capins.annotators.conditions import ENTRY_POINT_GROUP, ConditionType, PayloadReader
from any2capins.schemas import ClipRef, PayloadRef, Provenance, Record

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROVENANCE_KEY",
    "Annotator",
    "AnnotatorConfig",
    "ArtifactSink",
    "ClipInput",
    "ClipRef",
    "ConditionType",
    "FrameSampling",
    "MissingDependency",
    "PayloadReader",
    "PayloadRef",
    "Provenance",
    "Record",
    "Resources",
    "config_hash",
]
