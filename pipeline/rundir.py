"""The run directory: stage markers (resume), records, failures and reports.

Layout (every file written atomically, so a re-run after a kill can neither lose nor
duplicate a clip; see docs/architecture.md, "Run state at scale")::

    RUN_DIR/
      run.json                          recipe and run history
      stages/<stage>/part-*.tsv         finished stages, one part per batch (PartLog):
                                        clip_id -> config hash, output, provenance
      stages/<stage>/<clip_id>.json     the same, one file per clip (earlier layout; read,
                                        and folded into a part by the next compaction)
      index/probe/part-*.tsv            probe cache: source key -> probe + clip spans
      index/done/part-*.tsv             finished clips: clip_id -> build signature + summary,
                                        appended only after the clip's record is written
      records/<clip_id>.json            the assembled record
      failures/<clip_id>.json           the clip's current failure (removed once it succeeds)
      filtered/<clip_id>.json           why curation dropped the clip (removed once it passes);
                                        a filtered clip has no records/ file
      dedup_groups.json                 the last build's near-duplicate groups
      reports/<run_id>.json, report.json
      artifacts/<clip_id>/<stage>/...   payload files (default artifact store)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from any2capins.pipeline.partlog import COMPACT_AT, PartLog
from any2capins.pipeline.storage import Storage, StorageBusy
from any2capins.schemas import Failure, FilterDecision, Record, StageProvenance


class StageMarker(BaseModel):
    """Proof that a stage finished a clip with a given config: what resume trusts."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    clip_id: str
    config_hash: str
    output: dict[str, Any]
    provenance: StageProvenance


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: dict[str, Any]
    recipe_hash: str
    runs: list[dict[str, Any]] = Field(default_factory=list)


class RunDirBusy(StorageBusy):
    """Another build holds the run directory."""


class RunDir:
    def __init__(self, root: str) -> None:
        self.storage = Storage(root)
        self.root = self.storage.root

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run directory for one build at a time, and sweep what a killed build
        left (see :meth:`Storage.exclusive`)."""
        try:
            with self.storage.exclusive(f"another build is running in {self.root}"):
                yield
        except StorageBusy as e:
            raise RunDirBusy(str(e)) from e

    # stage markers: one PartLog per stage, a part per batch
    def marker_log(self, stage: str) -> PartLog:
        return PartLog(self.storage, f"stages/{stage}", legacy_suffix=".json")

    def markers(self, stage: str) -> dict[str, str]:
        """clip_id -> marker JSON for every clip the stage finished (parsed when used)."""
        return self.marker_log(stage).load()

    def load_marker(self, stage: str, clip_id: str) -> StageMarker | None:
        """One clip's marker (reads the stage's whole log: use :meth:`markers` for many)."""
        raw = self.markers(stage).get(clip_id)
        return None if raw is None else StageMarker.model_validate_json(raw)

    def save_markers(self, stage: str, markers: list[StageMarker]) -> None:
        """One batch's markers in one atomic part: all of them or none survive a kill."""
        self.marker_log(stage).append({m.clip_id: m.model_dump_json() for m in markers})

    def save_marker(self, marker: StageMarker) -> None:
        self.save_markers(marker.stage, [marker])

    # the resume index (pipeline/resume.py)
    def probe_log(self) -> PartLog:
        return PartLog(self.storage, "index/probe")

    def done_log(self) -> PartLog:
        return PartLog(self.storage, "index/done")

    def logs(self) -> list[PartLog]:
        """Every part log of the run directory: the resume index and each stage's markers."""
        stages = [name for name in self.storage.list("stages") if not name.startswith(".")]
        return [self.probe_log(), self.done_log(), *(self.marker_log(s) for s in stages)]

    def compact(self, min_files: int = COMPACT_AT) -> list[str]:
        """Fold each log with ``min_files`` files or more into one part (also migrates the
        earlier one-marker-per-clip layout); the caller holds :meth:`exclusive`. Returns the
        folders folded."""
        return [log.folder for log in self.logs() if log.compact(min_files)]

    # records
    def save_record(self, record: Record) -> bool:
        """Write the record; returns False when an identical one is already there."""
        rel = f"records/{record.clip_id}.json"
        data = record.model_dump_json(indent=1).encode()
        try:
            if self.storage.read(rel) == data:
                return False
        except FileNotFoundError:
            pass
        self.storage.write_atomic(rel, data)
        return True

    def records(self) -> Iterator[Record]:
        for name in self.storage.list("records", ".json"):
            yield Record.model_validate_json(self.storage.read(f"records/{name}"))

    def has_record(self, clip_id: str) -> bool:
        return self.storage.exists(f"records/{clip_id}.json")

    def delete_record(self, clip_id: str) -> None:
        self.storage.delete(f"records/{clip_id}.json")

    # curation: clips the filters or the near-duplicate step dropped
    def save_filtered(self, decision: FilterDecision) -> None:
        self.storage.write_atomic(
            f"filtered/{decision.clip_id}.json", decision.model_dump_json(indent=1).encode()
        )

    def clear_filtered(self, clip_id: str) -> None:
        self.storage.delete(f"filtered/{clip_id}.json")

    def filtered(self) -> Iterator[FilterDecision]:
        for name in self.storage.list("filtered", ".json"):
            yield FilterDecision.model_validate_json(self.storage.read(f"filtered/{name}"))

    def save_dedup_groups(self, groups: dict[str, Any]) -> None:
        self.storage.write_atomic("dedup_groups.json", json.dumps(groups, indent=1).encode())

    def load_dedup_groups(self) -> dict[str, Any] | None:
        try:
            groups: dict[str, Any] = json.loads(self.storage.read("dedup_groups.json"))
        except FileNotFoundError:
            return None
        return groups

    def clear_dedup_groups(self) -> None:
        self.storage.delete("dedup_groups.json")

    # failures
    def load_failure(self, clip_id: str) -> Failure | None:
        try:
            return Failure.model_validate_json(self.storage.read(f"failures/{clip_id}.json"))
        except FileNotFoundError:
            return None

    def save_failure(self, failure: Failure) -> Failure:
        """Record a failure, counting attempts across re-runs."""
        previous = self.load_failure(failure.clip_id)
        if previous is not None:
            failure = failure.model_copy(update={"attempt": previous.attempt + 1})
        self.storage.write_atomic(
            f"failures/{failure.clip_id}.json", failure.model_dump_json(indent=1).encode()
        )
        return failure

    def clear_failure(self, clip_id: str) -> None:
        self.storage.delete(f"failures/{clip_id}.json")

    def failures(self) -> Iterator[Failure]:
        for name in self.storage.list("failures", ".json"):
            yield Failure.model_validate_json(self.storage.read(f"failures/{name}"))

    # run info and reports
    def load_info(self) -> RunInfo | None:
        try:
            return RunInfo.model_validate_json(self.storage.read("run.json"))
        except FileNotFoundError:
            return None

    def save_info(self, info: RunInfo) -> None:
        self.storage.write_atomic("run.json", info.model_dump_json(indent=1).encode())

    def save_report(self, report: dict[str, Any]) -> None:
        data = json.dumps(report, indent=1, default=str).encode()
        self.storage.write_atomic(f"reports/{report['run_id']}.json", data)
        self.storage.write_atomic("report.json", data)

    def load_report(self) -> dict[str, Any]:
        try:
            report: dict[str, Any] = json.loads(self.storage.read("report.json"))
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{self.root} has no report.json: is it a run directory?"
            ) from e
        return report

    def artifacts_uri(self) -> str:
        return self.storage.uri("artifacts")
