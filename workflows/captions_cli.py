"""``any2cap captions``: Batch API mode (submit, status, collect, run), caption spend, and
``regenerate``: new text for the fields human reviewers rejected.

The caption settings (endpoint, cache, prices) come from the ``captions`` stage of the
recipe recorded in RUN_DIR/run.json, with the same ``OPENAI_*`` environment variables as
the build; options override them.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from any2capins.annotators.base import MissingDependency
from any2capins.annotators.captions import CaptionsConfig, ResponseCache
from any2capins.pipeline.rundir import RunDir

captions_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Caption writer: Batch API mode, spend, and regenerating rejected fields.",
    no_args_is_help=True,
)
batch_app = typer.Typer(
    rich_markup_mode="markdown",
    help="OpenAI Batch API: send what a `mode: batch` build queued, collect the answers "
    "into the response cache, then build again.",
    no_args_is_help=True,
)
captions_app.add_typer(batch_app, name="batch")

err = Console(stderr=True)
out = Console()

RunDirArg = Annotated[str, typer.Argument(help="run directory of a build with a captions stage")]
CacheDirOpt = Annotated[
    str | None, typer.Option("--cache-dir", help="response cache (default: the stage's)")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="endpoint (default: recipe or OPENAI_BASE_URL)")
]


def stage_config(
    run_dir: str, cache_dir: str | None = None, base_url: str | None = None
) -> CaptionsConfig:
    """The captions stage's config from RUN_DIR's recipe, as the model writer."""
    info = RunDir(run_dir).load_info()
    if info is None:
        err.print(f"[red]error:[/red] {run_dir} has no run.json: is it a run directory?")
        raise typer.Exit(2)
    stages = [s for s in info.recipe.get("stages", []) if s.get("annotator") == "captions"]
    if not stages:
        err.print(f"[red]error:[/red] the recipe of {run_dir} has no captions stage")
        raise typer.Exit(2)
    params: dict[str, Any] = dict(stages[0].get("params") or {})
    params["writer"] = "openai"
    if cache_dir:
        params["cache_dir"] = cache_dir
    if base_url:
        params["base_url"] = base_url
    try:
        return CaptionsConfig.model_validate(params)
    except ValidationError as e:
        err.print(f"[red]error:[/red] captions params in {run_dir}: {e}")
        raise typer.Exit(2) from e


def _runner(run_dir: str, cache_dir: str | None, base_url: str | None) -> Any:
    from any2capins.annotators.captions.batch import BatchRunner

    config = stage_config(run_dir, cache_dir, base_url)
    try:
        return BatchRunner(
            config, ResponseCache(config.resolved_cache_dir()), log=lambda m: err.print(m)
        )
    except MissingDependency as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


@batch_app.command("submit")
def batch_submit(
    run_dir: RunDirArg, cache_dir: CacheDirOpt = None, base_url: BaseUrlOpt = None
) -> None:
    """Upload the queued requests and create batches (finishes interrupted submissions)."""
    runner = _runner(run_dir, cache_dir, base_url)
    ids = runner.submit()
    out.print(f"{len(ids)} batches submitted: {' '.join(ids) or '-'}")


@batch_app.command("status")
def batch_status(
    run_dir: RunDirArg,
    cache_dir: CacheDirOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Queued requests and every submission with its batch's live status."""
    runner = _runner(run_dir, cache_dir, base_url)
    subs = runner.status()
    queued = runner.cache.pending_counts().get("", 0)
    if as_json:
        sys.stdout.write(json.dumps({"queued": queued, "submissions": subs}, default=str) + "\n")
        return
    table = Table(title=f"{queued} requests queued, not submitted")
    for col in ("submission", "batch", "requests", "status", "collected"):
        table.add_column(col)
    for s in subs:
        table.add_row(
            s["id"],
            s["batch_id"] or "-",
            str(s["requests"]),
            s["status"],
            "yes" if s["collected"] else "no",
        )
    out.print(table)


@batch_app.command("collect")
def batch_collect(
    run_dir: RunDirArg, cache_dir: CacheDirOpt = None, base_url: BaseUrlOpt = None
) -> None:
    """Store the answers of finished batches in the response cache."""
    report = _runner(run_dir, cache_dir, base_url).collect()
    _print_collect(report)


@batch_app.command("run")
def batch_run(
    run_dir: RunDirArg,
    cache_dir: CacheDirOpt = None,
    base_url: BaseUrlOpt = None,
    wait: Annotated[bool, typer.Option(help="poll until every batch is collected")] = True,
    poll_interval: Annotated[float, typer.Option(help="seconds between polls", min=0)] = 30.0,
    timeout: Annotated[float | None, typer.Option(help="stop waiting after N seconds")] = None,
) -> None:
    """Submit, poll and collect in one go; safe to kill and run again."""
    report = _runner(run_dir, cache_dir, base_url).run(wait, poll_interval, timeout)
    _print_collect(report)
    if report.batches_open:
        err.print(f"{len(report.batches_open)} batches still running: run this again later")
    else:
        err.print(f"done: build again (any2cap build ... --out {run_dir}) to use the answers")


def _print_collect(report: Any) -> None:
    out.print(
        f"{report.collected} answers collected (${report.cost_usd:.6f}), "
        f"{report.requeued} requeued, {len(report.batches_done)} batches done, "
        f"{len(report.batches_open)} still running"
    )


@captions_app.command("cost")
def cost(
    run_dir: RunDirArg,
    cache_dir: CacheDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Caption spend per build of RUN_DIR (the ledger, failed clips included) and in its
    records (what the captions kept in the dataset cost when they were bought)."""
    config = stage_config(run_dir, cache_dir)
    cache = ResponseCache(config.resolved_cache_dir())
    info = RunDir(run_dir).load_info()
    run_ids = [str(r["run_id"]) for r in (info.runs if info else [])]
    by_run = cache.spend_by_run()
    records = list(RunDir(run_dir).records())
    runs: dict[str, dict[str, Any]] = {
        rid: vars(by_run[rid]) if rid in by_run else {"requests": 0, "cost_usd": 0.0}
        for rid in run_ids
    }
    result: dict[str, Any] = {
        "runs": runs,
        "paid_usd": sum(by_run[r].cost_usd for r in run_ids if r in by_run),
        "records": len(records),
        "records_tokens_in": sum(r.provenance.tokens_in for r in records),
        "records_tokens_out": sum(r.provenance.tokens_out for r in records),
        "records_cost_usd": sum(r.provenance.cost_usd for r in records),
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table(title=f"caption spend of {run_dir}")
    for col in ("run", "requests", "tokens in", "cached", "tokens out", "USD"):
        table.add_column(col)
    for rid, s in runs.items():
        table.add_row(
            rid,
            str(s["requests"]),
            str(s.get("tokens_in", 0)),
            str(s.get("tokens_cached", 0)),
            str(s.get("tokens_out", 0)),
            f"{s['cost_usd']:.6f}",
        )
    out.print(table)
    out.print(
        f"paid by these builds: ${result['paid_usd']:.6f}; captions in {len(records)} records "
        f"cost ${result['records_cost_usd']:.6f} when bought"
    )


def _stage_params(run_dir: str, annotator: str) -> dict[str, Any] | None:
    info = RunDir(run_dir).load_info()
    stages = [
        s
        for s in (info.recipe.get("stages", []) if info else [])
        if s.get("annotator") == annotator
    ]
    return dict(stages[0].get("params") or {}) if stages else None


@captions_app.command("regenerate")
def regenerate(
    run: Annotated[str, typer.Option("--run", help="run directory whose review rejected fields")],
    db: Annotated[
        str | None, typer.Option("--db", help="review store URL (default: RUN_DIR/review.db)")
    ] = None,
    cache_dir: CacheDirOpt = None,
    base_url: BaseUrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rewrite the fields reviewers rejected and queue each item again as its next revision.

    Reads the review store's items whose outcome is ``regenerate``; for each, asks the
    captions model again for every rejected field only (instance prompts through the
    instances stage's writer), with the reviewer's reason, note and the rejected text in the
    request. The other fields stay byte-identical. The new record is saved to RUN_DIR and
    re-queued for review (audit: "regenerated" from revision N to N+1). Exit code 1 when a
    field could not be rewritten (its item stays waiting).
    """
    from any2capins.annotators.captions.annotator import make_writer
    from any2capins.annotators.captions.instances import InstancesConfig
    from any2capins.annotators.captions.regenerate import Rejection, regenerate_fields
    from any2capins.workflows.review import ReviewError, open_store

    try:
        store = open_store(run_dir=run, db_url=db)
    except ReviewError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    tasks = store.regeneration_queue()
    report: dict[str, Any] = {"waiting": len(tasks), "requeued": [], "failed": []}
    if not tasks:
        _print_regenerate(report, as_json)
        return
    config = stage_config(run, cache_dir, base_url)
    instance_params = _stage_params(run, "instances")
    try:
        _, writer = make_writer(config)
        prompt_writer = None
        if instance_params is not None and any(
            n.startswith("short_prompt:") for t in tasks for n in t.rejected
        ):
            instance_params = {**instance_params, "writer": "openai"}
            if cache_dir:
                instance_params["cache_dir"] = cache_dir
            if base_url:
                instance_params["base_url"] = base_url
            _, prompt_writer = make_writer(InstancesConfig.model_validate(instance_params))
    except (MissingDependency, ValidationError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    assert writer is not None
    rundir = RunDir(run)
    try:
        for task in tasks:
            rejections = [
                Rejection(name, v.reason, v.note, v.machine_text)
                for name, v in task.rejected.items()
            ]
            if not rejections:
                report["failed"].append(
                    {"clip_id": task.clip_id, "error": "no rejected field recorded"}
                )
                continue
            done = regenerate_fields(task.record, rejections, writer, prompt_writer)
            if done.errors:
                report["failed"].append({"clip_id": task.clip_id, "errors": done.errors})
                continue
            try:
                # the store first: its version check stops a second regenerate of the item
                revision = store.requeue_regenerated(task.item_id, task.version, done.record)
            except ReviewError as e:
                report["failed"].append({"clip_id": task.clip_id, "error": str(e)})
                continue
            rundir.save_record(done.record)
            report["requeued"].append(
                {
                    "clip_id": task.clip_id,
                    "item_id": task.item_id,
                    "fields": list(done.texts),
                    "revision": revision,
                    "requests": done.requests,
                    "cost_usd": round(done.cost_usd, 8),
                }
            )
    finally:
        writer.close()
        if prompt_writer is not None:
            prompt_writer.close()
    _print_regenerate(report, as_json)
    if report["failed"]:
        raise typer.Exit(1)


def _print_regenerate(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    if not report["waiting"]:
        out.print("nothing to regenerate: no reviewed item waits for new text")
        return
    for r in report["requeued"]:
        out.print(
            f"{r['clip_id']}: rewrote {', '.join(r['fields'])}; queued again as revision "
            f"{r['revision']} ({r['requests']} model requests)"
        )
    for f in report["failed"]:
        err.print(f"[red]{f['clip_id']}: not rewritten:[/red] {f.get('errors') or f.get('error')}")
    out.print(f"{len(report['requeued'])} of {report['waiting']} items queued again for review")
