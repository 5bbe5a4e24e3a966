"""``any2cap review``: serve the review app, manage users and tokens, ingest, policy, stats.

Every command takes ``--run RUN_DIR`` (whose default store is ``RUN_DIR/review.db``) and/or
``--db URL`` (SQLite or PostgreSQL), the same way ``serve`` does.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from any2capins.workflows.review.store import IngestReport, ReviewStore

# The store (SQLAlchemy, Alembic, pydantic models) loads on first use: `any2cap --help` and
# the other command groups stay fast.

review_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Human verification of records: web app, users, tokens, policy, stats.",
    no_args_is_help=True,
)
users_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Review users (annotator, reviewer, admin).",
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    rich_markup_mode="markdown", help="API tokens for scripts.", no_args_is_help=True
)
claims_app = typer.Typer(rich_markup_mode="markdown", help="Live leases.", no_args_is_help=True)
review_app.add_typer(users_app, name="users")
review_app.add_typer(tokens_app, name="tokens")
review_app.add_typer(claims_app, name="claims")

err = Console(stderr=True)
out = Console()

RunOpt = Annotated[
    str | None, typer.Option("--run", help="run directory (its store: RUN_DIR/review.db)")
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="store URL: sqlite:///path or postgresql+psycopg://user@host/db"),
]
PolicyOpt = Annotated[
    str | None, typer.Option("--policy", help="YAML review policy to set for the run")
]


def _open(run: str | None, db: str | None, policy_file: str | None = None) -> ReviewStore:
    from sqlalchemy.exc import SQLAlchemyError

    from any2capins.workflows.review.policy import load_policy
    from any2capins.workflows.review.store import ReviewError, open_store

    try:
        policy = load_policy(policy_file) if policy_file else None
        return open_store(run_dir=run, db_url=db, policy=policy)
    except ReviewError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except (OSError, ValueError) as e:
        err.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        raise typer.Exit(2) from e
    except SQLAlchemyError as e:
        # Database URLs and drivers fail in many ways (no server, bad URL, wrong password).
        err.print(f"[red]error:[/red] cannot open the review store: {e}")
        raise typer.Exit(2) from e


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {e}")
    return typer.Exit(1)


def _print_ingest(report: IngestReport) -> None:
    err.print(
        f"ingest: {report.added} added, {report.unchanged} unchanged, {report.updated} updated, "
        f"{report.changed_after_review} changed after review (kept), "
        f"{report.held_back} held back by the policy"
    )
    for name, why in report.invalid:
        err.print(f"[yellow]skipped unreadable record {name}:[/yellow] {why}")


@review_app.command()
def serve(
    run: Annotated[str, typer.Option("--run", help="run directory whose records are reviewed")],
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8000,
    policy: PolicyOpt = None,
    ingest: Annotated[bool, typer.Option(help="queue the run's new records first")] = True,
    secure_cookies: Annotated[
        bool, typer.Option(help="mark cookies Secure (behind an HTTPS proxy)")
    ] = False,
    max_body_mb: Annotated[
        float,
        typer.Option(
            "--max-body-mb",
            min=0.01,
            max=4096,
            help="refuse request bodies over this many MiB (413)",
        ),
    ] = 8.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="server processes sharing the port, each with its own connections to the "
            "store (PostgreSQL, or the SQLite file in WAL mode); leases stay exclusive, and "
            "sessions and login throttling are in the store, so any worker serves any request",
        ),
    ] = 1,
) -> None:
    """Serve the review app for RUN_DIR (ingests new records first)."""
    from any2capins.workflows.review.app import MB
    from any2capins.workflows.review.server import ServeConfig, shareable
    from any2capins.workflows.review.server import serve as serve_app

    why_not = shareable(db) if workers > 1 and db is not None else None
    if why_not is not None:
        err.print(f"[red]error:[/red] --workers {workers}: {why_not}")
        raise typer.Exit(2)
    store = _open(run, db, policy)
    if ingest:
        _print_ingest(store.ingest())
    if not store.users():
        err.print(
            "[yellow]no users yet:[/yellow] add one with "
            f"`any2cap review users add NAME --role admin --run {run}`"
        )
    processes = f", {workers} worker processes" if workers > 1 else ""
    err.print(
        f"review app on http://{host}:{port}/ "
        f"(store: {store.engine.url.render_as_string()}{processes})"
    )
    config = ServeConfig(
        run=run, db=db, secure_cookies=secure_cookies, max_body_bytes=int(max_body_mb * MB)
    )
    serve_app(config, host=host, port=port, workers=workers, store=store)


@review_app.command("ingest")
def ingest_cmd(
    run: Annotated[str, typer.Option("--run", help="run directory")],
    db: DbOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """Queue RUN_DIR's records (idempotent: records already queued add nothing)."""
    store = _open(run, db, policy)
    report = store.ingest()
    _print_ingest(report)
    if report.invalid:
        raise typer.Exit(1)


@review_app.command("writeback")
def writeback_cmd(
    run: Annotated[
        str, typer.Option("--run", help="run directory whose records get the decisions")
    ],
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Write the store's final decisions into RUN_DIR's records (``record.review``: status,
    reviewer, decided_at, reason, edits), each record atomically; only records whose review
    block changes are rewritten. Exit 1 when a record could not take its review (listed)."""
    from any2capins.workflows.review.writeback import writeback

    store = _open(run, db)
    try:
        report = writeback(store, run)
    except (OSError, ValueError) as e:
        raise _fail(e) from e
    finally:
        store.close()
    if as_json:
        sys.stdout.write(json.dumps(report.as_json()) + "\n")
    else:
        states = ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())) or "none"
        err.print(
            f"writeback: {report.written} records written, {report.unchanged} already up to "
            f"date; review states: {states}; {report.not_in_store} records not in the store"
        )
        if report.missing:
            err.print(
                f"[yellow]{len(report.missing)} reviewed clips have no record in {run}[/yellow]"
            )
        if report.changed_since_review:
            err.print(
                f"[yellow]{len(report.changed_since_review)} records changed since they were "
                "reviewed[/yellow] (review block written; export uses the reviewed copy)"
            )
        for clip_id, why in report.skipped:
            err.print(f"[yellow]not written {clip_id}:[/yellow] {why}")
    if report.skipped:
        raise typer.Exit(1)


@review_app.command("policy")
def policy_cmd(
    run: Annotated[str, typer.Option("--run", help="run directory")],
    db: DbOpt = None,
    set_file: Annotated[str | None, typer.Option("--set", help="YAML policy file to store")] = None,
) -> None:
    """Show the run's review policy, or replace it (--set FILE; re-samples untouched items)."""
    store = _open(run, db)
    if set_file is not None:
        from any2capins.workflows.review.policy import load_policy

        try:
            changed = store.set_policy(load_policy(set_file), actor="admin-cli")
        except (OSError, ValueError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        err.print(f"policy stored; {changed} untouched items re-sampled")
    sys.stdout.write(json.dumps(store.policy().model_dump(), indent=1) + "\n")


@review_app.command()
def stats(
    run: Annotated[str, typer.Option("--run", help="run directory")],
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Queue sizes, decisions, edit rates, throughput and agreement."""
    data = _open(run, db).stats()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
        return
    _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    queue = Table(title=f"queue ({data['items']} items)")
    states = list(data["queue"]["all"])
    queue.add_column("condition")
    for s in states:
        queue.add_column(s)
    for cond, counts in data["queue"].items():
        queue.add_row(cond, *(str(counts[s]) for s in states))
    out.print(queue)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rates = Table(
        title=f"decisions ({data['reviews']} reviews, {data['adjudications']} adjudications)"
    )
    for col in ("accept", "reject", "edit"):
        rates.add_column(col)
    rates.add_row(*(pct(data["rates"][d]) for d in ("accept", "reject", "edit")))
    out.print(rates)
    edits = Table(title="edit rate per component")
    for name in data["edit_rate_per_component"]:
        edits.add_column(name)
    edits.add_row(*(pct(v) for v in data["edit_rate_per_component"].values()))
    out.print(edits)
    people = Table(title="annotators")
    for col in (
        "name",
        "reviews",
        "adjudications",
        "accept",
        "reject",
        "edit",
        "median s",
        "per hour",
    ):
        people.add_column(col)
    for name, p in data["annotators"].items():
        people.add_row(
            name,
            *(
                str(p[k])
                for k in ("reviews", "adjudications", "accept", "reject", "edit", "median_seconds")
            ),
            "-" if p["per_hour"] is None else str(p["per_hour"]),
        )
    out.print(people)
    ag = data["agreement"]
    if ag["items"]:
        out.print(
            f"agreement over {ag['items']} overlap items: decisions {pct(ag['decision_agreement'])}, "
            f"kappa {ag['kappa']}"
        )
        for name, c in ag["components"].items():
            out.print(
                f"  {name}: identical {pct(c['identical'])}, mean edit distance {c['mean_edit_distance']}"
            )


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Option(help="annotator, reviewer or admin")] = "annotator",
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Add a user; the password is read from stdin (asked twice on a terminal)."""
    from any2capins.workflows.review.store import ReviewError

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            err.print("[red]error:[/red] the passwords differ")
            raise typer.Exit(2)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    store = _open(run, db)
    try:
        user = store.add_user(name, role, password)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except ReviewError as e:
        raise _fail(e) from e
    err.print(f"added {user.name} ({user.role})")


@users_app.command("list")
def users_list(run: RunOpt = None, db: DbOpt = None) -> None:
    """The users and their roles."""
    for user, disabled in _open(run, db).users():
        status = "disabled" if disabled else "active"
        sys.stdout.write(f"{user.name}\t{user.role}\t{status}\n")


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument()], run: RunOpt = None, db: DbOpt = None
) -> None:
    """Set a user's password (from stdin) and end their browser sessions."""
    from any2capins.workflows.review.store import ReviewError

    password = (
        getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    )
    try:
        _open(run, db).set_password(name, password)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except ReviewError as e:
        raise _fail(e) from e


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="user the token acts as")],
    label: Annotated[str, typer.Option(help="what the token is for")] = "",
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API token for NAME and print it (shown once; only its hash is stored)."""
    from any2capins.workflows.review.store import ReviewError

    try:
        token = _open(run, db).create_token(name, label)
    except ReviewError as e:
        raise _fail(e) from e
    sys.stdout.write(token + "\n")


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument()], run: RunOpt = None, db: DbOpt = None
) -> None:
    """Revoke every API token of NAME."""
    from any2capins.workflows.review.store import ReviewError

    try:
        n = _open(run, db).revoke_tokens(name)
    except ReviewError as e:
        raise _fail(e) from e
    err.print(f"revoked {n} tokens of {name}")


@claims_app.command("list")
def claims_list(
    run: Annotated[str, typer.Option("--run", help="run directory")], db: DbOpt = None
) -> None:
    """Live leases: who holds which item until when."""
    table = Table()
    for col in ("claim", "item", "clip", "user", "kind", "expires"):
        table.add_column(col)
    for c in _open(run, db).claims():
        table.add_row(
            str(c.id),
            str(c.item_id),
            c.clip_id[:8],
            c.user,
            c.kind,
            c.expires_at.isoformat(timespec="seconds"),
        )
    out.print(table)


@claims_app.command("release")
def claims_release(
    claim_id: Annotated[int, typer.Argument()],
    run: Annotated[str, typer.Option("--run", help="run directory")],
    db: DbOpt = None,
) -> None:
    """Release a lease (the item goes back to the queue)."""
    from any2capins.workflows.review.store import ReviewError, UserInfo

    store = _open(run, db)
    try:
        store.release(UserInfo(0, "admin-cli", "admin"), claim_id)
    except ReviewError as e:
        raise _fail(e) from e
    err.print(f"released claim {claim_id}")


__all__ = ["review_app"]
