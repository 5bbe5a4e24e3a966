"""The training feed: a PyTorch IterableDataset over exported shards.

torch is optional: with the core install alone (no ``[train]`` extra) ``ShardDataset`` is a
plain iterable that reads the text fields (``decode=False``) in one reader per process (or
the rank given), and asking it to decode payloads into tensors says which extra to install.

Work is split by Parquet row group (at most ``ROW_GROUP_ROWS`` rows; the manifest lists each
shard's groups) across DataLoader workers and distributed ranks without overlap: with at
least as many row groups as readers each reader takes whole groups, otherwise each takes
every N-th row; either way every instance is yielded exactly once per epoch. With
``shuffle=True`` the groups are put in a new order each epoch (the same order in every
reader, from ``seed`` and the epoch set by ``set_epoch``, so the split stays disjoint) and
rows are shuffled within a buffer; without it the order is the manifest's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from any2capins.annotators.conditions import condition_types
from any2capins.pipeline.storage import Storage, read_payload
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    Conditions,
    PayloadRef,
    ShardRow,
    arrow_schema,
    from_table,
)
from any2capins.schemas._arrow import check_schema_version, from_arrow_row
from any2capins.workflows.export.shards import MANIFEST, row_groups_of

_T = TypeVar("_T")

if TYPE_CHECKING:
    from torch.utils.data import IterableDataset
else:
    try:
        from torch.utils.data import IterableDataset
    except ModuleNotFoundError:  # the core install: see the module's docstring

        class IterableDataset(Generic[_T]):
            """Stands in for torch's base class where torch is not installed."""


TRAIN_EXTRA_NEEDED = (
    "ShardDataset(decode=True) returns tensors and needs torch and OpenCV: install "
    "any2capins[train], or read the text fields with decode=False"
)


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _rank_world() -> tuple[int, int]:
    if _has_torch():
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker_slot() -> tuple[int, int]:
    """(DataLoader workers, this worker's id); (1, 0) outside a DataLoader worker."""
    if not _has_torch():
        return 1, 0
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.num_workers, info.id) if info is not None else (1, 0)


def _tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def _decode_image(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("payload is not a decodable image")
    if image.ndim == 3 and image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA))
    if image.ndim == 3:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.asarray(image)


@dataclass(frozen=True)
class _Unit:
    """One row group of one shard: what a reader reads at once."""

    path: str
    group: int
    rows: int


def assign_units(units: list[_Unit], slot: int, readers: int) -> tuple[list[_Unit], int | None]:
    """This reader's share: whole units when there are enough, else every N-th row.

    Returns the units to read and, for the row-wise split, the index of the first row (in
    the concatenation of all units) this reader keeps; ``None`` means keep every row.
    """
    if len(units) >= readers:
        return [u for i, u in enumerate(units) if i % readers == slot], None
    return units, slot


_BUILTIN_CONDITIONS = [name for name in Conditions.model_fields if name != "extra"]
# what the text-only fast path reads: every column but the payload bytes
_TEXT_COLUMNS = [name for name in ShardRow.model_fields if name != "payloads"]
_PAYLOAD_FIELD = arrow_schema(ShardRow).field("payloads")


class ShardDataset(IterableDataset[dict[str, Any]]):
    """Yields one dict per instance (row): text fields, and tensors decoded from the
    payloads of the keyframes and the instance's conditions.

    ``validate=True`` (the default) checks every row against ``ShardRow`` as it is read.
    ``validate=False`` is the fast path: a row group is read at once and its rows go out as
    plain dicts, the same samples
    without a pydantic model per row (the shards were validated when they were exported and
    ``any2cap shards verify`` checks their schema). Either way, with ``decode=False`` the
    payload column (nearly all of a shard's bytes) is not read.
    """

    def __init__(
        self,
        shards_dir: str,
        *,
        decode: bool = True,
        partitions: list[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 512,
        validate: bool = True,
    ) -> None:
        if shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be at least 1")
        if decode and not _has_torch():
            raise ModuleNotFoundError(TRAIN_EXTRA_NEEDED)
        self.storage = Storage(shards_dir)
        manifest = json.loads(self.storage.read(MANIFEST))
        self.shards = [
            s for s in manifest["shards"] if partitions is None or s["partition"] in partitions
        ]
        self.decode = decode
        self.validate = validate
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.epoch = 0
        self._rank, self._world = rank, world_size
        self._units: list[_Unit] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order ``shuffle=True`` gives; call before iterating (each epoch's
        DataLoader workers copy the dataset when they start, so with ``persistent_workers``
        the order is fixed at the first epoch's)."""
        self.epoch = epoch

    @property
    def num_records(self) -> int:
        """Records in the selected shards, all readers together."""
        return sum(int(s["rows"]) for s in self.shards)

    def units(self) -> list[_Unit]:
        """Every row group, in manifest order; from the manifest, or from the shard's footer
        for manifests written before it listed row groups."""
        if self._units is None:
            units: list[_Unit] = []
            for shard in self.shards:
                groups = shard.get("row_groups")
                if groups is None:
                    with self.storage.open(shard["path"]) as f:
                        groups = row_groups_of(f)
                units.extend(_Unit(shard["path"], i, int(n)) for i, n in enumerate(groups))
            self._units = units
        return self._units

    def _reader_slot(self) -> tuple[int, int]:
        rank, world = _rank_world()
        rank = self._rank if self._rank is not None else rank
        world = self._world if self._world is not None else world
        workers, worker = _worker_slot()
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, readers = self._reader_slot()
        units = list(self.units())
        if self.shuffle:
            # the same permutation in every reader: the split below stays disjoint
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        mine, first_row = assign_units(units, slot, readers)
        rows: Iterator[Any] = self._rows(mine, first_row, readers)
        if self.shuffle:
            rows = self._buffered(rows, np.random.default_rng([self.seed, self.epoch, slot]))
        if not self.validate:
            return (self._plain_sample(r) for r in rows)
        return (self._sample(r) for r in rows)

    def _rows(self, units: list[_Unit], first_row: int | None, readers: int) -> Iterator[Any]:
        index = 0
        for unit in units:
            if first_row is not None:
                # row-wise split: skip a unit that holds none of this reader's rows
                keep = [i for i in range(unit.rows) if (index + i) % readers == first_row]
                index += unit.rows
                if not keep:
                    continue
                table = self._read(unit).take(keep)
            else:
                table = self._read(unit)
            if self.validate:
                if not self.decode:  # the payload column was not read: validated as empty
                    table = table.append_column(
                        _PAYLOAD_FIELD, pa.array([[]] * table.num_rows, _PAYLOAD_FIELD.type)
                    )
                yield from from_table(table, ShardRow)
            else:
                check_schema_version(table.schema)
                yield from table.to_pylist()

    def _read(self, unit: _Unit) -> pa.Table:
        # without decoding, the payload bytes (nearly all of a shard) are not read at all
        columns = None if self.decode else _TEXT_COLUMNS
        with self.storage.open(unit.path) as f:
            return pq.ParquetFile(f).read_row_group(unit.group, columns=columns)

    def _buffered(self, rows: Iterator[Any], rng: np.random.Generator) -> Iterator[Any]:
        buffer: list[Any] = []
        for row in rows:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], row = row, buffer[i]
            yield row
        rng.shuffle(buffer)
        yield from buffer

    def _sample(self, row: ShardRow) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "clip_id": row.clip_id,
            "instance_id": row.instance_id,
            "condition_types": list(row.condition_types),
            "composition": row.composition,
            "partition": row.partition,
            "short_prompt": row.short_prompt,
            "structured_caption": row.structured_caption,
            **{f"caption.{c}": getattr(row.caption, c) for c in CAPTION_COMPONENTS},
            "conditions": row.conditions.present(),
            "suitability": {name: s.suitable for name, s in row.suitability.items()},
            "checks": [flag.model_dump() for flag in row.checks],
        }
        if not self.decode:
            return sample

        def read(ref: PayloadRef) -> bytes:
            if row.payloads:
                try:
                    return row.payloads[ref.uri]
                except KeyError as e:
                    raise KeyError(f"{row.clip_id}: payload {ref.uri} not embedded") from e
            return read_payload(ref)

        if row.keyframes is not None and row.keyframes.frames:
            frames = [_decode_image(read(ref)) for ref in row.keyframes.frames]
            sample["keyframes"] = _tensor(np.stack(frames))
        types = condition_types()
        for name in row.conditions.present():
            ctype = types.get(name)
            if ctype is None:
                continue  # a plugin this environment does not have: text fields still come
            summary = ctype.from_conditions(row.conditions)
            if summary is None:
                continue
            for key, array in ctype.decode_payload(summary, read).items():
                sample[f"{name}.{key}"] = _tensor(array)
        return sample

    def _plain_sample(self, row: dict[str, Any]) -> dict[str, Any]:
        """``_sample`` of an unvalidated ``to_pylist()`` row: the same keys and values."""
        conditions = row["conditions"]
        present = [n for n in _BUILTIN_CONDITIONS if conditions.get(n) is not None]
        present += sorted(kv["key"] for kv in conditions.get("extra") or ())
        caption = row["caption"]
        sample: dict[str, Any] = {
            "clip_id": row["clip_id"],
            "instance_id": row["instance_id"],
            "condition_types": row["condition_types"],
            "composition": row["composition"],
            "partition": row["partition"],
            "short_prompt": row["short_prompt"],
            "structured_caption": row["structured_caption"],
            **{f"caption.{c}": caption[c] for c in CAPTION_COMPONENTS},
            "conditions": present,
            "suitability": {kv["key"]: kv["value"]["suitable"] for kv in row["suitability"]},
            "checks": row["checks"],
        }
        if not self.decode:
            return sample
        payloads: dict[str, bytes] = {kv["key"]: kv["value"] for kv in row.get("payloads") or ()}

        def read(ref: PayloadRef) -> bytes:
            if payloads:
                try:
                    return payloads[ref.uri]
                except KeyError as e:
                    raise KeyError(f"{row['clip_id']}: payload {ref.uri} not embedded") from e
            return read_payload(ref)

        keyframes = row.get("keyframes")
        if keyframes and keyframes.get("frames"):
            frames = [
                _decode_image(payloads[f["uri"]] if f["uri"] in payloads else read(PayloadRef(**f)))
                for f in keyframes["frames"]
            ]
            sample["keyframes"] = _tensor(np.stack(frames))
        if not present:
            return sample
        types = condition_types()
        model: Conditions | None = None
        for name in present:
            ctype = types.get(name)
            if ctype is None:
                continue
            if model is None:  # validated only when a condition is decoded
                model = Conditions.model_validate(from_arrow_row(conditions, Conditions))
            summary = ctype.from_conditions(model)
            if summary is None:
                continue
            for key, array in ctype.decode_payload(summary, read).items():
                sample[f"{name}.{key}"] = _tensor(array)
        return sample
