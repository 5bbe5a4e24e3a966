"""What one shard format brings to the shared export and verify code."""

from __future__ import annotations

import posixpath
from typing import Any, ClassVar

from any2capins.pipeline.storage import Storage
from any2capins.schemas import PayloadRef, ShardRow

FORMATS: tuple[str, ...] = ("parquet", "sft", "webdataset", "control")


class ShardFormat:
    """One shard format. The export code owns the protocol (temporary name, rename, then
    the manifest lists the shard); a format turns rows into one shard's bytes."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # of the shard files: what the orphan sweep and verify look for
    # whether the rows need their payload bytes (``--reference-payloads`` refused otherwise)
    needs_payloads: ClassVar[bool] = True
    # whether ``encode`` may run on a writer thread while ``prepare`` checks the next rows
    # (one shard at a time, in order): only for a format whose methods share no state
    encode_in_background: ClassVar[bool] = False

    def prepare(self, row: ShardRow) -> None:
        """Check one row before it is queued (and cache what is costly to make), raising
        ValueError or OSError when its instance cannot go out in this format: it is then
        listed as incomplete, like a record whose payload cannot be read."""

    def encode(self, rows: list[ShardRow], storage: Storage, entry: dict[str, Any]) -> bytes:
        """The shard's bytes for ROWS (already sorted). May first write side files (media)
        through ``storage.write_atomic`` and add keys to the manifest ENTRY."""
        raise NotImplementedError

    def instance_ids(self, storage: Storage, rel: str) -> list[str]:
        """The instance ids a listed shard holds (for incremental re-export)."""
        raise NotImplementedError

    def check(
        self, data: bytes, shard: dict[str, Any], storage: Storage
    ) -> tuple[list[str], list[str]]:
        """(problems, instance ids) of a shard whose bytes matched the manifest's sha256."""
        raise NotImplementedError

    def finish(self, storage: Storage, manifest: dict[str, Any]) -> None:
        """Called once an export has listed its shards (e.g. to write dataset_info.json)."""


def payload_bytes(row: ShardRow, ref: PayloadRef) -> bytes:
    """The embedded bytes of one of the row's payloads."""
    try:
        return row.payloads[ref.uri]
    except KeyError:
        raise KeyError(f"payload {ref.uri} is not embedded in the row") from None


def extension(ref: PayloadRef) -> str:
    """The payload's file extension with its dot (``.mp4``), from its URI."""
    ext = posixpath.splitext(ref.uri.rsplit("?", 1)[0])[1].lower()
    return ext if ext and len(ext) <= 8 and ext[1:].isalnum() else ".bin"
