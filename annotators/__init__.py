"""Per-clip logic: frames in, condition / statistics / caption out. No Ray here."""

from annotators.base import (
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
from annotators.captions import CaptionsAnnotator
from annotators.captions.instances import InstancesAnnotator
from annotators.clip_stats import ClipStatsAnnotator
from annotators.curation import CURATION_ANNOTATORS
from annotators.dedup_hash import DedupHashAnnotator
from annotators.keyframes import KeyframesAnnotator

BUILTIN_ANNOTATORS: dict[str, type[Annotator]] = {
    cls.name: cls
    for cls in (
        ClipStatsAnnotator,
        KeyframesAnnotator,
        CaptionsAnnotator,
        InstancesAnnotator,
        DedupHashAnnotator,
    )
} | {cls.name: cls for cls in CURATION_ANNOTATORS}


def all_annotators() -> dict[str, type[Annotator]]:
    """Built-in stages plus those of every registered condition type (plugins included)."""
    from annotators.conditions import condition_annotators

    return {**BUILTIN_ANNOTATORS, **condition_annotators()}


__all__ = [
    "BUILTIN_ANNOTATORS",
    "PROVENANCE_KEY",
    "Annotator",
    "AnnotatorConfig",
    "ArtifactSink",
    "ClipInput",
    "ClipStatsAnnotator",
    "FrameSampling",
    "InstancesAnnotator",
    "KeyframesAnnotator",
    "MissingDependency",
    "Resources",
    "all_annotators",
    "config_hash",
]
