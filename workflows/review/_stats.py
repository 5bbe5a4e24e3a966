"""Review statistics: queue sizes, throughput per annotator, decision and edit rates, and
inter-reviewer agreement."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta
from statistics import median
from typing import Any

from sqlalchemy import func, select

from any2capins.schemas import Record
from any2capins.workflows.review._base import StoreBase
from any2capins.workflows.review.models import (
    ITEM_STATES,
    Claim,
    FieldVerdictRow,
    Item,
    Review,
    User,
)
from any2capins.workflows.review.text import (
    FIELDS,
    PROMPT,
    apply_edits,
    is_prompt,
    machine_texts,
    normalized_distance,
)


class StatsMixin(StoreBase):
    """Queue counts and statistics."""

    def queue_counts(self) -> dict[str, int]:
        """Items of the run per state."""
        run = self._bound()
        counts = dict.fromkeys(ITEM_STATES, 0)
        with self._read() as s:
            for state, n in s.execute(
                select(Item.state, func.count(Item.id))
                .where(Item.run_key == run.run_key)
                .group_by(Item.state)
            ):
                counts[state] = n
        return counts

    def _instance_keys(self, item_ids: set[int]) -> dict[int, list[str]]:
        """Instance keys (``camera``, ``camera+depth``) of the given items' records."""
        out: dict[int, list[str]] = {}
        wanted = sorted(item_ids)
        for start in range(0, len(wanted), 500):
            with self._read() as s:
                for item_id, raw in s.execute(
                    select(Item.id, Item.record_json).where(
                        Item.id.in_(wanted[start : start + 500])
                    )
                ):
                    instances = json.loads(raw).get("instances") or []
                    out[item_id] = ["+".join(i["condition_types"]) for i in instances]
        return out

    def stats(self) -> dict[str, Any]:
        """Queue sizes, throughput, decision and edit rates, and inter-reviewer agreement."""
        run = self._bound()
        now = self._now()
        with self._read() as s:
            items = s.execute(
                select(Item.id, Item.state, Item.conditions).where(Item.run_key == run.run_key)
            ).all()
            rows = s.execute(
                select(Review, User.name)
                .join(User, User.id == Review.user_id)
                .join(Item, Item.id == Review.item_id)
                .where(Item.run_key == run.run_key)
                .order_by(Review.id)
            ).all()
            active_claims = s.scalar(
                select(func.count(Claim.id))
                .join(Item, Item.id == Claim.item_id)
                .where(
                    Item.run_key == run.run_key,
                    Claim.status == "active",
                    Claim.expires_at > now,
                )
            )
            by_item: dict[int, list[Review]] = defaultdict(list)
            for r, _ in rows:
                if r.kind == "review":
                    by_item[r.item_id].append(r)
            overlap_ids = [i for i, rs in by_item.items() if len(rs) >= 2]
            verdict_rows = s.execute(
                select(
                    FieldVerdictRow.review_id,
                    FieldVerdictRow.field,
                    FieldVerdictRow.verdict,
                    FieldVerdictRow.reason,
                )
                .join(Item, Item.id == FieldVerdictRow.item_id)
                .where(Item.run_key == run.run_key)
                .order_by(FieldVerdictRow.id)
            ).all()
            regenerated = s.execute(
                select(Item.revision, Item.regenerations_json).where(
                    Item.run_key == run.run_key, Item.revision > 1
                )
            ).all()
            machine = (
                {
                    item_id: machine_texts(Record.model_validate_json(raw))
                    for item_id, raw in s.execute(
                        select(Item.id, Item.record_json).where(Item.id.in_(overlap_ids))
                    )
                }
                if overlap_ids
                else {}
            )
        states = ITEM_STATES
        queue: dict[str, dict[str, int]] = {"all": dict.fromkeys(states, 0)}
        for _, state, conds in items:
            queue["all"][state] += 1
            for c in conds.split("+"):
                queue.setdefault(c, dict.fromkeys(states, 0))[state] += 1
        people: dict[str, dict[str, Any]] = {}
        seconds: dict[str, list[float]] = defaultdict(list)
        day_ago = now - timedelta(days=1)
        for r, name in rows:
            p = people.setdefault(
                name,
                {
                    "reviews": 0,
                    "adjudications": 0,
                    "accept": 0,
                    "reject": 0,
                    "edit": 0,
                    "last_24h": 0,
                },
            )
            p["adjudications" if r.kind == "adjudication" else "reviews"] += 1
            p[r.decision] += 1
            p["last_24h"] += r.created_at >= day_ago
            seconds[name].append(r.seconds)
        for name, p in people.items():
            total = sum(seconds[name])
            p["median_seconds"] = round(median(seconds[name]), 2)
            n = p["reviews"] + p["adjudications"]
            p["per_hour"] = round(n / (total / 3600), 1) if total > 0 else None
        independent = [r for r, _ in rows if r.kind == "review"]
        n = len(independent)
        decisions = Counter(r.decision for r in independent)
        kept = [r for r in independent if r.decision != "reject"]
        kept_edits = [(r.item_id, set(json.loads(r.edits_json))) for r in kept]
        # One ``short_prompt`` bucket: a kept review that changed the record's prompt (a
        # record without instances) or any of its instances' prompts.
        edit_rate = {
            c: round(
                sum(any(is_prompt(k) for k in e) if c == PROMPT else c in e for _, e in kept_edits)
                / len(kept),
                4,
            )
            if kept
            else None
            for c in FIELDS
        }
        # Per instance key: kept reviews of items with that instance that changed its prompt.
        keys = self._instance_keys({item_id for item_id, _ in kept_edits})
        per_key: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item_id, e in kept_edits:
            for key in keys.get(item_id, []):
                per_key[key][0] += f"{PROMPT}:{key}" in e
                per_key[key][1] += 1
        edit_rate_instances = {
            key: round(edited / total, 4)
            for key, (edited, total) in sorted(
                per_key.items(), key=lambda kv: (kv[0].count("+"), kv[0])
            )
        }
        return {
            "run": run.run_key,
            "root": run.root,
            "items": len(items),
            "queue": queue,
            "active_claims": active_claims or 0,
            "reviews": n,
            "adjudications": sum(1 for r, _ in rows if r.kind == "adjudication"),
            "rates": {
                d: round(decisions[d] / n, 4) if n else None for d in ("accept", "reject", "edit")
            },
            "edit_rate_per_component": edit_rate,
            "edit_rate_per_instance": edit_rate_instances,
            "annotators": dict(sorted(people.items())),
            "agreement": _agreement({i: by_item[i] for i in overlap_ids}, machine),
            "field_verdicts": _field_verdicts(verdict_rows),
            "field_agreement": _field_agreement({i: by_item[i] for i in overlap_ids}, verdict_rows),
            "regeneration": {
                "waiting": queue["all"].get("regenerate", 0),
                "items_regenerated": len(regenerated),
                "fields_regenerated": dict(
                    sorted(
                        Counter(
                            PROMPT if is_prompt(name) else name
                            for _, raw in regenerated
                            for name, done in json.loads(raw).items()
                            for _ in done
                        ).items()
                    )
                ),
            },
        }


def _agreement(
    by_item: dict[int, list[Review]], machine: dict[int, dict[str, str]]
) -> dict[str, Any]:
    """Pairwise agreement of the first two independent reviews of every overlap item."""
    pairs = [(rs[0], rs[1]) for rs in by_item.values()]
    if not pairs:
        return {"items": 0, "decision_agreement": None, "kappa": None, "components": {}}

    def keep(r: Review) -> bool:
        return r.decision != "reject"

    agree = sum(keep(a) == keep(b) for a, b in pairs) / len(pairs)
    pa = sum(keep(a) for a, _ in pairs) / len(pairs)
    pb = sum(keep(b) for _, b in pairs) / len(pairs)
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if chance >= 1 else round((agree - chance) / (1 - chance), 4)
    components: dict[str, dict[str, Any]] = {}
    both_kept = [(a, b) for a, b in pairs if keep(a) and keep(b)]
    # Every instance prompt of an item is one more pair in the ``short_prompt`` bucket.
    by_field: dict[str, list[float]] = {name: [] for name in FIELDS}
    for a, b in both_kept:
        texts = machine.get(a.item_id, dict.fromkeys(FIELDS, ""))
        ta = apply_edits(texts, json.loads(a.edits_json))
        tb = apply_edits(texts, json.loads(b.edits_json))
        for name in texts:
            bucket = PROMPT if is_prompt(name) else name
            by_field[bucket].append(normalized_distance(ta[name], tb[name]))
    for name in FIELDS:
        distances = by_field[name]
        components[name] = {
            "pairs": len(distances),
            "identical": round(sum(d == 0 for d in distances) / len(distances), 4)
            if distances
            else None,
            "mean_edit_distance": round(sum(distances) / len(distances), 4) if distances else None,
        }
    return {
        "items": len(pairs),
        "decision_agreement": round(agree, 4),
        "kappa": kappa,
        "components": components,
    }


def _bucket(name: str) -> str:
    return PROMPT if is_prompt(name) else name


def _field_verdicts(rows: Any) -> dict[str, dict[str, Any]]:
    """Per field (the six components and one ``short_prompt`` bucket for every prompt):
    how many verdicts accepted, fixed and rejected it, and the reject reasons. Whole-record
    accepts and edits count as their fields' verdicts (accept; fix where text changed);
    whole-record rejects have none."""
    out: dict[str, dict[str, Any]] = {
        name: {"accept": 0, "fix": 0, "reject": 0, "reasons": {}} for name in FIELDS
    }
    for _, name, verdict, reason in rows:
        entry = out[_bucket(name)]
        entry[verdict] += 1
        if verdict == "reject" and reason:
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
    for entry in out.values():
        total = entry["accept"] + entry["fix"] + entry["reject"]
        entry["total"] = total
        entry["reject_rate"] = round(entry["reject"] / total, 4) if total else None
    return out


def _field_agreement(by_item: dict[int, list[Review]], rows: Any) -> dict[str, dict[str, Any]]:
    """Over overlap items whose first two reviews both carry field verdicts: per field, the
    share of pairs giving the same verdict (accept / fix / reject)."""
    per_review: dict[int, dict[str, str]] = defaultdict(dict)
    for review_id, name, verdict, _ in rows:
        per_review[review_id][name] = verdict
    same: dict[str, list[bool]] = {name: [] for name in FIELDS}
    for reviews in by_item.values():
        a, b = per_review.get(reviews[0].id), per_review.get(reviews[1].id)
        if not a or not b:
            continue
        for name in a.keys() & b.keys():
            same[_bucket(name)].append(a[name] == b[name])
    return {
        name: {
            "pairs": len(v),
            "same_verdict": round(sum(v) / len(v), 4) if v else None,
        }
        for name, v in same.items()
    }
