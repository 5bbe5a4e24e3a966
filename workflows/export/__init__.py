"""Export: reviewed records -> Parquet shards + manifest + dataset card, and the reader."""

from workflows.export.card import write_card
from workflows.export.shards import (
    ExportError,
    ExportReport,
    Reviewed,
    export_shards,
    partition_of,
    verify_shards,
)


def __getattr__(name: str) -> object:
    # The reader imports torch; load it only for the training code that asks for it.
    if name == "ShardDataset":
        from workflows.export.reader import ShardDataset

        return ShardDataset
    raise AttributeError(name)


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
