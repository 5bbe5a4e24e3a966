from __future__ import annotations

from pathlib import Path

import pytest

from any2capins.pipeline.recipe import RecipeError
from any2capins.workflows.recipes import load_recipe, shipped_recipes


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_demo_recipe_resolves() -> None:
    assert "demo" in shipped_recipes()
    resolved = load_recipe("demo")
    assert [s.name for s in resolved.stages] == ["clip_stats", "keyframes", "captions"]
    assert len({s.config_hash for s in resolved.stages}) == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "name: x\nstages: [{annotator: clip_stats, params: {palete_size: 3}}]\n",
            "stages[0].params.palete_size",
        ),
        (
            "name: x\nstages: [{annotator: clip_stats, params: {palette_size: many}}]\n",
            "stages[0].params.palette_size",
        ),
        ("name: x\nstagez: []\nstages: [{annotator: clip_stats}]\n", "stagez"),
        ("name: x\nstages: [{annotator: nope}]\n", "unknown annotator 'nope'"),
        ("name: x\nspans: {mode: fixed}\nstages: [{annotator: clip_stats}]\n", "window_s"),
        (
            "name: x\nstages: [{annotator: clip_stats, resources: {num_gpu: 1}}]\n",
            "stages[0].resources.num_gpu",
        ),
        (
            "name: x\nstages: [{annotator: clip_stats, sampling: {num_frames: 0}}]\n",
            "stages[0].sampling.num_frames",
        ),
        ("name: x\nstages: [{annotator: keyframes, depends_on: [clip_stats]}]\n", "depends_on"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, text))
    assert needle in str(info.value)


def test_unknown_recipe_name() -> None:
    with pytest.raises(RecipeError, match="unknown recipe 'nosuch'"):
        load_recipe("nosuch")


def test_changing_one_stage_changes_only_its_hash(tmp_path: Path) -> None:
    base = "name: x\nstages:\n  - annotator: clip_stats\n    params: {palette_size: %d}\n  - annotator: keyframes\n"
    a = load_recipe(_write(tmp_path, base % 5))
    b = load_recipe(_write(tmp_path, base % 3))
    assert a.stages[0].config_hash != b.stages[0].config_hash
    assert a.stages[1].config_hash == b.stages[1].config_hash


def test_dependent_stage_hash_follows_its_dependency(tmp_path: Path) -> None:
    base = (
        "name: x\nstages:\n  - annotator: clip_stats\n    params: {palette_size: %d}\n"
        "  - annotator: keyframes\n    depends_on: [clip_stats]\n"
    )
    a = load_recipe(_write(tmp_path, base % 5))
    b = load_recipe(_write(tmp_path, base % 3))
    assert a.stages[1].config_hash != b.stages[1].config_hash
