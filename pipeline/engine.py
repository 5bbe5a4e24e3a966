"""The Ray Data build: sources -> probe + spans -> one actor pool per stage -> records.

Rows travel between operators as small JSON strings (the record so far, or a failure);
frames are decoded inside each stage's actor and payloads go to the artifact store, so the
object store only ever carries text. Every stage checks its marker first (resume) and turns
anything a clip raises into a failure row that flows on to the end of the pipeline.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from annotators import PROVENANCE_KEY, ClipInput
from pipeline.curation import DedupConfig
from pipeline.dedup import DedupKey, dedup_run
from pipeline.progress import PROBE, ProgressTracker, RayProgress, Reporter, safe_report
from pipeline.recipe import ResolvedRecipe, SpanConfig, StageSpec
from pipeline.rundir import RunDir, StageMarker
from pipeline.sources import BadManifestRow
from pipeline.spans import clamp_warning, make_spans
from pipeline.storage import ArtifactStore
from pipeline.video import VideoInfo, local_video, probe_video, sample_frames
from schemas import (
    ClipRef,
    Failure,
    FilterDecision,
    Provenance,
    Record,
    StageProvenance,
    make_clip_id,
    utc_now,
)

ROW_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("clip_id", pa.string()),
        ("probe", pa.string()),  # VideoInfo as JSON
        ("record", pa.string()),  # Record as JSON, "" once failed
        ("failure", pa.string()),  # Failure as JSON, "" while ok
        ("stage_seconds", pa.string()),  # {stage: seconds} spent in this invocation
        ("skipped", pa.string()),  # [stage, ...] resumed from markers
        ("dataset", pa.string()),  # what the finished record adds to the dataset (JSON)
        ("warnings", pa.string()),  # [message, ...] about the source (a clamped span end)
        ("filtered", pa.string()),  # FilterDecision as JSON once a curation rule dropped it
    ]
)


def _failure_row(source_uri: str, clip_id: str, stage: str, exc: BaseException) -> dict[str, str]:
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
        "record": "",
        "failure": failure.model_dump_json(),
        "stage_seconds": "{}",
        "skipped": "[]",
        "dataset": "",
        "warnings": "[]",
        "filtered": "",
    }


def probe_source(
    item: dict[str, Any],
    spans: dict[str, Any],
    run_root: str,
    recipe_name: str,
    recipe_hash: str,
    run_id: str,
    stages_left_out: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    """One source -> a row per clip span, or a single failure row for the source."""
    uri = str(item["source_uri"])
    start = None if item["start_s"] < 0 else float(item["start_s"])
    end = None if item["end_s"] < 0 else float(item["end_s"])
    source_id = (
        make_clip_id(uri, start, end)
        if start is not None and end is not None
        else (make_clip_id(uri, None, None))
    )
    if item.get("problem"):  # a manifest row rejected when the sources were listed
        return [_failure_row(uri, source_id, "probe", BadManifestRow(str(item["problem"])))]
    config = SpanConfig.model_validate(spans)
    try:
        with local_video(uri) as path:
            info = probe_video(path, uri)
            span_list = make_spans(info, path, config, start, end)
    except Exception as e:  # noqa: BLE001 - VideoError or not, it is this source's failure
        return [_failure_row(uri, source_id, "probe", e)]
    warning = clamp_warning(info, end)
    warnings = json.dumps([warning] if warning else [])
    # A source that failed before may have a failure row keyed by the whole source.
    RunDir(run_root).clear_failure(source_id)
    rows = []
    for span_start, span_end in span_list:
        clip = ClipRef(
            clip_id=make_clip_id(uri, span_start, span_end),
            source_uri=uri,
            start_s=span_start,
            end_s=span_end,
            fps=info.fps,
            width=info.width,
            height=info.height,
            num_frames=max(0, round((span_end - span_start) * info.fps)),
            rotation=info.rotation,
            codec=info.codec,
            variable_frame_rate=info.variable_frame_rate,
        )
        record = Record(
            clip=clip,
            provenance=Provenance(
                recipe=recipe_name,
                recipe_hash=recipe_hash,
                run_id=run_id,
                stages_left_out=dict(stages_left_out or {}),
            ),
        )
        rows.append(
            {
                "source_uri": uri,
                "clip_id": clip.clip_id,
                "probe": json.dumps(asdict(info)),
                "record": record.model_dump_json(),
                "failure": "",
                "stage_seconds": "{}",
                "skipped": "[]",
                "dataset": "",
                "warnings": warnings,
                "filtered": "",
            }
        )
    return rows


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
    target[leaf] = value


def apply_output(record: Record, output: dict[str, Any], provenance: StageProvenance) -> Record:
    """A new record with a stage's output fields set and its provenance entry replaced."""
    data = record.model_dump(mode="json")
    for key, value in output.items():
        if key == "scores" and isinstance(value, dict):
            # several stages write scores: each adds its own names, none erases another's
            value = {**data.get("scores", {}), **value}
        _set_path(data, key, value)
    stages = [s for s in data["provenance"]["stages"] if s["stage"] != provenance.stage]
    stages.append(provenance.model_dump(mode="json"))
    data["provenance"]["stages"] = stages
    return Record.model_validate(data)


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
    ) -> None:
        self.spec = spec
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
        for i in live:
            row = rows[i]
            record = Record.model_validate_json(row["record"])
            marker = self.run_dir.load_marker(spec.name, record.clip_id)
            if marker is not None and marker.config_hash == spec.config_hash:
                resumed_count += 1
                resumed = apply_output(record, marker.output, marker.provenance)
                row["record"] = resumed.model_dump_json()
                row["skipped"] = json.dumps([*json.loads(row["skipped"]), spec.name])
                self._apply_filters(row, resumed)
                continue
            started = time.perf_counter()
            try:
                info = VideoInfo(**json.loads(row["probe"]))
                with local_video(record.clip.source_uri) as path:
                    sampled = sample_frames(
                        path,
                        info,
                        record.clip.start_s,
                        record.clip.end_s,
                        spec.sampling,
                        self.readers,
                    )
            except Exception as e:  # noqa: BLE001 - every decode error is this clip's failure
                rows[i] = _failure_row(row["source_uri"], record.clip_id, spec.name, e)
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
                rows[i] = _failure_row(row["source_uri"], record.clip_id, spec.name, out)
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
                self.run_dir.save_marker(
                    StageMarker(
                        stage=spec.name,
                        clip_id=record.clip_id,
                        config_hash=spec.config_hash,
                        output=output,
                        provenance=provenance,
                    )
                )
            except Exception as e:  # noqa: BLE001 - invalid output is this clip's failure
                rows[i] = _failure_row(row["source_uri"], record.clip_id, spec.name, e)
                continue
            row["record"] = new_record.model_dump_json()
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


def dataset_summary(record: Record) -> dict[str, Any]:
    """What one finished record adds to the dataset, for the run report: its instances,
    the condition types it was turned away from (with the reason's category) and its
    cross-check flags. Small, so it travels with the summary row."""
    return {
        "instances": None if record.instances is None else [i.key for i in record.instances],
        "unsuitable": {
            name: s.category for name, s in sorted(record.suitability.items()) if not s.suitable
        },
        "flags": [f.check for f in record.checks],
        "scores": record.scores,  # for the report's kept / would-drop counts per rule
    }


def finalize_rows(rows: list[dict[str, Any]], run_root: str) -> list[dict[str, Any]]:
    """Write each clip's record (or failure) to the run directory; pass small rows on."""
    run_dir = RunDir(run_root)
    for row in rows:
        if row["failure"]:
            failure = run_dir.save_failure(Failure.model_validate_json(row["failure"]))
            row["failure"] = failure.model_dump_json()
            run_dir.clear_filtered(failure.clip_id)
        elif row.get("filtered"):
            # a filtered clip is no record: review ingest and export never see it
            decision = FilterDecision.model_validate_json(row["filtered"])
            run_dir.save_filtered(decision)
            run_dir.delete_record(decision.clip_id)
            run_dir.clear_failure(decision.clip_id)
        else:
            record = Record.model_validate_json(row["record"])
            run_dir.save_record(record)
            run_dir.clear_failure(record.clip_id)
            run_dir.clear_filtered(record.clip_id)
            row["dataset"] = json.dumps(dataset_summary(record))
        row["record"] = ""  # the driver needs only the summary
        row["probe"] = ""
    return rows


def _finalize_batch(batch: pa.Table, run_root: str) -> pa.Table:
    return pa.Table.from_pylist(finalize_rows(batch.to_pylist(), run_root), schema=ROW_SCHEMA)


def probe_counts(sources: int, rows: list[dict[str, Any]]) -> dict[str, int]:
    """The probe's progress report: sources probed, rows out, failure rows among them."""
    return {
        "done": sources,
        "rows": len(rows),
        "failed": sum(1 for r in rows if r["failure"]),
    }


def _probe_batch(batch: pa.Table, progress: Reporter | None = None, **kwargs: Any) -> pa.Table:
    items = batch.to_pylist()
    rows = [r for item in items for r in probe_source(item, **kwargs)]
    safe_report(progress, PROBE, probe_counts(len(items), rows))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def dedup_plan(resolved: ResolvedRecipe) -> tuple[str, DedupConfig, bool] | None:
    """(hash stage, dedup settings, drop?) when the recipe removes near-duplicates."""
    curation = resolved.recipe.curation
    if curation is None or curation.dedup is None or not curation.dedup.enabled:
        return None
    stage = curation.dedup.stage or next(
        s.name for s in resolved.stages if "phashes" in s.annotator_cls.writes
    )
    return stage, curation.dedup, not curation.score_only


def dedup_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The small table the global step needs, from the rows still in the pipeline."""
    keys = []
    for row in rows:
        if row["failure"] or row.get("filtered"):
            continue
        key = DedupKey.of(Record.model_validate_json(row["record"]))
        if key is not None:
            keys.append(key.to_json())
    return keys


def decide_duplicates(
    keys: list[dict[str, Any]], resolved: ResolvedRecipe, run_root: str
) -> dict[str, str]:
    """The global step, in the driver: group every clip of the run, write
    RUN_DIR/dedup_groups.json, and return clip_id -> FilterDecision JSON for the dropped."""
    plan = dedup_plan(resolved)
    assert plan is not None
    stage, config, drop = plan
    summary, decisions = dedup_run([DedupKey.from_json(k) for k in keys], config, stage, drop=drop)
    RunDir(run_root).save_dedup_groups(summary)
    return {clip_id: d.model_dump_json() for clip_id, d in decisions.items()}


def mark_duplicates(rows: list[dict[str, Any]], drops: dict[str, str]) -> list[dict[str, Any]]:
    for row in rows:
        if not row["failure"] and not row.get("filtered") and row["clip_id"] in drops:
            row["filtered"] = drops[row["clip_id"]]
    return rows


def _dedup_keys_batch(batch: pa.Table) -> pa.Table:
    keys = [json.dumps(k) for k in dedup_keys(batch.to_pylist())]
    return pa.Table.from_pylist(
        [{"key": k} for k in keys], schema=pa.schema([("key", pa.string())])
    )


def _mark_duplicates_batch(batch: pa.Table, drops: Any) -> pa.Table:
    import ray

    if isinstance(drops, ray.ObjectRef):
        drops = ray.get(drops)
    return pa.Table.from_pylist(mark_duplicates(batch.to_pylist(), drops), schema=ROW_SCHEMA)


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    _spend_restart_warning()


def _spend_restart_warning() -> None:
    """Use up Ray core's once-per-process error line about restartable actors whose
    constructor gets an ObjectRef (ray#53727) on a throwaway actor, with stderr muted.

    Ray Data hands every pool actor its DataContext and MapTransformer as ObjectRefs and
    makes pool actors restartable; keeping the restarts is what lets a build survive a
    killed worker (with ``max_restarts=0`` one OOM-killed actor aborts the whole run). The
    refs live as long as the stage, so the warning never applies to us, yet it read as an
    error on every build. Other stderr output of these few milliseconds is lost with it.
    """
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _Spend:
        def __init__(self, arg: bytes) -> None:
            del arg

    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        actor = _Spend.remote(ray.put(b"x"))  # type: ignore[attr-defined]
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    ray.kill(actor)


def run_ray(
    resolved: ResolvedRecipe,
    sources: list[dict[str, Any]],
    run_root: str,
    artifacts_root: str,
    run_id: str,
    limit: int | None,
    progress: ProgressTracker | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the summary rows of a build executed by Ray Data.

    With ``progress``, the probe tasks and stage actors report to a counter actor that a
    driver thread copies into the tracker every half second (pipeline/progress.py)."""
    ensure_ray()
    live: RayProgress | None = None
    if progress is not None:
        try:
            live = RayProgress(progress)
        except Exception:
            logging.getLogger(__name__).warning("no live progress", exc_info=True)
    finished = False
    try:
        yield from _run_ray(
            resolved,
            sources,
            run_root,
            artifacts_root,
            run_id,
            limit,
            live.reporter if live is not None else None,
        )
        finished = True
    finally:
        if live is not None:
            live.close(settle_s=2.0 if finished else 0.0)


def _run_ray(
    resolved: ResolvedRecipe,
    sources: list[dict[str, Any]],
    run_root: str,
    artifacts_root: str,
    run_id: str,
    limit: int | None,
    reporter: Reporter | None,
) -> Iterator[dict[str, Any]]:
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    recipe = resolved.recipe
    ds: ray.data.Dataset = ray.data.from_items(
        sources, override_num_blocks=max(1, min(len(sources), 64))
    )
    ds = ds.map_batches(
        _probe_batch,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=resolved.task_cpus,
        fn_kwargs={
            "spans": recipe.spans.model_dump(),
            "run_root": run_root,
            "recipe_name": recipe.name,
            "recipe_hash": resolved.recipe_hash,
            "run_id": run_id,
            "stages_left_out": resolved.left_out,
            "progress": reporter,
        },
    )
    if limit is not None:
        ds = ds.limit(limit)
    dedup = dedup_plan(resolved)
    for spec in resolved.stages:
        res = spec.resources
        ds = ds.map_batches(
            StageActor,
            batch_size=res.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            memory=res.memory_gb * 2**30 if res.memory_gb else None,
            fn_constructor_kwargs={
                "spec": spec,
                "run_root": run_root,
                "artifacts_root": artifacts_root,
                "run_id": run_id,
                "readers": list(recipe.readers),
                "progress": reporter,
            },
        )
        if dedup is not None and spec.name == dedup[0]:
            # The global step: phase one (every stage up to the hash stage) runs to the end
            # and stays in the object store as JSON rows; the driver groups the small key
            # table of the whole run, then phase two goes on with the duplicates marked.
            ds = ds.materialize()
            keys = [
                json.loads(row["key"])
                for row in ds.map_batches(
                    _dedup_keys_batch, batch_format="pyarrow", num_cpus=resolved.task_cpus
                ).iter_rows()
            ]
            dropped = decide_duplicates(keys, resolved, run_root)
            safe_report(reporter, spec.name, {"filtered": len(dropped)})
            drops = ray.put(dropped)
            ds = ds.map_batches(
                _mark_duplicates_batch,  # type: ignore[arg-type]  # fn_kwargs fills ``drops``
                batch_format="pyarrow",
                num_cpus=resolved.task_cpus,
                fn_kwargs={"drops": drops},
            )
    ds = ds.map_batches(
        functools.partial(_finalize_batch, run_root=run_root),
        batch_format="pyarrow",
        num_cpus=resolved.task_cpus,
    )
    yield from ds.iter_rows()


def run_local(
    resolved: ResolvedRecipe,
    sources: list[dict[str, Any]],
    run_root: str,
    artifacts_root: str,
    run_id: str,
    limit: int | None,
    progress: ProgressTracker | None = None,
) -> Iterator[dict[str, Any]]:
    """The same stages called in a plain loop in this process (baseline and debugging);
    ``progress`` gets each batch's counts directly."""
    recipe = resolved.recipe
    reporter = progress.add if progress is not None else None
    rows: list[dict[str, Any]] = []
    for item in sources:
        probed = probe_source(
            item,
            recipe.spans.model_dump(),
            run_root,
            recipe.name,
            resolved.recipe_hash,
            run_id,
            resolved.left_out,
        )
        safe_report(reporter, PROBE, probe_counts(1, probed))
        rows.extend(probed)
    if limit is not None:
        rows = rows[:limit]
    dedup = dedup_plan(resolved)
    for spec in resolved.stages:
        actor = StageActor(
            spec, run_root, artifacts_root, run_id, list(recipe.readers), progress=reporter
        )
        size = spec.resources.batch_size
        rows = [r for i in range(0, len(rows), size) for r in actor.process(rows[i : i + size])]
        if dedup is not None and spec.name == dedup[0]:
            drops = decide_duplicates(dedup_keys(rows), resolved, run_root)
            safe_report(reporter, spec.name, {"filtered": len(drops)})
            rows = mark_duplicates(rows, drops)
    yield from finalize_rows(rows, run_root)


# (resolved, sources, run_root, artifacts_root, run_id, limit, progress=None) -> summary rows
Executor = Callable[..., Iterator[dict[str, Any]]]
EXECUTORS: dict[str, Executor] = {"ray": run_ray, "local": run_local}
