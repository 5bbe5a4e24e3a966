"""A condition plugin for the two-node cluster test: a stage whose actors meet before working.

Ray Data hands a batch to whichever actor of a pool is alive and least busy. A cheap stage
on six small clips can therefore finish on the first actor before the second one (on the
other node) has started, and a check that "both nodes did work" would depend on timing.
Here every actor, on its first batch, records its arrival in a shared folder and waits until
``actors`` actors have arrived (or ``timeout_s`` passed), so the pool's first batches are
held until the whole pool is up; the summary says how long it waited and how many met.

The test registers it through an ``any2capins.conditions`` entry point written into a
temporary dist-info folder on the cluster's PYTHONPATH, the way any installed plugin is
found.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from any2capins.annotators.conditions import ConditionType


class Arrival(BaseModel):
    met: int = Field(ge=1, description="actors that had arrived when this one went on")
    waited_s: float = Field(ge=0)


class RendezvousConditionType(ConditionType[Arrival]):
    name: ClassVar[str] = "rendezvous"
    summary_model: ClassVar[type[BaseModel]] = Arrival
    description: ClassVar[str] = "test-only: the actors of the stage met before working"


class RendezvousConfig(AnnotatorConfig):
    directory: str = Field(description="a folder every node sees")
    actors: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=300.0, gt=0)


class RendezvousAnnotator(Annotator):
    name: ClassVar[str] = "rendezvous"
    Config: ClassVar[type[AnnotatorConfig]] = RendezvousConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=2, max_side=64)
    default_resources: ClassVar[Resources] = Resources(num_cpus=2, concurrency=2, batch_size=1)
    writes: ClassVar[tuple[str, ...]] = (RendezvousConditionType.output_key(),)

    config: RendezvousConfig

    def setup(self) -> None:
        self._met: int | None = None
        self._waited = 0.0

    def _meet(self) -> None:
        cfg = self.config
        os.makedirs(cfg.directory, exist_ok=True)
        with open(os.path.join(cfg.directory, f"actor-{os.getpid()}"), "w") as f:
            f.write(str(time.time()))
        started = time.monotonic()
        while True:
            met = len(os.listdir(cfg.directory))
            if met >= cfg.actors or time.monotonic() - started > cfg.timeout_s:
                break
            time.sleep(0.05)
        self._met, self._waited = met, round(time.monotonic() - started, 3)

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        if self._met is None:
            self._meet()
        assert self._met is not None
        summary = Arrival(met=self._met, waited_s=self._waited)
        return [RendezvousConditionType.to_output(summary) for _ in batch]


RendezvousConditionType.annotators = (RendezvousAnnotator,)
