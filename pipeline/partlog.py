"""An append-only keyed log stored as part files: how run state scales past one file per clip.

A :class:`PartLog` is a folder of part files. Each writer (a stage actor's batch, a probe
task, the finalizer's batch) appends a whole part in one atomic write, so a kill leaves every
part whole or absent, and a reader never needs a lock. A part holds one entry per line::

    <key>\\t<value JSON>

The key (a clip id, a source key) comes before the JSON so that loading a log only splits
lines; the JSON of an entry is parsed when that entry is used. Parts are named
``part-<time_ns>-<uuid>.tsv`` so that name order is write order, and a later entry for a key
replaces an earlier one.

Compaction folds many parts into one ``part-<newest time_ns>-<uuid>.c.tsv`` (written
atomically first, the folded parts deleted after). A kill between the two leaves both: every
folded part sorts at or before the compacted one and holds the same or an older value for
its keys, so the log reads the same at every instant of a compaction.

``legacy_suffix`` lets a log also read the one-file-per-key layout of earlier versions
(``stages/<stage>/<clip_id>.json``): such a file is an entry keyed by its stem, older than
any part, and compaction folds it in like a part (the migration).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from any2capins.pipeline.storage import Storage

PART_PREFIX = "part-"
PART_SUFFIX = ".tsv"
# Fold a log once it has this many parts: a re-run then reads a handful of files, and a
# log that is never compacted (a build killed every time) still reads correctly.
COMPACT_AT = 16


def _part_name(compacted: bool = False, seq: int | None = None) -> str:
    seq = time.time_ns() if seq is None else seq
    return (
        f"{PART_PREFIX}{seq:020d}-{uuid.uuid4().hex[:12]}{'.c' if compacted else ''}{PART_SUFFIX}"
    )


def _seq(name: str) -> int:
    return int(name[len(PART_PREFIX) :].split("-", 1)[0])


class PartLog:
    """A keyed log in ``storage`` under ``folder`` (see the module docstring)."""

    def __init__(self, storage: Storage, folder: str, legacy_suffix: str | None = None) -> None:
        self.storage = storage
        self.folder = folder.rstrip("/")
        self.legacy_suffix = legacy_suffix

    def append(self, entries: dict[str, str]) -> str | None:
        """Write one part with ``entries`` (key -> value JSON); returns its name."""
        if not entries:
            return None
        for key in entries:
            if "\t" in key or "\n" in key:
                raise ValueError(f"a log key holds no tab or newline: {key!r}")
        body = "".join(f"{k}\t{v.replace(chr(10), ' ')}\n" for k, v in entries.items())
        name = _part_name()
        self.storage.write_atomic(f"{self.folder}/{name}", body.encode())
        return name

    def files(self) -> tuple[list[str], list[str]]:
        """(legacy files, parts in write order) currently in the folder."""
        legacy: list[str] = []
        parts: list[str] = []
        for name in self.storage.list(self.folder):
            if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
                parts.append(name)
            elif self.legacy_suffix and name.endswith(self.legacy_suffix):
                legacy.append(name)
        parts.sort(key=lambda n: (_seq(n), n))
        return legacy, parts

    def _read_part(self, name: str) -> Iterator[tuple[str, str]]:
        for line in self.storage.read(f"{self.folder}/{name}").decode().splitlines():
            key, sep, value = line.partition("\t")
            if sep:
                yield key, value

    def load(self) -> dict[str, str]:
        """Every key's latest value JSON, reading each file once."""
        legacy, parts = self.files()
        out: dict[str, str] = {}
        suffix = self.legacy_suffix or ""
        for name in legacy:
            try:
                out[name[: -len(suffix)]] = self.storage.read(f"{self.folder}/{name}").decode()
            except FileNotFoundError:  # folded by a compaction since the listing
                continue
        for name in parts:
            try:
                out.update(self._read_part(name))
            except FileNotFoundError:
                # Folded since the listing: its entries are in a compacted part. Only the
                # driver compacts, while no build writes, so this is a reader outside builds.
                return self.load()
        return out

    def compact(self, min_files: int = COMPACT_AT) -> bool:
        """Fold every file into one part when there are at least ``min_files``, or when
        any is a legacy file (migrating the earlier layout costs one build one rewrite).

        Only one process may compact a log at a time (the build's driver, holding the run
        directory); appends meanwhile are not allowed either. Returns whether it folded.
        """
        legacy, parts = self.files()
        if not legacy and (len(parts) < min_files or len(parts) <= 1):
            return False
        merged = self.load()
        seq = _seq(parts[-1]) if parts else time.time_ns()
        body = "".join(f"{k}\t{v.replace(chr(10), ' ')}\n" for k, v in merged.items())
        self.storage.write_atomic(f"{self.folder}/{_part_name(True, seq)}", body.encode())
        # Oldest first, so a kill midway leaves a suffix of the folded files: still older
        # than (or equal to) the compacted part.
        for name in legacy + parts:
            self.storage.delete(f"{self.folder}/{name}")
        return True
