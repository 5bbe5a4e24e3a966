"""Fit a recipe's actor pools to what Ray has, before any work starts.

Ray Data starts every stage's actor pool at once and never gives up waiting for an actor
whose resources never come: a recipe whose pools ask for more CPUs than the machine has
hangs without a message. So the build compares, before it starts anything, what every pool
asks for (per actor x concurrency) plus the task operators (probe, finalize) against what
the cluster has, and then

- on the embedded local Ray, scales the CPU (and GPU, memory) asks down so that every pool
  can be resident at once; Ray's resources are scheduling tokens, a fraction of a CPU is a
  share of the machine, not a limit on it;
- on a cluster (RAY_ADDRESS), or where one actor needs more GPUs than any node has, refuses
  with a message naming each stage's ask against what the cluster has.

:func:`fit_pools` is the arithmetic, testable without Ray; :func:`fit_to_ray` asks Ray.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from any2capins.pipeline.recipe import ResolvedRecipe

GiB = float(2**30)
UNIT = 1e-4  # Ray's resource precision
RESOURCES = (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory_gb", "GiB memory"))


class ResourceRefusal(RuntimeError):
    """The recipe's pools cannot all be placed on this Ray cluster; nothing was started."""


@dataclass(frozen=True)
class Pool:
    """What one operator asks Ray for: per actor (or task) resources times how many."""

    name: str
    num_cpus: float
    num_gpus: float = 0.0
    memory_gb: float = 0.0
    concurrency: int = 1
    task: bool = False  # a task operator (probe, finalize): one task at a time is enough

    def total(self, key: str) -> float:
        return float(getattr(self, key)) * self.concurrency

    def with_ask(self, key: str, value: float) -> Pool:
        asks = {k: float(getattr(self, k)) for k, _ in RESOURCES} | {key: value}
        return replace(
            self,
            num_cpus=asks["num_cpus"],
            num_gpus=asks["num_gpus"],
            memory_gb=asks["memory_gb"],
        )


@dataclass(frozen=True)
class Supply:
    """What the cluster has: totals over alive nodes, and the largest single node."""

    num_cpus: float
    num_gpus: float = 0.0
    memory_gb: float = 0.0
    # the largest alive node (None: the totals sit on one node)
    node_num_cpus: float | None = None
    node_num_gpus: float | None = None
    node_memory_gb: float | None = None

    def total(self, key: str) -> float:
        return float(getattr(self, key))

    def node(self, key: str) -> float:
        value = getattr(self, f"node_{key}")
        return self.total(key) if value is None else float(value)


@dataclass(frozen=True)
class ResourceFit:
    """The asked pools, the pools as they will run, and whether anything was scaled."""

    asked: tuple[Pool, ...]
    fitted: tuple[Pool, ...]
    supply: Supply
    where: str

    @property
    def scaled(self) -> bool:
        return self.asked != self.fitted

    def pool(self, name: str) -> Pool:
        return next(p for p in self.fitted if p.name == name)

    def report(self) -> dict[str, dict[str, float]]:
        """``{stage: {num_cpus_asked, num_cpus, ...}}`` for the run report."""
        out: dict[str, dict[str, float]] = {}
        for a, f in zip(self.asked, self.fitted, strict=True):
            entry = {"concurrency": float(a.concurrency)}
            for key, _ in RESOURCES:
                if getattr(a, key) or key == "num_cpus":
                    entry[f"{key}_asked"] = float(getattr(a, key))
                    entry[key] = float(getattr(f, key))
            out[a.name] = entry
        return out

    def line(self) -> str:
        """One line saying what was scaled; empty when everything fitted as asked."""
        if not self.scaled:
            return ""
        parts = []
        for key, unit in RESOURCES:
            asked = sum(p.total(key) for p in self.asked)
            if sum(p.total(key) for p in self.fitted) == asked:
                continue
            changes = ", ".join(
                f"{a.name} {_num(getattr(a, key))}->{_num(getattr(f, key))}"
                + (f" x{a.concurrency}" if a.concurrency > 1 else "")
                for a, f in zip(self.asked, self.fitted, strict=True)
                if getattr(a, key)
            )
            parts.append(
                f"{unit} asked {_num(asked)} > {_num(self.supply.total(key))} on {self.where}, "
                f"each {unit.split()[0]} ask scaled by "
                f"{_num(sum(p.total(key) for p in self.fitted) / asked)}: {changes}"
            )
        return "fitted the pools to the machine so all can start at once: " + "; ".join(parts)


def _num(x: float) -> str:
    return f"{x:.4g}"


def _floor(x: float) -> float:
    return math.floor(x / UNIT + 1e-6) * UNIT


def _scaled(asked: float, factor: float, key: str) -> float:
    if not asked:
        return 0.0
    value = max(UNIT, round(_floor(asked * factor), 4))
    if key == "num_gpus" and value > 1:
        value = float(math.floor(value))  # Ray wants whole GPUs above one
    return value


def fit_pools(
    asked: Sequence[Pool], supply: Supply, *, may_scale: bool, where: str = "the cluster"
) -> ResourceFit:
    """Pools that can all be resident on ``supply`` at once, or :class:`ResourceRefusal`.

    With ``may_scale`` (local Ray) every ask of a resource whose total exceeds the supply
    is multiplied by ``supply / total`` (floored to Ray's 0.0001 unit, kept above zero), so
    each pool keeps its share. A GPU ask that no node can meet is refused either way, and
    so is anything over the supply without ``may_scale``.
    """
    asked = tuple(asked)
    fitted = list(asked)
    refused: dict[str, list[str]] = {}  # resource -> why
    for key, unit in RESOURCES:
        total = sum(p.total(key) for p in asked)
        have, node = supply.total(key), supply.node(key)
        too_big = [p for p in asked if getattr(p, key) > node + 1e-9]
        if key == "num_gpus" and too_big:
            refused[key] = [
                f"one {p.name} actor needs {_num(p.num_gpus)} GPU, "
                f"the largest node has {_num(node)}"
                for p in too_big
            ]
            continue
        if total <= have + 1e-9 and not too_big:
            continue
        if not may_scale:
            refused[key] = []
            continue
        factor = min(1.0, have / total) if total else 1.0
        fitted = [p.with_ask(key, _scaled(getattr(p, key), factor, key)) for p in fitted]
        if sum(p.total(key) for p in fitted) > have + 1e-9:
            refused[key] = [
                f"{len(asked)} operators cannot share {_num(have)} {unit} even at "
                f"{UNIT} each; use fewer stages or less concurrency"
            ]
    if refused:
        lines: list[str] = []
        for key, unit in RESOURCES:
            if key not in refused:
                continue
            for p in asked:
                if getattr(p, key):
                    how = "per task" if p.task else f"{p.concurrency} x {_num(getattr(p, key))}"
                    lines.append(f"{p.name}: {how} = {_num(p.total(key))} {unit}")
            lines.append(
                f"total {_num(sum(p.total(key) for p in asked))} {unit} asked; {where} has "
                f"{_num(supply.total(key))} (largest node {_num(supply.node(key))})"
            )
            lines.extend(refused[key])
        raise ResourceRefusal(
            f"the recipe's actor pools do not fit on {where}; nothing was started:\n  "
            + "\n  ".join(lines)
            + "\n  lower the stages' resources (num_cpus, num_gpus, memory_gb, concurrency) "
            "or run where there is more"
        )
    return ResourceFit(asked, tuple(fitted), supply, where)


def demand(resolved: ResolvedRecipe) -> list[Pool]:
    """What a resolved recipe asks Ray for: the probe task, one pool per stage, finalize."""
    pools = [Pool("probe", resolved.task_cpus, task=True)]
    for spec in resolved.stages:
        res = spec.resources
        pools.append(
            Pool(
                spec.name,
                res.num_cpus,
                res.num_gpus,
                res.memory_gb or 0.0,
                res.concurrency,
            )
        )
    pools.append(Pool("finalize", resolved.task_cpus, task=True))
    return pools


def apply_fit(resolved: ResolvedRecipe, fit: ResourceFit) -> ResolvedRecipe:
    """The recipe with its stages' resources replaced by the fitted ones (hashes unchanged:
    resources decide placement, not outputs)."""
    stages = []
    for spec in resolved.stages:
        p = fit.pool(spec.name)
        res = spec.resources.model_copy(
            update={
                "num_cpus": p.num_cpus,
                "num_gpus": p.num_gpus,
                "memory_gb": p.memory_gb or None,
            }
        )
        stages.append(replace(spec, resources=res))
    return replace(resolved, stages=tuple(stages), task_cpus=fit.pool("probe").num_cpus)


def ray_supply(cluster: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> Supply:
    """A :class:`Supply` from ``ray.cluster_resources()`` and ``ray.nodes()``."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]

    def largest(key: str) -> float | None:
        return max((float(r.get(key, 0.0)) for r in alive), default=None)

    node_memory = largest("memory")
    return Supply(
        num_cpus=float(cluster.get("CPU", 0.0)),
        num_gpus=float(cluster.get("GPU", 0.0)),
        memory_gb=float(cluster.get("memory", 0.0)) / GiB,
        node_num_cpus=largest("CPU"),
        node_num_gpus=largest("GPU"),
        node_memory_gb=None if node_memory is None else node_memory / GiB,
    )


def fit_to_ray(resolved: ResolvedRecipe) -> tuple[ResolvedRecipe, ResourceFit]:
    """Start or join Ray, then fit (local) or check (cluster) the recipe's pools."""
    import ray

    from any2capins.pipeline.engine import ensure_ray

    ensure_ray()
    address = os.environ.get("RAY_ADDRESS")
    supply = ray_supply(
        ray.cluster_resources(),  # type: ignore[no-untyped-call]
        ray.nodes(),  # type: ignore[no-untyped-call]
    )
    fit = fit_pools(
        demand(resolved),
        supply,
        may_scale=not address,
        where=f"the Ray cluster at {address}" if address else "local Ray",
    )
    return apply_fit(resolved, fit), fit


__all__ = [
    "Pool",
    "ResourceFit",
    "ResourceRefusal",
    "Supply",
    "apply_fit",
    "demand",
    "fit_pools",
    "fit_to_ray",
    "ray_supply",
]
