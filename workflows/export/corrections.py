"""``any2cap export --corrections``: what people changed or turned down, as training data.

One row per field a human changed (decision ``edit``: the machine text and the human text,
an SFT target and a preference pair) or turned down (decision ``reject``: a reject is a
verdict on the whole record, so every field of a rejected record with machine text gets a
row, human text null, with the reject's reason code and note). Only final decisions count
(an item waiting for adjudication has none yet); accepted records without edits give no
rows. The texts come from the record as the reviewers saw it (the store's copy) and the
human text from :func:`workflows.review.text.apply_review`, the one edit applier.

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

from pipeline.rundir import RunDir
from pipeline.storage import Storage
from schemas import CAPTION_COMPONENTS, Record, utc_now
from workflows.export.run import review_snapshot
from workflows.export.shards import ExportError, instances_of
from workflows.review import ClipReview, ReviewStore, open_store
from workflows.review.text import (
    PROMPT,
    apply_review,
    field_names,
    instance_key,
    machine_texts,
    prompt_field,
)

CORRECTIONS_VERSION = "1"
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


def correction_rows(record: Record, review: ClipReview) -> list[dict[str, Any]]:
    """The rows of one finally edited or rejected record (none for other states)."""
    decision = DECISIONS.get(review.state)
    if decision is None:
        return []
    machine = machine_texts(record)
    if decision == "edit":
        human = machine_texts(apply_review(record, review.edits))
        fields = [n for n in field_names(record) if human[n] != machine[n]]
    else:
        human = {}
        fields = [n for n in field_names(record) if machine[n].strip()]
    rows = []
    for name in fields:
        instance_id, key, types = _instance_of(record, name)
        rows.append(
            {
                "clip_id": record.clip_id,
                "instance_id": instance_id,
                "instance_key": key,
                "field": name,
                "machine_text": machine[name],
                "human_text": human.get(name),
                "decision": decision,
                "reason": review.reason,
                "note": review.note,
                "condition_types": types,
                "reviewer": ", ".join(review.reviewers) or None,
                "decided_at": review.decided_at,
                "run_id": record.provenance.run_id,
            }
        )
    return rows


def corrections_table(store: ReviewStore) -> tuple[pa.Table, dict[str, ClipReview]]:
    """Every correction row of the store's run, and the final states they came from."""
    states = store.final_states()
    wanted = sorted(cid for cid, r in states.items() if r.state in DECISIONS)
    rows: list[dict[str, Any]] = []
    for clip_id, raw in sorted(store.reviewed_records(wanted)):
        rows += correction_rows(Record.model_validate_json(raw), states[clip_id])
    order = {n: i for i, n in enumerate(CAPTION_COMPONENTS)}
    rows.sort(key=lambda r: (r["clip_id"], order.get(r["field"], len(order)), r["field"]))
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
