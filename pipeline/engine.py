"""The Ray Data build: sources -> probe + spans -> one actor pool per stage -> records.

(The stage actor and the row form are in pipeline/stage.py, the resume index in
pipeline/resume.py.)

Rows travel between operators as small strings (the failure, the summary) and the record so
far as JSON: a stage parses it once, validates only the fields it writes
(:func:`apply_output`) and dumps it once for the next operator. Frames are decoded inside each stage's actor and
payloads go to the artifact store, so the object store carries no pixels. Every stage checks
its stage's marker log first (resume) and turns anything a clip raises into a failure row
that flows on to the end of the pipeline.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from any2capins.pipeline.curation import DedupConfig
from any2capins.pipeline.dedup import DedupKey, dedup_run
from any2capins.pipeline.fetch import cache_dir, cleanup, fetched
from any2capins.pipeline.progress import PROBE, ProgressTracker, RayProgress, Reporter, safe_report
from any2capins.pipeline.recipe import ResolvedRecipe, SpanConfig
from any2capins.pipeline.resume import build_signature, done_entry, stat_source
from any2capins.pipeline.resume import source_key as make_source_key
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import BadManifestRow
from any2capins.pipeline.spans import clamp_warning, make_spans
from any2capins.pipeline.stage import ROW_SCHEMA, StageActor, dump_record, failure_row, load_record
from any2capins.pipeline.stage import apply_output as apply_output  # where callers have imported it
from any2capins.pipeline.video import VideoInfo, probe_video
from any2capins.schemas import (
    ClipRef,
    Failure,
    FilterDecision,
    Provenance,
    Record,
    make_clip_id,
)


def probe_source(
    item: dict[str, Any],
    spans: dict[str, Any],
    run_root: str,
    recipe_name: str,
    recipe_hash: str,
    run_id: str,
    stages_left_out: dict[str, str] | None = None,
    fetch_dir: str | None = None,
) -> list[dict[str, Any]]:
    """One source -> a row per clip span, or a single failure row for the source.

    An item with a ``probe_cache`` entry (pipeline/resume.py) is not probed again; one with
    a ``source_key`` has its probe added to the cache, and its remote file fetched into
    ``fetch_dir`` for the stages to reuse."""
    uri = str(item["source_uri"])
    start = None if item["start_s"] < 0 else float(item["start_s"])
    end = None if item["end_s"] < 0 else float(item["end_s"])
    source_id = (
        make_clip_id(uri, start, end)
        if start is not None and end is not None
        else (make_clip_id(uri, None, None))
    )
    if item.get("problem"):  # a manifest row rejected when the sources were listed
        return [failure_row(uri, source_id, "probe", BadManifestRow(str(item["problem"])))]
    config = SpanConfig.model_validate(spans)
    key = str(item.get("source_key") or "")
    cached = item.get("probe_cache")
    run_dir = RunDir(run_root)
    if cached:
        entry = json.loads(str(cached))
        info = VideoInfo(**entry["info"])
        span_list = [(float(a), float(b)) for a, b in entry["spans"]]
    else:
        if "source_key" not in item:  # not planned by pipeline/resume.py: key it here
            stat = stat_source(uri)
            key = make_source_key(item, spans, stat) if stat else ""
        try:
            with fetched(uri, key, fetch_dir) as path:
                info = probe_video(path, uri)
                span_list = make_spans(info, path, config, start, end)
        except Exception as e:  # noqa: BLE001 - VideoError or not, it is this source's failure
            return [failure_row(uri, source_id, "probe", e)]
        # A source that failed before may have a failure row keyed by the whole source.
        run_dir.clear_failure(source_id)
        if key:
            entry = {"info": asdict(info), "spans": [list(s) for s in span_list]}
            run_dir.probe_log().append({key: json.dumps(entry)})
    warning = clamp_warning(info, end)
    warnings = json.dumps([warning] if warning else [])
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
                "record": dump_record(record),
                "failure": "",
                "stage_seconds": "{}",
                "skipped": "[]",
                "dataset": "",
                "warnings": warnings,
                "filtered": "",
                "source_key": key,
            }
        )
    return rows


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


def finalize_rows(
    rows: list[dict[str, Any]],
    run_root: str,
    signature: str = "",
    stages: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Write each clip's record (or failure) to the run directory; pass small rows on.

    With a build ``signature``, the batch's finished clips (ok or filtered) then go to the
    done log in one part, after their records: the resume index never names a clip whose
    record is not durably written (pipeline/resume.py)."""
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
            record = load_record(row["record"])
            run_dir.save_record(record)
            run_dir.clear_failure(record.clip_id)
            run_dir.clear_filtered(record.clip_id)
            row["dataset"] = json.dumps(dataset_summary(record))
        row["record"] = b""  # the driver needs only the summary
        row["probe"] = ""
    if signature:
        run_dir.done_log().append(
            {
                row["clip_id"]: done_entry(row, signature, stages or [])
                for row in rows
                if not row["failure"]
            }
        )
    return rows


def _finalize_batch(
    batch: pa.Table, run_root: str, signature: str = "", stages: list[str] | None = None
) -> pa.Table:
    rows = finalize_rows(batch.to_pylist(), run_root, signature, stages)
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


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
        key = DedupKey.of(load_record(row["record"]))
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
        cleanup(run_id)  # this node's fetched sources (pipeline/fetch.py)
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
            "fetch_dir": cache_dir(run_id),
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
                "fetch_dir": cache_dir(run_id),
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
        functools.partial(
            _finalize_batch,
            run_root=run_root,
            signature=build_signature(resolved),
            stages=[s.name for s in resolved.stages],
        ),
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
    try:
        yield from _run_local(
            resolved, sources, run_root, artifacts_root, run_id, limit, progress, cache_dir(run_id)
        )
    finally:
        cleanup(run_id)


def _run_local(
    resolved: ResolvedRecipe,
    sources: list[dict[str, Any]],
    run_root: str,
    artifacts_root: str,
    run_id: str,
    limit: int | None,
    progress: ProgressTracker | None,
    fetch_dir: str,
) -> Iterator[dict[str, Any]]:
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
            fetch_dir,
        )
        safe_report(reporter, PROBE, probe_counts(1, probed))
        rows.extend(probed)
    if limit is not None:
        rows = rows[:limit]
    dedup = dedup_plan(resolved)
    for spec in resolved.stages:
        actor = StageActor(
            spec,
            run_root,
            artifacts_root,
            run_id,
            list(recipe.readers),
            progress=reporter,
            fetch_dir=fetch_dir,
        )
        size = spec.resources.batch_size
        rows = [r for i in range(0, len(rows), size) for r in actor.process(rows[i : i + size])]
        if dedup is not None and spec.name == dedup[0]:
            drops = decide_duplicates(dedup_keys(rows), resolved, run_root)
            safe_report(reporter, spec.name, {"filtered": len(drops)})
            rows = mark_duplicates(rows, drops)
    signature = build_signature(resolved)
    stages = [s.name for s in resolved.stages]
    size = 64  # like the Ray finalizer, one done-log part per batch, not per clip
    for i in range(0, len(rows), size):
        yield from finalize_rows(rows[i : i + size], run_root, signature, stages)


# (resolved, sources, run_root, artifacts_root, run_id, limit, progress=None) -> summary rows
Executor = Callable[..., Iterator[dict[str, Any]]]
EXECUTORS: dict[str, Executor] = {"ray": run_ray, "local": run_local}
