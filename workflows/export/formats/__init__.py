"""Shard formats of ``any2cap export --format``: ``parquet`` (the default, in
:mod:`workflows.export.shards`), ``sft`` (ShareGPT JSONL + media, for LLaMA-Factory and
ms-swift) and ``webdataset`` (tar shards, video2dataset's layout).

Every format shares the exactly-once protocol and the rows of
:func:`workflows.export.shards.shard_rows`: a format only turns a shard's rows into bytes,
reads instance ids back, and checks a shard for ``any2cap shards verify``.
"""

from workflows.export.formats.base import FORMATS, ShardFormat

__all__ = ["FORMATS", "ShardFormat"]
