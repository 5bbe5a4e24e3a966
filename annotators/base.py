"""The annotator contract: a small class that loads its models once and turns a batch of
clips (frames in) into a batch of record updates (condition, statistics, caption out).

Annotators know nothing of Ray, run directories or storage: the engine hands them frames
and an :class:`ArtifactSink` for payload files, and catches what they raise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from any2capins.schemas import ClipRef, ModelInfo, PayloadRef, Record

PROVENANCE_KEY = "_provenance"


class MissingDependency(RuntimeError):
    """A package or model file an annotator needs is not there; raised when it is built."""


class FrameSampling(BaseModel):
    """Which frames of a clip an annotator wants to see."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(default=16, ge=1, description="N frames uniformly over the span")
    fps: float | None = Field(default=None, gt=0, description="or frames at this rate (capped)")
    max_frames: int = Field(default=256, ge=1)
    max_side: int = Field(default=512, ge=16)


class Resources(BaseModel):
    """What one actor of a stage needs; the engine decides placement."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_gb: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=4, ge=1)
    concurrency: int = Field(default=1, ge=1, description="actors in the pool")


class AnnotatorConfig(BaseModel):
    """Base of every annotator's parameters: unknown keys are refused, naming the key."""

    model_config = ConfigDict(extra="forbid")


class ArtifactSink(Protocol):
    """Where an annotator puts the payload files of the clip it is working on."""

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef: ...


@dataclass
class ClipInput:
    """One clip as an annotator sees it."""

    clip: ClipRef
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, display orientation
    timestamps_s: list[float]  # seconds from the start of the source file
    record: Record  # what earlier stages produced
    artifacts: ArtifactSink


class Annotator(ABC):
    """Subclasses set ``name``, ``Config`` and override :meth:`setup` and :meth:`__call__`.

    ``__call__`` returns one item per input clip, in order: either a dict of record fields to
    set (e.g. ``{"stats": ClipStats(...)}``, dotted paths such as ``"conditions.depth"`` for
    nested fields) or an exception instance for a clip that failed; raising fails the whole
    batch, and the engine then retries the clips one at a time. The optional key
    ``PROVENANCE_KEY`` maps to a ``dict[str, str]`` of per-clip details for the stage's
    provenance entry (e.g. which caption writer produced the text).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = AnnotatorConfig
    requires: ClassVar[tuple[str, ...]] = ()
    default_sampling: ClassVar[FrameSampling] = FrameSampling()
    default_resources: ClassVar[Resources] = Resources()
    # Record fields the annotator writes; the engine copies only these from its output.
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: AnnotatorConfig | None = None) -> None:
        self.check_requires()
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name}: expected {self.Config.__name__}")
        self.setup()

    @classmethod
    def check_requires(cls) -> None:
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependency(
                f"annotator {cls.name!r} needs the Python package(s) {', '.join(missing)}; "
                "install them (pip install ...) or drop the stage from the recipe"
            )

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        """Raise MissingDependency for what the stage's workers would miss, before any work.

        Runs once in the driver of ``any2cap build``. The default builds the annotator,
        which is cheap for stages without models. Stages that load models override it to
        check that their packages and model files are there without loading them. They
        skip the device checks, which only a worker can answer: a driver without a GPU may
        run stages on GPU workers.
        """
        cls(config)

    def setup(self) -> None:  # noqa: B027 - optional hook, most annotators need no models
        """Load models once per actor; raise MissingDependency for a missing model file."""

    def models(self) -> list[ModelInfo]:
        """Models this annotator runs (ids, versions, licences), recorded in provenance."""
        return []

    def prompt_hashes(self) -> dict[str, str]:
        """Hashes of the prompt templates it uses, recorded in provenance."""
        return {}

    @abstractmethod
    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]: ...


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (pydantic models are dumped first)."""
    norm = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
