"""Closing the review loop: a demo build, a scripted review in the real store, then

- ``any2cap eval captions --run``: machine text against the human final text, read from the
  store (the records' review block stays default), per component, overall and per prompt;
- ``any2cap review writeback``: the decisions into the run's records, atomically, once;
- ``any2cap export --corrections``: one row per edited or rejected field, as Parquet that
  HF ``datasets`` reads.

On SQLite and PostgreSQL (the demo run), and on records with instances (per-instance
short prompts, ``short_prompt:<key>``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import CAPTION_COMPONENTS, ReviewState
from any2capins.workflows.cli import app
from any2capins.workflows.eval import bleu, evaluate, load_entries, meteor, rouge_l, tokens
from any2capins.workflows.review import open_store
from tests.instance_fixtures import make_instance_run
from tests.review_fixtures import fresh_pg_database
from tests.test_export_run import copy_run, demo_build, scripted_review

runner = CliRunner()


def invoke(*args: str) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, [*args, "--json"])
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, data, " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_build(tmp_path_factory.mktemp("review-loop"))


@contextlib.contextmanager
def store_url(kind: str) -> Iterator[list[str]]:
    """``[]`` (the run's SQLite store) or ``["--db", URL]`` of a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield []
        return
    with fresh_pg_database("loop") as url:
        yield ["--db", url]


def expected(done: dict[str, dict[str, Any]], part: str) -> dict[str, float]:
    """The metrics of ``part`` computed here from the scripted review (machine vs human)."""
    pairs = []
    for d in done.values():
        if d["decision"] == "reject":
            continue
        record, edits = d["record"], d["edits"]
        if part == "short_prompt":
            machine = record.short_prompt
        elif part == "overall":
            machine = " ".join(getattr(record.caption, c) for c in CAPTION_COMPONENTS)
        else:
            machine = getattr(record.caption, part)
        if part == "overall":
            human = " ".join(edits.get(c, getattr(record.caption, c)) for c in CAPTION_COMPONENTS)
        else:
            human = edits.get(part, machine)
        pairs.append((tokens(machine), tokens(human)))
    n = len(pairs)
    return {
        "pairs": n,
        "changed": sum(c != r for c, r in pairs),
        "bleu2": round(bleu(pairs), 4),
        "rouge_l": round(sum(rouge_l(c, r) for c, r in pairs) / n, 4),
        "meteor": round(sum(meteor(c, r) for c, r in pairs) / n, 4),
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_eval_writeback_and_corrections_after_a_review(
    built: Path, tmp_path: Path, kind: str
) -> None:
    run = copy_run(built, tmp_path / "run")
    with store_url(kind) as db:
        store = open_store(run_dir=str(run), db_url=db[1] if db else None)
        done = scripted_review(store)
        store.close()
        records = {r.clip_id: r for r in RunDir(str(run)).records()}
        assert all(r.review == ReviewState() for r in records.values()), "no edits on disk"

        # eval: the machine text against the human final text, from the store
        code, result, err = invoke("eval", "captions", "--run", str(run), *db)
        assert code == 0, err
        review = result["review"]
        assert review["states"] == {"accepted": 2, "edited": 2, "pending": 2, "rejected": 2}
        assert review["compared"] == result["paired"] == 4
        assert review["edited_fields"] == {"dense": 2, "short_prompt": 2}
        metrics = result["metrics"]
        for part in (*CAPTION_COMPONENTS, "overall", "short_prompt"):
            assert metrics[part] == expected(done, part), part
        for part in ("background", "camera", "style", "action", "main_object"):
            m = metrics[part]
            assert m["changed"] == 0 and m["bleu2"] == 1.0 and m["rouge_l"] == 1.0, part
            # METEOR of identical text is 1 minus its fragmentation penalty (one chunk)
            assert 0.99 < m["meteor"] <= 1.0
        for part in ("dense", "short_prompt", "overall"):
            m = metrics[part]
            assert m["pairs"] == 4 and m["changed"] == 2, part
            assert m["bleu2"] < 1.0 and m["rouge_l"] < 1.0 and m["meteor"] < 0.99, part
        # the run's records alone (no review block) say the machine text is the reference
        plain = evaluate(load_entries(str(run)), load_entries(str(run)))
        assert plain["metrics"]["dense"]["rouge_l"] == 1.0

        # writeback: the decisions into the records, atomically, once
        code, wb, err = invoke("review", "writeback", "--run", str(run), *db)
        assert code == 0, err
        assert (wb["written"], wb["unchanged"], wb["skipped"]) == (6, 2, [])
        records = {r.clip_id: r for r in RunDir(str(run)).records()}
        for clip_id, d in done.items():
            r = records[clip_id].review
            status = {"accept": "accepted", "edit": "edited", "reject": "rejected"}
            assert r.status == status[d["decision"]]
            assert r.edits == {k: v.strip() for k, v in d["edits"].items()}
            assert r.reviewer in ("ann", "bob") and r.decided_at is not None
            assert r.reason == ("hallucination" if d["decision"] == "reject" else None)
        pending = set(records) - set(done)
        assert len(pending) == 2 and all(records[c].review == ReviewState() for c in pending)
        assert not list((run / "records").glob(".tmp-*"))
        code, again, _ = invoke("review", "writeback", "--run", str(run), *db)
        assert code == 0 and (again["written"], again["unchanged"]) == (0, 8)
        store = open_store(run_dir=str(run), db_url=db[1] if db else None)
        report = store.ingest()
        store.close()
        assert (report.unchanged, report.changed_after_review, report.updated) == (8, 0, 0)
        # now the run directory carries the same truth: eval of its records agrees
        kept = {c for c, d in done.items() if d["decision"] != "reject"}
        machine = {c: e for c, e in load_entries(str(run), use_edits=False).items() if c in kept}
        human = {c: e for c, e in load_entries(str(run)).items() if c in kept}
        assert evaluate(machine, human)["metrics"] == metrics

        # corrections: one row per edited field, one per field of a rejected record
        out = tmp_path / "corrections"
        code, corr, err = invoke(
            "export", "--corrections", "--run", str(run), "--out", str(out), *db
        )
        assert code == 0, err
        rows = pq.read_table(corr["path"]).to_pylist()
        check_corrections(rows, done)
        assert corr["rows"] == len(rows) == 2 * 2 + 2 * 7
        assert (corr["edit_rows"], corr["reject_rows"], corr["clips"]) == (4, 14, 4)
        from datasets import load_dataset  # type: ignore[import-untyped]

        ds = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
        assert len(ds) == len(rows)
        assert ds[0]["clip_id"] == rows[0]["clip_id"] and ds[0]["field"] == rows[0]["field"]
        assert set(ds["decision"]) == {"edit", "reject"}
        # re-running rewrites the same rows (no duplicates)
        code, corr2, _ = invoke(
            "export", "--corrections", "--run", str(run), "--out", str(out), *db
        )
        assert code == 0 and corr2["rows"] == corr["rows"]
        assert len(list(out.iterdir())) == 1


def check_corrections(rows: list[dict[str, Any]], done: dict[str, dict[str, Any]]) -> None:
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_clip.setdefault(row["clip_id"], []).append(row)
    changed = {c: d for c, d in done.items() if d["decision"] in ("edit", "reject")}
    assert set(by_clip) == set(changed)
    for clip_id, d in changed.items():
        record = d["record"]
        got = {r["field"]: r for r in by_clip[clip_id]}
        if d["decision"] == "edit":
            assert set(got) == set(d["edits"])
            for name, text in d["edits"].items():
                row = got[name]
                assert row["human_text"] == text and row["decision"] == "edit"
                machine = record.short_prompt if name == "short_prompt" else record.caption.dense
                assert row["machine_text"] == machine and row["reason"] is None
        else:
            assert set(got) == {*CAPTION_COMPONENTS, "short_prompt"}
            for row in got.values():
                assert row["human_text"] is None and row["decision"] == "reject"
                assert row["reason"] == "hallucination"
            assert got["style"]["machine_text"] == record.caption.style
        for row in got.values():
            assert row["reviewer"] in ("ann", "bob") and row["decided_at"] is not None
            assert row["run_id"] == record.provenance.run_id
            types = sorted(record.conditions.present())
            assert row["condition_types"] == types
            if row["field"] == "short_prompt":
                assert row["instance_id"] is not None  # the implicit instance's
            else:
                assert row["instance_id"] is None and row["instance_key"] is None


def test_instance_prompts_through_eval_writeback_and_corrections(tmp_path: Path) -> None:
    run = make_instance_run(tmp_path / "run", n=4)
    store = open_store(str(run))
    assert store.ingest().added == 4
    ann = store.add_user("ann", "annotator", "a-long-password")
    decided: dict[str, dict[str, Any]] = {}
    while (item := store.claim(ann)) is not None:
        keys = [i.key for i in item.record.instances or []]
        if keys == ["camera", "depth", "identities", "camera+depth"]:
            edits = {"style": "A hand-held, grainy look.", "short_prompt:camera": "Truck right."}
            store.decide(ann, item.id, "edit", item.version, edits=edits)
            decided[item.clip_id] = {"decision": "edit", "edits": edits, "record": item.record}
        elif keys == ["camera"]:
            store.decide(
                ann, item.id, "reject", item.version, reason="contradicts_conditions", note="pan"
            )
            decided[item.clip_id] = {"decision": "reject", "record": item.record}
        else:
            store.decide(ann, item.id, "accept", item.version)
            decided[item.clip_id] = {"decision": "accept", "record": item.record}
    store.close()
    assert len(decided) == 4

    code, result, err = invoke("eval", "captions", "--run", str(run))
    assert code == 0, err
    m = result["metrics"]
    assert result["review"]["compared"] == 3  # the rejected clip has no human text
    assert result["review"]["edited_fields"] == {"short_prompt:camera": 1, "style": 1}
    # per instance key: camera was edited (its one kept pair), the others kept
    assert m["short_prompt:camera"]["pairs"] == 1 and m["short_prompt:camera"]["changed"] == 1
    assert m["short_prompt:camera"]["rouge_l"] < 1.0
    for key in ("depth", "identities", "pose", "camera+depth"):
        part = m[f"short_prompt:{key}"]
        assert part["changed"] == 0 and part["rouge_l"] == 1.0 and part["bleu2"] == 1.0, key
    assert m["short_prompt:depth"]["pairs"] == 2
    # pooled: the four prompts of clip 0 and the two of clip 1
    assert m["short_prompt"]["pairs"] == 6 and m["short_prompt"]["changed"] == 1
    assert m["style"]["changed"] == 1 and m["style"]["rouge_l"] < 1.0
    assert m["dense"]["changed"] == 0 and m["dense"]["rouge_l"] == 1.0

    code, wb, err = invoke("review", "writeback", "--run", str(run))
    assert code == 0 and wb["written"] == 4, err
    on_disk = {r.clip_id: r for r in RunDir(str(run)).records()}
    edited = next(c for c, d in decided.items() if d["decision"] == "edit")
    assert on_disk[edited].review.edits == decided[edited]["edits"]
    instances = on_disk[edited].instances
    assert instances is not None
    assert instances[0].short_prompt != "Truck right.", "machine text kept"

    # a rebuild after the review: other text is flagged, other fields are refused
    rundir = RunDir(str(run))
    accepted = next(c for c, d in decided.items() if d["decision"] == "accept" and c != edited)
    rebuilt = on_disk[accepted]
    assert rebuilt.caption is not None
    caption = rebuilt.caption.model_copy(update={"dense": "A rebuilt dense caption."})
    rundir.save_record(rebuilt.model_copy(update={"caption": caption}))
    rundir.save_record(
        on_disk[edited].model_copy(update={"instances": instances[1:], "review": ReviewState()})
    )
    code, wb2, err = invoke("review", "writeback", "--run", str(run))
    assert code == 1
    assert wb2["changed_since_review"] == [accepted]
    assert [s["clip_id"] for s in wb2["skipped"]] == [edited]
    assert "short_prompt:camera" in wb2["skipped"][0]["why"]
    # the skipped record was left as it was
    left = next(r for r in RunDir(str(run)).records() if r.clip_id == edited)
    assert left.review == ReviewState()

    out = tmp_path / "corrections"
    code, corr, err = invoke("export", "--corrections", "--run", str(run), "--out", str(out))
    assert code == 0, err
    rows = pq.read_table(corr["path"]).to_pylist()
    edit_rows = {r["field"]: r for r in rows if r["decision"] == "edit"}
    assert set(edit_rows) == {"style", "short_prompt:camera"}
    camera = edit_rows["short_prompt:camera"]
    record = decided[edited]["record"]
    instance = next(i for i in record.instances if i.key == "camera")
    assert camera["instance_id"] == instance.instance_id and camera["instance_key"] == "camera"
    assert camera["condition_types"] == ["camera"]
    assert camera["machine_text"] == instance.short_prompt
    assert camera["human_text"] == "Truck right."
    assert edit_rows["style"]["instance_id"] is None
    reject_rows = [r for r in rows if r["decision"] == "reject"]
    rejected = next(c for c, d in decided.items() if d["decision"] == "reject")
    assert {r["field"] for r in reject_rows} == {*CAPTION_COMPONENTS, "short_prompt:camera"}
    assert all(
        r["clip_id"] == rejected and r["reason"] == "contradicts_conditions" for r in reject_rows
    )
    assert all(r["note"] == "pan" and r["human_text"] is None for r in reject_rows)


def test_eval_run_arguments() -> None:
    result = runner.invoke(app, ["eval", "captions", "--run", "x", "--pred", "y"])
    assert result.exit_code == 2 and "either --run" in result.output
    result = runner.invoke(app, ["eval", "captions", "--pred", "y"])
    assert result.exit_code == 2 and "--pred and --ref" in result.output
    result = runner.invoke(app, ["eval", "captions", "--pred", "y", "--ref", "y", "--db", "z"])
    assert result.exit_code == 2 and "--db goes with --run" in result.output
