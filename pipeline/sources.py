"""Sources: turn the user's ``--input`` into a list of (uri, optional span) items.

``--input`` is a local folder, a manifest (CSV / Parquet / JSONL with a ``uri`` column and
optional ``start``/``end`` seconds), a single video, or an fsspec URI / glob of either.

Bad manifest rows
-----------------
A row that cannot be a source (empty ``uri``; ``start``/``end`` not a number, NaN, infinite
or negative; ``end`` not after ``start``) does not stop the build: it becomes a
:class:`SourceItem` carrying the ``problem``, whose ``uri`` is the row's locator
``<manifest>#row=<N>``, and the engine turns it into a failure row (error type
``BadManifestRow``) while the good rows are built. Only a manifest with no usable row at all
is refused (:class:`SourceError`, naming every problem).

Row numbers count as a person reading the file does, starting at 1:

* CSV: the line number, the header being line 1, so the first data row is **row 2**
  (a quoted field spanning lines would shift this; such manifests are rare);
* JSONL: the line number, the first line is **row 1** (blank lines are skipped but
  counted; a line that is not a JSON object is a bad row);
* Parquet: the row's position in the table, the first row is **row 1**.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")


ROW_FRAGMENT = "#row="
# A manifest without one usable row is refused naming this many of its problems.
MAX_PROBLEMS_SHOWN = 20


class SourceError(ValueError):
    """The input itself cannot be listed or parsed (nothing to run at all)."""


class BadManifestRow(ValueError):
    """One manifest row cannot be a source; its failure row names the row and the problem."""

    error_type = "BadManifestRow"


@dataclass(frozen=True)
class SourceItem:
    uri: str
    start_s: float | None = None
    end_s: float | None = None
    # Set on a rejected manifest row: what is wrong with it ("<manifest> row N: ..."); ``uri``
    # is then the row's locator "<manifest>#row=N", never a video.
    problem: str | None = None

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "source_uri": self.uri,
            "start_s": -1.0 if self.start_s is None else self.start_s,
            "end_s": -1.0 if self.end_s is None else self.end_s,
        }
        # a rejected row's problem: the engine's probe makes it the row's failure
        row["problem"] = self.problem or ""
        return row


def _join(base_uri: str, rel: str) -> str:
    if "://" in rel or rel.startswith("/"):
        return rel
    if "://" in base_uri:
        proto, path = base_uri.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(posixpath.dirname(path), rel))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(base_uri), rel))


# Read as text so that one odd cell (a word in a number column) is that row's problem, not a
# type clash that makes the whole file unreadable.
_CSV_TEXT_COLUMNS = pacsv.ConvertOptions(
    column_types={"uri": pa.string(), "start": pa.string(), "end": pa.string()}
)


def _read_manifest(uri: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    """(column names, [(row number, row or what makes it unreadable)])."""
    lower = uri.lower()
    with fsspec.open(uri, "rb") as f:
        if lower.endswith(".parquet"):
            table = pq.read_table(f)
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(f, convert_options=_CSV_TEXT_COLUMNS)
        else:
            return _read_jsonl(f.read().decode("utf-8", errors="replace"))
    rows = table.to_pylist()
    return table.column_names, list(enumerate(rows, start=first_row_number(uri)))


def _read_jsonl(text: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    """Line by line: a row is numbered by its line, blank lines are skipped (and counted)."""
    columns: dict[str, None] = {}
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            rows.append((number, f"not valid JSON ({e})"))
            continue
        if not isinstance(row, dict):
            rows.append((number, f"not a JSON object but {type(row).__name__}"))
            continue
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


def _optional_float(value: Any, column: str) -> float | None:
    """A start/end cell: None when empty (null, ""), else a finite non-negative number;
    anything else raises :class:`BadManifestRow` saying what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise BadManifestRow(f"{column}={value} is not a number")
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise BadManifestRow(f"{column}={value} is not a number") from e
    if not math.isfinite(out):
        raise BadManifestRow(f"{column}={value} is not a finite number")
    if out < 0:
        raise BadManifestRow(f"{column}={value} is negative")
    return out


def first_row_number(uri: str) -> int:
    """The number a person gives the first data row (see the module docstring)."""
    return 2 if uri.lower().endswith(".csv") else 1


def _parse_row(uri: str, row: dict[str, Any]) -> SourceItem:
    raw = row.get("uri")
    if raw is None or not str(raw).strip():
        raise BadManifestRow("empty uri")
    start = _optional_float(row.get("start"), "start")
    end = _optional_float(row.get("end"), "end")
    if start is not None and end is not None and end <= start:
        raise BadManifestRow(f"end {end:g} is not after start {start:g} (uri {raw})")
    return SourceItem(_join(uri, str(raw).strip()), start, end)


def _manifest_items(uri: str) -> list[SourceItem]:
    try:
        columns, rows = _read_manifest(uri)
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read manifest {uri}: {e}") from e
    if columns and "uri" not in columns:
        raise SourceError(f"manifest {uri} has no 'uri' column (columns: {columns})")
    items = []
    for number, row in rows:
        try:
            if isinstance(row, str):
                raise BadManifestRow(row)
            items.append(_parse_row(uri, row))
        except BadManifestRow as e:
            items.append(
                SourceItem(f"{uri}{ROW_FRAGMENT}{number}", problem=f"{uri} row {number}: {e}")
            )
    return items


def read_manifest(uri: str) -> list[SourceItem]:
    """One item per row; a bad row is an item carrying its problem (module docstring).

    Raises :class:`SourceError` when the manifest cannot be read, has no ``uri`` column, or
    has rows but none of them usable.
    """
    items = _manifest_items(uri)
    bad = [item.problem for item in items if item.problem is not None]
    if items and len(bad) == len(items):
        shown = "; ".join(p.removeprefix(f"{uri} ") for p in bad[:MAX_PROBLEMS_SHOWN] if p)
        more = (
            f" (and {len(bad) - MAX_PROBLEMS_SHOWN} more)" if len(bad) > MAX_PROBLEMS_SHOWN else ""
        )
        raise SourceError(f"no usable row in manifest {uri}: {shown}{more}")
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
