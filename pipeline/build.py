"""Run a resolved recipe over sources into a run directory and produce the run report."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from pipeline.engine import EXECUTORS
from pipeline.recipe import ResolvedRecipe
from pipeline.rundir import RunDir, RunInfo
from pipeline.sources import SourceItem
from pipeline.storage import new_run_id
from schemas import Failure, utc_now


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
    stages: dict[str, StageTiming]
    clips_per_second: float


ProgressFn = Callable[[int, int], None]


def run_build(
    resolved: ResolvedRecipe,
    sources: list[SourceItem],
    run_root: str,
    *,
    limit: int | None = None,
    executor: str = "ray",
    progress: ProgressFn | None = None,
) -> RunReport:
    run_dir = RunDir(run_root)
    with run_dir.exclusive():
        return _run_locked(resolved, sources, run_dir, limit, executor, progress)


def _run_locked(
    resolved: ResolvedRecipe,
    sources: list[SourceItem],
    run_dir: RunDir,
    limit: int | None,
    executor: str,
    progress: ProgressFn | None,
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
    seconds: dict[str, float] = defaultdict(float)
    clips: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    rows = EXECUTORS[executor](
        resolved, [s.to_row() for s in sources], run_dir.root, artifacts_root, run_id, limit
    )
    for row in rows:
        if row["failure"]:
            failed += 1
            failures.append(Failure.model_validate_json(row["failure"]))
        else:
            ok += 1
            skipped_here = json.loads(row["skipped"])
            if len(skipped_here) == len(stage_names):
                resumed += 1
            skipped.update(skipped_here)
        for stage, secs in json.loads(row["stage_seconds"]).items():
            seconds[stage] += secs
            clips[stage] += 1
        if progress is not None:
            progress(ok, failed)

    wall = time.perf_counter() - t0
    by_stage: dict[str, dict[str, int]] = defaultdict(dict)
    for f in failures:
        by_stage[f.stage][f.error_type] = by_stage[f.stage].get(f.error_type, 0) + 1
    failures.sort(key=lambda f: (f.source_uri, f.clip_id))
    report = RunReport(
        run_id=run_id,
        recipe=resolved.recipe.name,
        recipe_hash=resolved.recipe_hash,
        executor=executor,
        run_dir=run_dir.root,
        started_at=started_at.isoformat(),
        finished_at=utc_now().isoformat(),
        wall_seconds=round(wall, 3),
        clips_in=ok + failed,
        records_ok=ok,
        records_resumed=resumed,
        failed=failed,
        failures=failures,
        failures_by_stage={k: dict(v) for k, v in sorted(by_stage.items())},
        stages={
            name: StageTiming(
                clips=clips[name],
                skipped=skipped[name],
                seconds=round(seconds[name], 3),
                seconds_per_clip=round(seconds[name] / clips[name], 4) if clips[name] else 0.0,
            )
            for name in stage_names
        },
        clips_per_second=round((ok + failed) / wall, 3) if wall > 0 else 0.0,
    )
    run_dir.save_report(report.model_dump(mode="json"))
    info.runs[-1].update({"finished_at": report.finished_at, "ok": ok, "failed": failed})
    run_dir.save_info(info)
    return report
