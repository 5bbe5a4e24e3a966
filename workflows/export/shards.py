"""Export reviewed records to Parquet shards exactly once, with a manifest, and verify them.

Commit protocol (per shard): write ``.tmp-<name>`` -> fsync -> rename to ``<name>`` -> record
it in ``_manifest.json`` (itself replaced atomically). The manifest is the truth: a shard on
disk that the manifest does not list is what a killed export left between its rename and
its manifest update; the next export deletes it before doing anything else, and its rows
(not in the manifest, so not exported) go out again. Rows already listed are never written
twice: an export adds only instance ids no listed shard holds (``rewrite=True`` starts over
and rebuilds everything deterministically).

One row per instance: a record with instances gives one row per instance, in the partition
named by the instance key (``camera``, ``camera+depth``); a record of a recipe without
instance planning (``instances`` is None) gives one implicit instance over its present
conditions. The human edits are applied by ``any2capins.workflows.review.text.apply_review``, the same
code the review store uses. One export writes to a folder at a time
(an flock on a local disk; a second one is refused), and it first deletes temporaries a
killed export left.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from any2capins.pipeline.storage import Storage, StorageBusy, read_payload
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    SCHEMA_VERSION,
    Conditions,
    PayloadRef,
    Record,
    ReviewState,
    ShardRow,
    arrow_schema,
    make_instance_id,
    payload_refs,
    utc_now,
)
from any2capins.schemas._arrow import SCHEMA_VERSION_KEY, _to_arrow_converter
from any2capins.workflows.export.formats.base import FORMATS, ShardFormat
from any2capins.workflows.review.text import apply_review

MANIFEST = "_manifest.json"
FORMAT = "any2capins-shards/1"
EXPORTED_STATES = ("accepted", "edited")
# Rows per Parquet row group: the unit the training reader splits work by (and reads at once).
ROW_GROUP_ROWS = 256
# Payload files read (and checked) ahead of the record being turned into rows, by
# PAYLOAD_READERS threads (0: read as each record is built). Off by default: on 2 cores the
# readers' Python half fought the row building and the writer for the GIL, and the export
# was 30% slower with 4 readers than without (bench/export.py, A/B at load 3).
PAYLOAD_READ_AHEAD = 32
PAYLOAD_READERS = 0


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reviewed:
    """A record with its final review state, as the review store decided it."""

    record: Record
    review: ReviewState


@dataclass
class ExportReport:
    shards_dir: str
    new_rows: int = 0
    new_shards: list[str] = field(default_factory=list)
    skipped_already_exported: int = 0  # instances (rows) a listed shard already holds
    # accepted clips whose recipe planned instances but that suit no condition type
    no_instances: int = 0
    not_exported: dict[str, int] = field(default_factory=dict)
    removed_orphans: list[str] = field(default_factory=list)
    bytes_written: int = 0
    total_rows: int = 0
    # accepted records that could not be written (clip id, why); they go out once fixed
    incomplete: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedInstance:
    """What one row is about: an instance of the record (or the implicit one)."""

    instance_id: str
    condition_types: list[str]
    composition: bool
    short_prompt: str | None

    @property
    def partition(self) -> str:
        return "+".join(self.condition_types) or "none"


@functools.lru_cache(maxsize=8192)
def _implicit_instance_id(clip_id: str, types: tuple[str, ...]) -> str:
    # a uuid5 per call: an export asks for the same record's id several times
    return make_instance_id(clip_id, list(types) or ["none"])


def instances_of(record: Record) -> list[PlannedInstance]:
    """The record's instances, or for a recipe without instance planning (``instances`` is
    None) one implicit instance over its present conditions with the record's prompt."""
    if record.instances is not None:
        return [
            PlannedInstance(
                i.instance_id,
                sorted(i.condition_types),
                i.composition or len(i.condition_types) > 1,
                i.short_prompt,
            )
            for i in record.instances
        ]
    types = sorted(record.conditions.present())
    return [
        PlannedInstance(
            _implicit_instance_id(record.clip_id, tuple(types)),
            types,
            len(types) > 1,
            record.short_prompt,
        )
    ]


def partition_of(record: Record) -> str:
    """The partition of a record's implicit instance (its present conditions, sorted)."""
    return "+".join(sorted(record.conditions.present())) or "none"


class IncompleteRecord(ExportError):
    """An accepted record that cannot become rows (no text, an unreadable payload)."""


def reviewed_record(record: Record, review: ReviewState) -> Record:
    """The record with the reviewer's edits applied (human text wins), checked for a
    caption. A record the machine left without text can still go out when the reviewer
    wrote every component (and the short prompts)."""
    try:
        final = apply_review(record, review.edits)
    except ValueError as e:
        raise IncompleteRecord(
            f"record {record.clip_id}: the review's edits do not apply: {e}"
        ) from e
    if final.caption is None:
        missing = [k for k in CAPTION_COMPONENTS if k not in review.edits]
        raise IncompleteRecord(
            f"record {record.clip_id} was accepted without a machine caption and the "
            f"review did not write {', '.join(missing)}"
        )
    return final


def instance_conditions(conditions: Conditions, types: list[str]) -> Conditions:
    """Only the given condition types of ``conditions`` (the others left out)."""
    keep = set(types)
    update: dict[str, object] = {
        name: None for name in type(conditions).model_fields if name != "extra" and name not in keep
    }
    update["extra"] = {k: v for k, v in conditions.extra.items() if k in keep}
    return conditions.model_copy(update=update)


def _read_checked(ref: PayloadRef) -> bytes | Exception:
    """The payload's bytes (checked against its sha256), or why they cannot be had."""
    try:
        return read_payload(ref)
    except (OSError, ValueError) as e:
        return e


def record_payloads(record: Record) -> dict[str, bytes | Exception]:
    """Every payload of the record's keyframes and conditions, read and checked: uri ->
    bytes, or the error that reading it gave (:func:`shard_rows` reports it)."""
    refs = [ref for _, ref in payload_refs(record.keyframes)]
    refs += [ref for _, ref in payload_refs(record.conditions)]
    out: dict[str, bytes | Exception] = {}
    for ref in refs:
        if ref.uri not in out:
            out[ref.uri] = _read_checked(ref)
    return out


def shard_rows(
    item: Reviewed, embed: bool, payloads_read: dict[str, bytes | Exception] | None = None
) -> list[ShardRow]:
    """One row per instance of the reviewed record; raises :class:`IncompleteRecord` when
    the caption, an instance's short prompt or a payload is missing (no row goes out then).

    ``payloads_read``: the record's payloads already read (:func:`record_payloads`); any
    other is read here."""
    record, review = item.record, item.review
    final = reviewed_record(record, review)
    caption = final.caption
    assert caption is not None  # reviewed_record checked it
    machine_instances = instances_of(record)
    rows: list[ShardRow] = []
    cache: dict[str, bytes | Exception] = dict(payloads_read or {})
    for planned, machine in zip(instances_of(final), machine_instances, strict=True):
        if planned.short_prompt is None:
            raise IncompleteRecord(
                f"record {record.clip_id} was accepted without a short prompt for "
                f"{planned.partition}, machine or human"
            )
        conditions = instance_conditions(final.conditions, planned.condition_types)
        payloads: dict[str, bytes] = {}
        if embed:
            refs: list[PayloadRef] = [ref for _, ref in payload_refs(final.keyframes)]
            refs += [ref for _, ref in payload_refs(conditions)]
            for ref in refs:
                got = cache.get(ref.uri)
                if got is None:
                    got = cache[ref.uri] = _read_checked(ref)
                if isinstance(got, Exception):
                    raise IncompleteRecord(
                        f"record {record.clip_id}: payload {ref.uri} cannot be read "
                        f"({type(got).__name__}: {got})"
                    ) from got
                payloads[ref.uri] = got
        edited = caption != record.caption or planned.short_prompt != machine.short_prompt
        # every part comes from the validated record and review: assembled, not validated
        # again (``model_construct``); the export checks what it adds (text, payloads) above
        rows.append(
            ShardRow.model_construct(
                clip_id=record.clip_id,
                instance_id=planned.instance_id,
                partition=planned.partition,
                condition_types=planned.condition_types,
                composition=planned.composition,
                schema_version=record.schema_version,
                clip=record.clip,
                stats=record.stats,
                keyframes=record.keyframes,
                conditions=conditions,
                suitability=record.suitability,
                caption=caption,
                short_prompt=planned.short_prompt,
                structured_caption=caption.numbered_text(),
                machine_caption=record.caption if edited else None,
                machine_short_prompt=machine.short_prompt if edited else None,
                checks=record.checks,
                provenance=record.provenance,
                review=review,
                payloads=payloads,
            )
        )
    return rows


def shard_row(item: Reviewed, embed: bool) -> ShardRow:
    """The one row of a record with a single instance (or none planned: the implicit one)."""
    rows = shard_rows(item, embed)
    if len(rows) != 1:
        raise ExportError(f"record {item.record.clip_id} has {len(rows)} instances, not one")
    return rows[0]


def _row_bytes(row: ShardRow) -> int:
    return sum(len(v) for v in row.payloads.values()) + 4096


class _HashingBuffer(io.BytesIO):
    """An in-memory file that computes the sha256 of what is written as it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.sha256 = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return super().write(data)


class _HashingFile(io.RawIOBase):
    """A write-only file over an open binary file: the sha256 and size of what is written
    are computed as it is written (the shard is never read back to hash it)."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        n = memoryview(data).nbytes
        self.size += n
        self._f.write(data)  # a buffered file writes everything or raises
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()


_PAYLOADS = "payloads"


@functools.cache
def _shard_columns() -> tuple[pa.Schema, int, list[tuple[str, Any]]]:
    """(the shard schema, the payload column's index, the other columns' converters)."""
    schema = arrow_schema(ShardRow)
    annotations: dict[str, Any] = {
        name: f.annotation for name, f in ShardRow.model_fields.items() if name != _PAYLOADS
    }
    convs = [(name, _to_arrow_converter(tp)) for name, tp in annotations.items()]
    return schema, schema.get_field_index(_PAYLOADS), [(n, c) for n, c in convs if c is not None]


def shard_table(rows: Sequence[ShardRow]) -> pa.Table:
    """The rows as one Arrow table of the shard schema, equal to ``to_table(rows, ShardRow)``
    but built for speed: the payload bytes go into one binary column (a copy per shard, no
    Python object per payload), the other fields through ``model_dump`` (pydantic's core;
    the rows were assembled from validated parts, see :func:`shard_rows`). The table's
    schema is checked once against the shard schema."""
    schema, index, convs = _shard_columns()
    dicts: list[dict[str, Any]] = []
    keys: list[str] = []
    values: list[bytes] = []
    offsets = [0]
    exclude = {_PAYLOADS}
    for row in rows:
        if not isinstance(row, ShardRow):
            raise TypeError(f"expected ShardRow, got {type(row).__name__}")
        data = row.model_dump(exclude=exclude)
        for name, conv in convs:
            data[name] = conv(data[name])
        dicts.append(data)
        keys.extend(row.payloads)
        values.extend(row.payloads.values())
        offsets.append(len(keys))
    payload_field = schema.field(index)
    entry = payload_field.type.value_type
    entries = pa.StructArray.from_arrays(
        [pa.array(keys, pa.string()), pa.array(values, pa.binary())],
        fields=[entry.field(0), entry.field(1)],
    )
    column = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), entries, type=payload_field.type
    )
    table = pa.Table.from_pylist(dicts, schema=schema.remove(index)).add_column(
        index, payload_field, column
    )
    table = table.replace_schema_metadata(schema.metadata)
    if not table.schema.equals(schema, check_metadata=True):  # once per shard, not per row
        raise ExportError(f"shard table does not match the shard schema: {table.schema}")
    return table


def _parquet_bytes(rows: list[ShardRow], row_group_rows: int) -> tuple[bytes, str]:
    """The shard's bytes and their sha256 (computed while Arrow writes them)."""
    table = shard_table(rows)
    buf = _HashingBuffer()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_rows)
    return buf.getvalue(), buf.sha256.hexdigest()


def write_parquet_shard(
    rows: list[ShardRow], path: str, row_group_rows: int = ROW_GROUP_ROWS
) -> tuple[int, str, list[int]]:
    """Write the rows' Parquet shard straight to PATH on a local disk with the commit
    protocol's first half: a ``.tmp-`` file beside it (what a killed export leaves is swept
    by the next), fsync, rename. Returns (bytes, sha256, rows per row group): the digest is
    computed as the bytes go to the file, the row groups come from the writer's footer."""
    table = shard_table(rows)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with open(fd, "wb") as raw:
            out = _HashingFile(raw)
            collector: list[pq.FileMetaData] = []
            pq.write_table(
                table,
                out,
                compression="zstd",
                row_group_size=row_group_rows,
                metadata_collector=collector,
            )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    meta = collector[0]
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return out.size, out.sha256.hexdigest(), groups


def row_groups_of(source: bytes | BinaryIO) -> list[int]:
    """Rows per row group of a Parquet file (its bytes, or an open file), from its footer."""
    meta = pq.ParquetFile(io.BytesIO(source) if isinstance(source, bytes) else source).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


class ParquetFormat(ShardFormat):
    """The default: Parquet shards of ``ShardRow`` (zstd), payloads embedded or referenced."""

    name = "parquet"
    suffix = ".parquet"
    needs_payloads = False
    encode_in_background = True

    def __init__(self, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.row_group_rows = row_group_rows

    def encode(self, rows: list[ShardRow], storage: Storage, entry: dict[str, Any]) -> bytes:
        data, sha256 = _parquet_bytes(rows, self.row_group_rows)
        entry["row_groups"] = row_groups_of(data)
        entry["sha256"] = sha256
        return data

    def instance_ids(self, storage: Storage, rel: str) -> list[str]:
        with storage.open(rel) as f:
            ids: list[str] = (
                pq.read_table(f, columns=["instance_id"]).column("instance_id").to_pylist()
            )
        return ids

    def check(
        self, data: bytes, shard: dict[str, Any], storage: Storage
    ) -> tuple[list[str], list[str]]:
        rel = shard["path"]
        problems: list[str] = []
        try:
            # Single-threaded on purpose: ``pq.read_table`` starts Arrow's CPU and I/O
            # thread pools, whose teardown at interpreter exit can abort the process
            # ("terminate called without an active exception", apache/arrow#34314) after
            # the verdict is out. One shard at a time is fast enough for a check.
            table = pq.ParquetFile(io.BytesIO(data), pre_buffer=False).read(use_threads=False)
        except (pa.ArrowInvalid, OSError) as e:
            return [f"{rel}: not readable as Parquet: {e}"], []
        if table.num_rows != shard["rows"]:
            problems.append(f"{rel}: {table.num_rows} rows, manifest says {shard['rows']}")
        groups = row_groups_of(data)
        if "row_groups" in shard and groups != shard["row_groups"]:
            problems.append(f"{rel}: row groups {groups}, manifest says {shard['row_groups']}")
        version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"").decode()
        if version != SCHEMA_VERSION:
            problems.append(f"{rel}: schema version {version!r}, expected {SCHEMA_VERSION}")
        elif not table.schema.equals(arrow_schema(ShardRow)):
            problems.append(f"{rel}: columns differ from schema version {SCHEMA_VERSION}")
        if "instance_id" not in table.column_names:
            return problems, []  # reported above: the columns differ
        return problems, table.column("instance_id").to_pylist()


def shard_format(name: str, row_group_rows: int = ROW_GROUP_ROWS) -> ShardFormat:
    """The writer of one ``--format``."""
    if name == "parquet":
        return ParquetFormat(row_group_rows)
    if name == "sft":
        from any2capins.workflows.export.formats.sft import SftFormat

        return SftFormat()
    if name == "webdataset":
        from any2capins.workflows.export.formats.webdataset import WebDatasetFormat

        return WebDatasetFormat()
    if name == "control":
        from any2capins.workflows.export.formats.control import ControlFormat

        return ControlFormat()
    raise ExportError(f"unknown export format {name!r} (one of {', '.join(FORMATS)})")


class Manifest:
    def __init__(self, storage: Storage, shard_format: str | None = None) -> None:
        """The folder's manifest; SHARD_FORMAT (when given) must be what the folder holds."""
        self.storage = storage
        try:
            self.data: dict[str, Any] = json.loads(storage.read(MANIFEST))
        except FileNotFoundError:
            self.data = {
                "format": FORMAT,
                "shard_format": shard_format or "parquet",
                "schema_version": SCHEMA_VERSION,
                "shards": [],
            }
        if self.data.get("format") != FORMAT:
            raise ExportError(f"{storage.root}/{MANIFEST} is not an any2capins shard manifest")
        if shard_format is not None and self.shard_format != shard_format:
            raise ExportError(
                f"{storage.root} holds {self.shard_format} shards, not {shard_format}: "
                "export each format to its own folder (or --rewrite)"
            )
        if self.data.get("schema_version") != SCHEMA_VERSION:
            raise ExportError(
                f"shards in {storage.root} have schema {self.data.get('schema_version')}, "
                f"this code writes {SCHEMA_VERSION}: export to a new folder or --rewrite"
            )

    @property
    def shard_format(self) -> str:
        """``parquet`` (manifests written before ``--format`` existed say nothing), ``sft`` or
        ``webdataset``."""
        return str(self.data.get("shard_format", "parquet"))

    @property
    def shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = self.data["shards"]
        return shards

    def save(self) -> None:
        self.data["updated_at"] = utc_now().isoformat()
        self.storage.write_atomic(MANIFEST, json.dumps(self.data, indent=1).encode())

    def next_index(self, partition: str) -> int:
        names = [s["path"] for s in self.shards if s["partition"] == partition]
        return 1 + max((int(n.rsplit("-", 1)[1].split(".")[0]) for n in names), default=0)


def _listed_shards(storage: Storage, fmt: ShardFormat) -> Iterator[str]:
    return storage.files(fmt.suffix)


def exported_instance_ids(
    storage: Storage, manifest: Manifest, fmt: ShardFormat | None = None
) -> set[str]:
    fmt = fmt or shard_format(manifest.shard_format)
    ids: set[str] = set()
    for shard in manifest.shards:
        ids.update(fmt.instance_ids(storage, shard["path"]))
    return ids


def export_shards(
    items: Iterable[Reviewed],
    shards_dir: str,
    *,
    shard_size_mb: float = 256.0,
    embed_payloads: bool = True,
    run_ids: list[str] | None = None,
    review_snapshot: str = "",
    rewrite: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
    format: str | ShardFormat = "parquet",
) -> ExportReport:
    """Write the records not exported yet (all of them with ``rewrite``) to new shards.

    ``row_group_rows`` is the Parquet row-group size: the unit the reader splits work by
    and holds in memory at once (smaller groups: finer split, slightly worse compression).
    ``format``: ``parquet``, ``sft`` or ``webdataset`` (or a configured
    :class:`~workflows.export.formats.ShardFormat`); one format per folder.
    """
    if row_group_rows < 1:
        raise ExportError("row_group_rows must be at least 1")
    fmt = shard_format(format, row_group_rows) if isinstance(format, str) else format
    if fmt.needs_payloads and not embed_payloads:
        raise ExportError(
            f"--reference-payloads applies to parquet only: {fmt.name} copies the payloads"
        )
    storage = Storage(shards_dir)
    try:
        with storage.exclusive(f"another export is writing to {storage.root}"):
            return _export_locked(
                items,
                storage,
                shard_size_mb,
                embed_payloads,
                run_ids,
                review_snapshot,
                rewrite,
                fmt,
            )
    except StorageBusy as e:
        raise ExportError(str(e)) from e


def _export_locked(
    items: Iterable[Reviewed],
    storage: Storage,
    shard_size_mb: float,
    embed_payloads: bool,
    run_ids: list[str] | None,
    review_snapshot: str,
    rewrite: bool,
    fmt: ShardFormat,
) -> ExportReport:
    if rewrite:
        previous = Manifest(storage) if storage.exists(MANIFEST) else None
        old = shard_format(previous.shard_format) if previous else fmt
        for rel in list(_listed_shards(storage, old)):
            storage.delete(rel)
        storage.delete(MANIFEST)
    manifest = Manifest(storage, fmt.name)
    report = ExportReport(shards_dir=storage.root)
    listed = {s["path"] for s in manifest.shards}
    for rel in sorted(_listed_shards(storage, fmt)):
        if rel not in listed:
            storage.delete(rel)  # a killed export's shard that never reached the manifest
            report.removed_orphans.append(rel)
    done = exported_instance_ids(storage, manifest, fmt)

    pending: dict[str, list[ShardRow]] = defaultdict(list)
    sizes: dict[str, int] = defaultdict(int)
    target = int(shard_size_mb * 2**20)
    not_exported: dict[str, int] = defaultdict(int)

    # A format that may encode in the background writes its shards (encode, then the
    # commit protocol, one shard at a time in order) on one writer thread while the next
    # rows are built; at most one shard waits behind the one being written.
    writer = ThreadPoolExecutor(max_workers=1) if fmt.encode_in_background else None
    writing: deque[Future[None]] = deque()

    def flush(partition: str) -> None:
        rows = sorted(pending.pop(partition), key=lambda r: (r.clip_id, r.instance_id))
        sizes.pop(partition, None)
        if writer is None:
            write(partition, rows)
            return
        while len(writing) > 1 or (writing and writing[0].done()):
            writing.popleft().result()  # re-raises a failed write before going on
        writing.append(writer.submit(write, partition, rows))

    failed: list[BaseException] = []

    def write(partition: str, rows: list[ShardRow]) -> None:
        if failed:  # a shard queued behind a failed one stays unwritten, like the rest
            raise ExportError(f"not written after an earlier shard failed: {failed[0]}")
        try:
            write_one(partition, rows)
        except BaseException as e:
            failed.append(e)
            raise

    # Parquet on a local disk goes straight to its temporary file (hashed as it is written);
    # elsewhere, and for the other formats, the shard's bytes are made, then written.
    direct = (
        isinstance(fmt, ParquetFormat)
        and type(fmt).encode is ParquetFormat.encode
        and storage.local
    )

    def write_one(partition: str, rows: list[ShardRow]) -> None:
        extra: dict[str, Any] = {}
        rel = f"{partition}/part-{manifest.next_index(partition):05d}{fmt.suffix}"
        if direct:
            assert isinstance(fmt, ParquetFormat)
            size, sha256, groups = write_parquet_shard(
                rows, os.path.join(storage.root, rel), fmt.row_group_rows
            )
            extra["row_groups"] = groups
        else:
            data = fmt.encode(rows, storage, extra)
            storage.write_atomic(rel, data)
            size = len(data)
            # a format that hashed the bytes as it wrote them hands the digest over
            sha256 = extra.pop("sha256", None) or hashlib.sha256(data).hexdigest()
        manifest.shards.append(
            {
                "path": rel,
                "partition": partition,
                "rows": len(rows),
                **({"row_groups": extra.pop("row_groups")} if "row_groups" in extra else {}),
                "bytes": size,
                "sha256": sha256,
                "schema_version": SCHEMA_VERSION,
                "payloads": "embedded" if embed_payloads else "referenced",
                "run_ids": sorted({r.provenance.run_id for r in rows} | set(run_ids or [])),
                "review_snapshot": review_snapshot,
                "written_at": utc_now().isoformat(),
                **extra,
            }
        )
        manifest.save()
        report.new_shards.append(rel)
        report.new_rows += len(rows)
        report.bytes_written += size

    read_ahead = False
    try:
        todo_items: list[tuple[Reviewed, set[str]]] = []
        for item in sorted(items, key=lambda i: i.record.clip_id):
            status = item.review.status
            if status not in EXPORTED_STATES:
                not_exported[status] += 1
                continue
            if item.record.instances == []:
                report.no_instances += 1
                continue
            # cheap: an instance id names its row whatever the review's text
            planned = instances_of(item.record)
            todo = [i for i in planned if i.instance_id not in done]
            report.skipped_already_exported += len(planned) - len(todo)
            if todo:
                todo_items.append((item, {i.instance_id for i in todo}))

        embed = embed_payloads or fmt.needs_payloads
        read_ahead = embed and PAYLOAD_READERS > 0
        if read_ahead:
            readers = ThreadPoolExecutor(max_workers=PAYLOAD_READERS)
            ahead: deque[Future[dict[str, bytes | Exception]]] = deque()
        queued = 0
        for item, wanted in todo_items:
            payloads_read = None
            if read_ahead:
                while queued < len(todo_items) and len(ahead) < PAYLOAD_READ_AHEAD:
                    ahead.append(readers.submit(record_payloads, todo_items[queued][0].record))
                    queued += 1
                payloads_read = ahead.popleft().result()
            try:
                rows = shard_rows(item, embed, payloads_read)
                for row in rows:
                    if row.instance_id in wanted:
                        fmt.prepare(row)
            except IncompleteRecord as e:
                report.incomplete.append((item.record.clip_id, str(e)))
                continue
            except (ValueError, OSError, KeyError) as e:
                report.incomplete.append((item.record.clip_id, f"{fmt.name}: {e}"))
                continue
            for row in rows:
                if row.instance_id not in wanted:
                    continue
                pending[row.partition].append(row)
                sizes[row.partition] += _row_bytes(row)
                if sizes[row.partition] >= target:
                    flush(row.partition)
        for partition in sorted(pending):
            flush(partition)
    finally:
        if read_ahead:
            readers.shutdown(wait=True, cancel_futures=True)
        if writer is not None:
            writer.shutdown(wait=True)  # every submitted shard is written (or failed)
    while writing:
        writing.popleft().result()
    if not manifest.storage.exists(MANIFEST):
        manifest.save()
    fmt.finish(storage, manifest.data)
    report.not_exported = dict(not_exported)
    report.total_rows = sum(s["rows"] for s in manifest.shards)
    return report


def verify_shards(shards_dir: str) -> list[str]:
    """Every problem found (empty when the shards are intact), whatever their format."""
    storage = Storage(shards_dir)
    try:
        manifest = Manifest(storage)
        fmt = shard_format(manifest.shard_format)
    except (ExportError, json.JSONDecodeError) as e:
        return [str(e)]
    if not storage.exists(MANIFEST):
        return [f"{storage.root} has no {MANIFEST}"]
    problems: list[str] = []
    seen: dict[str, str] = {}
    listed = set()
    for shard in manifest.shards:
        rel = shard["path"]
        listed.add(rel)
        try:
            data = storage.read(rel)
        except FileNotFoundError:
            problems.append(f"{rel}: listed in the manifest but missing")
            continue
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            problems.append(f"{rel}: sha256 does not match the manifest")
        if len(data) != shard["bytes"]:
            problems.append(f"{rel}: {len(data)} bytes, manifest says {shard['bytes']}")
        found, ids = fmt.check(data, shard, storage)
        problems += found
        for instance_id in ids:
            if instance_id in seen:
                problems.append(f"{rel}: instance {instance_id} already in {seen[instance_id]}")
            seen[instance_id] = rel
    for rel in _listed_shards(storage, fmt):
        if rel not in listed:
            problems.append(f"{rel}: a shard the manifest does not list")
    return problems
