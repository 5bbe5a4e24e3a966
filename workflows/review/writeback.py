"""``any2cap review writeback``: the review store's final decisions into the run's records.

The store is where decisions are made; ``writeback`` copies each clip's final state into
its record's ``review`` block (``status``, ``reviewer``, ``decided_at``, ``reason`` and
``edits``, as :meth:`ClipReview.review_state` gives them), so a tool that reads only the run
directory (``any2cap runs records``, ``any2cap eval captions --pred/--ref RUN``) sees the
same truth as export. Each record is rewritten whole and atomically
(:meth:`any2capins.pipeline.rundir.RunDir.save_record`: temporary file, fsync, rename), only when its
review block differs, so running it again writes nothing. Ingest ignores the review block,
so a written-back run re-ingests as unchanged.

A record whose fields no longer match the edits (rebuilt after the review with other
instances) is left as it is and listed; a record rebuilt with other text but the same
fields gets the review block and is counted under ``changed_since_review``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import Record, ReviewState
from any2capins.workflows.review.store import ReviewStore
from any2capins.workflows.review.text import unknown_fields


@dataclass
class WritebackReport:
    written: int = 0
    unchanged: int = 0
    # clip ids in the store without a record in the run directory
    missing: list[str] = field(default_factory=list)
    # records in the run directory the store does not hold (left untouched)
    not_in_store: int = 0
    # records whose text differs from the copy the reviewers saw (review block written)
    changed_since_review: list[str] = field(default_factory=list)
    # (clip id, why): records the review no longer applies to (left untouched)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "unchanged": self.unchanged,
            "missing": self.missing,
            "not_in_store": self.not_in_store,
            "changed_since_review": self.changed_since_review,
            "skipped": [{"clip_id": c, "why": why} for c, why in self.skipped],
            "states": self.states,
        }


def _machine(record: Record) -> str:
    return record.model_copy(update={"review": ReviewState()}).model_dump_json()


def writeback(store: ReviewStore, run_dir: str | None = None) -> WritebackReport:
    """Write every clip's final review state into the records of RUN_DIR (default: the
    store's run)."""
    binding = store.run
    if binding is None:
        raise ValueError("the review store is not bound to a run")
    rundir = RunDir(run_dir or binding.root)
    states = store.final_states()
    report = WritebackReport()
    for state in states.values():
        report.states[state.state] = report.states.get(state.state, 0) + 1
    on_disk = {n.removesuffix(".json") for n in rundir.storage.list("records", ".json")}
    report.not_in_store = len(on_disk - set(states))
    report.missing = sorted(set(states) - on_disk)
    # streamed in chunks: the store's copies are only needed one at a time
    for clip_id, raw in store.reviewed_records(set(states) & on_disk):
        record = Record.model_validate_json(rundir.storage.read(f"records/{clip_id}.json"))
        review = states[clip_id].review_state()
        unknown = unknown_fields(record, list(review.edits))
        if unknown:
            report.skipped.append(
                (clip_id, f"the record has no field {', '.join(unknown)} (rebuilt since review)")
            )
            continue
        if _machine(Record.model_validate_json(raw)) != _machine(record):
            report.changed_since_review.append(clip_id)
        if record.review == review:
            report.unchanged += 1
            continue
        rundir.save_record(record.model_copy(update={"review": review}))
        report.written += 1
    report.skipped.sort()
    report.changed_since_review.sort()
    return report
