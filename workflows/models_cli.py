"""``any2cap models``: the model weights the condition stages use (annotators/model_catalog.py),
where this machine looks for them, and fetching them into the Hugging Face cache."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from any2capins.annotators.model_catalog import ModelEntry

models_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The model weights of the condition stages: list them, fetch them.",
    no_args_is_help=True,
)

out = Console()


def _err(line: str) -> None:
    typer.echo(line, err=True)


@models_app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array of the rows")] = False,
) -> None:
    """List the default models and whether they are on this machine.

    Per model: stages, hub id, size, licence, override, where it is looked for (the override
    variable's path when set, else the Hugging Face cache) and whether it is there. Downloads
    nothing."""
    from any2capins.annotators import model_catalog as catalog

    rows = [catalog.status(m) for m in catalog.DEFAULT_MODELS]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table(title=f"models (Hugging Face cache: {catalog.hub_cache_dir()})")
    for col in ("name", "stages", "id", "size", "licence", "override", "looked for", "present"):
        table.add_column(col, overflow="fold")
    for r in rows:
        present = "yes" if r["present"] else "no"
        if r["optional"]:
            present += " (optional)"
        table.add_row(
            r["name"],
            ",".join(r["stages"]),
            r["id"],
            r["size"],
            r["license"],
            f"{r['env']} / params.{r['param']}",
            r["looked_for"] if r["source"] == "default" else f"{r['looked_for']} ({r['env']})",
            present,
        )
    out.print(table)
    missing = [r["name"] for r in rows if not r["present"] and not r["optional"]]
    if missing:
        _err(f"missing: {', '.join(missing)}; get them with `any2cap models fetch`")


def _landed(entry: ModelEntry, path: str, downloaded: bool) -> str:
    what = "downloaded to" if downloaded else "already present at"
    target = "FILE" if entry.filename else "FOLDER"
    return (
        f"{entry.name}: {entry.ref} {what} {path}. The build finds it there (the Hugging Face "
        f"cache, also with HF_HUB_OFFLINE=1); a copy elsewhere: set {entry.env}={target} "
        f"(or the stage's `{entry.param}` param)."
    )


@models_app.command("fetch")
def fetch_models(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="model names (see `models list`) or stages (depth, pose, identities); "
            "none: every default model",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download default models into the Hugging Face cache.

    The cache is HF_HUB_CACHE (else HF_HOME/hub); models already there are skipped. Exit 1
    when one could not be fetched, 2 for an unknown name."""
    import os

    from any2capins.annotators import model_catalog as catalog

    wanted = list(names or [])
    try:
        entries = catalog.select(wanted)
    except KeyError as e:
        _err(
            f"error: unknown model or stage {e.args[0]!r}; known: "
            + ", ".join(catalog.known_names())
        )
        raise typer.Exit(2) from e
    failed = 0
    unreachable: str | None = None
    for entry in entries:
        _err(f"{entry.name}: {entry.ref} ({entry.size}, {entry.license})")
        try:
            path, downloaded = catalog.fetch(entry, unreachable)
        except catalog.FetchError as e:
            _err(f"error: {e}")
            unreachable = unreachable or e.unreachable
            failed += 1
            continue
        typer.echo(_landed(entry, str(path), downloaded))
        override = os.environ.get(entry.env)
        if override:
            _err(f"note: {entry.env}={override} is set, so builds use that, not this copy")
    chosen = {e.name for e in entries}
    stages = set(wanted) & set(catalog.STAGES) if wanted else set(catalog.STAGES)
    for m in catalog.DEFAULT_MODELS:
        if m.optional and m.name not in chosen and stages & set(m.stages):
            _err(
                f"note: {m.name} ({m.what}) is optional and was not fetched; get it with "
                f"`any2cap models fetch {m.name}`"
            )
    if failed:
        raise typer.Exit(1)
