"""``any2cap export`` and ``any2cap shards``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from workflows.export.shards import verify_shards

shards_app = typer.Typer(help="Check exported shards.", no_args_is_help=True)
err = Console(stderr=True)


@shards_app.command("verify")
def verify(
    shards_dir: Annotated[str, typer.Argument(help="folder or URI written by any2cap export")],
    as_json: Annotated[bool, typer.Option("--json", help="print problems as JSON")] = False,
) -> None:
    """Re-check every shard's checksum, row count and schema against the manifest."""
    problems = verify_shards(shards_dir)
    if as_json:
        sys.stdout.write(json.dumps({"ok": not problems, "problems": problems}) + "\n")
    else:
        for p in problems:
            err.print(f"[red]{p}[/red]")
        if not problems:
            err.print(f"{shards_dir}: every shard verified")
    if problems:
        raise typer.Exit(1)
