"""The training feed: a PyTorch IterableDataset over exported shards.

Work is split across DataLoader workers and distributed ranks without overlap: with at least
as many shards as readers each reader takes whole shards, otherwise each takes every N-th row
of every shard; either way every record is yielded exactly once per epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from annotators.conditions import condition_types
from pipeline.storage import Storage, read_payload
from schemas import CAPTION_COMPONENTS, PayloadRef, ShardRow, from_table
from workflows.export.shards import MANIFEST


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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


class ShardDataset(IterableDataset[dict[str, Any]]):
    """Yields one dict per record: text fields, and tensors decoded from the payloads."""

    def __init__(
        self,
        shards_dir: str,
        *,
        decode: bool = True,
        partitions: list[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.storage = Storage(shards_dir)
        manifest = json.loads(self.storage.read(MANIFEST))
        self.shards = [
            s["path"]
            for s in manifest["shards"]
            if partitions is None or s["partition"] in partitions
        ]
        self.decode = decode
        self._rank, self._world = rank, world_size

    def _reader_slot(self) -> tuple[int, int]:
        rank, world = _rank_world()
        rank = self._rank if self._rank is not None else rank
        world = self._world if self._world is not None else world
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, readers = self._reader_slot()
        if len(self.shards) >= readers:
            for i, path in enumerate(self.shards):
                if i % readers == slot:
                    yield from (self._sample(r) for r in self._read(path))
        else:
            index = 0
            for path in self.shards:
                for row in self._read(path):
                    if index % readers == slot:
                        yield self._sample(row)
                    index += 1

    def _read(self, path: str) -> list[ShardRow]:
        with self.storage.open(path) as f:
            return from_table(pq.read_table(f), ShardRow)

    def _sample(self, row: ShardRow) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "clip_id": row.clip_id,
            "partition": row.partition,
            "short_prompt": row.short_prompt,
            "structured_caption": row.structured_caption,
            **{f"caption.{c}": getattr(row.caption, c) for c in CAPTION_COMPONENTS},
            "conditions": row.conditions.present(),
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
            sample["keyframes"] = torch.from_numpy(np.stack(frames))
        types = condition_types()
        for name in row.conditions.present():
            ctype = types.get(name)
            if ctype is None:
                continue  # a plugin this environment does not have: text fields still come
            summary = ctype.from_conditions(row.conditions)
            if summary is None:
                continue
            for key, array in ctype.decode_payload(summary, read).items():
                sample[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(array))
        return sample
