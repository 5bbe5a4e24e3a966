"""Recipes: the validated description of a build (clip spans, readers, a list of stages).

A recipe is refused before any work starts when a key is unknown or a value has the wrong
type, and the error names the key (``stages[0].params.palete_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from annotators import Annotator, AnnotatorConfig, FrameSampling, Resources, config_hash


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


Reader = Literal["decord", "pyav"]


def _default_readers() -> list[Reader]:
    return ["decord", "pyav"]


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
        pruned = _resolve(self.recipe.model_copy(update={"stages": stages}), registry)
        return ResolvedRecipe(
            pruned.recipe,
            pruned.stages,
            pruned.recipe_hash,
            left_out={**self.left_out, **reasons},
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


def _resolve(recipe: Recipe, registry: Mapping[str, type[Annotator]]) -> ResolvedRecipe:
    problems: list[str] = []
    specs: list[StageSpec] = []
    hashes: dict[str, str] = {}
    for i, stage in enumerate(recipe.stages):
        where = f"stages[{i}]"
        cls = registry.get(stage.annotator)
        if cls is None:
            problems.append(
                f"{where}.annotator: unknown annotator {stage.annotator!r} "
                f"(known: {', '.join(sorted(registry))}; a condition plugin's stage needs its "
                "package installed, see docs/adding-a-condition-type.md)"
            )
            continue
        name = stage.name or stage.annotator
        if name in hashes:
            problems.append(f"{where}.name: duplicate stage name {name!r}")
            continue
        try:
            config = cls.Config.model_validate(stage.params)
        except ValidationError as e:
            problems.extend(_format_errors(e, f"{where}.params"))
            continue
        missing = [d for d in stage.depends_on if d not in hashes]
        if missing:
            problems.append(f"{where}.depends_on: {missing} are not earlier stages")
            continue
        sampling = stage.sampling or cls.default_sampling
        resources = stage.resources or cls.default_resources
        digest = stage_hash(
            cls, config, sampling, recipe.readers, {d: hashes[d] for d in stage.depends_on}
        )
        hashes[name] = digest
        specs.append(
            StageSpec(name, cls, config, sampling, resources, tuple(stage.depends_on), digest)
        )
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
    return ResolvedRecipe(recipe, tuple(specs), config_hash(recipe))
