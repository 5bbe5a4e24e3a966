"""``any2cap eval captions``: structural integrity of predicted captions and BLEU-2, ROUGE-L
and METEOR against reference captions, per component, for the six together and for the
short prompt (the caption metrics of the Any2Caption paper).

PRED and REF are run directories (their ``records/``) or JSONL files with one record per
line (``any2cap runs records RUN --json``) or one ``{"clip_id", "caption", "short_prompt"}``
object per line. Clips are paired by clip id. A record's review edits (``review.edits``,
keyed by component or ``short_prompt``) replace the machine text, so a reviewed run is a
reference for the run it was reviewed from.

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
from dataclasses import dataclass
from typing import Annotated, Any

import snowballstemmer  # type: ignore[import-untyped]
import typer
from rich.console import Console
from rich.table import Table

from annotators.captions import (
    GROUNDED_BOUNDS,
    MODEL_BOUNDS,
    SHORT_PROMPT,
    Bounds,
    caption_integrity,
    word_count,
)
from pipeline.rundir import RunDir
from schemas import CAPTION_COMPONENTS, Record

eval_app = typer.Typer(help="Evaluate what a build produced.", no_args_is_help=True)
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
    short_prompt: str | None
    writer: str | None


def _from_record(record: Record, use_edits: bool) -> Entry:
    caption = record.caption.model_dump() if record.caption else {}
    prompt = record.short_prompt
    if use_edits:
        for key, text in record.review.edits.items():
            if key in CAPTION_COMPONENTS:
                caption[key] = text
            elif key == SHORT_PROMPT:
                prompt = text
    writer = next(
        (s.details.get("writer") for s in record.provenance.stages if s.stage == "captions"),
        None,
    )
    return Entry(record.clip_id, caption, prompt, writer)


def _from_object(obj: dict[str, Any], where: str, use_edits: bool) -> Entry:
    if "clip" in obj:
        return _from_record(Record.model_validate(obj), use_edits)
    clip_id = obj.get("clip_id")
    caption = obj.get("caption") or {}
    if not isinstance(clip_id, str) or not isinstance(caption, dict):
        raise ValueError(f"{where}: expected a record or {{clip_id, caption, short_prompt}}")
    prompt = obj.get("short_prompt")
    return Entry(
        clip_id,
        {k: str(v) for k, v in caption.items() if v is not None},
        str(prompt) if prompt is not None else None,
        obj.get("writer"),
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


def _texts(entry: Entry, part: str) -> str | None:
    if part == OVERALL:
        parts = [entry.caption.get(c) for c in CAPTION_COMPONENTS]
        return " ".join(p for p in parts if p) if all(parts) else None
    if part == SHORT_PROMPT:
        return entry.short_prompt
    return entry.caption.get(part)


def _opening(text: str) -> str:
    return " ".join(tokens(text)[:2])


def evaluate(pred: dict[str, Entry], ref: dict[str, Entry], bounds: str = "auto") -> dict[str, Any]:
    """The metrics as a JSON-able dict (what ``--json`` prints)."""
    ok = 0
    problems: Counter[str] = Counter()
    for entry in pred.values():
        verdict = caption_integrity(entry.caption, entry.short_prompt, _bounds(entry, bounds))
        ok += verdict.ok
        problems.update(verdict.problems.keys())
    common = sorted(set(pred) & set(ref))
    metrics: dict[str, dict[str, float | int]] = {}
    for part in (*CAPTION_COMPONENTS, OVERALL, SHORT_PROMPT):
        pairs = []
        for cid in common:
            c, r = _texts(pred[cid], part), _texts(ref[cid], part)
            if c and r:
                pairs.append((tokens(c), tokens(r)))
        n = len(pairs)
        metrics[part] = {
            "pairs": n,
            "bleu2": round(bleu(pairs), 4) if n else 0.0,
            "rouge_l": round(sum(rouge_l(c, r) for c, r in pairs) / n, 4) if n else 0.0,
            "meteor": round(sum(meteor(c, r) for c, r in pairs) / n, 4) if n else 0.0,
        }
    prompts = [e.short_prompt for e in pred.values() if e.short_prompt]
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


@eval_app.command("captions")
def eval_captions(
    pred: Annotated[str, typer.Option("--pred", help="run directory or JSONL of predictions")],
    ref: Annotated[str, typer.Option("--ref", help="run directory or JSONL of references")],
    bounds: Annotated[
        str, typer.Option(help="word bounds for integrity: auto (by writer), model or grounded")
    ] = "auto",
    edits: Annotated[bool, typer.Option(help="apply review edits to both sides")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """Structural integrity of PRED, and BLEU-2 / ROUGE-L / METEOR of PRED against REF."""
    if bounds not in ("auto", "model", "grounded"):
        err.print(f"[red]error:[/red] --bounds must be auto, model or grounded, not {bounds!r}")
        raise typer.Exit(2)
    try:
        result = evaluate(load_entries(pred, edits), load_entries(ref, edits), bounds)
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return
    integ = result["integrity"]
    out.print(
        f"{result['paired']} clips paired ({result['pred_only']} only in PRED, "
        f"{result['ref_only']} only in REF); structural integrity {integ['ok']}/{integ['total']} "
        f"({100 * integ['rate']:.1f}%)"
    )
    table = Table(title="caption metrics")
    for col in ("part", "pairs", "BLEU-2", "ROUGE-L", "METEOR"):
        table.add_column(col)
    for part, m in result["metrics"].items():
        table.add_row(
            part, str(m["pairs"]), f"{m['bleu2']:.4f}", f"{m['rouge_l']:.4f}", f"{m['meteor']:.4f}"
        )
    out.print(table)
    sp = result["short_prompt"]
    out.print(
        f"short prompts: {sp['mean_words']} words on average, at most {sp['max_words']}; "
        f"distinct openings {100 * sp['distinct_openings']:.0f}%"
    )
    if integ["failing_parts"]:
        out.print(f"parts failing the structural checks: {integ['failing_parts']}")
        for n, (cid, problems) in enumerate(iter_failing(load_entries(pred, edits), bounds)):
            if n == 10:
                out.print("...")
                break
            out.print(f"  {cid}: {problems}")


def iter_failing(pred: dict[str, Entry], bounds: str = "auto") -> Iterator[tuple[str, str]]:
    """(clip id, problems) of every prediction that fails the structural checks."""
    for cid, entry in sorted(pred.items()):
        verdict = caption_integrity(entry.caption, entry.short_prompt, _bounds(entry, bounds))
        if not verdict.ok:
            yield cid, verdict.summary()
