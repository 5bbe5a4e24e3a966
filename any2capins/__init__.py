"""any2capins: build Any2CapIns-style datasets for controllable video generation.

One import surface for users and plugin authors:

- ``from any2capins import ShardDataset`` reads exported shards; with the core install alone
  (pydantic, pyarrow, numpy, fsspec) nothing heavier is imported.
- ``from any2capins.plugins import ConditionType, Annotator, ...`` is what a condition-type
  plugin needs (see docs/adding-a-condition-type.md).
- The repository's top-level folders are the subpackages ``any2capins.schemas``,
  ``any2capins.annotators``, ``any2capins.pipeline`` and ``any2capins.workflows``; they are
  not installed under their bare names, which belong to other distributions on PyPI (see
  docs/architecture.md, "One import namespace").

Names are loaded on first use, so ``import any2capins`` stays cheap.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("any2capins")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "ShardDataset": "any2capins.workflows.export.reader",
    "Record": "any2capins.schemas",
    "Instance": "any2capins.schemas",
    "CAPTION_COMPONENTS": "any2capins.schemas",
    "SCHEMA_VERSION": "any2capins.schemas",
}

if TYPE_CHECKING:
    from any2capins.schemas import CAPTION_COMPONENTS, SCHEMA_VERSION, Instance, Record
    from any2capins.workflows.export.reader import ShardDataset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'any2capins' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CAPTION_COMPONENTS",
    "SCHEMA_VERSION",
    "Instance",
    "Record",
    "ShardDataset",
    "__version__",
]
