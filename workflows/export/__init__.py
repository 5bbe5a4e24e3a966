"""Export: reviewed records -> Parquet shards + manifest + dataset card, and the reader.

Every name is imported on first use (PEP 562), so ``from any2capins.workflows.export import
ShardDataset`` loads the reader and what it needs, not the writer's (card plots, review
store) dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from any2capins.schemas._lazy import lazy_exports

if TYPE_CHECKING:
    from any2capins.workflows.export.card import write_card
    from any2capins.workflows.export.reader import ShardDataset
    from any2capins.workflows.export.shards import (
        ExportError,
        ExportReport,
        Reviewed,
        export_shards,
        partition_of,
        verify_shards,
    )

_WHERE = {
    "ExportError": "any2capins.workflows.export.shards",
    "ExportReport": "any2capins.workflows.export.shards",
    "Reviewed": "any2capins.workflows.export.shards",
    "export_shards": "any2capins.workflows.export.shards",
    "partition_of": "any2capins.workflows.export.shards",
    "verify_shards": "any2capins.workflows.export.shards",
    "write_card": "any2capins.workflows.export.card",
    "ShardDataset": "any2capins.workflows.export.reader",
}


__getattr__, __dir__ = lazy_exports(globals(), _WHERE)

__all__ = [
    "ExportError",
    "ExportReport",
    "Reviewed",
    "ShardDataset",
    "export_shards",
    "partition_of",
    "verify_shards",
    "write_card",
]
