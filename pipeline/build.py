"""Run a resolved recipe over sources into a run directory and produce the run report."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from any2capins.pipeline.curation import parse_rules, rule_key, would_drop
from any2capins.pipeline.engine import EXECUTORS, dedup_plan
from any2capins.pipeline.fit import ResourceFit, fit_to_ray
from any2capins.pipeline.progress import PROBE, ProgressTracker, ProgressView, Ticker
from any2capins.pipeline.recipe import ResolvedRecipe
from any2capins.pipeline.resume import ResumePlan, plan_resume
from any2capins.pipeline.rundir import RunDir, RunInfo
from any2capins.pipeline.sources import SourceItem
from any2capins.pipeline.storage import new_run_id
from any2capins.schemas import Failure, FilterDecision, utc_now


class StageTiming(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clips: int = 0
    skipped: int = 0
    seconds: float = 0.0
    seconds_per_clip: float = 0.0


class RunReport(BaseModel):
    """What a build did: the JSON that `any2cap runs show --json` prints."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    recipe: str
    recipe_hash: str
    executor: str
    run_dir: str
    started_at: str
    finished_at: str
    wall_seconds: float
    clips_in: int
    records_ok: int
    records_resumed: int = Field(description="records whose every stage came from markers")
    failed: int
    failures: list[Failure]
    failures_by_stage: dict[str, dict[str, int]]
    records_filtered: int = Field(
        default=0, description="clips the curation filters or near-duplicate step dropped"
    )
    filtered: list[FilterDecision] = Field(
        default_factory=list, description="one per dropped clip: rule, measured value, stage"
    )
    filtered_by_rule: dict[str, int] = Field(
        default_factory=dict,
        description="clips dropped per rule ('motion_fraction >= 0.05', 'near-duplicate')",
    )
    kept_by_rule: dict[str, int] = Field(
        default_factory=dict, description="records that met each rule (score present, passed)"
    )
    would_filter_by_rule: dict[str, int] = Field(
        default_factory=dict,
        description="score_only runs: records each rule would have dropped (first rule failed)",
    )
    dedup: dict[str, float | int | str | bool] = Field(
        default_factory=dict,
        description="the near-duplicate step: clips, groups, duplicates, seconds "
        "(groups in RUN_DIR/dedup_groups.json)",
    )
    stages: dict[str, StageTiming]
    clips_per_second: float
    left_out: dict[str, str] = Field(
        default_factory=dict, description="stages left out of the run (stage -> why)"
    )
    instances: dict[str, int] = Field(
        default_factory=dict,
        description="instances per condition set ('camera', 'camera+depth'), planned records only",
    )
    clips_without_instances: int = Field(
        default=0, description="records whose instance plan is empty (they suit nothing)"
    )
    turned_away: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="condition type -> suitability reason category -> clips it turned away",
    )
    flags: dict[str, int] = Field(
        default_factory=dict, description="caption-condition cross-check flags per check"
    )
    warnings: list[str] = Field(
        default_factory=list, description="about sources, e.g. a span end clamped to the video"
    )
    resource_fit: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Ray only: per operator, what it asked for and what it ran with "
        "(num_cpus_asked, num_cpus, ...; scaled down on a machine too small for the asks)",
    )


# Called with the build's live figures every ``progress_tick_s`` from a thread, and once
# more at the end with ``view.finished`` set (pipeline/progress.py).
ProgressFn = Callable[[ProgressView], None]
NotifyFn = Callable[[str], None]


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def run_build(
    resolved: ResolvedRecipe,
    sources: list[SourceItem],
    run_root: str,
    *,
    limit: int | None = None,
    executor: str = "ray",
    progress: ProgressFn | None = None,
    notify: NotifyFn = _to_stderr,
    progress_tick_s: float = 0.5,
) -> RunReport:
    """Run ``resolved`` over ``sources`` into ``run_root``.

    With the Ray executor the stages' pools are first checked against what Ray has
    (:mod:`any2capins.pipeline.fit`): on local Ray they are scaled down to fit, and ``notify`` gets one
    line saying so; on a cluster that lacks the resources, :class:`ResourceRefusal` is
    raised before the run directory is touched.

    ``progress`` gets a :class:`ProgressView` (per stage: done / total, clips/s, failures,
    ETA) every ``progress_tick_s`` seconds while the build runs, and a last one at the end.
    """
    fit: ResourceFit | None = None
    if executor == "ray":
        resolved, fit = fit_to_ray(resolved)
        if fit.scaled:
            notify(fit.line())
    run_dir = RunDir(run_root)
    with run_dir.exclusive():
        if progress is None:
            return _run_locked(resolved, sources, run_dir, limit, executor, None, fit)
        tracker = ProgressTracker([s.name for s in resolved.stages], len(sources), limit)
        ticker = Ticker(tracker, progress, progress_tick_s).start()
        try:
            report = _run_locked(resolved, sources, run_dir, limit, executor, tracker, fit)
        finally:
            ticker.stop()
        tracker.finish()
        with contextlib.suppress(Exception):  # the display's last line is not worth a build
            progress(tracker.view(finished=True))
        return report


def _report_finished(
    progress: ProgressTracker, plan: ResumePlan, finished: list[dict[str, Any]], stages: list[str]
) -> None:
    """Count the sources and clips the resume index settled as the engine would have."""
    progress.add(PROBE, {"done": plan.finished_sources, "rows": len(finished), "failed": 0})
    for stage in stages:
        n = sum(1 for row in finished if stage in json.loads(row["skipped"]))
        if n:
            progress.add(stage, {"done": n, "skipped": n})


def _run_locked(
    resolved: ResolvedRecipe,
    sources: list[SourceItem],
    run_dir: RunDir,
    limit: int | None,
    executor: str,
    progress: ProgressTracker | None,
    fit: ResourceFit | None = None,
) -> RunReport:
    run_id = new_run_id()
    started_at = utc_now()
    t0 = time.perf_counter()

    info = run_dir.load_info() or RunInfo(
        recipe=resolved.recipe.model_dump(mode="json"), recipe_hash=resolved.recipe_hash
    )
    info.recipe = resolved.recipe.model_dump(mode="json")
    info.recipe_hash = resolved.recipe_hash
    info.runs.append(
        {"run_id": run_id, "started_at": started_at.isoformat(), "sources": len(sources)}
    )
    run_dir.save_info(info)

    artifacts_root = resolved.recipe.artifacts or run_dir.artifacts_uri()
    stage_names = [s.name for s in resolved.stages]
    ok = failed = resumed = 0
    failures: list[Failure] = []
    filtered: list[FilterDecision] = []
    kept_by_rule: Counter[str] = Counter()
    would_filter: Counter[str] = Counter()
    curation = resolved.recipe.curation
    rules = parse_rules(dict(curation.keep))[0] if curation else []
    seconds: dict[str, float] = defaultdict(float)
    clips: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    instances: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    turned_away: dict[str, Counter[str]] = defaultdict(Counter)
    no_instances = 0
    warnings: dict[str, None] = {}  # ordered set: one warning per source, not per clip
    # Fold the logs earlier builds left (this also migrates one-marker-per-clip run
    # directories), then split off the sources whose every clip is already done.
    run_dir.compact()
    plan = plan_resume(
        resolved, [s.to_row() for s in sources], run_dir, whole_clips=dedup_plan(resolved) is None
    )
    finished = plan.finished_rows if limit is None else plan.finished_rows[:limit]
    left = None if limit is None else limit - len(finished)
    if progress is not None:
        _report_finished(progress, plan, finished, stage_names)
    rows: Iterator[dict[str, Any]] = iter(finished)
    if plan.todo and (left is None or left > 0):
        rows = itertools.chain(
            rows,
            EXECUTORS[executor](
                resolved, plan.todo, run_dir.root, artifacts_root, run_id, left, progress=progress
            ),
        )
    for row in rows:
        if row["failure"]:
            failed += 1
            failures.append(Failure.model_validate_json(row["failure"]))
        elif row.get("filtered"):
            filtered.append(FilterDecision.model_validate_json(row["filtered"]))
            skipped.update(json.loads(row["skipped"]))  # stages it resumed before it was dropped
        else:
            ok += 1
            skipped_here = json.loads(row["skipped"])
            if len(skipped_here) == len(stage_names):
                resumed += 1
            skipped.update(skipped_here)
            added = json.loads(row["dataset"] or "{}")
            if added.get("instances") is not None:
                instances.update(added["instances"])
                no_instances += not added["instances"]
            for name, category in added.get("unsuitable", {}).items():
                turned_away[name][category] += 1
            flags.update(added.get("flags", []))
            scores = added.get("scores") or {}
            kept_by_rule.update(
                r.text for r in rules if r.score in scores and r.passes(scores[r.score])
            )
            if curation is not None and curation.score_only:
                would = would_drop(curation, scores)
                if would is not None:
                    would_filter[would] += 1
        warnings.update(dict.fromkeys(json.loads(row.get("warnings") or "[]")))
        for stage, secs in json.loads(row["stage_seconds"]).items():
            seconds[stage] += secs
            clips[stage] += 1
        if progress is not None:
            progress.row_out(failed=bool(row["failure"]), filtered=bool(row.get("filtered")))

    wall = time.perf_counter() - t0
    by_stage: dict[str, dict[str, int]] = defaultdict(dict)
    for f in failures:
        by_stage[f.stage][f.error_type] = by_stage[f.stage].get(f.error_type, 0) + 1
    failures.sort(key=lambda f: (f.source_uri, f.clip_id))
    filtered.sort(key=lambda f: (f.source_uri, f.clip_id))
    dedup: dict[str, float | int | str | bool] = {}
    if dedup_plan(resolved) is None:
        run_dir.clear_dedup_groups()  # a stale file would describe another recipe's groups
    else:
        groups = run_dir.load_dedup_groups() or {}
        dedup = {k: v for k, v in groups.items() if k not in ("groups", "keep")}
        dedup["groups_file"] = run_dir.storage.uri("dedup_groups.json")
    report = RunReport(
        run_id=run_id,
        recipe=resolved.recipe.name,
        recipe_hash=resolved.recipe_hash,
        executor=executor,
        run_dir=run_dir.root,
        started_at=started_at.isoformat(),
        finished_at=utc_now().isoformat(),
        wall_seconds=round(wall, 3),
        clips_in=ok + failed + len(filtered),
        records_ok=ok,
        records_resumed=resumed,
        failed=failed,
        failures=failures,
        failures_by_stage={k: dict(v) for k, v in sorted(by_stage.items())},
        records_filtered=len(filtered),
        filtered=filtered,
        filtered_by_rule=dict(Counter(rule_key(f) for f in filtered).most_common()),
        kept_by_rule=dict(kept_by_rule),
        would_filter_by_rule=dict(would_filter.most_common()),
        dedup=dedup,
        stages={
            name: StageTiming(
                clips=clips[name],
                skipped=skipped[name],
                seconds=round(seconds[name], 3),
                seconds_per_clip=round(seconds[name] / clips[name], 4) if clips[name] else 0.0,
            )
            for name in stage_names
        },
        clips_per_second=round((ok + failed + len(filtered)) / wall, 3) if wall > 0 else 0.0,
        left_out=dict(resolved.left_out),
        instances=dict(sorted(instances.items(), key=lambda kv: (kv[0].count("+"), kv[0]))),
        clips_without_instances=no_instances,
        turned_away={k: dict(v.most_common()) for k, v in sorted(turned_away.items())},
        flags=dict(flags.most_common()),
        warnings=list(warnings),
        resource_fit=fit.report() if fit is not None else {},
    )
    run_dir.save_report(report.model_dump(mode="json"))
    run_dir.compact()  # so that the next build reads a handful of parts
    info.runs[-1].update(
        {"finished_at": report.finished_at, "ok": ok, "failed": failed, "filtered": len(filtered)}
    )
    run_dir.save_info(info)
    return report
