"""The condition-type contract and its registry.

A condition type (depth, pose, identities, camera, or a third party's) is one small class
that brings everything the rest of the system needs to know about it: the pydantic summary
stored in the record, the annotator(s) that extract it, how to decode its payload files, the
text facts it gives the caption writer, and what a short prompt must leave out when the
condition is given. Built-ins and plugins are found the same way, through the
``any2capins.conditions`` entry-point group, lazily and once; a plugin that fails to load
warns and is skipped. ``ANY2CAP_DISABLE_PLUGINS=1`` keeps only this package's own.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar, cast

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from any2capins.annotators.base import Annotator
from any2capins.schemas import Conditions, PayloadRef, Record, Suitability, arrow_type

ENTRY_POINT_GROUP = "any2capins.conditions"

PayloadReader = Callable[[PayloadRef], bytes]
_OWN_PACKAGES = ("any2capins",)

# covariant: a ConditionType[DepthCondition] is a ConditionType[BaseModel], so mixed
# registries type-check without Any
S_co = TypeVar("S_co", bound=BaseModel, covariant=True)


class ConditionType(Generic[S_co]):
    """Subclass as ``ConditionType[MySummary]``, set the class attributes (``summary_model``
    is ``MySummary``), override what the condition needs."""

    name: ClassVar[str]
    summary_model: ClassVar[type[BaseModel]]
    annotators: ClassVar[tuple[type[Annotator], ...]] = ()
    description: ClassVar[str] = ""
    # The limits :meth:`suitability` compares its measurements with; a recipe overrides
    # them per type (the ``instances`` stage's ``suitability`` params), never adds keys.
    default_thresholds: ClassVar[dict[str, float]] = {}

    # where the summary lives in the record
    @classmethod
    def builtin_field(cls) -> bool:
        return cls.name in Conditions.model_fields

    @classmethod
    def output_key(cls) -> str:
        """The record path an annotator of this type writes (``Annotator.writes``)."""
        return f"conditions.{cls.name}" if cls.builtin_field() else f"conditions.extra.{cls.name}"

    @classmethod
    def to_output(cls, summary: BaseModel) -> dict[str, Any]:
        """What an annotator returns for one clip: the summary under its record path."""
        if not isinstance(summary, cls.summary_model):
            raise TypeError(f"{cls.name}: expected {cls.summary_model.__name__}")
        return {cls.output_key(): summary if cls.builtin_field() else summary.model_dump_json()}

    @classmethod
    def read(cls, record: Record) -> BaseModel | None:
        """The condition's summary in a record, or None when the record has none."""
        return cls.from_conditions(record.conditions)

    @classmethod
    def from_conditions(cls, conditions: Conditions) -> BaseModel | None:
        if cls.builtin_field():
            value = getattr(conditions, cls.name)
            return value if value is None else cls.summary_model.model_validate(value.model_dump())
        raw = conditions.extra.get(cls.name)
        return None if raw is None else cls.summary_model.model_validate(json.loads(raw))

    @classmethod
    def arrow_type(cls) -> pa.DataType:
        return arrow_type(cls.summary_model)

    def summary_of(self, summary: BaseModel) -> S_co:
        """``summary`` typed as this condition's summary model; a TypeError when it is not one.

        The hooks below take any ``BaseModel`` because callers hold types by name; an
        override starts with ``s = self.summary_of(summary)``.
        """
        if not isinstance(summary, self.summary_model):
            raise TypeError(
                f"{self.name}: expected {self.summary_model.__name__}, got {type(summary).__name__}"
            )
        # ClassVar cannot hold S_co, so the runtime check above stands in for the static one
        return cast(S_co, summary)

    # what the rest of the system asks of a condition
    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """Arrays for training code and the review UI (e.g. depth frames, keypoints).

        ``read`` returns a payload file's bytes: from the artifact store, or from the bytes
        an export embedded in its shard; a decoder never opens URIs itself.
        """
        return {}

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        """Plain-text facts measured by this condition, given to the caption writer."""
        return []

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        """Instructions for the short-prompt writer (what the condition already shows)."""
        return []

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        """Rules broken by a short prompt that can be checked mechanically."""
        return []

    def suitability(
        self, summary: BaseModel, record: Record, thresholds: Mapping[str, float]
    ) -> Suitability:
        """Whether this clip makes a good instance of this condition type, with the values
        measured and the reason. ``thresholds`` is :attr:`default_thresholds` with the
        recipe's overrides. The default accepts every clip that has the condition."""
        return Suitability(
            suitable=True,
            reason=f"the clip has a {self.name} condition (no rule of its own)",
            thresholds=dict(thresholds),
        )


def _is_own(value: str) -> bool:
    return value.split(":", 1)[0].split(".", 1)[0] in _OWN_PACKAGES


@cache
def condition_types() -> dict[str, ConditionType[Any]]:
    """Every condition type registered through entry points, loaded once per process."""
    from any2capins.annotators import BUILTIN_ANNOTATORS

    disabled = os.environ.get("ANY2CAP_DISABLE_PLUGINS", "").lower() in ("1", "true", "yes")
    found: dict[str, ConditionType[Any]] = {}
    # stage name -> who registered it: a plugin may not take over another's stage
    stages = {name: "any2capins" for name in BUILTIN_ANNOTATORS}
    for ep in sorted(
        entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (not _is_own(e.value), e.name)
    ):
        if disabled and not _is_own(ep.value):
            continue
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, ConditionType)):
                raise TypeError(f"{ep.value} is not a ConditionType subclass")
            if cls.name != ep.name:
                raise ValueError(f"entry point {ep.name!r} names a condition called {cls.name!r}")
            if ep.name in found:
                raise ValueError(f"condition type {ep.name!r} is already registered")
            taken = [a.name for a in cls.annotators if a.name in stages]
            if taken:
                owners = ", ".join(f"{n!r} (by {stages[n]})" for n in taken)
                raise ValueError(f"its stage names are already registered: {owners}")
            found[ep.name] = cls()
            stages.update(dict.fromkeys((a.name for a in cls.annotators), ep.value))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not take the tool down
            warnings.warn(
                f"skipping condition plugin {ep.name!r} ({ep.value}): {type(e).__name__}: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
    return found


def condition_annotators() -> dict[str, type[Annotator]]:
    return {a.name: a for ct in condition_types().values() for a in ct.annotators}
