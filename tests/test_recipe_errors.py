"""Recipe errors name the real mistake, not the errors it causes further down the list."""

from __future__ import annotations

from pathlib import Path

import pytest

from any2capins.pipeline.recipe import RecipeError
from any2capins.workflows.recipes import load_recipe


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    first, *rest = str(info.value).splitlines()
    assert first == "invalid recipe:"
    return [line.strip() for line in rest]


def test_typo_in_a_depended_on_stage_reports_only_the_typo(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: typo
stages:
  - annotator: clip_stats
    params: {palete_size: 5}
  - annotator: keyframes
  - annotator: captions
    depends_on: [clip_stats, keyframes]
""",
    )
    assert len(problems) == 1, problems
    assert problems[0].startswith("stages[0].params.palete_size:")
    assert not any("depends_on" in p for p in problems)


def test_errors_do_not_cascade_through_a_chain(tmp_path: Path) -> None:
    """A stage that reads an invalid stage is itself skipped quietly, and so is the next one."""
    problems = problems_of(
        tmp_path,
        """
name: chain
stages:
  - annotator: clip_stats
    name: stats
    params: {palete_size: 5}
  - annotator: keyframes
    depends_on: [stats]
  - annotator: captions
    depends_on: [keyframes]
""",
    )
    assert problems == [p for p in problems if p.startswith("stages[0].params.palete_size:")]
    assert len(problems) == 1


def test_unknown_annotator_stage_still_counts_as_declared(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: plugin
stages:
  - annotator: not_installed
    name: extra
  - annotator: captions
    depends_on: [extra]
""",
    )
    assert len(problems) == 1 and problems[0].startswith("stages[0].annotator: unknown")


def test_truly_missing_dependency_is_still_an_error(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: missing
stages:
  - annotator: clip_stats
    params: {palete_size: 5}
  - annotator: captions
    depends_on: [clip_stats, keyfrmes]
""",
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith("stages[0].params.palete_size:")
    assert problems[1] == "stages[1].depends_on: ['keyfrmes'] are not earlier stages"


def test_dependency_on_a_later_stage_is_still_an_error(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: order
stages:
  - annotator: captions
    depends_on: [keyframes]
  - annotator: keyframes
""",
    )
    assert problems == ["stages[0].depends_on: ['keyframes'] are not earlier stages"]


def test_a_stage_with_both_errors_reports_both(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: both
stages:
  - annotator: keyframes
    params: {jpeg_qualty: 90}
    depends_on: [nowhere]
""",
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith("stages[0].params.jpeg_qualty:")
    assert problems[1] == "stages[0].depends_on: ['nowhere'] are not earlier stages"


def test_duplicate_name_of_an_invalid_stage_is_reported(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
name: dup
stages:
  - annotator: clip_stats
    params: {palete_size: 5}
  - annotator: clip_stats
""",
    )
    assert problems[-1] == "stages[1].name: duplicate stage name 'clip_stats'"
    assert len(problems) == 2


def test_valid_recipe_still_resolves(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        """
name: ok
stages:
  - annotator: clip_stats
    params: {palette_size: 5}
  - annotator: keyframes
  - annotator: captions
    depends_on: [clip_stats, keyframes]
"""
    )
    resolved = load_recipe(str(path))
    assert [s.name for s in resolved.stages] == ["clip_stats", "keyframes", "captions"]
    assert resolved.stages[2].depends_on == ("clip_stats", "keyframes")
