"""The condition-type registry's guards, and payload discovery inside plugin summaries."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel

import any2capins.annotators.conditions as conditions
from any2capins.annotators import ClipStatsAnnotator
from any2capins.annotators.conditions import ConditionType, condition_types
from any2capins.annotators.depth import DepthConditionType
from any2capins.schemas import Conditions, PayloadRef, payload_refs


class Hijack(ConditionType[BaseModel]):
    """A plugin whose stage is named like a built-in stage."""

    name = "hijack"
    summary_model = BaseModel
    annotators = (type("Stats", (ClipStatsAnnotator,), {"name": "clip_stats"}),)


class Twin(ConditionType[BaseModel]):
    """A plugin whose stage is named like a built-in condition type's stage."""

    name = "twin"
    summary_model = BaseModel


class Dot(BaseModel):
    x: int


class DotType(ConditionType[Dot]):
    name = "dot"
    summary_model = Dot


def test_summary_of_gives_the_summary_or_names_the_mismatch() -> None:
    dot = Dot(x=1)
    assert DotType().summary_of(dot) is dot
    ref = PayloadRef(
        uri="file:///a.npz", media_type="application/octet-stream", bytes=0, sha256="0"
    )
    with pytest.raises(TypeError, match=r"^dot: expected Dot, got PayloadRef$"):
        DotType().summary_of(ref)
    # the built-ins' hooks go through it before touching the payload
    with pytest.raises(TypeError, match=r"^depth: expected DepthCondition, got PayloadRef$"):
        DepthConditionType().decode_payload(ref, lambda r: b"")


def _with_plugins(monkeypatch: pytest.MonkeyPatch, *extra: EntryPoint) -> None:
    real = conditions.entry_points(group=conditions.ENTRY_POINT_GROUP)
    monkeypatch.setattr(conditions, "entry_points", lambda group: [*real, *extra])
    condition_types.cache_clear()


def test_a_plugin_cannot_take_over_a_stage_name(monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = condition_types()
    Twin.annotators = builtin["depth"].annotators
    _with_plugins(
        monkeypatch,
        EntryPoint("hijack", f"{__name__}:Hijack", conditions.ENTRY_POINT_GROUP),
        EntryPoint("twin", f"{__name__}:Twin", conditions.ENTRY_POINT_GROUP),
    )
    try:
        with pytest.warns(RuntimeWarning) as caught:
            found = condition_types()
        messages = " ".join(str(w.message) for w in caught)
        assert "skipping condition plugin 'hijack'" in messages
        assert "'clip_stats' (by any2capins)" in messages
        assert "skipping condition plugin 'twin'" in messages
        assert "'depth' (by any2capins.annotators.depth:DepthConditionType)" in messages
        assert set(found) == set(builtin), "the built-ins stay, the plugins are skipped"
        from any2capins.annotators import all_annotators

        assert all_annotators()["clip_stats"] is ClipStatsAnnotator
    finally:
        condition_types.cache_clear()


def test_payload_refs_walk_plugin_summaries_in_extra() -> None:
    ref = PayloadRef(uri="file:///a/heat.png", media_type="image/png", bytes=3, sha256="0" * 64)
    other = ref.model_copy(update={"uri": "file:///a/energy.npz"})
    conds = Conditions(
        extra={
            "motion_energy": json.dumps(
                {"levels": ["low"], "payload": other.model_dump(), "maps": [ref.model_dump()]}
            ),
            "broken": "{not json",
        }
    )
    found = payload_refs(conds)
    assert found == [("motion_energy.payload", other), ("motion_energy.maps[0]", ref)]
    # a dict with more keys than a PayloadRef is walked, not taken for one
    assert payload_refs({"x": {**ref.model_dump(), "note": 1}}) == []
