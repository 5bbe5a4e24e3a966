"""Sources: turn the user's ``--input`` into a list of (uri, optional span) items.

``--input`` is a local folder, a manifest (CSV / Parquet / JSONL with a ``uri`` column and
optional ``start``/``end`` seconds), a single video, or an fsspec URI / glob of either.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")


class SourceError(ValueError):
    """The input itself cannot be listed or parsed (nothing to run at all)."""


@dataclass(frozen=True)
class SourceItem:
    uri: str
    start_s: float | None = None
    end_s: float | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "source_uri": self.uri,
            "start_s": -1.0 if self.start_s is None else self.start_s,
            "end_s": -1.0 if self.end_s is None else self.end_s,
        }


def _join(base_uri: str, rel: str) -> str:
    if "://" in rel or rel.startswith("/"):
        return rel
    if "://" in base_uri:
        proto, path = base_uri.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(posixpath.dirname(path), rel))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(base_uri), rel))


def _read_manifest(uri: str) -> pa.Table:
    lower = uri.lower()
    with fsspec.open(uri, "rb") as f:
        if lower.endswith(".parquet"):
            return pq.read_table(f)
        if lower.endswith(".csv"):
            return pacsv.read_csv(f)
        return pajson.read_json(f)


def _optional_float(value: Any, row: int, column: str, uri: str) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise SourceError(f"{uri} row {row}: {column}={value!r} is not a number") from e
    if out < 0:
        raise SourceError(f"{uri} row {row}: {column}={value!r} is negative")
    return out


def read_manifest(uri: str) -> list[SourceItem]:
    try:
        table = _read_manifest(uri)
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"cannot read manifest {uri}: {e}") from e
    if "uri" not in table.column_names:
        raise SourceError(f"manifest {uri} has no 'uri' column (columns: {table.column_names})")
    items = []
    for i, row in enumerate(table.to_pylist()):
        if not row.get("uri"):
            raise SourceError(f"{uri} row {i}: empty uri")
        start = _optional_float(row.get("start"), i, "start", uri)
        end = _optional_float(row.get("end"), i, "end", uri)
        if start is not None and end is not None and end <= start:
            raise SourceError(f"{uri} row {i}: end {end} is not after start {start}")
        items.append(SourceItem(_join(uri, str(row["uri"])), start, end))
    return items


def list_sources(input_uri: str) -> list[SourceItem]:
    """Every source item named by ``input_uri``, in a stable order."""
    lower = input_uri.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return read_manifest(input_uri)
    try:
        fs, path = fsspec.core.url_to_fs(input_uri)
    except (ValueError, ImportError) as e:
        raise SourceError(f"cannot open {input_uri}: {e}") from e
    protocol = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    if any(ch in path for ch in "*?["):
        paths = sorted(str(p) for p in fs.glob(path))
    elif lower.endswith(VIDEO_SUFFIXES) and not fs.isdir(path):
        # A single video is taken as given, even if it is missing: that becomes a failure row.
        return [SourceItem(input_uri)]
    elif fs.isdir(path):
        paths = sorted(str(p) for p in fs.find(path))
    else:
        raise SourceError(f"input {input_uri} is not a folder, manifest, video or glob")
    items = [
        SourceItem(protocol + p if protocol and "://" not in p else p)
        for p in paths
        if p.lower().endswith(VIDEO_SUFFIXES) and not posixpath.basename(p).startswith(".")
    ]
    return items
