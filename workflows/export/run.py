"""Export a reviewed build run: the review store decides what goes out.

Only clips whose final review state is ``accepted`` or ``edited`` become rows (one per
instance), each from the record exactly as it was reviewed (the copy the store took at ingest), with the human text
winning over the machine text. Everything else is counted by state, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import Record
from any2capins.workflows.export.card import write_card
from any2capins.workflows.export.formats import ShardFormat
from any2capins.workflows.export.shards import (
    EXPORTED_STATES,
    ExportError,
    ExportReport,
    Reviewed,
    export_shards,
)
from any2capins.workflows.review import ClipReview, final_states, open_store, review_stats


@dataclass
class RunExportReport:
    """What one ``any2cap export`` did, for the CLI summary and ``--json``."""

    shards: ExportReport
    run_ids: list[str]
    review_snapshot: str
    store: str
    # final review state -> clips (accepted and edited ones are the exported candidates)
    states: dict[str, int]
    not_in_store: int
    card: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        s = self.shards
        return {
            "shards_dir": s.shards_dir,
            "store": self.store,
            "run_ids": self.run_ids,
            "review_snapshot": self.review_snapshot,
            "review_states": self.states,
            "not_in_review_store": self.not_in_store,
            "new_rows": s.new_rows,
            "new_shards": s.new_shards,
            "bytes_written": s.bytes_written,
            "already_exported": s.skipped_already_exported,
            "no_instances": s.no_instances,
            "removed_orphans": s.removed_orphans,
            "incomplete": [{"clip_id": c, "why": why} for c, why in s.incomplete],
            "total_rows": s.total_rows,
            "card_rows": self.card.get("rows"),
        }


def review_snapshot(run_key: str, states: dict[str, ClipReview]) -> str:
    """A name for the review decisions an export saw: the run, how many final decisions,
    the latest one, and a digest of them all (the same decisions give the same digest)."""
    final = sorted(
        (
            cid,
            r.state,
            r.decided_at.isoformat() if r.decided_at else "",
            json.dumps(r.edits, sort_keys=True),
        )
        for cid, r in states.items()
        if r.state in ("accepted", "edited", "rejected")
    )
    digest = hashlib.sha256(json.dumps(final).encode()).hexdigest()[:16]
    latest = max((d for _, _, d, _ in final if d), default="never")
    return f"{run_key}: {len(final)} decisions, latest {latest}, sha256:{digest}"


def export_run(
    run_dir: str,
    shards_dir: str,
    *,
    db_url: str | None = None,
    shard_size_mb: float = 256.0,
    embed_payloads: bool = True,
    rewrite: bool = False,
    card: bool = True,
    format: str = "parquet",
    sft_identities: str = "reference",
    sft_camera: str = "inline",
) -> RunExportReport:
    """Write the run's accepted and edited records to SHARDS_DIR (only those not already
    there), then the dataset card over everything SHARDS_DIR holds (Parquet only: the card
    reads the Parquet shards).

    ``format``: ``parquet`` (default), ``sft`` (ShareGPT JSONL + media; ``sft_identities``
    ``reference`` or ``crops``, ``sft_camera`` ``inline`` or ``path``) or ``webdataset``.
    """
    fmt: str | ShardFormat = format
    if format == "sft":
        from any2capins.workflows.export.formats.sft import SftFormat

        try:
            fmt = SftFormat(identities=sft_identities, camera=sft_camera)
        except ValueError as e:
            raise ExportError(str(e)) from e
    card = card and format == "parquet"
    store = open_store(run_dir=run_dir, db_url=db_url)
    try:
        binding = store.run
        if binding is None:  # open_store with a run directory always binds one
            raise ExportError("the review store is not bound to a run")
        states = final_states(store)
        wanted = sorted(cid for cid, r in states.items() if r.state in EXPORTED_STATES)
        items: list[Reviewed] = []
        incomplete: list[tuple[str, str]] = []
        for clip_id, record_json in store.reviewed_records(wanted):
            try:
                record = Record.model_validate_json(record_json)
            except ValidationError as e:
                incomplete.append((clip_id, f"stored record does not validate: {e}"))
                continue
            items.append(Reviewed(record, states[clip_id].review_state()))
        rundir = RunDir(run_dir)
        info = rundir.load_info()
        run_ids = [r["run_id"] for r in (info.runs if info else []) if r.get("run_id")]
        on_disk = {n.removesuffix(".json") for n in rundir.storage.list("records", ".json")}
        snapshot = review_snapshot(binding.run_key, states)
        report = export_shards(
            items,
            shards_dir,
            shard_size_mb=shard_size_mb,
            embed_payloads=embed_payloads,
            run_ids=run_ids,
            review_snapshot=snapshot,
            rewrite=rewrite,
            format=fmt,
        )
        report.incomplete[:0] = incomplete
        stats = review_stats(store) if card else {}
        store_url = store.engine.url.render_as_string(hide_password=True)
    finally:
        store.close()
    result = RunExportReport(
        shards=report,
        run_ids=run_ids,
        review_snapshot=snapshot,
        store=store_url,
        states=dict(Counter(r.state for r in states.values())),
        not_in_store=len(on_disk - set(states)),
    )
    if card:
        # the score histograms: scores from the reviewed records, thresholds from the recipe
        result.card = write_card(
            shards_dir,
            stats,
            scores={item.record.clip_id: item.record.scores for item in items},
            curation=(info.recipe.get("curation") if info else None),
        )
    return result
