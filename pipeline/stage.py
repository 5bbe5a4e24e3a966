"""One stage of the build: the actor that resumes or runs a batch of clips, and the row form.

Rows carry the record in one form, compact JSON bytes (:func:`dump_record`). A stage parses
it once (pydantic-core), :func:`apply_output` validates only the fields the stage writes,
and the record is dumped once for the next operator. Before, every stage validated and
dumped the whole record twice. Pickled records were measured too: slower than pydantic-core's
JSON for our records (nested models pickle through Python), so JSON it is
(docs/benchmarks.md, "Engine at scale").
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pyarrow as pa

from any2capins.annotators import PROVENANCE_KEY, ClipInput
from any2capins.pipeline.fetch import fetched
from any2capins.pipeline.progress import Reporter, safe_report
from any2capins.pipeline.recipe import StageSpec
from any2capins.pipeline.rundir import RunDir, StageMarker
from any2capins.pipeline.storage import ArtifactStore
from any2capins.pipeline.video import VideoInfo, sample_frames
from any2capins.schemas import Failure, Record, StageProvenance, utc_now

ROW_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("clip_id", pa.string()),
        ("probe", pa.string()),  # VideoInfo as JSON
        ("record", pa.binary()),  # the Record so far as JSON bytes; empty once failed or final
        ("failure", pa.string()),  # Failure as JSON, "" while ok
        ("stage_seconds", pa.string()),  # {stage: seconds} spent in this invocation
        ("skipped", pa.string()),  # [stage, ...] resumed from markers
        ("dataset", pa.string()),  # what the finished record adds to the dataset (JSON)
        ("warnings", pa.string()),  # [message, ...] about the source (a clamped span end)
        ("filtered", pa.string()),  # FilterDecision as JSON once a curation rule dropped it
        ("source_key", pa.string()),  # probe / fetch cache key of the source ("" unknown)
    ]
)


def dump_record(record: Record) -> bytes:
    return record.model_dump_json().encode()


def load_record(data: bytes) -> Record:
    return Record.model_validate_json(data)


def failure_row(source_uri: str, clip_id: str, stage: str, exc: BaseException) -> dict[str, Any]:
    error_type = getattr(exc, "error_type", None) or type(exc).__name__
    failure = Failure(
        clip_id=clip_id,
        source_uri=source_uri,
        stage=stage,
        error_type=str(error_type),
        message=str(exc) or repr(exc),
    )
    return {
        "source_uri": source_uri,
        "clip_id": clip_id,
        "probe": "",
        "record": b"",
        "failure": failure.model_dump_json(),
        "stage_seconds": "{}",
        "skipped": "[]",
        "dataset": "",
        "warnings": "[]",
        "filtered": "",
        "source_key": "",
    }


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
    target[leaf] = value


def _as_data(value: Any) -> Any:
    """A top-level field's value, ready to have a dotted path set in it (a copy)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return dict(value)  # values may stay models: validation accepts them as they are
    return value


def apply_output(record: Record, output: dict[str, Any], provenance: StageProvenance) -> Record:
    """A new record with a stage's output fields set and its provenance entry replaced.

    Only what the stage writes is validated (each top-level field it touches, with the
    field's own type and constraints); the rest of the record is shared, not re-validated.
    """
    stages = [s for s in record.provenance.stages if s.stage != provenance.stage]
    new = record.model_copy(
        update={
            "provenance": record.provenance.model_copy(update={"stages": [*stages, provenance]})
        }
    )
    touched: dict[str, Any] = {}
    for key, value in output.items():
        top = key.split(".", 1)[0]
        if top not in Record.model_fields:
            raise ValueError(f"a stage wrote {key!r}, which is no field of a record")
        if top not in touched:  # from ``new``: a stage may write provenance.* fields too
            touched[top] = _as_data(getattr(new, top))
        if key == "scores" and isinstance(value, dict):
            # several stages write scores: each adds its own names, none erases another's
            value = {**(touched["scores"] or {}), **value}
        holder = {top: touched[top]}
        _set_path(holder, key, value)
        touched[top] = holder[top]
    for top, value in touched.items():
        Record.__pydantic_validator__.validate_assignment(new, top, value)
    return new


class StageActor:
    """One actor of a stage's pool: builds the annotator once, then serves batches."""

    def __init__(
        self,
        spec: StageSpec,
        run_root: str,
        artifacts_root: str,
        run_id: str,
        readers: list[str],
        progress: Reporter | None = None,
        fetch_dir: str | None = None,
    ) -> None:
        self.spec = spec
        self.fetch_dir = fetch_dir  # this build's per-node cache of remote sources
        self._markers: dict[str, str] | None = None  # the stage's marker log, read once
        self.progress = progress  # gets this stage's counts after every batch
        self.annotator = spec.build()
        self.run_dir = RunDir(run_root)
        self.artifacts = ArtifactStore(artifacts_root)
        self.run_id = run_id
        self.readers = tuple(readers)
        self._readers_used: dict[int, str] = {}  # row index -> reader, in this batch
        self.node = socket.gethostname()
        import ray

        if ray.is_initialized():  # in the plain loop the host name will do
            self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        return pa.Table.from_pylist(self.process(rows), schema=ROW_SCHEMA)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        live = [i for i, row in enumerate(rows) if not (row["failure"] or row.get("filtered"))]
        resumed = self._process(rows, live)
        if self.progress is not None:
            safe_report(
                self.progress,
                self.spec.name,
                {
                    "done": len(live),
                    "failed": sum(1 for i in live if rows[i]["failure"]),
                    "filtered": sum(
                        1 for i in live if not rows[i]["failure"] and rows[i].get("filtered")
                    ),
                    "skipped": resumed,
                },
            )
        return rows

    def _process(self, rows: list[dict[str, Any]], live: list[int]) -> int:
        """Run (or resume) the live rows in place; returns how many came from markers."""
        spec = self.spec
        pending: list[tuple[int, ClipInput, float]] = []
        self._readers_used = {}
        resumed_count = 0
        if live and self._markers is None:
            # One read of the stage's log for the actor's life, not one file per clip.
            self._markers = self.run_dir.markers(spec.name)
        for i in live:
            row = rows[i]
            record = load_record(row["record"])
            raw = (self._markers or {}).get(record.clip_id)
            marker = None
            if raw is not None and f'"config_hash":"{spec.config_hash}"' in raw:
                try:
                    marker = StageMarker.model_validate_json(raw)
                except ValueError:  # an unreadable marker is no marker: run the stage
                    marker = None
            if marker is not None and marker.config_hash == spec.config_hash:
                try:
                    resumed = apply_output(record, marker.output, marker.provenance)
                except Exception:  # noqa: BLE001 - a marker the schema no longer takes: rerun
                    resumed = None
                if resumed is not None:
                    resumed_count += 1
                    row["record"] = dump_record(resumed)
                    row["skipped"] = json.dumps([*json.loads(row["skipped"]), spec.name])
                    self._apply_filters(row, resumed)
                    continue
            started = time.perf_counter()
            try:
                info = VideoInfo(**json.loads(row["probe"]))
                with fetched(
                    record.clip.source_uri, row.get("source_key") or "", self.fetch_dir
                ) as path:
                    sampled = sample_frames(
                        path,
                        info,
                        record.clip.start_s,
                        record.clip.end_s,
                        spec.sampling,
                        self.readers,
                    )
            except Exception as e:  # noqa: BLE001 - every decode error is this clip's failure
                rows[i] = failure_row(row["source_uri"], record.clip_id, spec.name, e)
                continue
            clip_input = ClipInput(
                clip=record.clip,
                frames=sampled.frames,
                timestamps_s=list(sampled.timestamps_s),
                record=record,
                artifacts=self.artifacts.sink(record.clip_id, spec.name),
            )
            pending.append((i, clip_input, time.perf_counter() - started))
            self._readers_used[i] = sampled.reader
        if pending:
            self._annotate(rows, pending)
        return resumed_count

    def _call_annotator(self, inputs: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        outputs = self.annotator(inputs)
        if len(outputs) != len(inputs):
            raise RuntimeError(
                f"annotator {self.spec.name} returned {len(outputs)} outputs for {len(inputs)} clips"
            )
        return outputs

    def _annotate(
        self, rows: list[dict[str, Any]], pending: list[tuple[int, ClipInput, float]]
    ) -> None:
        spec = self.spec
        started = time.perf_counter()
        done: list[tuple[int, Record, float, StageMarker]] = []
        try:
            outputs = self._call_annotator([p[1] for p in pending])
            shared = (time.perf_counter() - started) / len(pending)
            results = [(p, out, p[2] + shared) for p, out in zip(pending, outputs, strict=True)]
        except Exception:  # noqa: BLE001 - isolate the bad clip by retrying one at a time
            results = []
            for p in pending:
                one_start = time.perf_counter()
                try:
                    out: dict[str, Any] | BaseException = self._call_annotator([p[1]])[0]
                except Exception as e:  # noqa: BLE001
                    out = e
                results.append((p, out, p[2] + time.perf_counter() - one_start))
        for (i, clip_input, _), out, seconds in results:
            row = rows[i]
            record = clip_input.record
            if isinstance(out, BaseException):
                rows[i] = failure_row(row["source_uri"], record.clip_id, spec.name, out)
                continue
            try:
                out = dict(out)
                details = {str(k): str(v) for k, v in (out.pop(PROVENANCE_KEY, None) or {}).items()}
                # which reader decoded the frames (decord, or PyAV where decord cannot)
                details.setdefault("reader", self._readers_used.get(i, ""))
                unknown = set(out) - set(self.annotator.writes)
                if unknown:
                    raise RuntimeError(
                        f"annotator {spec.name} wrote {sorted(unknown)}, "
                        f"declared {list(self.annotator.writes)}"
                    )
                output = {
                    k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
                    for k, v in out.items()
                }
                provenance = StageProvenance(
                    stage=spec.name,
                    annotator_version=self.annotator.version,
                    config_hash=spec.config_hash,
                    run_id=self.run_id,
                    seconds=round(seconds, 4),
                    finished_at=utc_now(),
                    models=self.annotator.models(),
                    prompt_hashes=self.annotator.prompt_hashes(),
                    node=self.node,
                    details=details,
                )
                new_record = apply_output(record, output, provenance)
                marker = StageMarker.model_construct(  # its parts are validated already
                    stage=spec.name,
                    clip_id=record.clip_id,
                    config_hash=spec.config_hash,
                    output=output,
                    provenance=provenance,
                )
            except Exception as e:  # noqa: BLE001 - invalid output is this clip's failure
                rows[i] = failure_row(row["source_uri"], record.clip_id, spec.name, e)
                continue
            done.append((i, new_record, seconds, marker))
        if not done:
            return
        try:
            # One atomic part for the batch, written before the rows move on: a kill leaves
            # all of the batch's markers or none, and none is trusted before it is whole.
            self.run_dir.save_markers(spec.name, [d[3] for d in done])
        except Exception as e:  # noqa: BLE001 - unwritable run state fails these clips
            for i, record, _, _ in done:
                rows[i] = failure_row(rows[i]["source_uri"], record.clip_id, spec.name, e)
            return
        for i, new_record, seconds, _ in done:
            row = rows[i]
            row["record"] = dump_record(new_record)
            timings = json.loads(row["stage_seconds"])
            timings[spec.name] = round(seconds, 4)
            row["stage_seconds"] = json.dumps(timings)
            self._apply_filters(row, new_record)

    def _apply_filters(self, row: dict[str, Any], record: Record) -> None:
        """Decide the curation rules whose scores exist now; a dropped clip's row is marked
        filtered and every later stage passes it by."""
        if self.spec.filters is None:
            return
        decision, warnings = self.spec.filters.decide(record, self.spec.name)
        if warnings:
            row["warnings"] = json.dumps(
                list(dict.fromkeys(json.loads(row["warnings"]) + warnings))
            )
        if decision is not None:
            row["filtered"] = decision.model_dump_json()
