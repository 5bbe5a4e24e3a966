"""The ``instances`` stage: which condition types a clip suits, the instances planned from
that, and one short prompt per instance.

Any2CapIns's unit is the instance: one clip, one condition type (plus the recipe's test
compositions) and a short prompt written for exactly that set, whose target is the clip's
one structured caption. Suitability is each condition type's own rule
(``ConditionType.suitability``) with the recipe's thresholds. Planning is deterministic:
instance ids are uuid5 of the clip and its condition set, and an optional share per set is
drawn from a hash of the id and the recipe's seed, so re-runs and other machines agree.
Each prompt request shares the clip's prefix (system prompt, facts, images) with the
caption's requests, so a provider's prompt cache makes an extra instance one short request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, field_validator

from any2capins.annotators.base import (
    PROVENANCE_KEY,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.annotators.captions.annotator import WriterStage
from any2capins.annotators.captions.config import SHORT_PROMPT, WriterConfig
from any2capins.annotators.captions.errors import CaptionInputError, InvalidCaption
from any2capins.annotators.captions.facts import ClipContext, build_context
from any2capins.annotators.captions.grounded import instance_prompt
from any2capins.annotators.captions.templates import rules_hash
from any2capins.annotators.captions.validate import part_problems
from any2capins.annotators.captions.writer import ClipResult
from any2capins.annotators.conditions import ConditionType, condition_types
from any2capins.schemas import Instance, Record, Suitability, make_instance_id


class InstancesConfig(WriterConfig):
    """Suitability thresholds, the instance plan, and the prompt writer (as for captions)."""

    suitability: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="condition type -> threshold overrides (keys: the type's default_thresholds)",
    )
    singles: bool = Field(default=True, description="one instance per suitable condition type")
    compositions: list[list[str]] = Field(
        default_factory=list,
        description="condition sets made into one instance when the clip suits every member "
        "(the paper's test compositions, e.g. [camera, depth])",
    )
    keep: dict[str, float] = Field(
        default_factory=dict,
        description="instance key ('depth', 'camera+depth') -> share of suitable clips that get "
        "it, drawn deterministically from the instance id and seed (default 1.0: all)",
    )
    seed: int = Field(default=0, description="seed of the keep draws")

    @field_validator("compositions")
    @classmethod
    def _compositions(cls, value: list[list[str]]) -> list[list[str]]:
        out: list[list[str]] = []
        for i, names in enumerate(value):
            unique = sorted(set(names))
            if len(unique) < 2:
                raise ValueError(f"compositions[{i}] needs two or more condition types: {names}")
            if unique not in out:
                out.append(unique)
        return out

    @field_validator("keep")
    @classmethod
    def _keep(cls, value: dict[str, float]) -> dict[str, float]:
        for key, share in value.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"keep[{key!r}] = {share} is not a share between 0 and 1")
        return {"+".join(sorted(key.split("+"))): share for key, share in value.items()}

    @field_validator("suitability")
    @classmethod
    def _thresholds(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        types = condition_types()
        for name, overrides in value.items():
            ctype = types.get(name)
            if ctype is None:
                raise ValueError(
                    f"suitability: unknown condition type {name!r} (known: {', '.join(sorted(types))})"
                )
            unknown = sorted(set(overrides) - set(ctype.default_thresholds))
            if unknown:
                known = ", ".join(sorted(ctype.default_thresholds)) or "none"
                raise ValueError(
                    f"suitability.{name}: unknown thresholds {unknown} (known: {known})"
                )
        return value


def judge_suitability(
    record: Record,
    types: Mapping[str, ConditionType[Any]],
    overrides: Mapping[str, Mapping[str, float]],
) -> dict[str, Suitability]:
    """Each condition the record has, judged by its type's rule and thresholds; a type whose
    stage ran and left no condition (identities found nobody) is unsuitable, said so."""
    out: dict[str, Suitability] = {}
    ran = {s.stage for s in record.provenance.stages}
    present = set(record.conditions.present())
    for name, registered in sorted(types.items()):
        stages = [a.name for a in registered.annotators if a.name in ran]
        if name not in present and stages:
            out[name] = Suitability(
                suitable=False,
                reason=f"the {stages[0]} stage ran and found no {name} condition in this clip",
            )
    for name in record.conditions.present():
        ctype = types.get(name)
        if ctype is None:
            raise CaptionInputError(
                f"the record has a {name!r} condition but no condition type {name!r} is "
                "registered (entry point group any2capins.conditions): cannot judge it"
            )
        summary = type(ctype).read(record)
        if summary is None:
            continue
        thresholds = {**ctype.default_thresholds, **overrides.get(name, {})}
        try:
            out[name] = ctype.suitability(summary, record, thresholds)
        except Exception as e:  # a plugin's bug is this clip's failure, named
            raise CaptionInputError(
                f"condition type {name!r} failed to judge suitability: {type(e).__name__}: {e}"
            ) from e
    return out


def _drawn(instance_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the instance id and the seed."""
    digest = hashlib.sha256(f"{seed}:{instance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def plan_instances(
    clip_id: str, suitability: Mapping[str, Suitability], config: InstancesConfig
) -> list[Instance]:
    """The clip's instances, without prompts: singles first (sorted), then compositions."""
    suitable = sorted(name for name, s in suitability.items() if s.suitable)
    sets: list[list[str]] = [[name] for name in suitable] if config.singles else []
    sets.extend(c for c in config.compositions if set(c) <= set(suitable))
    planned = []
    for names in sets:
        instance_id = make_instance_id(clip_id, names)
        share = config.keep.get("+".join(names), 1.0)
        if share < 1.0 and _drawn(instance_id, config.seed) >= share:
            continue
        planned.append(
            Instance(instance_id=instance_id, condition_types=names, composition=len(names) > 1)
        )
    return planned


# the templates an instance prompt request is made of
_TEMPLATES_USED = ("system", "context", SHORT_PROMPT, "condition_rules", "repair")


@dataclass
class _Plan:
    record: Record
    suitability: dict[str, Suitability]
    instances: list[Instance]
    contexts: list[ClipContext]  # one per instance, its prompt's rules
    result: ClipResult | None = None  # the model writer's prompts


class InstancesAnnotator(WriterStage):
    name: ClassVar[str] = "instances"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = InstancesConfig
    # Reads the record only; the engine still decodes what a stage declares: one tiny frame.
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=1, max_side=64)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25, batch_size=16, concurrency=1)
    writes: ClassVar[tuple[str, ...]] = (
        "suitability",
        "instances",
        "provenance.tokens_in",
        "provenance.tokens_out",
        "provenance.cost_usd",
    )

    config: InstancesConfig

    def prompt_hashes(self) -> dict[str, str]:
        if self.writer is None:
            return {}
        used = {f"{name}.{self.templates.version}" for name in _TEMPLATES_USED}
        return {k: v for k, v in self.templates.hashes().items() if k in used}

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        types = condition_types()
        plans: list[_Plan | BaseException] = []
        for item in batch:
            try:
                plans.append(self._plan(item.record, types))
            except Exception as e:  # noqa: BLE001 - a bad record fails only its clip
                plans.append(e)
        ready = [p for p in plans if isinstance(p, _Plan) and p.contexts]
        if self.writer is not None and ready:
            results = self.writer.write_prompts([p.contexts for p in ready])
            for plan, result in zip(ready, results, strict=True):
                plan.result = result
        return [p if isinstance(p, BaseException) else self._output(p) for p in plans]

    def _plan(self, record: Record, types: dict[str, ConditionType[Any]]) -> _Plan:
        cfg = self.config
        suitability = judge_suitability(record, types, cfg.suitability)
        instances = plan_instances(record.clip_id, suitability, cfg)
        contexts: list[ClipContext] = []
        if instances:
            ctx = build_context(record, types, cfg.images, self.writer is not None)
            contexts = [ctx.for_conditions(i.condition_types, types) for i in instances]
        return _Plan(record, suitability, instances, contexts)

    def _output(self, plan: _Plan) -> dict[str, Any] | BaseException:
        cfg = self.config
        details: dict[str, str] = {
            "writer": cfg.writer,
            "instances": ",".join(i.key for i in plan.instances) or "none",
            "unsuitable": ",".join(sorted(n for n, s in plan.suitability.items() if not s.suitable))
            or "none",
        }
        tokens_in = tokens_out = 0
        cost = 0.0
        prompts: list[str] = []
        if not plan.instances:
            details["note"] = "no condition type suits this clip: it makes no instance"
        elif plan.result is None:
            try:
                prompts = [self._grounded(c) for c in plan.contexts]
            except InvalidCaption as e:
                return e
        else:
            result = plan.result
            usage, cost, paid = result.totals()
            tokens_in, tokens_out = usage.tokens_in, usage.tokens_out
            if result.error is not None:
                return result.error
            assert self.writer is not None
            details.update(
                {
                    "model": cfg.model or "",
                    "endpoint": self.writer.client.endpoint,
                    "requests": str(len(result.answers)),
                    "cache_hits": str(sum(a.from_cache for a in result.answers)),
                    "repairs": str(result.repairs),
                    "paid_usd": f"{paid:.8f}",
                }
            )
            prompts = [result.texts[str(i)] for i in range(len(plan.instances))]
        if plan.contexts:
            details["rules_hashes"] = ",".join(rules_hash(c.rules()) for c in plan.contexts)
        instances = [
            i.model_copy(update={"short_prompt": p})
            for i, p in zip(plan.instances, prompts, strict=True)
        ]
        prov = plan.record.provenance
        return {
            "suitability": {n: s.model_dump(mode="json") for n, s in plan.suitability.items()},
            "instances": [i.model_dump(mode="json") for i in instances],
            "provenance.tokens_in": prov.tokens_in + tokens_in,
            "provenance.tokens_out": prov.tokens_out + tokens_out,
            "provenance.cost_usd": round(prov.cost_usd + cost, 8),
            PROVENANCE_KEY: details,
        }

    def _grounded(self, ctx: ClipContext) -> str:
        prompt = instance_prompt(ctx, self.config.grounded_bounds)
        problems = part_problems(SHORT_PROMPT, prompt, self.config.grounded_bounds, ctx.violations)
        if problems:
            given = "+".join(c.name for c in ctx.given_conditions)
            raise InvalidCaption(f"grounded writer, instance {given}: " + "; ".join(problems))
        return prompt


__all__ = ["InstancesAnnotator", "InstancesConfig", "judge_suitability", "plan_instances"]
