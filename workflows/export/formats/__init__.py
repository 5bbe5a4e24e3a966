"""Shard formats of ``any2cap export --format``: ``parquet`` (the default, in
:mod:`any2capins.workflows.export.shards`), ``sft`` (ShareGPT JSONL + media, for LLaMA-Factory and
ms-swift), ``webdataset`` (tar shards, video2dataset's layout) and ``control`` (target,
depth and pose videos on one frame grid, reference images, RealEstate10K camera files and a
metadata CSV, for controllable video generators).

Every format shares the exactly-once protocol and the rows of
:func:`any2capins.workflows.export.shards.shard_rows`: a format only turns a shard's rows into bytes,
reads instance ids back, and checks a shard for ``any2cap shards verify``.
"""

from any2capins.workflows.export.formats.base import FORMATS, ShardFormat

__all__ = ["FORMATS", "ShardFormat"]
