"""Export to shards exactly once, verification, the dataset card, and the training readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from any2capins.pipeline.build import run_build
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.schemas import Record, ReviewState, StructuredCaption
from any2capins.workflows.export import Reviewed, export_shards, verify_shards, write_card
from any2capins.workflows.recipes import load_recipe
from tests import media


def caption_for(record: Record) -> StructuredCaption:
    name = Path(record.clip.source_uri).stem
    return StructuredCaption(
        dense=f"A scene from {name} with moving shapes.",
        main_object="A bright square moves across the frame.",
        background="A plain dark background.",
        camera="A static eye-level shot.",
        style="Flat synthetic colours under even light.",
        action="The square slides from left to right.",
    )


def build_run(root: Path, clips: int) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    for i in range(clips):
        media.make_video(src / f"c{i:02d}.mp4", seconds=1.2, width=160, height=120)
    out = root / "run"
    report = run_build(load_recipe("demo"), list_sources(str(src)), str(out), executor="local")
    assert report.records_ok == clips
    # The caption stage is another issue's: give the records machine text here.
    run_dir = RunDir(str(out))
    for record in list(run_dir.records()):
        run_dir.save_record(
            record.model_copy(
                update={"caption": caption_for(record), "short_prompt": "a square slides"}
            )
        )
    return out


def scripted_review(records: list[Record]) -> list[Reviewed]:
    """accept, edit, reject, leave pending, in turn."""
    items = []
    for i, record in enumerate(sorted(records, key=lambda r: r.clip_id)):
        kind = ("accepted", "edited", "rejected", "pending")[i % 4]
        edits = (
            {"dense": f"Human text for clip {i}.", "short_prompt": f"human prompt {i}"}
            if kind == "edited"
            else {}
        )
        items.append(Reviewed(record, ReviewState(status=kind, reviewer="ann", edits=edits)))
    return items


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("export"), clips=8)


def test_export_exactly_once_with_human_text(run: Path, tmp_path: Path) -> None:
    records = list(RunDir(str(run)).records())
    items = scripted_review(records)
    shards = tmp_path / "shards"
    report = export_shards(items, str(shards), shard_size_mb=64)
    wanted = [i for i in items if i.review.status in ("accepted", "edited")]
    assert report.new_rows == len(wanted) == 4
    assert report.not_exported == {"rejected": 2, "pending": 2}
    assert verify_shards(str(shards)) == []
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == 4
    assert all(s["schema_version"] and len(s["sha256"]) == 64 for s in manifest["shards"])

    rows = [r for s in manifest["shards"] for r in pq.read_table(shards / s["path"]).to_pylist()]
    by_id = {r["clip_id"]: r for r in rows}
    for item in wanted:
        row = by_id[item.record.clip_id]
        if item.review.status == "edited":
            assert row["caption"]["dense"] == item.review.edits["dense"]
            assert row["short_prompt"] == item.review.edits["short_prompt"]
            assert row["machine_caption"]["dense"] == item.record.caption.dense  # type: ignore[union-attr]
            assert row["machine_short_prompt"] == "a square slides"
        else:
            assert row["caption"]["dense"] == item.record.caption.dense  # type: ignore[union-attr]
            assert row["machine_caption"] is None
        assert row["structured_caption"].startswith("1. Dense caption: ")
        # embedded payloads: the four JPEG keyframes travel inside the shard
        payloads = {kv["key"]: kv["value"] for kv in row["payloads"]}
        assert len(payloads) == 4 and all(v[:2] == b"\xff\xd8" for v in payloads.values())

    # a second export adds nothing; after more reviews it adds only the new ones
    again = export_shards(items, str(shards))
    assert again.new_rows == 0 and again.skipped_already_exported == 4
    later = [
        Reviewed(i.record, ReviewState(status="accepted", reviewer="rev"))
        if i.review.status == "pending"
        else i
        for i in items
    ]
    third = export_shards(later, str(shards))
    assert third.new_rows == 2 and third.total_rows == 6
    assert verify_shards(str(shards)) == []
    ids = [
        r
        for s in json.loads((shards / "_manifest.json").read_text())["shards"]
        for r in pq.read_table(shards / s["path"], columns=["clip_id"])
        .column("clip_id")
        .to_pylist()
    ]
    assert len(ids) == len(set(ids)) == 6


def test_reference_mode_and_shard_size(run: Path, tmp_path: Path) -> None:
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    report = export_shards(items, str(shards), embed_payloads=False, shard_size_mb=0.000001)
    assert len(report.new_shards) == 8, "a tiny target gives one record per shard"
    assert verify_shards(str(shards)) == []
    row = pq.read_table(shards / report.new_shards[0]).to_pylist()[0]
    assert row["payloads"] == [] and row["keyframes"]["frames"][0]["uri"].startswith(str(run))


def test_verify_catches_tampering_and_orphans(run: Path, tmp_path: Path) -> None:
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    report = export_shards(items, str(shards), shard_size_mb=0.000001)
    first = shards / report.new_shards[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    (shards / "none" / "part-09999.parquet").write_bytes(b"PAR1")
    problems = verify_shards(str(shards))
    assert any("sha256" in p for p in problems)
    assert any("does not list" in p for p in problems)


KILL_SCRIPT = """
import sys
from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import ReviewState
from any2capins.workflows.export import Reviewed, export_shards
items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(sys.argv[1]).records()]
export_shards(items, sys.argv[2], shard_size_mb=0.000001)
"""


def test_sigkill_mid_export_leaves_no_partial_shard(tmp_path: Path) -> None:
    run = build_run(tmp_path, clips=24)
    shards = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), str(shards)])
    deadline = time.monotonic() + 120
    while not list(shards.glob("*/part-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # whatever is visible under a shard name is whole: it reads, and its rows are all there
    for path in shards.glob("*/part-*.parquet"):
        assert pq.read_table(path).num_rows == 1
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), str(shards)], check=True)
    assert verify_shards(str(shards)) == []
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == 24
    assert not list(shards.rglob(".tmp-*"))


def test_dataset_card(run: Path, tmp_path: Path) -> None:
    items = scripted_review(list(RunDir(str(run)).records()))
    shards = tmp_path / "shards"
    export_shards(items, str(shards))
    review = {  # the shape of workflows.review.review_stats
        "items": 8,
        "queue": {"all": {"pending": 2, "accepted": 2, "edited": 2, "rejected": 2}},
        "reviews": 6,
        "adjudications": 0,
        "rates": {"accept": 1 / 3, "reject": 1 / 3, "edit": 1 / 3},
        "edit_rate_per_component": {"dense": 0.5, "camera": 0.0},
        "annotators": {"ann": {"reviews": 6}},
        "agreement": {
            "items": 2,
            "decision_agreement": 0.5,
            "kappa": 0.0,
            "components": {"dense": {"pairs": 1, "identical": 1.0, "mean_edit_distance": 0.0}},
        },
        "root": "/home/someone/private/run",
    }
    stats = write_card(str(shards), review)
    card = (shards / "README.md").read_text()
    assert "records: **4**" in card and "rejected 2" in card
    assert "decision rates: accept 33.3%, edit 33.3%, reject 33.3%" in card
    assert "| dense | 50.0% |" in card and "Cohen's kappa 0.00" in card
    assert "6 by 1 person;" in card and "ann" not in card.split("## Review")[1].split("##")[0]
    assert "/home/someone" not in card, "local paths stay out of a publishable card"
    for png in ("caption_words.png", "prompt_words.png", "camera_labels.png"):
        assert (shards / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats["edited_components"]["dense"] == 2
    assert stats["edited_components"]["short_prompt"] == 2
    assert len(stats["caption_words"]) == 4 and all(w > 20 for w in stats["caption_words"])


READER_SCRIPT = """
import json, sys
from torch.utils.data import DataLoader
from any2capins.workflows.export import ShardDataset
seen = []
shuffle = sys.argv[2] == "shuffle"
for epoch in range(2):
    for rank in range(2):
        ds = ShardDataset(sys.argv[1], rank=rank, world_size=2, shuffle=shuffle, seed=7)
        ds.set_epoch(epoch)
        for sample in DataLoader(ds, batch_size=None, num_workers=2):
            shape = list(sample["keyframes"].shape)
            seen.append([epoch, rank, sample["clip_id"], shape, sample["short_prompt"]])
print(json.dumps(seen))
"""


@pytest.mark.parametrize(
    ("shard_size_mb", "row_group_rows", "order"),
    [
        (64, 256, "manifest"),  # one shard, one row group: every 4th row each
        (0.000001, 256, "manifest"),  # a shard per record: whole shards each
        (64, 2, "manifest"),  # one shard, four row groups: a group each
        (64, 3, "shuffle"),  # three groups for four readers: rows again, shuffled
        (0.000001, 256, "shuffle"),
    ],
)
def test_torch_reader_two_workers_two_ranks_exactly_once(
    run: Path, tmp_path: Path, shard_size_mb: float, row_group_rows: int, order: str
) -> None:
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards), shard_size_mb=shard_size_mb, row_group_rows=row_group_rows)
    assert verify_shards(str(shards)) == []
    out = subprocess.run(
        [sys.executable, "-c", READER_SCRIPT, str(shards), order],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for epoch in (0, 1):
        counts = Counter(clip for e, _, clip, _, _ in seen if e == epoch)
        assert sorted(counts) == sorted(i.record.clip_id for i in items)
        assert set(counts.values()) == {1}
    assert all(shape[0] == 4 and shape[3] == 3 for *_, shape, _ in seen)
    assert {rank for _, rank, *_ in seen} == {0, 1}


def _order(shards: Path, epoch: int, **kwargs: object) -> list[str]:
    from any2capins.workflows.export.reader import ShardDataset

    ds = ShardDataset(str(shards), decode=False, **kwargs)  # type: ignore[arg-type]
    ds.set_epoch(epoch)
    return [sample["clip_id"] for sample in ds]


def test_reader_shuffles_per_epoch_reproducibly(run: Path, tmp_path: Path) -> None:
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards), row_group_rows=2)
    manifest_order = sorted(i.record.clip_id for i in items)  # one shard, rows by clip id
    assert _order(shards, 0) == _order(shards, 5) == manifest_order
    epochs = [_order(shards, e, shuffle=True, seed=1, shuffle_buffer=3) for e in range(4)]
    assert all(sorted(e) == manifest_order for e in epochs)
    assert epochs[0] == _order(shards, 0, shuffle=True, seed=1, shuffle_buffer=3)
    assert len({tuple(e) for e in epochs}) > 1, "each epoch gets its own order"
    assert epochs[0] != _order(shards, 0, shuffle=True, seed=2, shuffle_buffer=3)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        _order(shards, 0, shuffle=True, shuffle_buffer=0)


def test_reader_reads_only_its_row_groups(run: Path, tmp_path: Path) -> None:
    from any2capins.workflows.export.reader import ShardDataset, assign_units

    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards), row_group_rows=3)
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert [s["row_groups"] for s in manifest["shards"]] == [[3, 3, 2]]
    ds = ShardDataset(str(shards), decode=False)
    assert [u.rows for u in ds.units()] == [3, 3, 2] and ds.num_records == 8
    # two readers: whole groups; four readers: every 4th row of every group
    assert [u.group for u in assign_units(ds.units(), 1, 2)[0]] == [1]
    assert assign_units(ds.units(), 1, 4) == (ds.units(), 1)
    read: list[int] = []
    original = ShardDataset._read

    def spy(self: ShardDataset, unit: object) -> object:
        read.append(unit.group)  # type: ignore[attr-defined]
        return original(self, unit)  # type: ignore[arg-type]

    ShardDataset._read = spy  # type: ignore[method-assign,assignment]
    try:
        mine = [s["clip_id"] for s in ShardDataset(str(shards), decode=False, rank=0, world_size=2)]
    finally:
        ShardDataset._read = original  # type: ignore[method-assign]
    assert read == [0, 2] and len(mine) == 5

    # a manifest from before row groups were listed: the reader takes them from the footers
    for shard in manifest["shards"]:
        del shard["row_groups"]
    (shards / "_manifest.json").write_text(json.dumps(manifest))
    assert [u.rows for u in ShardDataset(str(shards), decode=False).units()] == [3, 3, 2]
    assert verify_shards(str(shards)) == []
    manifest["shards"][0]["row_groups"] = [4, 4]
    (shards / "_manifest.json").write_text(json.dumps(manifest))
    assert any("row groups [3, 3, 2]" in p for p in verify_shards(str(shards)))


def test_hf_datasets_loads_the_shards(run: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards))
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(shards / "*" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert ds.num_rows == 8
    assert set(ds["clip_id"]) == {i.record.clip_id for i in items}
    assert ds[0]["caption"]["dense"].startswith("A scene from")


def test_shards_verify_cli(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from any2capins.workflows.cli import app

    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards))
    runner = CliRunner()
    ok = runner.invoke(app, ["shards", "verify", str(shards), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"ok": True, "problems": []}
    next(shards.glob("*/*.parquet")).write_bytes(b"garbage")
    bad = runner.invoke(app, ["shards", "verify", str(shards), "--json"])
    assert bad.exit_code == 1 and not json.loads(bad.stdout)["ok"]


def test_one_export_at_a_time_per_folder(run: Path, tmp_path: Path) -> None:
    from any2capins.pipeline.storage import Storage
    from any2capins.workflows.export import ExportError

    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    leftover = shards / "none" / ".tmp-killed"
    with Storage(str(shards)).exclusive("held by this test"):
        # a writer holding the folder: its temporary is not touched by a second export
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half a shard")
        with pytest.raises(ExportError, match="another export is writing"):
            export_shards(items, str(shards))
        assert leftover.exists(), "nothing is touched while another export holds the folder"
    # the holder is gone (as if killed): the next export sweeps its temporary
    report = export_shards(items, str(shards))
    assert report.new_rows == 8 and not leftover.exists()
