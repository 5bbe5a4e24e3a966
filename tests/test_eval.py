"""``any2cap eval captions``: the metrics against hand-computed values, the input formats,
review edits as references, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from any2capins.schemas import CAPTION_COMPONENTS
from any2capins.workflows.cli import app
from any2capins.workflows.eval import bleu, evaluate, load_entries, meteor, rouge_l, tokens
from tests.openai_server import make_record

runner = CliRunner()


def test_bleu2_by_hand() -> None:
    cand = tokens("the cat sat on the mat")
    ref = tokens("the cat is on the mat")
    # unigrams: 5 of 6 match (sat); bigrams: the-cat, on-the, the-mat = 3 of 5; equal lengths
    assert bleu([(cand, ref)]) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert bleu([(ref, ref)]) == pytest.approx(1.0)
    # brevity penalty: a 3-word candidate against a 6-word reference
    short = tokens("the cat is")
    assert bleu([(short, ref)]) == pytest.approx(math.exp(1 - 6 / 3) * 1.0)
    assert bleu([(tokens("dog"), ref)]) == 0.0


def test_rouge_l_by_hand() -> None:
    cand = tokens("police killed the gunman")
    ref = tokens("police kill the gunman")
    # LCS = police, the, gunman = 3; P = R = 3/4
    assert rouge_l(cand, ref) == pytest.approx(0.75)
    assert rouge_l(ref, ref) == pytest.approx(1.0)
    assert rouge_l([], ref) == 0.0


def test_meteor_exact_and_stem_matching() -> None:
    ref = tokens("a dog runs across the green field")
    assert meteor(ref, ref) == pytest.approx(1 - 0.5 * (1 / 7) ** 3)
    # "running"/"runs" and "fields"/"field" match by Porter stem
    stemmed = tokens("a dog running across the green fields")
    assert meteor(stemmed, ref) == pytest.approx(meteor(ref, ref))
    # same words, scrambled: more chunks, larger fragmentation penalty
    scrambled = tokens("the green field a dog runs across")
    assert meteor(scrambled, ref) < meteor(ref, ref)
    # by hand: 3 of 4 candidate words match 3 of 6 reference words in 2 chunks
    cand = tokens("a cat runs across")
    ref2 = tokens("a dog runs across the field")
    p, r = 3 / 4, 3 / 6
    fmean = p * r / (0.9 * p + 0.1 * r)
    assert meteor(cand, ref2) == pytest.approx(fmean * (1 - 0.5 * (2 / 3) ** 3))


def _line(clip_id: str, text: str, prompt: str) -> dict[str, Any]:
    return {
        "clip_id": clip_id,
        "caption": dict.fromkeys(CAPTION_COMPONENTS, text),
        "short_prompt": prompt,
    }


def test_evaluate_jsonl_and_integrity(tmp_path: Path) -> None:
    long = " ".join(["A woman in a red coat walks along a quiet street past small shops."] * 4)
    prompt = "A woman in a red coat strolls past small shops on a quiet afternoon street."
    pred = tmp_path / "pred.jsonl"
    ref = tmp_path / "ref.jsonl"
    pred.write_text(
        "\n".join(
            json.dumps(x)
            for x in (
                _line("a", long, prompt),
                _line("b", "- a list\n- of things", prompt),  # fails the structure checks
                _line("c", long, prompt),  # no reference
            )
        )
    )
    ref.write_text("\n".join(json.dumps(_line(c, long, prompt)) for c in ("a", "b", "d")))
    result = evaluate(load_entries(str(pred)), load_entries(str(ref)), bounds="grounded")
    assert (result["paired"], result["pred_only"], result["ref_only"]) == (2, 1, 1)
    assert result["integrity"]["ok"] == 2 and result["integrity"]["total"] == 3
    assert set(result["integrity"]["failing_parts"]) == set(CAPTION_COMPONENTS)
    sp = result["metrics"]["short_prompt"]
    assert sp["pairs"] == 2 and sp["bleu2"] == pytest.approx(1.0) and sp["rouge_l"] == 1.0
    dense = result["metrics"]["dense"]
    assert dense["pairs"] == 2 and 0 < dense["rouge_l"] < 1  # clip b's list differs
    assert result["short_prompt"]["mean_words"] == 15


def test_run_directory_with_review_edits_as_reference(tmp_path: Path) -> None:
    pred_run, ref_run = tmp_path / "pred", tmp_path / "ref"
    for run, edited in ((pred_run, False), (ref_run, True)):
        (run / "records").mkdir(parents=True)
        for i in range(2):
            rec = make_record(tmp_path / "data", i)
            from any2capins.schemas import StructuredCaption

            rec.caption = StructuredCaption(
                **dict.fromkeys(CAPTION_COMPONENTS, "A dog runs on grass.")
            )
            rec.short_prompt = "A dog runs across a green lawn on a sunny day."
            if edited and i == 0:
                rec.review.status = "edited"
                rec.review.edits = {"dense": "A brown dog sprints across short green grass."}
            (run / "records" / f"{rec.clip_id}.json").write_text(rec.model_dump_json())
    result = evaluate(load_entries(str(pred_run)), load_entries(str(ref_run)))
    assert result["paired"] == 2
    assert result["metrics"]["style"]["rouge_l"] == pytest.approx(1.0)
    assert result["metrics"]["dense"]["rouge_l"] < 1.0  # the edit is the reference
    unedited = evaluate(load_entries(str(pred_run)), load_entries(str(ref_run), use_edits=False))
    assert unedited["metrics"]["dense"]["rouge_l"] == pytest.approx(1.0)


def test_cli(tmp_path: Path) -> None:
    text = " ".join(["A man in a grey jacket waits beside a bicycle near the cafe."] * 4)
    line = json.dumps(
        _line(
            "a",
            text,
            "A man in a grey jacket waits by his bicycle outside a small cafe while people pass by on the wet street.",
        )
    )
    (tmp_path / "p.jsonl").write_text(line + "\n")
    result = runner.invoke(
        app,
        [
            "eval",
            "captions",
            "--pred",
            str(tmp_path / "p.jsonl"),
            "--ref",
            str(tmp_path / "p.jsonl"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metrics"]["overall"]["bleu2"] == pytest.approx(1.0)
    assert data["integrity"]["rate"] == 1.0
    result = runner.invoke(
        app, ["eval", "captions", "--pred", str(tmp_path / "p.jsonl"), "--ref", str(tmp_path)]
    )
    assert result.exit_code == 2 and "records/" in result.output
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    result = runner.invoke(
        app,
        [
            "eval",
            "captions",
            "--pred",
            str(tmp_path / "bad.jsonl"),
            "--ref",
            str(tmp_path / "p.jsonl"),
        ],
    )
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output
    result = runner.invoke(
        app,
        [
            "eval",
            "captions",
            "--pred",
            str(tmp_path / "p.jsonl"),
            "--ref",
            str(tmp_path / "p.jsonl"),
        ],
    )
    assert result.exit_code == 0 and "BLEU-2" in result.stdout
