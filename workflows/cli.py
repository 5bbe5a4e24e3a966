"""The ``any2cap`` command line: build runs and look at what they produced."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from any2capins.annotators import MissingDependency
from any2capins.pipeline.rundir import RunDir, RunDirBusy
from any2capins.pipeline.sources import SourceError, list_sources

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Build Any2CapIns-style datasets: conditions, structured captions, review, shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(
    rich_markup_mode="markdown", help="Inspect run directories.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")

err = Console(stderr=True)
out = Console()

# The extra (pyproject.toml) that brings in each optional top-level package: a command whose
# package is missing says which extra to install instead of failing with an ImportError.
EXTRA_OF_PACKAGE = {
    **dict.fromkeys(
        (
            "ray", "transformers", "torchvision", "onnxruntime", "rapidocr_onnxruntime", "cv2",
            "decord", "av", "scenedetect", "pandas", "PIL", "matplotlib", "huggingface_hub",
            "snowballstemmer", "threadpoolctl", "aiohttp",
        ),
        "build",
    ),
    **dict.fromkeys(("torch", "webdataset"), "train"),
    "openai": "captions",
    **dict.fromkeys(
        (
            "sqlalchemy", "alembic", "fastapi", "uvicorn", "jinja2", "multipart",
            "python_multipart", "psycopg", "argon2", "httpx", "starlette",
        ),
        "review",
    ),
    "s3fs": "s3",
    "torchcodec": "torchcodec",
}  # fmt: skip
# Commands and the extra they are documented to need (for the message when the missing
# package is not one the table above knows).
COMMAND_EXTRA = {
    "build": "build",
    "captions": "captions",
    "camera": "build",
    "eval": "build",
    "export": "review",
    "shards": "review",
    "review": "review",
    "models": "build",
}


def missing_extra_message(command: str, e: ModuleNotFoundError) -> str:
    """What to install when ``command`` cannot import the package ``e`` names."""
    package = (e.name or "").split(".", 1)[0]
    extra = EXTRA_OF_PACKAGE.get(package, COMMAND_EXTRA.get(command, "all"))
    return (
        f"any2cap {command} needs the {extra!r} extra, which is not installed here "
        f"(no module {package or e.name!r}): install any2capins[{extra}] "
        f"(pip install 'any2capins[{extra}]'; everything: any2capins[all])"
    )


def _exit_missing_extra(command: str, e: ModuleNotFoundError) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(missing_extra_message(command, e))}")
    raise typer.Exit(2) from e


def _add_unavailable(command: str, e: ModuleNotFoundError) -> None:
    """Register ``command`` as a stand-in that takes any arguments and only says which extra
    it needs (a command group would first fail on its unknown subcommand)."""
    message = missing_extra_message(command, e)

    @app.command(
        command,
        help=f"(not installed) {escape(message)}",
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _missing(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        _exit_missing_extra(command, e)


def _register_optional_commands() -> None:
    """Add the commands whose modules need an extra; one whose extra is missing is still
    listed, and answers with what to install."""
    groups = {
        "captions": ("any2capins.workflows.captions_cli", "captions_app"),
        "camera": ("any2capins.workflows.camera_cli", "camera_app"),
        "eval": ("any2capins.workflows.eval", "eval_app"),
        "shards": ("any2capins.workflows.export.cli", "shards_app"),
        "review": ("any2capins.workflows.review.cli", "review_app"),
        "models": ("any2capins.workflows.models_cli", "models_app"),
    }
    for name, (module, attr) in groups.items():
        try:
            _check_extra(name)
            app.add_typer(getattr(importlib.import_module(module), attr), name=name)
        except ModuleNotFoundError as e:
            if not _is_third_party(e):
                raise
            _add_unavailable(name, e)
    try:
        _check_extra("export")
        from any2capins.workflows.export.cli import export as export_command
    except ModuleNotFoundError as e:
        if not _is_third_party(e):
            raise
        _add_unavailable("export", e)
    else:
        app.command("export")(export_command)


# Packages a command's extra must provide. Command modules import their heavy dependencies
# lazily (so that the shard reader stays light), so importing the module alone does not show
# that a `review serve` would fail on FastAPI later.
KEY_PACKAGES = {
    "build": ("ray", "av", "cv2"),
    "captions": ("openai",),
    "review": ("sqlalchemy", "fastapi", "uvicorn"),
}


def _check_extra(command: str) -> None:
    """Raise ModuleNotFoundError naming the first key package of ``command``'s extra that is
    not installed."""
    for package in KEY_PACKAGES.get(COMMAND_EXTRA.get(command, ""), ()):
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)


def _is_third_party(e: ModuleNotFoundError) -> bool:
    """A missing package, not a missing module of this project (that is a bug to raise)."""
    top = (e.name or "").split(".", 1)[0]
    return bool(top) and top != "any2capins"


_register_optional_commands()


@app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="shipped recipe name (demo) or a YAML path")],
    input: Annotated[
        str,
        typer.Option("--input", "-i", help="folder, manifest (csv/parquet/jsonl), video or URI"),
    ],
    out_dir: Annotated[str, typer.Option("--out", "-o", help="run directory (path or URI)")],
    limit: Annotated[int | None, typer.Option(help="process at most N clips", min=1)] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any clip failed")] = False,
    executor: Annotated[
        str, typer.Option(help="ray (default; RAY_ADDRESS joins a cluster) or local (plain loop)")
    ] = "ray",
    progress: Annotated[
        bool,
        typer.Option(
            help="live progress per stage (done/total, clips/s, failures, ETA): bars on a "
            "terminal, else a plain stderr line every ANY2CAP_PROGRESS_INTERVAL_S (60) seconds"
        ),
    ] = True,
    skip_unavailable: Annotated[
        bool,
        typer.Option(
            "--skip-unavailable",
            help="leave out stages whose models or packages are missing and say so; "
            "the demo uses it",
        ),
    ] = False,
) -> None:
    """Run RECIPE over the clips in INPUT into RUN_DIR; re-running resumes."""
    try:
        from any2capins.pipeline.build import run_build
        from any2capins.pipeline.fit import ResourceRefusal
        from any2capins.pipeline.recipe import RecipeError
        from any2capins.workflows.progress_display import make_display
        from any2capins.workflows.recipes import load_recipe
    except ModuleNotFoundError as e:
        if not _is_third_party(e):
            raise
        _exit_missing_extra("build", e)

    if executor not in ("ray", "local"):
        err.print(f"[red]unknown executor {executor!r} (ray or local)")
        raise typer.Exit(2)
    try:
        resolved = load_recipe(recipe)
        sources = list_sources(input)
        # A missing package or model file is a clear error before any work starts, not a
        # crash inside a Ray actor; checked without loading the models here.
        unavailable: dict[str, str] = {}
        for spec in resolved.stages:
            try:
                spec.preflight()
            except MissingDependency as e:
                if not skip_unavailable:
                    message = str(e).rstrip()
                    hint = _fetch_command([spec.name])
                    if hint and hint not in message:
                        message += f" To bring it in: {hint}."
                    message += " Or build with --skip-unavailable to leave the stage out."
                    raise MissingDependency(message) from e
                unavailable[spec.name] = str(e)
        resolved = resolved.without(unavailable)
    except (RecipeError, SourceError, MissingDependency) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    if not sources:
        err.print(f"[red]error:[/red] no videos found in {input}")
        raise typer.Exit(2)
    where = os.environ.get("RAY_ADDRESS") or "local Ray" if executor == "ray" else "plain loop"
    err.print(
        f"recipe [bold]{resolved.recipe.name}[/bold] ({len(resolved.stages)} stages"
        + (f", left out: {', '.join(resolved.left_out)}" if resolved.left_out else "")
        + f"), {len(sources)} sources -> {out_dir} on {where}"
    )
    with make_display(progress, err, [s.name for s in resolved.stages]) as display:
        try:
            report = run_build(
                resolved,
                sources,
                out_dir,
                limit=limit,
                executor=executor,
                progress=display.update if progress else None,
                notify=lambda line: err.print(line, markup=False, soft_wrap=True),
            )
        except (RunDirBusy, ResourceRefusal, MissingDependency) as e:
            # MissingDependency here: a model that passed the preflight failed to load in a
            # worker (a corrupt file, a device the worker lacks)
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from e
    data = report.model_dump(mode="json")
    _print_report(data)
    err.print(f"report: {os.path.join(report.run_dir, 'report.json')}")
    from any2capins.workflows.review import regeneration_hint  # reviewers may wait for new text

    if (waiting := regeneration_hint(report.run_dir)) is not None:
        err.print(waiting, markup=False)
    if report.clips_in and report.failed == report.clips_in:
        err.print("[red]every clip failed[/red]")
        raise typer.Exit(1)
    if strict and report.failed:
        err.print(f"[red]--strict: {report.failed} clips failed[/red]")
        raise typer.Exit(1)


def _print_report(report: dict[str, Any]) -> None:
    summary = Table(title=f"run {report['run_id']} ({report['recipe']})", show_header=False)
    for key in ("clips_in", "records_ok", "records_resumed", "failed", "wall_seconds"):
        summary.add_row(key, str(report[key]))
    if report.get("records_filtered"):
        summary.add_row("filtered", str(report["records_filtered"]))
    out.print(summary)
    stages = Table(title="stages")
    for col in ("stage", "clips run", "resumed", "seconds", "s/clip"):
        stages.add_column(col)
    for name, t in report["stages"].items():
        stages.add_row(
            name,
            str(t["clips"]),
            str(t["skipped"]),
            f"{t['seconds']:.2f}",
            f"{t['seconds_per_clip']:.3f}",
        )
    out.print(stages)
    if report["failures_by_stage"]:
        by_stage = Table(title="failures by stage")
        for col in ("stage", "error type", "clips"):
            by_stage.add_column(col)
        for stage, counts in report["failures_by_stage"].items():
            for error_type, n in sorted(counts.items()):
                by_stage.add_row(stage, error_type, str(n))
        out.print(by_stage)
    if report["failures"]:
        failures = Table(title="failures")
        for col in ("source", "stage", "error", "builds failed", "message"):
            failures.add_column(col, overflow="fold")
        for f in report["failures"]:
            failures.add_row(
                os.path.basename(f["source_uri"]),
                f["stage"],
                f["error_type"],
                str(f.get("attempt", 1)),
                f["message"][:160],
            )
        out.print(failures)
    for warning in report.get("warnings") or []:
        out.print(f"warning: {warning}", markup=False)
    _print_curation(report)
    _print_dataset(report)
    left_out = report.get("left_out") or {}
    if left_out:
        table = Table(title="stages left out")
        for col in ("stage", "why"):
            table.add_column(col, overflow="fold")
        for stage, why in left_out.items():
            # the first sentence; the whole message (how to provide the model) is in the report
            table.add_row(stage, why.split(". ", 1)[0][:200])
        out.print(table)
        fetch = _fetch_command(list(left_out))
        if fetch:
            out.print(f"to bring them in: {fetch}", markup=False)


def _print_curation(report: dict[str, Any]) -> None:
    """Per curation rule: records that met it and clips it dropped (or would have)."""
    dropped: dict[str, int] = report.get("filtered_by_rule") or {}
    kept: dict[str, int] = report.get("kept_by_rule") or {}
    would: dict[str, int] = report.get("would_filter_by_rule") or {}
    dedup: dict[str, Any] = report.get("dedup") or {}
    if not (dropped or kept or would or dedup):
        return
    table = Table(title="curation" + (" (score only: nothing dropped)" if would else ""))
    for col in ("rule", "kept", "dropped" if not would else "would drop"):
        table.add_column(col)
    counts = would or dropped
    for rule in dict.fromkeys([*kept, *counts]):
        if rule == "near-duplicate":
            continue
        table.add_row(rule, str(kept.get(rule, 0)), str(counts.get(rule, 0)))
    if dedup:
        table.add_row(
            f"near-duplicate (distance <= {dedup.get('max_distance')})",
            str(int(dedup.get("clips", 0)) - int(dedup.get("duplicates", 0))),
            str(dropped.get("near-duplicate", 0) if dedup.get("dropped") else 0)
            + ("" if dedup.get("dropped") else f" ({dedup.get('duplicates', 0)} found)"),
        )
    out.print(table)
    if dedup:
        out.print(
            f"near-duplicates: {dedup.get('groups_count', 0)} groups over "
            f"{dedup.get('clips', 0)} clips in {float(dedup.get('seconds', 0)):.2f} s; "
            f"groups: {dedup.get('groups_file', '')}",
            markup=False,
        )


def _fetch_command(stages: list[str]) -> str:
    """``any2cap models fetch ...`` for the stages whose default models it knows, or ''."""
    from any2capins.annotators.model_catalog import STAGES

    known = [s for s in stages if s in STAGES]
    return f"any2cap models fetch {' '.join(known)}" if known else ""


def _print_dataset(report: dict[str, Any]) -> None:
    """Instances per condition set, clips each suitability rule turned away, flags."""
    instances: dict[str, int] = report.get("instances") or {}
    turned_away: dict[str, dict[str, int]] = report.get("turned_away") or {}
    if not instances and not turned_away and not report.get("clips_without_instances"):
        return
    table = Table(title="instances")
    for col in ("condition set", "instances"):
        table.add_column(col)
    for key, n in instances.items():
        table.add_row(key + (" (composition)" if "+" in key else ""), str(n))
    table.add_row("total", str(sum(instances.values())), style="bold")
    table.add_row("clips suiting nothing", str(report.get("clips_without_instances", 0)))
    out.print(table)
    if turned_away:
        away = Table(title="clips turned away by suitability")
        for col in ("condition type", "why", "clips"):
            away.add_column(col, overflow="fold")
        for name, reasons in turned_away.items():
            for why, n in reasons.items():
                away.add_row(name, why, str(n))
        out.print(away)
    flags = report.get("flags") or {}
    if flags:
        out.print(
            "caption-condition flags: " + ", ".join(f"{k} {v}" for k, v in flags.items()),
            markup=False,
        )


@runs_app.command("show")
def runs_show(
    run_dir: Annotated[str, typer.Argument(help="run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """The report of the last build in RUN_DIR."""
    try:
        report = RunDir(run_dir).load_report()
    except FileNotFoundError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    if as_json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        _print_report(report)


@runs_app.command("records")
def runs_records(
    run_dir: Annotated[str, typer.Argument(help="run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The records in RUN_DIR."""
    records = sorted(RunDir(run_dir).records(), key=lambda r: (r.clip.source_uri, r.clip.start_s))
    if as_json:
        for r in records:
            sys.stdout.write(r.model_dump_json() + "\n")
        return
    table = Table(title=f"{len(records)} records")
    for col in (
        "clip_id",
        "source",
        "span (s)",
        "size",
        "bright",
        "motion",
        "conditions",
        "instances",
        "flags",
    ):
        table.add_column(col, overflow="fold")
    for r in records:
        stats = r.stats
        table.add_row(
            r.clip_id[:8],
            os.path.basename(r.clip.source_uri),
            f"{r.clip.start_s:.2f}-{r.clip.end_s:.2f}",
            f"{r.clip.width}x{r.clip.height}",
            f"{stats.mean_brightness:.3f}" if stats else "-",
            f"{stats.motion_magnitude:.4f}" if stats else "-",
            ",".join(r.conditions.present()) or "-",
            "-" if r.instances is None else (" ".join(i.key for i in r.instances) or "none"),
            str(len(r.checks)),
        )
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
