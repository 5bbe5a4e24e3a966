"""Export: reviewed records -> Parquet shards + manifest + dataset card, and the reader.

Every name is imported on first use (PEP 562), so ``from workflows.export import
ShardDataset`` loads the reader and what it needs, not the writer's (card plots, review
store) dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas._lazy import lazy_exports

if TYPE_CHECKING:
    from workflows.export.card import write_card
    from workflows.export.reader import ShardDataset
    from workflows.export.shards import (
        ExportError,
        ExportReport,
        Reviewed,
        export_shards,
        partition_of,
        verify_shards,
    )

_WHERE = {
    "ExportError": "workflows.export.shards",
    "ExportReport": "workflows.export.shards",
    "Reviewed": "workflows.export.shards",
    "export_shards": "workflows.export.shards",
    "partition_of": "workflows.export.shards",
    "verify_shards": "workflows.export.shards",
    "write_card": "workflows.export.card",
    "ShardDataset": "workflows.export.reader",
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
