"""``any2cap export`` and ``any2cap shards``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from any2capins.workflows.export.shards import ExportError, verify_shards

shards_app = typer.Typer(
    rich_markup_mode="markdown", help="Check exported shards.", no_args_is_help=True
)
err = Console(stderr=True)


@shards_app.command("verify")
def verify(
    shards_dir: Annotated[str, typer.Argument(help="folder or URI written by any2cap export")],
    as_json: Annotated[bool, typer.Option("--json", help="print problems as JSON")] = False,
) -> None:
    """Re-check every shard's checksum, row count and schema against the manifest.

    Exit 0 when every shard is intact, 1 when a problem was found (each one is listed).
    """
    problems = verify_shards(shards_dir)
    if as_json:
        sys.stdout.write(json.dumps({"ok": not problems, "problems": problems}) + "\n")
    else:
        for p in problems:
            err.print(f"[red]{p}[/red]")
        if not problems:
            err.print(f"{shards_dir}: every shard verified")
    _leave(1 if problems else 0)


def _started_as_any2cap() -> bool:
    """Whether this process is the ``any2cap`` program itself (console script or
    ``python -m workflows.cli``), not a Python program that called the CLI in-process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == "any2capins.workflows.cli":
        return True
    return Path(sys.argv[0]).name.removesuffix(".exe") == "any2cap"


def _leave(code: int) -> NoReturn:
    """End ``shards verify`` with CODE, and make sure nothing after the verdict changes it.

    Why ``os._exit``: the verdict is the exit code (scripts and CI read it), but a plain
    interpreter exit still runs the C++ static destructors of the native libraries this
    process loaded. pyarrow's thread pools are torn down there, and a pool thread that is
    still joinable makes ``std::thread``'s destructor call ``std::terminate``: "terminate
    called without an active exception", SIGABRT, exit 134, after "every shard verified"
    was printed (about 2% of runs on a loaded machine; apache/arrow#34314). verify_shards
    no longer starts those pools, but the ``any2cap`` import graph also loads OpenCV, PyAV
    and, for s3:// or gs:// folders, fsspec's event-loop thread, any of which can do the
    same. So once everything is written and flushed, the process leaves without running
    destructors or atexit handlers: this command has nothing left to clean up (it only
    read files). Called in-process (CliRunner, a notebook, another program), it raises
    ``typer.Exit`` as usual and leaves the caller's interpreter alone.
    """
    if not _started_as_any2cap():
        raise typer.Exit(code)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = code or 120  # what Python itself returns when stdout cannot be flushed at exit
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


def export(
    run: Annotated[
        str, typer.Option("--run", help="build run directory whose records were reviewed")
    ],
    out: Annotated[str, typer.Option("--out", help="shards folder or URI (s3://, gs://, ...)")],
    db: Annotated[
        str | None,
        typer.Option("--db", help="review store URL (default: the run's RUN_DIR/review.db)"),
    ] = None,
    shard_size_mb: Annotated[
        float, typer.Option("--shard-size-mb", min=0.001, help="target shard size")
    ] = 256.0,
    embed_payloads: Annotated[
        bool,
        typer.Option(
            "--embed-payloads/--reference-payloads",
            help="copy payload bytes into the shards, or keep URIs into the artifact store",
        ),
    ] = True,
    rewrite: Annotated[
        bool, typer.Option("--rewrite", help="delete what OUT holds and export everything again")
    ] = False,
    corrections: Annotated[
        bool,
        typer.Option(
            "--corrections",
            help="write the correction dataset instead: one row per field a human changed or "
            "rejected (OUT/corrections-RUN.parquet, RUN the run's name)",
        ),
    ] = False,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="parquet (default), sft (ShareGPT JSONL + media for LLaMA-Factory / ms-swift), "
            "webdataset (tar shards: clip mp4 + json + txt + condition files) or control "
            "(target + depth/pose control videos on the recipe's frame grid, reference images, "
            "RealEstate10K camera files, metadata.csv)",
        ),
    ] = "parquet",
    sft_identities: Annotated[
        str,
        typer.Option(
            "--sft-identities", help="sft: identities as the stitched 'reference' or each 'crops'"
        ),
    ] = "reference",
    sft_camera: Annotated[
        str,
        typer.Option(
            "--sft-camera", help="sft: camera trajectory 'inline' (RealEstate10K text) or 'path'"
        ),
    ] = "inline",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Write the accepted and edited records of a reviewed run to shards (Parquet by
    default; --format sft, webdataset or control for trainers' own formats, one format per
    folder; control needs conditions built on a recipe frame_grid).

    With --corrections: write OUT/corrections-RUN.parquet (RUN: the run's name) instead,
    one row per field a human edited (machine and human text) or rejected (human text
    null), from the store's final decisions; rewritten whole and atomically each time.

    Only records whose final review state is accepted or edited go out (human text wins;
    the machine text stays in machine_* columns). Re-running adds only records not yet in
    OUT; a killed export is completed by the next one. Writes OUT/README.md (dataset card)
    and its plots. Exit 1 when an accepted record could not be written (listed), 2 when the
    run, store or shards folder is wrong.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from any2capins.workflows.export.run import export_run
    from any2capins.workflows.review import ReviewError

    if corrections:
        _export_corrections(run, out, db, as_json)
        return
    try:
        report = export_run(
            run,
            out,
            db_url=db,
            shard_size_mb=shard_size_mb,
            embed_payloads=embed_payloads,
            rewrite=rewrite,
            format=format,
            sft_identities=sft_identities,
            sft_camera=sft_camera,
        )
    except (ExportError, ReviewError, FileNotFoundError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except SQLAlchemyError as e:
        # Database URLs and drivers fail in many ways (no server, bad URL, wrong password).
        err.print(f"[red]error:[/red] cannot open the review store: {e}")
        raise typer.Exit(2) from e
    data = report.as_json()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        states = ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())) or "none"
        err.print(f"review states: {states}; not in the review store: {report.not_in_store}")
        err.print(
            f"exported {data['new_rows']} new instances in {len(data['new_shards'])} shards "
            f"({data['bytes_written'] / 2**20:.1f} MiB); {data['already_exported']} were "
            f"already there; {data['total_rows']} instances in {report.shards.shards_dir}"
            + (
                f"; {data['no_instances']} accepted clips suit no condition type"
                if data["no_instances"]
                else ""
            )
        )
        for orphan in data["removed_orphans"]:
            err.print(f"removed {orphan}, left by a killed export (its records went out again)")
        for item in data["incomplete"]:
            err.print(f"[yellow]not exported {item['clip_id']}:[/yellow] {item['why']}")
        if format == "parquet":
            err.print(f"dataset card: {report.shards.shards_dir}/README.md")
        if format == "control":
            err.print(f"metadata: {report.shards.shards_dir}/metadata.csv")
    if data["incomplete"]:
        raise typer.Exit(1)


def _export_corrections(run: str, out: str, db: str | None, as_json: bool) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from any2capins.workflows.export.corrections import export_corrections
    from any2capins.workflows.review import ReviewError

    try:
        report = export_corrections(run, out, db_url=db)
    except (ExportError, ReviewError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except SQLAlchemyError as e:
        err.print(f"[red]error:[/red] cannot open the review store: {e}")
        raise typer.Exit(2) from e
    if as_json:
        sys.stdout.write(json.dumps(report.as_json()) + "\n")
        return
    states = ", ".join(f"{k} {v}" for k, v in report.states.items()) or "none"
    err.print(f"review states: {states}")
    err.print(
        f"wrote {report.rows} correction rows ({report.edits} edited fields, {report.rejects} "
        f"rejected) of {report.clips} clips to {report.path}",
        markup=False,
    )
