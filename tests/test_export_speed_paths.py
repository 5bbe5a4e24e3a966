"""The export's fast paths give what the plain ones gave: the columnar shard table equals
``to_table``, the shard written straight to disk is hashed and counted right, payloads read
ahead still make a record with a bad payload incomplete (and nothing else)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import ReviewState, ShardRow, to_table
from any2capins.workflows.export import Reviewed, export_shards, verify_shards
from any2capins.workflows.export import shards as shards_module
from any2capins.workflows.export.shards import (
    record_payloads,
    shard_rows,
    shard_table,
    write_parquet_shard,
)
from tests.test_export import build_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("speed"), clips=3)


def _items(run: Path) -> list[Reviewed]:
    items = []
    for i, record in enumerate(sorted(RunDir(str(run)).records(), key=lambda r: r.clip_id)):
        edits = {"camera": "A handheld camera.", "short_prompt": "edited"} if i == 1 else {}
        status = "edited" if edits else "accepted"
        items.append(Reviewed(record, ReviewState(status=status, reviewer="t", edits=edits)))
    return items


@pytest.mark.parametrize("embed", [True, False])
def test_shard_table_equals_to_table(run: Path, embed: bool) -> None:
    rows = [r for item in _items(run) for r in shard_rows(item, embed)]
    assert any(r.payloads for r in rows) == embed
    fast, plain = shard_table(rows), to_table(rows, ShardRow)
    assert fast.schema.equals(plain.schema, check_metadata=True)
    assert fast.equals(plain)
    assert fast.to_pylist() == plain.to_pylist()


def test_shard_table_refuses_other_rows(run: Path) -> None:
    with pytest.raises(TypeError, match="expected ShardRow"):
        shard_table([_items(run)[0].record])  # type: ignore[list-item]


def test_payloads_read_ahead_are_the_payloads(run: Path) -> None:
    item = _items(run)[0]
    ahead = record_payloads(item.record)
    assert ahead and all(isinstance(v, bytes) for v in ahead.values())
    assert shard_rows(item, True, ahead) == shard_rows(item, True)


def test_direct_write_hashes_and_counts_what_is_on_disk(run: Path, tmp_path: Path) -> None:
    rows = [r for item in _items(run) for r in shard_rows(item, True)]
    path = tmp_path / "none" / "part-00001.parquet"
    size, sha256, groups = write_parquet_shard(rows, str(path), row_group_rows=2)
    data = path.read_bytes()
    assert size == len(data) and sha256 == hashlib.sha256(data).hexdigest()
    assert (
        groups == [2, 1] == [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(2)]
    )
    assert [p.name for p in path.parent.iterdir()] == ["part-00001.parquet"]  # no .tmp- left
    assert pq.read_table(path).equals(shard_table(rows))


def test_export_manifest_matches_the_files(run: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    report = export_shards(_items(run), str(shards), row_group_rows=2)
    assert report.new_rows == 3 and not report.incomplete
    manifest = json.loads((shards / "_manifest.json").read_text())
    for shard in manifest["shards"]:
        data = (shards / shard["path"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["row_groups"] == [2, 1]
    assert report.bytes_written == sum(s["bytes"] for s in manifest["shards"])
    assert verify_shards(str(shards)) == []


@pytest.mark.parametrize("readers", [0, 4])
def test_bad_payload_makes_only_its_record_incomplete(
    run: Path, tmp_path: Path, readers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as each record is built (the default) or ahead by threads: the same report."""
    monkeypatch.setattr(shards_module, "PAYLOAD_READERS", readers)
    items = _items(run)
    victim = items[1].record
    assert victim.keyframes is not None
    frame = victim.keyframes.frames[0]
    original = Path(frame.uri).read_bytes()
    Path(frame.uri).write_bytes(b"not the keyframe")
    try:
        report = export_shards(items, str(tmp_path / "shards"))
    finally:
        Path(frame.uri).write_bytes(original)
    assert report.new_rows == 2
    assert [c for c, _ in report.incomplete] == [victim.clip_id]
    assert "does not match its sha256" in report.incomplete[0][1]
    # once the payload is back, the record goes out (and only it)
    again = export_shards(items, str(tmp_path / "shards"))
    assert again.new_rows == 1 and again.skipped_already_exported == 2
