"""``any2cap eval captions``: structural integrity of predicted captions and BLEU-2, ROUGE-L
and METEOR against reference captions, per component, for the six together and for the
short prompt (the caption metrics of the Any2Caption paper).

PRED and REF are run directories (their ``records/``) or JSONL files with one record per
line (``any2cap runs records RUN --json``) or one ``{"clip_id", "caption", "short_prompt"}``
object per line. Clips are paired by clip id. A record's review edits (``review.edits``,
keyed by component, ``short_prompt`` or ``short_prompt:<instance key>``) replace the machine
text, through ``any2capins.workflows.review.text.apply_review`` (the one edit applier), so a reviewed
run is a reference for the run it was reviewed from.

``--run RUN_DIR [--db URL]`` instead compares, for every clip the review store finally
accepted or edited, the machine text (the record as the reviewers saw it) with the human
final text (the store's final edits applied), per component, overall, for the short
prompts pooled and per instance key: how far the machine was from what people kept. It
reads the store, not the records' review block.

METEOR here matches exact words, then Porter stems (snowballstemmer); WordNet synonym and
paraphrase matching are left out because their data cannot be downloaded on every machine,
so scores run slightly below the official METEOR's. Parameters alpha=0.9, beta=3,
gamma=0.5 (METEOR 1.0, as in nltk). ROUGE-L is the F-measure with beta=1.2 (coco-caption).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import snowballstemmer  # type: ignore[import-untyped]
import typer
from rich.console import Console
from rich.table import Table

from any2capins.annotators.captions import (
    GROUNDED_BOUNDS,
    MODEL_BOUNDS,
    SHORT_PROMPT,
    Bounds,
    Integrity,
    caption_integrity,
    word_count,
)
from any2capins.annotators.captions.validate import part_problems
from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import CAPTION_COMPONENTS, Record
from any2capins.workflows.review.text import apply_review, instance_key, is_prompt, machine_texts

if TYPE_CHECKING:
    from any2capins.workflows.review.store import ReviewStore

eval_app = typer.Typer(
    rich_markup_mode="markdown", help="Evaluate what a build produced.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STEMMER = snowballstemmer.stemmer("porter")
OVERALL = "overall"


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


# BLEU-2 (corpus level, one reference per candidate)
def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(pairs: list[tuple[list[str], list[str]]], max_n: int = 2) -> float:
    """Corpus BLEU with uniform weights up to ``max_n`` and the brevity penalty."""
    matched = [0] * max_n
    total = [0] * max_n
    cand_len = ref_len = 0
    for cand, ref in pairs:
        cand_len += len(cand)
        ref_len += len(ref)
        for n in range(1, max_n + 1):
            c, r = _ngrams(cand, n), _ngrams(ref, n)
            matched[n - 1] += sum(min(k, r[g]) for g, k in c.items())
            total[n - 1] += max(0, len(cand) - n + 1)
    if cand_len == 0 or any(m == 0 for m in matched):
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / max_n
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return bp * math.exp(log_p)


# ROUGE-L
def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(cand: list[str], ref: list[str], beta: float = 1.2) -> float:
    if not cand or not ref:
        return 0.0
    lcs = _lcs(cand, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(cand), lcs / len(ref)
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


# METEOR (exact, then Porter stem)
def _align(cand: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """Word alignment in two stages; within a stage a word continues the previous chunk
    when it can (fewer chunks), else takes the first free match."""
    stems_c: list[str] = _STEMMER.stemWords(cand)
    stems_r: list[str] = _STEMMER.stemWords(ref)
    used_c: set[int] = set()
    used_r: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for form_c, form_r in ((cand, ref), (stems_c, stems_r)):
        last = -2
        for i, w in enumerate(form_c):
            if i in used_c:
                continue
            free = [j for j, v in enumerate(form_r) if v == w and j not in used_r]
            if not free:
                continue
            j = last + 1 if last + 1 in free else free[0]
            used_c.add(i)
            used_r.add(j)
            pairs.append((i, j))
            last = j
    return sorted(pairs)


def meteor(
    cand: list[str], ref: list[str], alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    if not cand or not ref:
        return 0.0
    pairs = _align(cand, ref)
    m = len(pairs)
    if m == 0:
        return 0.0
    p, r = m / len(cand), m / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    chunks = 1 + sum(
        1 for (i0, j0), (i1, j1) in itertools.pairwise(pairs) if not (i1 == i0 + 1 and j1 == j0 + 1)
    )
    penalty = gamma * math.pow(chunks / m, beta)
    return fmean * (1 - penalty)


# loading
@dataclass
class Entry:
    clip_id: str
    caption: dict[str, str]
    # the record's one short prompt (None for a record with instances: see ``prompts``)
    short_prompt: str | None
    writer: str | None
    # every prompt field with text: ``short_prompt``, or ``short_prompt:<instance key>``
    # per instance of a record with instances
    prompts: dict[str, str] = field(default_factory=dict)
    instances: bool = False


def entry_of(record: Record, edits: dict[str, str] | None = None) -> Entry:
    """The record's texts with ``edits`` applied by :func:`apply_review` (the one place
    human edits replace the machine text); ``{}`` or None gives the machine text."""
    try:
        final = apply_review(record, dict(edits or {}))
    except ValueError as e:
        raise ValueError(f"review edits of {record.clip_id}: {e}") from e
    texts = machine_texts(final)
    writer = next(
        (s.details.get("writer") for s in record.provenance.stages if s.stage == "captions"),
        None,
    )
    return Entry(
        record.clip_id,
        {c: texts[c] for c in CAPTION_COMPONENTS if texts.get(c)},
        final.short_prompt if final.instances is None else None,
        writer,
        {k: v for k, v in texts.items() if is_prompt(k) and v},
        final.instances is not None,
    )


def _from_record(record: Record, use_edits: bool) -> Entry:
    return entry_of(record, record.review.edits if use_edits else None)


def _from_object(obj: dict[str, Any], where: str, use_edits: bool) -> Entry:
    if "clip" in obj:
        return _from_record(Record.model_validate(obj), use_edits)
    clip_id = obj.get("clip_id")
    caption = obj.get("caption") or {}
    if not isinstance(clip_id, str) or not isinstance(caption, dict):
        raise ValueError(f"{where}: expected a record or {{clip_id, caption, short_prompt}}")
    prompt = obj.get("short_prompt")
    prompt = str(prompt) if prompt is not None else None
    return Entry(
        clip_id,
        {k: str(v) for k, v in caption.items() if v is not None},
        prompt,
        obj.get("writer"),
        {SHORT_PROMPT: prompt} if prompt else {},
    )


def load_entries(path: str, use_edits: bool = True) -> dict[str, Entry]:
    """Captions by clip id from a run directory or a JSONL file."""
    entries: list[Entry] = []
    if os.path.isdir(path) or ("://" in path and not path.endswith(".jsonl")):
        run = RunDir(path)
        if not run.storage.exists("records"):
            raise ValueError(f"{path} has no records/ folder: is it a run directory?")
        entries = [_from_record(r, use_edits) for r in run.records()]
    elif os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
                entries.append(_from_object(obj, f"{path}:{n}", use_edits))
    else:
        raise ValueError(f"{path} is neither a run directory nor a JSONL file")
    found: dict[str, Entry] = {}
    for entry in entries:
        if entry.clip_id in found:
            raise ValueError(f"{path}: clip {entry.clip_id} appears twice")
        found[entry.clip_id] = entry
    return found


# evaluation
def _bounds(entry: Entry, choice: str) -> Bounds:
    grounded = choice == "grounded" or (choice == "auto" and entry.writer == "grounded")
    return Bounds.model_validate(GROUNDED_BOUNDS if grounded else MODEL_BOUNDS)


def integrity(entry: Entry, bounds: str = "auto") -> Integrity:
    """The structural checks of one entry: its caption and every short prompt it has (a
    record with instances: each instance's, reported under ``short_prompt``)."""
    b = _bounds(entry, bounds)
    if not entry.instances:
        return caption_integrity(entry.caption, entry.short_prompt, b)
    verdict = caption_integrity(entry.caption, None, b, require_short_prompt=False)
    found = [
        f"{name}: {p}"
        for name, text in sorted(entry.prompts.items())
        for p in part_problems(SHORT_PROMPT, text, b)
    ]
    return Integrity({**verdict.problems, **({SHORT_PROMPT: found} if found else {})})


def _texts(entry: Entry, part: str) -> list[tuple[str, str]]:
    """(field, text) of ``part``: a component, ``overall`` (the six together, only when all
    are there), ``short_prompt`` (every prompt field) or one ``short_prompt:<key>``."""
    if part == OVERALL:
        parts = [entry.caption.get(c) for c in CAPTION_COMPONENTS]
        return [(OVERALL, " ".join(p for p in parts if p))] if all(parts) else []
    if part == SHORT_PROMPT:
        return sorted(entry.prompts.items())
    if instance_key(part) is not None:
        text = entry.prompts.get(part)
        return [(part, text)] if text else []
    text = entry.caption.get(part)
    return [(part, text)] if text else []


def _opening(text: str) -> str:
    return " ".join(tokens(text)[:2])


def _instance_parts(entries: Iterator[Entry]) -> list[str]:
    keys = {k for e in entries for k in e.prompts if instance_key(k) is not None}
    return sorted(keys, key=lambda k: (k.count("+"), k))


def evaluate(pred: dict[str, Entry], ref: dict[str, Entry], bounds: str = "auto") -> dict[str, Any]:
    """The metrics as a JSON-able dict (what ``--json`` prints). Per part: ``pairs`` (texts
    on both sides), ``changed`` (pairs whose words differ), BLEU-2, ROUGE-L, METEOR."""
    ok = 0
    problems: Counter[str] = Counter()
    for entry in pred.values():
        verdict = integrity(entry, bounds)
        ok += verdict.ok
        problems.update(k for k, v in verdict.problems.items() if v)
    common = sorted(set(pred) & set(ref))
    metrics: dict[str, dict[str, float | int]] = {}
    parts = (*CAPTION_COMPONENTS, OVERALL, SHORT_PROMPT, *_instance_parts(iter(pred.values())))
    for part in parts:
        pairs = []
        for cid in common:
            theirs = dict(_texts(ref[cid], part))
            for name, c in _texts(pred[cid], part):
                r = theirs.get(name)
                if r:
                    pairs.append((tokens(c), tokens(r)))
        n = len(pairs)
        metrics[part] = {
            "pairs": n,
            "changed": sum(c != r for c, r in pairs),
            "bleu2": round(bleu(pairs), 4) if n else 0.0,
            "rouge_l": round(sum(rouge_l(c, r) for c, r in pairs) / n, 4) if n else 0.0,
            "meteor": round(sum(meteor(c, r) for c, r in pairs) / n, 4) if n else 0.0,
        }
    prompts = [p for e in pred.values() for p in e.prompts.values()]
    counts = [word_count(p) for p in prompts]
    return {
        "pred": len(pred),
        "ref": len(ref),
        "paired": len(common),
        "pred_only": len(set(pred) - set(ref)),
        "ref_only": len(set(ref) - set(pred)),
        "integrity": {
            "ok": ok,
            "total": len(pred),
            "rate": round(ok / len(pred), 4) if pred else 0.0,
            "failing_parts": dict(sorted(problems.items())),
        },
        "metrics": metrics,
        "short_prompt": {
            "mean_words": round(sum(counts) / len(counts), 1) if counts else 0.0,
            "max_words": max(counts, default=0),
            "distinct_openings": round(len({_opening(p) for p in prompts}) / len(prompts), 4)
            if prompts
            else 0.0,
        },
    }


KEPT_STATES = ("accepted", "edited")


def review_entries(store: ReviewStore) -> tuple[dict[str, Entry], dict[str, Entry], dict[str, Any]]:
    """Machine and human entries of every clip the store's run finally kept (accepted or
    edited), from the store: the record as it was reviewed, and the same record with the
    final edits applied (:func:`apply_review`). Also what the review decided, for the
    report (states, edited fields, per-field verdicts and regenerated fields).

    Fixes given as per-field verdicts are the final edits like any other (the store keeps
    them as such), so they count as human text here; a regenerated field's machine text is
    the regenerated one, the text the reviewers finally saw."""
    states = store.final_states()
    kept = sorted(cid for cid, r in states.items() if r.state in KEPT_STATES)
    machine: dict[str, Entry] = {}
    human: dict[str, Entry] = {}
    edited: Counter[str] = Counter()
    for clip_id, raw in store.reviewed_records(kept):
        record = Record.model_validate_json(raw)
        edits = states[clip_id].edits
        machine[clip_id] = entry_of(record)
        human[clip_id] = entry_of(record, edits)
        edited.update(edits.keys())
    # verdicts of the kept items' deciding revision, per field and verdict (accept/fix/reject)
    verdicts: dict[str, Counter[str]] = {}
    for clip_id in kept:
        state = states[clip_id]
        for r in state.reviews:
            if r.revision == state.revision:
                for name, v in r.verdicts.items():
                    verdicts.setdefault(name, Counter())[v.verdict] += 1
    binding = store.run
    review = {
        "store": store.engine.url.render_as_string(hide_password=True),
        "run": binding.run_key if binding else None,
        "states": dict(sorted(Counter(r.state for r in states.values()).items())),
        "compared": len(machine),
        "edited_fields": dict(sorted(edited.items())),
        "field_verdicts": {name: dict(sorted(c.items())) for name, c in sorted(verdicts.items())},
        "regenerated_fields": dict(
            sorted(Counter(g.field for r in states.values() for g in r.regenerations).items())
        ),
    }
    return machine, human, review


def evaluate_review(
    run_dir: str, db_url: str | None = None, bounds: str = "auto"
) -> dict[str, Any]:
    """:func:`evaluate` of the machine text (PRED) against the human final text (REF) of a
    reviewed run, from its review store; the result has a ``review`` block besides."""
    from any2capins.workflows.review import open_store

    store = open_store(run_dir=run_dir, db_url=db_url)
    try:
        machine, human, review = review_entries(store)
    finally:
        store.close()
    return {**evaluate(machine, human, bounds), "review": review}


@eval_app.command("captions")
def eval_captions(
    pred: Annotated[
        str | None, typer.Option("--pred", help="run directory or JSONL of predictions")
    ] = None,
    ref: Annotated[
        str | None, typer.Option("--ref", help="run directory or JSONL of references")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run", help="reviewed run: machine text against the human final text in its store"
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="review store URL for --run (default RUN_DIR/review.db)"),
    ] = None,
    bounds: Annotated[
        str, typer.Option(help="word bounds for integrity: auto (by writer), model or grounded")
    ] = "auto",
    edits: Annotated[bool, typer.Option(help="apply review edits to both sides")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """Structural integrity of PRED, and BLEU-2 / ROUGE-L / METEOR of PRED against REF; or,
    with --run, of a reviewed run's machine text against the human final text."""
    if bounds not in ("auto", "model", "grounded"):
        err.print(f"[red]error:[/red] --bounds must be auto, model or grounded, not {bounds!r}")
        raise typer.Exit(2)
    if run is not None and (pred is not None or ref is not None):
        err.print("[red]error:[/red] give either --run or --pred and --ref, not both")
        raise typer.Exit(2)
    if run is None and (pred is None or ref is None):
        err.print("[red]error:[/red] give --pred and --ref, or --run (a reviewed run)")
        raise typer.Exit(2)
    if run is None and db is not None:
        err.print("[red]error:[/red] --db goes with --run")
        raise typer.Exit(2)
    predicted: dict[str, Entry] = {}
    try:
        if run is not None:
            from sqlalchemy.exc import SQLAlchemyError

            from any2capins.workflows.review import ReviewError, open_store

            try:
                store = open_store(run_dir=run, db_url=db)
                try:
                    predicted, reference, review = review_entries(store)
                finally:
                    store.close()
            except (ReviewError, SQLAlchemyError) as e:
                raise ValueError(f"review store: {e}") from e
            result = {**evaluate(predicted, reference, bounds), "review": review}
        else:
            assert pred is not None and ref is not None
            predicted = load_entries(pred, edits)
            result = evaluate(predicted, load_entries(ref, edits), bounds)
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return
    integ = result["integrity"]
    if "review" in result:
        rv = result["review"]
        states = ", ".join(f"{k} {v}" for k, v in rv["states"].items()) or "none"
        out.print(
            f"review store {rv['store']} (run {rv['run']}): {states}; machine text against "
            f"the human final text of {rv['compared']} accepted or edited clips",
            markup=False,
        )
        integ_of = "the machine text"
    else:
        out.print(
            f"{result['paired']} clips paired ({result['pred_only']} only in PRED, "
            f"{result['ref_only']} only in REF)"
        )
        integ_of = "PRED"
    out.print(
        f"structural integrity of {integ_of} {integ['ok']}/{integ['total']} "
        f"({100 * integ['rate']:.1f}%)"
    )
    table = Table(title="caption metrics")
    for col in ("part", "pairs", "changed", "BLEU-2", "ROUGE-L", "METEOR"):
        table.add_column(col)
    for part, m in result["metrics"].items():
        table.add_row(
            part,
            str(m["pairs"]),
            str(m["changed"]),
            f"{m['bleu2']:.4f}",
            f"{m['rouge_l']:.4f}",
            f"{m['meteor']:.4f}",
        )
    out.print(table)
    sp = result["short_prompt"]
    out.print(
        f"short prompts: {sp['mean_words']} words on average, at most {sp['max_words']}; "
        f"distinct openings {100 * sp['distinct_openings']:.0f}%"
    )
    if integ["failing_parts"]:
        out.print(f"parts failing the structural checks: {integ['failing_parts']}")
        for n, (cid, problems) in enumerate(iter_failing(predicted, bounds)):
            if n == 10:
                out.print("...")
                break
            out.print(f"  {cid}: {problems}")


def iter_failing(pred: dict[str, Entry], bounds: str = "auto") -> Iterator[tuple[str, str]]:
    """(clip id, problems) of every prediction that fails the structural checks."""
    for cid, entry in sorted(pred.items()):
        verdict = integrity(entry, bounds)
        if not verdict.ok:
            yield cid, verdict.summary()
