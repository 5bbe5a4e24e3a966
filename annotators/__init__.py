"""Per-clip logic: frames in, condition / statistics / caption out. No Ray here.

The base classes are imported here; the built-in stages (which bring in OpenCV, PyAV,
openai, ...) only when first asked for (PEP 562), so that ``any2capins.annotators.base`` and
``any2capins.annotators.conditions`` stay importable with the core install alone.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from any2capins.annotators.captions import CaptionsAnnotator
    from any2capins.annotators.captions.instances import InstancesAnnotator
    from any2capins.annotators.clip_stats import ClipStatsAnnotator
    from any2capins.annotators.keyframes import KeyframesAnnotator

    BUILTIN_ANNOTATORS: dict[str, type[Annotator]]

_WHERE = {
    "CaptionsAnnotator": "any2capins.annotators.captions",
    "InstancesAnnotator": "any2capins.annotators.captions.instances",
    "ClipStatsAnnotator": "any2capins.annotators.clip_stats",
    "KeyframesAnnotator": "any2capins.annotators.keyframes",
}


@functools.cache
def _builtin_annotators() -> dict[str, type[Annotator]]:
    from any2capins.annotators.captions import CaptionsAnnotator
    from any2capins.annotators.captions.instances import InstancesAnnotator
    from any2capins.annotators.clip_stats import ClipStatsAnnotator
    from any2capins.annotators.curation import CURATION_ANNOTATORS
    from any2capins.annotators.dedup_hash import DedupHashAnnotator
    from any2capins.annotators.keyframes import KeyframesAnnotator

    return {
        cls.name: cls
        for cls in (
            ClipStatsAnnotator,
            KeyframesAnnotator,
            CaptionsAnnotator,
            InstancesAnnotator,
            DedupHashAnnotator,
        )
    } | {cls.name: cls for cls in CURATION_ANNOTATORS}


def __getattr__(name: str) -> object:
    if name == "BUILTIN_ANNOTATORS":
        value: object = _builtin_annotators()
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, "BUILTIN_ANNOTATORS"])


def all_annotators() -> dict[str, type[Annotator]]:
    """Built-in stages plus those of every registered condition type (plugins included)."""
    from any2capins.annotators.conditions import condition_annotators

    return {**_builtin_annotators(), **condition_annotators()}


__all__ = [
    "BUILTIN_ANNOTATORS",
    "PROVENANCE_KEY",
    "Annotator",
    "AnnotatorConfig",
    "ArtifactSink",
    "CaptionsAnnotator",
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
