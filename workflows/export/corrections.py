"""``any2cap export --corrections``: what people changed or turned down, as training data.

One row per field a human changed (decision ``edit``: the machine text and the human text,
an SFT target and a preference pair) or turned down (decision ``reject``: a whole-record
reject is a verdict on every field, so every field of a rejected record with machine text
gets a row, human text null, with the reject's reason code and note). With per-field
verdicts (``verdict``: fix / reject) only the fields concerned get rows, each with its own
reason and note. A field rejected and then regenerated gives a ``reject`` row per rejected
revision: ``machine_text`` the rejected text, ``replacement_text`` the text the regeneration
wrote instead, and ``chosen_text`` the field's final text once the item was accepted or
edited (the rejected text against it is a preference pair). Only final decisions count
(an item waiting for adjudication has none yet; a rejected revision is final for that
text); accepted records without edits give no rows. The texts come from the record as the reviewers saw it (the store's copy) and the
human text from :func:`any2capins.workflows.review.text.apply_review`, the one edit applier.

Written as one Parquet file per run, ``OUT/corrections-<run>.parquet``, under a temporary
name, fsynced, then renamed (one PUT on object stores): readers see the old file or the new
one, never a part. Re-running rewrites it from the store (deterministic: rows sorted by clip
id, then field order), so a folder can gather the corrections of many runs and
``datasets.load_dataset("parquet", data_files="OUT/*.parquet")`` reads them all.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.storage import Storage
from any2capins.schemas import CAPTION_COMPONENTS, Record, utc_now
from any2capins.workflows.export.run import review_snapshot
from any2capins.workflows.export.shards import ExportError, instances_of
from any2capins.workflows.review import ClipReview, ReviewStore, open_store
from any2capins.workflows.review._types import FieldVerdictInfo
from any2capins.workflows.review.text import (
    PROMPT,
    apply_review,
    field_names,
    instance_key,
    machine_texts,
    prompt_field,
)

CORRECTIONS_VERSION = "2"
CORRECTIONS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("instance_id", pa.string()),  # null for the six caption components
        pa.field("instance_key", pa.string()),  # camera, camera+depth, ...; null likewise
        pa.field("field", pa.string(), nullable=False),
        pa.field("machine_text", pa.string(), nullable=False),
        pa.field("human_text", pa.string()),  # null for a reject
        pa.field("decision", pa.string(), nullable=False),  # edit | reject
        pa.field("reason", pa.string()),  # the reject's reason code
        pa.field("note", pa.string()),
        pa.field("condition_types", pa.list_(pa.string()), nullable=False),
        pa.field("reviewer", pa.string()),  # who decided, comma-separated
        pa.field("decided_at", pa.timestamp("us", tz="UTC")),
        pa.field("run_id", pa.string(), nullable=False),  # the build run of the machine text
        pa.field("verdict", pa.string()),  # fix | reject with per-field verdicts, else null
        pa.field("revision", pa.int32(), nullable=False),  # the item revision of machine_text
        pa.field("replacement_text", pa.string()),  # a regenerated field's next text
        pa.field("chosen_text", pa.string()),  # its final text, once accepted or edited
    ],
    metadata={b"any2capins.corrections": CORRECTIONS_VERSION.encode()},
)
DECISIONS = {"edited": "edit", "rejected": "reject"}


@dataclass
class CorrectionsReport:
    path: str
    rows: int
    edits: int
    rejects: int
    clips: int
    store: str
    run: str
    review_snapshot: str
    states: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "edit_rows": self.edits,
            "reject_rows": self.rejects,
            "clips": self.clips,
            "store": self.store,
            "run": self.run,
            "review_snapshot": self.review_snapshot,
            "review_states": self.states,
        }


def _instance_of(record: Record, name: str) -> tuple[str | None, str | None, list[str]]:
    """(instance id, instance key, condition types) of a field: the instance whose prompt it
    is, or (None, None, the clip's present conditions) for a caption component."""
    key = instance_key(name)
    if record.instances is not None and key is not None:
        for instance in record.instances:
            if prompt_field(instance) == name:
                return instance.instance_id, instance.key, sorted(instance.condition_types)
    if record.instances is None and name == PROMPT:
        implicit = instances_of(record)[0]
        return implicit.instance_id, implicit.partition, implicit.condition_types
    return None, None, sorted(record.conditions.present())


def _final_verdicts(review: ClipReview) -> dict[str, FieldVerdictInfo]:
    """The per-field verdicts of the reviews that decided the current revision (the first
    reviewer's verdict per field stands, as in the store's settling); empty when they were
    whole-record decisions."""
    out: dict[str, FieldVerdictInfo] = {}
    current = [r for r in review.reviews if r.revision == review.revision]
    decisive = [r for r in current if r.kind == "adjudication"][-1:] or current
    for r in decisive:
        for name, v in r.verdicts.items():
            out.setdefault(name, v)
    return out


def correction_rows(record: Record, review: ClipReview) -> list[dict[str, Any]]:
    """The rows of one record: its final edits or reject, and every rejected revision of a
    regenerated field (none for other states)."""
    machine = machine_texts(record)
    verdicts = _final_verdicts(review)
    # a reject given per field concerns its fields only, not the whole record
    per_field = any(v.verdict == "reject" for v in verdicts.values())
    decision = DECISIONS.get(review.state)
    if review.queue_state == "regenerate":
        decision = "reject"
    rows: list[dict[str, Any]] = []

    def row(name: str, **values: Any) -> dict[str, Any]:
        instance_id, key, types = _instance_of(record, name)
        base = {
            "clip_id": record.clip_id,
            "instance_id": instance_id,
            "instance_key": key,
            "field": name,
            "machine_text": machine[name],
            "human_text": None,
            "decision": decision,
            "reason": review.reason,
            "note": review.note,
            "condition_types": types,
            "reviewer": ", ".join(review.reviewers) or None,
            "decided_at": review.decided_at,
            "run_id": record.provenance.run_id,
            "verdict": verdicts[name].verdict if name in verdicts else None,
            "revision": review.revision,
            "replacement_text": None,
            "chosen_text": None,
        }
        return {**base, **values}

    final_human: dict[str, str] | None = None
    if review.state in ("accepted", "edited"):
        final_human = machine_texts(apply_review(record, review.edits))
    if decision == "edit":
        assert final_human is not None
        rows += [
            row(n, human_text=final_human[n])
            for n in field_names(record)
            if final_human[n] != machine[n]
        ]
    elif decision == "reject" and per_field:
        for name in field_names(record):
            v = verdicts.get(name)
            if v is None or v.verdict == "accept":
                continue
            if v.verdict == "fix":
                rows.append(row(name, human_text=v.text, decision="edit", reason=None, note=None))
            else:
                rows.append(row(name, reason=v.reason, note=v.note))
    elif decision == "reject":
        rows += [row(n) for n in field_names(record) if machine[n].strip()]
    # every rejected revision of a regenerated field, oldest first
    history: dict[str, list[Any]] = {}
    for r in review.regenerations:
        history.setdefault(r.field, []).append(r)
    for name, done in history.items():
        if name not in machine:
            continue
        for i, r in enumerate(done):
            replacement = done[i + 1].rejected_text if i + 1 < len(done) else machine[name]
            rows.append(
                row(
                    name,
                    machine_text=r.rejected_text,
                    decision="reject",
                    verdict="reject",
                    reason=r.reason,
                    note=r.note,
                    revision=r.revision,
                    replacement_text=replacement,
                    chosen_text=final_human[name] if final_human is not None else None,
                    decided_at=None,
                )
            )
    return rows


def corrections_table(store: ReviewStore) -> tuple[pa.Table, dict[str, ClipReview]]:
    """Every correction row of the store's run, and the final states they came from."""
    states = store.final_states()
    wanted = sorted(
        cid
        for cid, r in states.items()
        if r.state in DECISIONS or r.queue_state == "regenerate" or r.regenerations
    )
    rows: list[dict[str, Any]] = []
    for clip_id, raw in sorted(store.reviewed_records(wanted)):
        rows += correction_rows(Record.model_validate_json(raw), states[clip_id])
    order = {n: i for i, n in enumerate(CAPTION_COMPONENTS)}
    rows.sort(
        key=lambda r: (
            r["clip_id"],
            order.get(r["field"], len(order)),
            r["field"],
            r["revision"],
        )
    )
    return pa.Table.from_pylist(rows, schema=CORRECTIONS_SCHEMA), states


def corrections_file(run_key: str) -> str:
    return "corrections-" + re.sub(r"[^A-Za-z0-9_.-]", "-", run_key) + ".parquet"


def export_corrections(
    run_dir: str, out_dir: str, *, db_url: str | None = None
) -> CorrectionsReport:
    """Write ``OUT/corrections-<run>.parquet`` from the review store of RUN_DIR."""
    if not RunDir(run_dir).storage.exists("records"):
        raise ExportError(f"{run_dir} has no records/ folder: is it a run directory?")
    store = open_store(run_dir=run_dir, db_url=db_url)
    try:
        binding = store.run
        if binding is None:
            raise ExportError("the review store is not bound to a run")
        table, states = corrections_table(store)
        store_url = store.engine.url.render_as_string(hide_password=True)
    finally:
        store.close()
    snapshot = review_snapshot(binding.run_key, states)
    written_at: datetime = utc_now()
    meta = {
        **(table.schema.metadata or {}),
        b"any2capins.corrections.info": json.dumps(
            {
                "run": binding.run_key,
                "review_snapshot": snapshot,
                "written_at": written_at.isoformat(),
            }
        ).encode(),
    }
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    storage = Storage(out_dir)
    name = corrections_file(binding.run_key)
    storage.write_atomic(name, buf.getvalue())
    decisions = table.column("decision").to_pylist()
    counts: dict[str, int] = {}
    for r in states.values():
        counts[r.state] = counts.get(r.state, 0) + 1
    return CorrectionsReport(
        path=f"{storage.root.rstrip('/')}/{name}",
        rows=table.num_rows,
        edits=decisions.count("edit"),
        rejects=decisions.count("reject"),
        clips=len(set(table.column("clip_id").to_pylist())),
        store=store_url,
        run=binding.run_key,
        review_snapshot=snapshot,
        states=dict(sorted(counts.items())),
    )
