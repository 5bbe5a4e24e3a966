"""The dataset card: SHARDS_DIR/README.md and its plots, computed from the shards themselves."""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from any2capins.annotators.captions.validate import word_count
from any2capins.pipeline.storage import Storage
from any2capins.schemas import CAPTION_COMPONENTS, SCHEMA_VERSION, Conditions, reason_category
from any2capins.workflows.export.shards import MANIFEST

CONDITION_NAMES = [n for n in Conditions.model_fields if n != "extra"]
COLUMNS = [
    "clip_id",
    "instance_id",
    "partition",
    "condition_types",
    "composition",
    "clip",
    "conditions",
    "suitability",
    "checks",
    "caption",
    "short_prompt",
    "machine_caption",
    "machine_short_prompt",
    "provenance",
    "review",
]


def _rows(storage: Storage, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for shard in manifest["shards"]:
        with storage.open(shard["path"]) as f:
            names = set(pq.read_schema(f).names)
            f.seek(0)
            # curation scores, where the shards carry them
            columns = [*COLUMNS, *(["scores"] if "scores" in names else [])]
            yield from pq.read_table(f, columns=columns).to_pylist()


def score_distributions(
    rows: list[dict[str, Any]],
    scores: dict[str, dict[str, float]] | None = None,
    curation: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per score name, its values over the exported clips (once per clip) and the recipe's
    condition on it (``curation.keep``), if any. Scores come from the rows' ``scores``
    column where the shards carry one, else from ``scores`` (clip_id -> scores, as the run
    export passes from the reviewed records)."""
    keep: dict[str, str] = dict((curation or {}).get("keep") or {})
    values: dict[str, list[float]] = defaultdict(list)
    seen: set[str] = set()
    for row in rows:
        clip_id = row["clip_id"]
        if clip_id in seen:
            continue
        seen.add(clip_id)
        clip_scores = row.get("scores") or (scores or {}).get(clip_id) or {}
        if isinstance(clip_scores, list):  # an Arrow map column reads back as key/value pairs
            clip_scores = dict(clip_scores)
        for name, value in clip_scores.items():
            if value is not None:
                values[name].append(float(value))
    return {
        name: {
            "values": values[name],
            "condition": keep.get(name),
            "min": min(values[name]),
            "max": max(values[name]),
            "mean": round(sum(values[name]) / len(values[name]), 4),
        }
        for name in sorted(values)
    }


def _score_file(name: str) -> str:
    return "score_" + re.sub(r"[^A-Za-z0-9_-]", "-", name) + ".png"


def _threshold(condition: str | None) -> float | None:
    if not condition:
        return None
    try:
        return float(condition.lstrip("<>=! "))
    except ValueError:
        return None


def _score_png(name: str, values: list[float], condition: str | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist(values, bins=min(30, max(5, len(set(values)))), color="#4a78b5", edgecolor="white")
    threshold = _threshold(condition)
    if threshold is not None:
        ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"keep {condition}")
        ax.legend(loc="upper right")
    ax.set_title(f"{name} (exported clips)")
    ax.set_xlabel(name)
    ax.set_ylabel("clips")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _words(text: str) -> int:
    # the caption checks' own word count, so the card's averages match their bounds
    return word_count(text)


# the paper's order of the condition types in Table 1
TABLE_ORDER = ("depth", "pose", "identities", "camera")


def _type_rank(key: str) -> tuple[int, int, str]:
    """Single types first in the paper's order, then compositions by size and name."""
    parts = key.split("+")
    first = TABLE_ORDER.index(key) if key in TABLE_ORDER else len(TABLE_ORDER)
    return (len(parts), first, key)


def _condition_count(row: dict[str, Any]) -> int:
    """Conditions of one instance: one per identity for identities, else one per type."""
    total = 0
    for name in row["condition_types"]:
        summary = (row["conditions"] or {}).get(name) if name in CONDITION_NAMES else None
        total += len(summary["identities"]) if name == "identities" and summary else 1
    return total


def table_one(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's Table 1 over the exported instances: per condition type and per
    composition, instances, conditions, and average words of the short prompts and of the
    structured captions (six components together); the last entry is the total."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["partition"]].append(row)

    def entry(name: str, members: list[dict[str, Any]], composition: bool) -> dict[str, Any]:
        n = len(members)
        prompt = sum(_words(r["short_prompt"]) for r in members)
        caption = sum(_words(r["caption"][c]) for r in members for c in CAPTION_COMPONENTS)
        return {
            "type": name,
            "composition": composition,
            "instances": n,
            "conditions": sum(_condition_count(r) for r in members),
            "prompt_words": round(prompt / n, 1) if n else None,
            "caption_words": round(caption / n, 1) if n else None,
        }

    table = [
        entry(key, groups[key], bool(groups[key][0]["composition"]))
        for key in sorted(groups, key=_type_rank)
    ]
    table.append(entry("total", rows, False))
    return table


def card_statistics(
    rows: list[dict[str, Any]], review_stats: dict[str, Any] | None
) -> dict[str, Any]:
    instances: Counter[str] = Counter()
    annotations: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    models: dict[str, str] = {}
    prompts: dict[str, str] = {}
    edited_components: Counter[str] = Counter()
    durations: dict[str, float] = {}
    caption_words, prompt_words = [], []
    # per clip (a clip has one row per instance): suitability and cross-check flags
    turned_away: dict[str, Counter[str]] = defaultdict(Counter)
    judged: Counter[str] = Counter()
    flags: dict[str, Counter[str]] = defaultdict(Counter)
    flagged_clips: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set()
    labelled: set[str] = set()
    for row in rows:
        clip_id = row["clip_id"]
        for flag in row.get("checks") or []:
            flags[flag["check"]][row["partition"]] += 1
            flagged_clips[flag["check"]].add(clip_id)
        if clip_id in seen:
            continue
        seen.add(clip_id)
        durations[clip_id] = row["clip"]["end_s"] - row["clip"]["start_s"]
        for kv in row.get("suitability") or []:
            judged[kv["key"]] += 1
            if not kv["value"]["suitable"]:
                turned_away[kv["key"]][reason_category(kv["value"]["reason"])] += 1
    for row in rows:
        conditions = row["conditions"]
        for name in CONDITION_NAMES:
            summary = conditions.get(name)
            if summary is None:
                continue
            instances[name] += 1
            # identities count one condition per identity, as in the paper's Table 1
            annotations[name] += len(summary["identities"]) if name == "identities" else 1
            if name == "camera" and row["clip_id"] not in labelled:
                labelled.add(row["clip_id"])  # once per clip, however many camera instances
                labels.update(summary["labels"])
        for kv in conditions.get("extra") or []:
            name = kv["key"]
            instances[name] += 1
            annotations[name] += 1
        caption_words.append(sum(_words(row["caption"][c]) for c in CAPTION_COMPONENTS))
        prompt_words.append(_words(row["short_prompt"]))
        machine = row.get("machine_caption")
        if machine:
            edited_components.update(
                c for c in CAPTION_COMPONENTS if machine[c] != row["caption"][c]
            )
        machine_prompt = row.get("machine_short_prompt")
        if machine_prompt is not None and machine_prompt != row["short_prompt"]:
            edited_components["short_prompt"] += 1
        for stage in row["provenance"]["stages"]:
            for m in stage["models"]:
                models[m["model_id"]] = m["license"] or "unknown"
            for kv in stage["prompt_hashes"] or []:
                prompts[kv["key"]] = kv["value"]
    n = len(rows)
    clips = len(durations)
    return {
        "rows": n,
        "clips": clips,
        "table": table_one(rows),
        "suitability": {
            name: {
                "clips": judged[name],
                "turned_away": sum(turned_away[name].values()),
                "reasons": dict(turned_away[name].most_common()),
            }
            for name in sorted(judged, key=_type_rank)
        },
        "flags": {
            check: {"clips": len(flagged_clips[check]), "instances": dict(flags[check])}
            for check in sorted(flags)
        },
        "instances": dict(instances),
        "conditions": dict(annotations),
        "avg_clip_s": round(sum(durations.values()) / clips, 2) if clips else 0.0,
        "total_hours": round(sum(durations.values()) / 3600, 3),
        "caption_words": caption_words,
        "prompt_words": prompt_words,
        "camera_labels": dict(labels.most_common()),
        "edited_components": {
            c: edited_components[c] for c in (*CAPTION_COMPONENTS, "short_prompt")
        },
        "models": models,
        "prompt_hashes": prompts,
        "review": review_stats or {},
    }


def _histogram_png(values: list[int], title: str, xlabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if values:
        ax.hist(values, bins=min(30, max(5, len(set(values)))), color="#4a78b5", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("instances")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _bar_png(counts: dict[str, int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    names = list(counts)
    ax.barh(names or ["(none)"], [counts[k] for k in names] or [0], color="#4a78b5")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel("records")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _range(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}-{max(values)} (mean {sum(values) / len(values):.1f})"


def write_card(
    shards_dir: str,
    review_stats: dict[str, Any] | None = None,
    *,
    scores: dict[str, dict[str, float]] | None = None,
    curation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write README.md and the plots into SHARDS_DIR; returns the statistics it used.

    ``curation`` is the run's recipe block (its ``keep`` thresholds become lines on the
    score histograms); ``scores`` (clip_id -> scores) stands in for shards without a
    ``scores`` column."""
    storage = Storage(shards_dir)
    manifest = json.loads(storage.read(MANIFEST))
    rows = list(_rows(storage, manifest))
    stats = card_statistics(rows, review_stats)
    stats["scores"] = score_distributions(rows, scores, curation)
    for name, dist in stats["scores"].items():
        storage.write_atomic(_score_file(name), _score_png(name, dist["values"], dist["condition"]))
    storage.write_atomic(
        "caption_words.png",
        _histogram_png(
            stats["caption_words"], "Structured caption length", "words (six components)"
        ),
    )
    storage.write_atomic(
        "prompt_words.png", _histogram_png(stats["prompt_words"], "Short prompt length", "words")
    )
    storage.write_atomic(
        "camera_labels.png", _bar_png(stats["camera_labels"], "Camera motion labels")
    )
    storage.write_atomic("README.md", render_card(stats, manifest).encode())
    return stats


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _review_lines(review: dict[str, Any]) -> list[str]:
    """The review store's statistics (``review_stats``) as card text; names of annotators
    and local paths stay out of a card that may be published."""
    if not review:
        return ["No review statistics were given to this export."]
    queue = review.get("queue", {}).get("all", {})
    people = len(review.get("annotators", {}))
    rates = review.get("rates", {})
    lines = [
        f"- items queued for review: {review.get('items', 0)}; final states: "
        + ", ".join(f"{state} {count}" for state, count in queue.items()),
        f"- independent reviews: {review.get('reviews', 0)} by {people} "
        f"{'person' if people == 1 else 'people'}; adjudications: "
        f"{review.get('adjudications', 0)}",
        f"- decision rates: accept {_pct(rates.get('accept'))}, edit {_pct(rates.get('edit'))},"
        f" reject {_pct(rates.get('reject'))}",
        "",
        "Edit rate per field (share of kept reviews that changed it):",
        "",
        "| field | edit rate |",
        "|---|---|",
    ]
    for name, rate in review.get("edit_rate_per_component", {}).items():
        lines.append(f"| {name} | {_pct(rate)} |")
    # per instance key: kept reviews of items with that instance that changed its prompt
    for key, rate in review.get("edit_rate_per_instance", {}).items():
        lines.append(f"| short_prompt:{key} | {_pct(rate)} |")
    agreement = review.get("agreement") or {}
    lines.append("")
    if agreement.get("items"):
        kappa = agreement.get("kappa")
        lines += [
            f"Agreement over {agreement['items']} items reviewed twice: keep/reject agreement "
            f"{_pct(agreement.get('decision_agreement'))}, Cohen's kappa "
            f"{'-' if kappa is None else f'{kappa:.2f}'}.",
            "",
            "| field | identical text | mean normalised word edit distance |",
            "|---|---|---|",
        ]
        for name, c in agreement.get("components", {}).items():
            distance = c.get("mean_edit_distance")
            lines.append(
                f"| {name} | {_pct(c.get('identical'))} | "
                f"{'-' if distance is None else f'{distance:.3f}'} |"
            )
    else:
        lines.append("No item was reviewed twice, so there is no agreement figure.")
    return lines


def _avg(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table_lines(table: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| condition | instances | conditions | avg. short prompt words "
        "| avg. structured caption words |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in table:
        name = e["type"]
        if name == "total":
            name = "**total**"
        elif e["composition"]:
            name = f"{name} (composition)"
        lines.append(
            f"| {name} | {e['instances']} | {e['conditions']} | {_avg(e['prompt_words'])} "
            f"| {_avg(e['caption_words'])} |"
        )
    return lines


def _suitability_lines(stats: dict[str, Any]) -> list[str]:
    suit = stats["suitability"]
    if not suit:
        return ["The exported records carry no suitability judgements."]
    lines = [
        "Of the exported clips, how many each condition type's rule turned away, and why",
        "(the reason's first clause, numbers as N):",
        "",
        "| condition | clips judged | turned away | reasons |",
        "|---|---:|---:|---|",
    ]
    for name, s in suit.items():
        reasons = "; ".join(f"{why}: {count}" for why, count in s["reasons"].items()) or "-"
        lines.append(f"| {name} | {s['clips']} | {s['turned_away']} | {reasons} |")
    return lines


def _flag_lines(stats: dict[str, Any]) -> list[str]:
    flags = stats["flags"]
    if not flags:
        return ["No exported clip carries a cross-check flag."]
    keys = sorted({k for f in flags.values() for k in f["instances"]}, key=_type_rank)
    lines = [
        "Caption-condition cross-check flags: clips flagged per check, and the instances of",
        "each condition type whose clip carries the flag:",
        "",
        "| check | clips | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for check, f in flags.items():
        cells = " | ".join(str(f["instances"].get(k, 0)) for k in keys)
        lines.append(f"| {check} | {f['clips']} | {cells} |")
    return lines


def _score_lines(scores: dict[str, dict[str, Any]]) -> list[str]:
    if not scores:
        return []
    lines = [
        "## Curation scores",
        "",
        "Scores of the exported clips; clips that failed the recipe's conditions were",
        "dropped before the condition stages and are not in the dataset (the dashed line is",
        "the threshold).",
        "",
        "| score | clips | min | mean | max | recipe keeps |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, d in scores.items():
        lines.append(
            f"| {name} | {len(d['values'])} | {d['min']:.4g} | {d['mean']:.4g} | {d['max']:.4g} "
            f"| {d['condition'] or '-'} |"
        )
    lines.append("")
    lines += [f"![{name}]({_score_file(name)})" for name in scores]
    lines.append("")
    return lines


def render_card(stats: dict[str, Any], manifest: dict[str, Any]) -> str:
    n = stats["rows"]
    lines = [
        "# Any2CapIns-style dataset",
        "",
        "One training instance is a clip, a condition type (or, for test compositions,",
        "several) and a short prompt written for it; its target is the clip's six-part",
        "structured caption. Counted as in the paper's Table 1 (identities count one",
        "condition image per identity):",
        "",
        *_table_lines(stats["table"]),
        "",
        "## Suitability",
        "",
        *_suitability_lines(stats),
        "",
        "## Cross-checks",
        "",
        *_flag_lines(stats),
        "",
        "## About",
        "",
        "Video clips with extracted conditions (depth, human pose, identities, camera), a",
        "six-part structured caption (dense, main object, background, camera, style, action)",
        "and short user-style prompts, each record checked by a person. Built with any2capins",
        "(Any2Caption, arXiv 2503.24379, describes the format).",
        "",
        f"- records: **{stats['clips']}** clips as **{n}** instances (one row each) in "
        f"{len(manifest['shards'])} Parquet shards (zstd), schema version {SCHEMA_VERSION};"
        " `_manifest.json` lists every shard with rows, bytes and sha256",
        f"- average clip length: {stats['avg_clip_s']} s; total: {stats['total_hours']} hours",
        "",
        "## Conditions carried by the rows",
        "",
        "| condition | instances | conditions |",
        "|---|---|---|",
    ]
    for name in sorted(set(stats["instances"]) | set(CONDITION_NAMES)):
        lines.append(
            f"| {name} | {stats['instances'].get(name, 0)} | {stats['conditions'].get(name, 0)} |"
        )
    lines += [
        "",
        "## Text lengths",
        "",
        f"- structured caption words: {_range(stats['caption_words'])} (paper: 170-316, mean 231)",
        f"- short prompt words: {_range(stats['prompt_words'])} (paper: 0-92, mean 55)",
        "",
        "![structured caption length](caption_words.png)",
        "![short prompt length](prompt_words.png)",
        "",
        "## Camera motion labels",
        "",
    ]
    if stats["camera_labels"]:
        lines += [f"- {label}: {count}" for label, count in stats["camera_labels"].items()]
    else:
        lines.append("No record has a camera condition.")
    lines += ["", "![camera motion labels](camera_labels.png)", ""]
    lines += _score_lines(stats.get("scores") or {})
    lines += ["## Review", ""]
    lines += _review_lines(stats["review"])
    edited = stats["edited_components"]
    lines += [
        "",
        "Exported instances whose text a reviewer changed, per field (short_prompt: the",
        "instance's own prompt):",
        "",
        "| field | edited | rate |",
        "|---|---|---|",
    ]
    for component, count in edited.items():
        lines.append(
            f"| {component} | {count} | {count / n:.1%} |" if n else f"| {component} | 0 | - |"
        )
    lines += ["", "## Models and licences", ""]
    if stats["models"]:
        lines += [f"- `{m}`: {lic}" for m, lic in sorted(stats["models"].items())]
    else:
        lines.append("No model weights were used (statistics and keyframes only).")
    lines += ["", "## Prompt versions", ""]
    if stats["prompt_hashes"]:
        lines += [
            f"- {name}: `{digest}`" for name, digest in sorted(stats["prompt_hashes"].items())
        ]
    else:
        lines.append("No prompt templates recorded.")
    lines += [
        "",
        "## Reading",
        "",
        "```python",
        "from any2capins import ShardDataset",
        "from torch.utils.data import DataLoader",
        "",
        'for batch in DataLoader(ShardDataset("."), batch_size=None, num_workers=2):',
        '    print(batch["short_prompt"], batch["structured_caption"])',
        "```",
        "",
        'Or with HF datasets: `load_dataset("parquet", data_files="*/*.parquet")`.',
        "",
    ]
    return "\n".join(lines)
