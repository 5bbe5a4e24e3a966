"""Recipes: the validated description of a build (clip spans, readers, a list of stages).

A recipe is refused before any work starts when a key is unknown or a value has the wrong
type, and the error names the key (``stages[0].params.palete_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from any2capins.annotators import Annotator, AnnotatorConfig, FrameSampling, Resources, config_hash
from any2capins.annotators.keyframes import (
    GRID_FIELD,
    GridConflict,
    sets_grid_by_hand,
    stage_sampling,
    with_grid,
)
from any2capins.pipeline.curation import CurationConfig, StageFilters, score_writers, stage_filters
from any2capins.schemas import FrameGrid


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names every offending key."""


class SpanConfig(BaseModel):
    """How a source video is cut into clips."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["whole", "fixed", "scenes"] = "whole"
    window_s: float | None = Field(default=None, gt=0, description="fixed: clip length")
    stride_s: float | None = Field(default=None, gt=0, description="fixed: step (default window)")
    min_len_s: float = Field(default=1.0, ge=0, description="shorter clips are failures")
    max_len_s: float | None = Field(default=None, gt=0, description="longer spans are split")
    scene_threshold: float = Field(default=27.0, gt=0, description="PySceneDetect ContentDetector")

    @model_validator(mode="after")
    def _fixed_needs_window(self) -> SpanConfig:
        if self.mode == "fixed" and self.window_s is None:
            raise ValueError("mode 'fixed' needs window_s")
        return self


Reader = Literal["pyav", "decord", "decord2", "torchcodec"]


def _default_readers() -> list[Reader]:
    # PyAV is the only reader that decoded every input of the odd-input corpus right
    # (docs/benchmarks.md, "Video decoders") at the same speed as the others; decord,
    # decord2 and torchcodec stay available by name in a recipe's `readers`.
    return ["pyav"]


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotator: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    sampling: FrameSampling | None = None
    resources: Resources | None = None
    depends_on: list[str] = Field(default_factory=list)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    spans: SpanConfig = Field(default_factory=SpanConfig)
    readers: list[Reader] = Field(default_factory=_default_readers)
    artifacts: str | None = Field(
        default=None, description="artifact store URI (default RUN_DIR/artifacts)"
    )
    stages: list[StageConfig] = Field(min_length=1)
    # One set of timestamps for every condition stage (depth, pose, identities, camera,
    # plugins): {fps: 8} or {num_frames: 49}, optionally size (longest side). None: each
    # stage samples by its own ``sampling``, as before.
    # (left out of the recipe's hash when None: grid-less recipes keep their hashes)
    frame_grid: FrameGrid | None = Field(default=None, exclude_if=lambda v: v is None)
    # Filters and near-duplicates. Not in any stage's hash: a new threshold re-decides from
    # the stored scores, nothing is scored again.
    curation: CurationConfig | None = None


@dataclass(frozen=True)
class StageSpec:
    """A stage ready to run: annotator class, validated config, sampling, resources, hash."""

    name: str
    annotator_cls: type[Annotator]
    config: AnnotatorConfig
    sampling: FrameSampling
    resources: Resources
    depends_on: tuple[str, ...]
    config_hash: str
    # curation rules decided right after this stage (pipeline.curation); not in the hash
    filters: StageFilters | None = None

    def build(self) -> Annotator:
        return self.annotator_cls(self.config)

    def preflight(self) -> None:
        """MissingDependency now for a package or model file the stage's workers would miss."""
        self.annotator_cls.preflight(self.config)


TASK_CPUS = 0.25  # what each probe / finalize task asks Ray for


@dataclass(frozen=True)
class ResolvedRecipe:
    recipe: Recipe
    stages: tuple[StageSpec, ...]
    recipe_hash: str
    # stages taken out before the run (stage -> why), e.g. a model that is not there
    left_out: dict[str, str] = field(default_factory=dict)
    # CPUs each probe / finalize task asks Ray for (lowered with the pools on a small machine)
    task_cpus: float = TASK_CPUS

    def without(self, reasons: Mapping[str, str]) -> ResolvedRecipe:
        """The recipe with the stages named in ``reasons`` (stage -> why) taken out.

        The remaining stages forget the left-out names in their ``depends_on``, and their
        hashes are derived again by the same rule as :func:`resolve_recipe`: a stage that
        read a left-out stage gets a new hash, so it runs again once that stage comes back.
        """
        unknown = sorted(set(reasons) - {s.name for s in self.stages})
        if unknown:
            raise RecipeError(f"cannot leave out {unknown}: not stages of {self.recipe.name!r}")
        if not reasons:
            return self
        keep = [
            (cfg, spec)
            for cfg, spec in zip(self.recipe.stages, self.stages, strict=True)
            if spec.name not in reasons
        ]
        if not keep:
            raise RecipeError(f"every stage of recipe {self.recipe.name!r} was left out")
        stages = [
            cfg.model_copy(update={"depends_on": [d for d in cfg.depends_on if d not in reasons]})
            for cfg, _ in keep
        ]
        registry = {cfg.annotator: spec.annotator_cls for cfg, spec in keep}
        curation, dropped_rules = _curation_without(
            self.recipe.curation,
            [spec.annotator_cls.writes for _, spec in keep],
            {s.name: s.annotator_cls.writes for s in self.stages if s.name in reasons},
        )
        pruned = _resolve(
            self.recipe.model_copy(update={"stages": stages, "curation": curation}), registry
        )
        return ResolvedRecipe(
            pruned.recipe,
            pruned.stages,
            pruned.recipe_hash,
            left_out={**self.left_out, **reasons, **dropped_rules},
            task_cpus=self.task_cpus,
        )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_errors(err: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        where = _loc(tuple(e["loc"]))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where)
        lines.append(f"{where}: {e['msg']}")
    return lines


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping at the top level")
    return data


def stage_hash(
    cls: type[Annotator],
    config: AnnotatorConfig,
    sampling: FrameSampling,
    readers: list[Reader],
    dependencies: Mapping[str, str],
) -> str:
    """A stage's outputs depend on its own settings and on those of the stages it reads."""
    return config_hash(cls.name, cls.version, config, sampling, readers, dict(dependencies))


def resolve_recipe(
    data: Mapping[str, Any], registry: Mapping[str, type[Annotator]]
) -> ResolvedRecipe:
    """Validate a recipe and every stage's params against its annotator's Config."""
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as e:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(_format_errors(e))) from e
    return _resolve(recipe, registry)


def _curation_without(
    curation: CurationConfig | None,
    writes: list[tuple[str, ...]],
    left_out: Mapping[str, tuple[str, ...]],
) -> tuple[CurationConfig | None, dict[str, str]]:
    """The curation block without the rules (and dedup) whose writing stage was left out
    (``left_out``: stage -> what it writes); each rule taken out is named in ``left_out``
    of the report, with its stage, so the report says it was not applied."""
    if curation is None:
        return None, {}

    def gone(score: str) -> str:
        return ", ".join(n for n, w in left_out.items() if score_writers([w], score)) or "none"

    dropped: dict[str, str] = {}
    keep = {}
    for score, condition in curation.keep.items():
        if score_writers(writes, score):
            keep[score] = condition
        else:
            dropped[f"curation.keep.{score}"] = (
                f"not applied: its scoring stage ({gone(score)}) is left out"
            )
    dedup = curation.dedup
    if dedup is not None and dedup.enabled and not any("phashes" in w for w in writes):
        dedup = None
        hashers = ", ".join(n for n, w in left_out.items() if "phashes" in w) or "none"
        dropped["curation.dedup"] = f"not applied: the hash stage ({hashers}) is left out"
    return curation.model_copy(update={"keep": keep, "dedup": dedup}), dropped


def _check_dedup(recipe: Recipe, specs: list[StageSpec]) -> list[str]:
    dedup = recipe.curation.dedup if recipe.curation else None
    if dedup is None or not dedup.enabled:
        return []
    hashers = [s.name for s in specs if "phashes" in s.annotator_cls.writes]
    if dedup.stage is not None and dedup.stage not in hashers:
        return [f"curation.dedup.stage: {dedup.stage!r} is not a stage that writes phashes"]
    if dedup.stage is None and len(hashers) != 1:
        return [
            "curation.dedup: "
            + (
                "no stage writes phashes (add `- annotator: dedup_hash` before the "
                "expensive stages)"
                if not hashers
                else f"stages {hashers} all write phashes; name one in curation.dedup.stage"
            )
        ]
    return []


def _resolve(recipe: Recipe, registry: Mapping[str, type[Annotator]]) -> ResolvedRecipe:
    problems: list[str] = []
    specs: list[StageSpec] = []
    hashes: dict[str, str] = {}
    # Every earlier stage name, including stages whose own validation failed: a later
    # stage's depends_on on one of those is not an error of its own (reporting it would
    # only repeat the first error as noise); a name no earlier stage has still is.
    declared: set[str] = set()
    for i, stage in enumerate(recipe.stages):
        where = f"stages[{i}]"
        name = stage.name or stage.annotator
        missing = [d for d in stage.depends_on if d not in declared]
        if name in declared:
            problems.append(f"{where}.name: duplicate stage name {name!r}")
            continue
        declared.add(name)
        cls = registry.get(stage.annotator)
        if cls is None:
            problems.append(
                f"{where}.annotator: unknown annotator {stage.annotator!r} "
                f"(known: {', '.join(sorted(registry))}; a condition plugin's stage needs its "
                "package installed, see docs/adding-a-condition-type.md)"
            )
        config: AnnotatorConfig | None = None
        if cls is not None and sets_grid_by_hand(stage.params):
            problems.append(
                f"{where}.params.{GRID_FIELD}: set frame_grid at the top of the recipe "
                "(it applies to every condition stage)"
            )
        elif cls is not None:
            try:
                config = with_grid(cls.Config.model_validate(stage.params), recipe.frame_grid)
            except ValidationError as e:
                problems.extend(_format_errors(e, f"{where}.params"))
        sampling: FrameSampling | None = None
        if cls is not None:
            try:
                sampling = stage_sampling(cls, stage.sampling, recipe.frame_grid)
            except GridConflict as e:
                problems.extend(f"{where}.sampling.{f}: {e.reason}" for f in e.fields)
        if missing:
            problems.append(f"{where}.depends_on: {missing} are not earlier stages")
        if cls is None or config is None or sampling is None or missing:
            continue  # reported above
        if any(d not in hashes for d in stage.depends_on):
            continue  # an earlier stage it reads is invalid: that stage's error is reported
        resources = stage.resources or cls.default_resources
        digest = stage_hash(
            cls, config, sampling, recipe.readers, {d: hashes[d] for d in stage.depends_on}
        )
        hashes[name] = digest
        specs.append(
            StageSpec(name, cls, config, sampling, resources, tuple(stage.depends_on), digest)
        )
    if not problems:
        filters, curation_problems = stage_filters(
            recipe.curation, [s.annotator_cls.writes for s in specs]
        )
        problems += curation_problems + _check_dedup(recipe, specs)
        specs = [replace(s, filters=f) for s, f in zip(specs, filters, strict=True)]
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
    return ResolvedRecipe(recipe, tuple(specs), config_hash(recipe))
