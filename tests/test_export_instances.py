"""Export of one row per accepted instance: the edited instance prompt wins, a record
without instance planning goes out as one implicit instance, incremental re-export by
instance id, HF datasets and the training reader read the new columns, and the dataset
card opens with the paper's Table 1 over the instances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    Record,
    ReviewState,
    make_instance_id,
    reason_category,
)
from any2capins.workflows.export import Reviewed, export_shards, verify_shards, write_card
from any2capins.workflows.export.run import export_run
from any2capins.workflows.review import open_store
from tests.instance_fixtures import FLAGS, PROMPTS, make_instance_run
from tests.review_fixtures import make_run

HUMAN_CAMERA = "The camera trucks right past a grey cube on a glowing gradient."
HUMAN_DENSE = "A grey square slides right across a gradient while a white block stays put."


def _records(run: Path) -> list[Record]:
    return sorted(RunDir(str(run)).records(), key=lambda r: r.clip.start_s)


def _review(records: list[Record], clip2: str = "rejected") -> list[Reviewed]:
    """clip 0 edited (its camera prompt and the dense caption), 1 accepted, 2 as given,
    3 (no suitable instance) accepted."""
    edits = {"short_prompt:camera": HUMAN_CAMERA, "dense": HUMAN_DENSE}
    states = [("edited", edits), ("accepted", {}), (clip2, {}), ("accepted", {})]
    return [
        Reviewed(r, ReviewState(status=s, reviewer="ann", edits=e))
        for r, (s, e) in zip(records, states, strict=True)
    ]


def _rows(shards: Path) -> list[dict[str, Any]]:
    manifest = json.loads((shards / "_manifest.json").read_text())
    return [r for s in manifest["shards"] for r in pq.read_table(shards / s["path"]).to_pylist()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_instance_run(tmp_path_factory.mktemp("instances") / "run")


def test_one_row_per_accepted_instance(run: Path, tmp_path: Path) -> None:
    records = _records(run)
    shards = tmp_path / "shards"
    report = export_shards(_review(records), str(shards))
    assert report.new_rows == 6 and report.no_instances == 1 and report.incomplete == []
    assert report.not_exported == {"rejected": 1}
    assert verify_shards(str(shards)) == []
    rows = _rows(shards)
    by_key = {(r["clip_id"], r["partition"]): r for r in rows}
    assert sorted(by_key) == sorted(
        [(records[0].clip_id, k) for k in ("camera", "depth", "identities", "camera+depth")]
        + [(records[1].clip_id, k) for k in ("depth", "pose")]
    )
    manifest = json.loads((shards / "_manifest.json").read_text())
    assert sorted(s["partition"] for s in manifest["shards"]) == [
        "camera",
        "camera+depth",
        "depth",
        "identities",
        "pose",
    ]
    for (clip_id, key), row in by_key.items():
        types = key.split("+")
        assert row["instance_id"] == make_instance_id(clip_id, types)
        assert row["condition_types"] == types and row["composition"] == ("+" in key)
        # the row carries its instance's conditions only, and their payloads with the keyframes
        present = [n for n in ("depth", "pose", "identities", "camera") if row["conditions"][n]]
        assert sorted(present) == sorted(types)
        payloads = {kv["key"] for kv in row["payloads"]}
        assert sum("/keyframes/" in u for u in payloads) == 3
        assert {u.split("/")[-2] for u in payloads} == {"keyframes", *types}
        assert row["structured_caption"].startswith("1. Dense caption: " + row["caption"]["dense"])
    edited = by_key[(records[0].clip_id, "camera")]
    assert edited["short_prompt"] == HUMAN_CAMERA
    assert edited["machine_short_prompt"] == PROMPTS["camera"]
    assert edited["caption"]["dense"] == HUMAN_DENSE
    assert edited["machine_caption"]["dense"] == records[0].caption.dense  # type: ignore[union-attr]
    assert edited["review"]["status"] == "edited"
    # the clip's other instances share the human caption and keep their own machine prompt
    depth = by_key[(records[0].clip_id, "depth")]
    assert depth["short_prompt"] == PROMPTS["depth"] and depth["caption"]["dense"] == HUMAN_DENSE
    untouched = by_key[(records[1].clip_id, "pose")]
    assert untouched["short_prompt"] == PROMPTS["pose"] and untouched["machine_caption"] is None
    assert untouched["machine_short_prompt"] is None
    # suitability and cross-check flags ride along
    suit = {kv["key"]: kv["value"] for kv in edited["suitability"]}
    assert suit["pose"]["suitable"] is False and "no person" in suit["pose"]["reason"]
    assert {kv["key"]: kv["value"] for kv in suit["pose"]["measured"]} == {
        "frames_with_people": 0.25
    }
    assert [f["check"] for f in edited["checks"]] == [f.check for f in FLAGS]
    assert by_key[(records[1].clip_id, "depth")]["checks"] == []

    # incremental by instance id: nothing new; then clip 2 is accepted: its one instance
    again = export_shards(_review(records), str(shards))
    assert again.new_rows == 0 and again.skipped_already_exported == 6
    later = export_shards(_review(records, clip2="accepted"), str(shards))
    assert later.new_rows == 1 and later.skipped_already_exported == 6 and later.total_rows == 7
    assert verify_shards(str(shards)) == []
    ids = [r["instance_id"] for r in _rows(shards)]
    assert len(ids) == len(set(ids)) == 7


def test_a_record_without_instance_planning_is_one_implicit_instance(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", n=4)  # condition sets: all four, depth+pose, ..., none
    records = _records(run)
    assert all(r.instances is None for r in records)
    shards = tmp_path / "shards"
    items = [Reviewed(r, ReviewState(status="accepted")) for r in records]
    items[1] = Reviewed(
        records[1], ReviewState(status="edited", edits={"short_prompt": "A human prompt."})
    )
    report = export_shards(items, str(shards))
    assert report.new_rows == 4 and verify_shards(str(shards)) == []
    rows = {r["clip_id"]: r for r in _rows(shards)}
    for i, record in enumerate(records):
        row = rows[record.clip_id]
        types = sorted(record.conditions.present())
        assert row["condition_types"] == types
        assert row["instance_id"] == make_instance_id(record.clip_id, types or ["none"])
        assert row["partition"] == ("+".join(types) or "none")
        assert row["composition"] == (len(types) > 1)
        if i == 1:
            assert row["short_prompt"] == "A human prompt."
            assert row["machine_short_prompt"] == record.short_prompt
        else:
            assert row["short_prompt"] == record.short_prompt
    assert rows[records[0].clip_id]["partition"] == "camera+depth+identities+pose"
    assert rows[records[3].clip_id]["partition"] == "none"
    assert export_shards(items, str(shards)).skipped_already_exported == 4


def test_a_missing_instance_prompt_keeps_the_clip_out(run: Path, tmp_path: Path) -> None:
    records = _records(run)
    first = records[0]
    assert first.instances is not None
    blank = first.model_copy(
        update={
            "instances": [
                i.model_copy(update={"short_prompt": None}) if i.key == "depth" else i
                for i in first.instances
            ]
        }
    )
    shards = tmp_path / "shards"
    report = export_shards([Reviewed(blank, ReviewState(status="accepted"))], str(shards))
    assert report.new_rows == 0
    assert [c for c, _ in report.incomplete] == [first.clip_id]
    assert "short prompt for depth" in report.incomplete[0][1]
    # the reviewer wrote it: all four instances go out
    fixed = ReviewState(status="edited", edits={"short_prompt:depth": "A written prompt."})
    report = export_shards([Reviewed(blank, fixed)], str(shards))
    assert report.new_rows == 4


def test_hf_datasets_and_the_reader_see_the_instances(run: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = _records(run)
    shards = tmp_path / "shards"
    export_shards(_review(records, clip2="accepted"), str(shards))
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(shards / "*" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert ds.num_rows == 7
    assert len(set(ds["instance_id"])) == 7
    assert sorted(ds["partition"]) == sorted(
        ["camera", "depth", "identities", "camera+depth", "depth", "pose", "camera"]
    )
    row = next(r for r in ds if r["short_prompt"] == HUMAN_CAMERA)
    assert row["condition_types"] == ["camera"] and row["composition"] is False
    assert row["checks"][0]["check"] == FLAGS[0].check
    assert {kv["key"] for kv in row["suitability"]} == {"camera", "depth", "identities", "pose"}

    import torch

    from any2capins.workflows.export.reader import ShardDataset

    samples = list(ShardDataset(str(shards), decode=False))
    assert len(samples) == 7 and len({s["instance_id"] for s in samples}) == 7
    composed = next(s for s in samples if s["partition"] == "camera+depth")
    assert composed["condition_types"] == ["camera", "depth"] and composed["composition"]
    assert composed["conditions"] == ["depth", "camera"]
    assert composed["suitability"]["pose"] is False
    assert [c["check"] for c in composed["checks"]] == [f.check for f in FLAGS]
    # decoding reads the embedded keyframes and the instance's own condition payloads
    decoded = next(iter(ShardDataset(str(shards), partitions=["identities"])))
    assert decoded["keyframes"].shape[0] == 3
    assert any(k.startswith("identities.") for k in decoded)
    assert not any(k.startswith(("depth.", "camera.", "pose.")) for k in decoded)
    # the unvalidated fast path yields the same samples, decoded or not
    for decode, parts in ((False, None), (True, ["identities"])):
        checked = list(ShardDataset(str(shards), decode=decode, partitions=parts))
        plain = list(ShardDataset(str(shards), decode=decode, partitions=parts, validate=False))
        assert [sorted(s) for s in plain] == [sorted(s) for s in checked]
        for a, b in zip(plain, checked, strict=True):
            for key, value in b.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(a[key], value), key
                else:
                    assert a[key] == value, key


def _words(text: str) -> int:
    return len(text.split())


def test_card_opens_with_table_one(run: Path, tmp_path: Path) -> None:
    records = _records(run)
    shards = tmp_path / "shards"
    export_shards(_review(records, clip2="accepted"), str(shards))
    stats = write_card(str(shards), {})
    card = (shards / "README.md").read_text()

    def caption_words(i: int) -> int:
        caption = records[i].caption
        assert caption is not None
        dense = HUMAN_DENSE if i == 0 else caption.dense
        return _words(dense) + sum(_words(getattr(caption, c)) for c in CAPTION_COMPONENTS[1:])

    prompt0 = {**PROMPTS, "camera": HUMAN_CAMERA}
    # (clip, key) of every exported instance; clip 0 has two identities
    members = {
        "depth": [(0, "depth"), (1, "depth")],
        "pose": [(1, "pose")],
        "identities": [(0, "identities")],
        "camera": [(0, "camera"), (2, "camera")],
        "camera+depth": [(0, "camera+depth")],
    }
    conditions = {"depth": 2, "pose": 1, "identities": 2, "camera": 2, "camera+depth": 2}

    def prompt(clip: int, key: str) -> str:
        return prompt0[key] if clip == 0 else PROMPTS[key]

    expected = []
    for key, ms in members.items():
        expected.append(
            {
                "type": key,
                "composition": "+" in key,
                "instances": len(ms),
                "conditions": conditions[key],
                "prompt_words": round(sum(_words(prompt(c, k)) for c, k in ms) / len(ms), 1),
                "caption_words": round(sum(caption_words(c) for c, _ in ms) / len(ms), 1),
            }
        )
    every = [m for ms in members.values() for m in ms]
    expected.append(
        {
            "type": "total",
            "composition": False,
            "instances": 7,
            "conditions": 9,
            "prompt_words": round(sum(_words(prompt(c, k)) for c, k in every) / 7, 1),
            "caption_words": round(sum(caption_words(c) for c, _ in every) / 7, 1),
        }
    )
    assert stats["table"] == expected
    # the card opens with it: the first table of the file is Table 1
    first_table = card.split("\n| ")[1].split("\n\n")[0]
    assert first_table.startswith("condition | instances | conditions | avg. short prompt words")
    assert card.index("| depth | 2 | 2 |") < card.index("| camera+depth (composition) | 1 | 2 |")
    total = expected[-1]
    assert (
        f"| **total** | 7 | 9 | {total['prompt_words']:.1f} | {total['caption_words']:.1f} |"
        in card
    )
    assert card.index("| **total** |") < card.index("## Suitability") < card.index("## Review")
    # suitability: what each rule turned away among the exported clips, by reason category
    assert stats["suitability"]["pose"] == {
        "clips": 2,
        "turned_away": 1,
        "reasons": {"no person visible in N of N frames": 1},
    }
    assert stats["suitability"]["identities"]["reasons"] == {"only N distinct subject": 1}
    assert "| pose | 2 | 1 | no person visible in N of N frames: 1 |" in card
    # cross-check flags per check and instance condition type
    assert stats["flags"]["camera_motion"] == {
        "clips": 1,
        "instances": {"camera": 1, "depth": 1, "identities": 1, "camera+depth": 1},
    }
    assert "| camera_motion | 1 | 1 | 1 | 1 | 1 |" in card
    assert "records: **3** clips as **7** instances" in card
    assert "## Camera motion labels" in card and "truck right: 2" in card


def test_reason_category() -> None:
    assert reason_category("only 1 distinct subject, need 2") == "only N distinct subject"
    assert reason_category("residual 12.5 deg > 5 deg (estimated)") == "residual N deg > N deg"
    assert reason_category("") == "(no reason given)"


def test_export_run_after_instance_review(tmp_path: Path) -> None:
    """The real path: review store decisions on instance fields -> any2cap export."""
    run = make_instance_run(tmp_path / "run")
    records = _records(run)
    store = open_store(str(run))
    store.ingest()
    ann = store.add_user("ann", "annotator", None)
    while (view := store.claim(ann)) is not None:
        if view.clip_id == records[0].clip_id:
            store.decide(
                ann, view.id, "edit", view.version, edits={"short_prompt:camera+depth": "Human."}
            )
        elif view.clip_id == records[2].clip_id:
            store.decide(ann, view.id, "reject", view.version, reason="bad_clip")
        else:
            store.decide(ann, view.id, "accept", view.version)
    store.close()
    shards = tmp_path / "shards"
    report = export_run(str(run), str(shards))
    data = report.as_json()
    assert data["new_rows"] == 6 and data["no_instances"] == 1 and data["incomplete"] == []
    rows = {(r["clip_id"], r["partition"]): r for r in _rows(shards)}
    composed = rows[(records[0].clip_id, "camera+depth")]
    assert composed["short_prompt"] == "Human."
    assert composed["machine_short_prompt"] == PROMPTS["camera+depth"]
    assert composed["review"]["edits"] == [{"key": "short_prompt:camera+depth", "value": "Human."}]
    assert rows[(records[0].clip_id, "camera")]["machine_short_prompt"] is None
    card = (shards / "README.md").read_text()
    assert "| short_prompt | 33.3% |" in card  # edit rate: 1 of 3 kept reviews
    assert "| short_prompt:camera+depth | 100.0% |" in card
    assert export_run(str(run), str(shards)).as_json()["new_rows"] == 0
