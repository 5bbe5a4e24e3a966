"""Review store under load: 50 concurrent API clients claim and decide against a real
``any2cap review serve`` (uvicorn, its own process) on 127.0.0.1, SQLite vs PostgreSQL.

Measures the latency of one claim + decision pair (p50/p95), first for one client alone (the
baseline), then with 50 at once, the throughput (pairs/s), and counts duplicate claims (an
item leased to two clients: must be 0). Bounded by item count and wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from any2capins.pipeline.rundir import RunDir, RunInfo
from any2capins.schemas import ClipRef, Provenance, Record, StructuredCaption, make_clip_id, utc_now

REPO = Path(__file__).resolve().parents[1]
BASELINE_PAIRS = 100
PG_URL = os.environ.get("ANY2CAP_BENCH_PG_URL") or os.environ.get(
    "ANY2CAP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _make_run(root: Path, n: int) -> None:
    rundir = RunDir(str(root))
    run_id = uuid.uuid4().hex[:12]
    rundir.save_info(
        RunInfo(
            recipe={"name": "bench-review"},
            recipe_hash="0" * 16,
            runs=[{"run_id": run_id, "started_at": utc_now().isoformat(), "sources": 1}],
        )
    )
    source = str(root / "source.mp4")
    for i in range(n):
        start, end = 2.0 * i, 2.0 * i + 2.0
        rundir.save_record(
            Record(
                clip=ClipRef(
                    clip_id=make_clip_id(source, start, end),
                    source_uri=source,
                    start_s=start,
                    end_s=end,
                    fps=24,
                    width=640,
                    height=360,
                    num_frames=48,
                ),
                caption=StructuredCaption(
                    dense=f"Clip {i}: a person walks across a sunny street past parked cars.",
                    main_object="A person in a red coat walking at a steady pace.",
                    background="A quiet street with parked cars and shop fronts.",
                    camera="A static camera at eye level.",
                    style="Natural daylight, realistic colours.",
                    action="The person walks from left to right and leaves the frame.",
                ),
                short_prompt="Someone in a red coat strolls down a sunny street.",
                provenance=Provenance(recipe="bench-review", recipe_hash="0" * 16, run_id=run_id),
            )
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(run: Path, db_url: str | None) -> Iterator[str]:
    """``any2cap review serve`` in its own process, as annotators would run it."""
    port = _free_port()
    cmd = [sys.executable, "-m", "any2capins.workflows.cli", "review", "serve", "--run", str(run)]
    cmd += ["--port", str(port), "--no-ingest"] + (["--db", db_url] if db_url else [])
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"review server exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("review server did not start within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _client(
    base: str,
    token: str,
    stop_at: float,
    pairs: list[float],
    log: list[tuple[str, int]],
    errors: Counter[str],
    holding: dict[int, str],
    duplicates: list[int],
    name: str,
    max_pairs: int | None = None,
) -> None:
    rng = random.Random(name)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
        while time.monotonic() < stop_at and (max_pairs is None or len(pairs) < max_pairs):
            t0 = time.perf_counter()
            r = await c.post("/api/claim")
            if r.status_code == 204:
                return
            if r.status_code != 200:
                errors[f"claim {r.status_code}"] += 1
                continue
            item = r.json()
            # A duplicate is an item leased to two clients at the same time.
            if item["id"] in holding and holding[item["id"]] != name:
                duplicates.append(item["id"])
            holding[item["id"]] = name
            log.append((name, item["id"]))
            roll = rng.random()
            body: dict[str, Any] = {"decision": "accept", "version": item["version"]}
            if roll < 0.2:
                body = {
                    "decision": "edit",
                    "version": item["version"],
                    "edits": {"camera": f"A locked-off camera ({name})."},
                }
            elif roll < 0.3:
                body = {"decision": "reject", "version": item["version"], "reason": "bad_clip"}
            d = await c.post(f"/api/items/{item['id']}/decision", json=body)
            holding.pop(item["id"], None)
            if d.status_code != 200:
                errors[f"decision {d.status_code}"] += 1
                continue
            pairs.append(time.perf_counter() - t0)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _one_backend(
    db_url: str | None, clients: int, items: int, max_seconds: float
) -> dict[str, Any]:
    from any2capins.workflows.review import open_store

    with tempfile.TemporaryDirectory(prefix="a2c-bench-review-") as tmp:
        run = Path(tmp) / "run"
        _make_run(run, items)
        store = open_store(str(run), db_url)
        store.ingest()
        tokens = {}
        for name in ["solo", *(f"bench{i}" for i in range(clients))]:
            store.add_user(name, "annotator", None)
            tokens[name] = store.create_token(name)
        with _server(run, db_url) as base:
            holding: dict[int, str] = {}
            duplicates: list[int] = []
            errors: Counter[str] = Counter()
            log: list[tuple[str, int]] = []
            # Baseline: one client alone, the latency an annotator sees on an idle server.
            alone: list[float] = []
            name, tok = "solo", tokens.pop("solo")
            asyncio.run(
                _client(
                    base,
                    tok,
                    time.monotonic() + max_seconds,
                    alone,
                    log,
                    errors,
                    holding,
                    duplicates,
                    name,
                    max_pairs=BASELINE_PAIRS,
                )
            )
            pairs: list[float] = []

            async def main() -> float:
                stop_at = time.monotonic() + max_seconds
                t0 = time.perf_counter()
                await asyncio.gather(
                    *(
                        _client(base, tok, stop_at, pairs, log, errors, holding, duplicates, name)
                        for name, tok in tokens.items()
                    )
                )
                return time.perf_counter() - t0

            wall = asyncio.run(main())
        states = store.final_states()
        reviews_per_item = Counter(len(s.reviews) for s in states.values())
        claimed_twice = sum(1 for _, n in Counter(item for _, item in log).items() if n > 1)
        store.close()
    return {
        "backend": "postgresql" if db_url else "sqlite",
        "clients": clients,
        "items": items,
        "pairs": len(pairs),
        "wall_s": round(wall, 2),
        "throughput_pairs_per_s": round(len(pairs) / wall, 1) if wall else None,
        "pair_p50_ms": round(1000 * _percentile(pairs, 0.50), 1),
        "pair_p95_ms": round(1000 * _percentile(pairs, 0.95), 1),
        "alone_pairs": len(alone),
        "alone_p50_ms": round(1000 * _percentile(alone, 0.50), 1),
        "alone_p95_ms": round(1000 * _percentile(alone, 0.95), 1),
        "alone_throughput_pairs_per_s": round(len(alone) / sum(alone), 1) if alone else None,
        "duplicate_claims": len(duplicates) + claimed_twice,
        "items_with_more_than_one_review": sum(n for k, n in reviews_per_item.items() if k > 1),
        "errors": dict(errors),
    }


@contextlib.contextmanager
def _pg_database() -> Iterator[str | None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"a2c_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(make_url(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 - no server: the benchmark reports why and goes on
        sys.stderr.write(f"bench.review: PostgreSQL unavailable at {PG_URL}: {e}\n")
        yield None
        return
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(clients: int = 50, items: int = 700, max_seconds: float = 60.0) -> dict[str, Any]:
    """Both backends, same load; PostgreSQL is reported as skipped when no server answers."""
    results: dict[str, Any] = {"sqlite": _one_backend(None, clients, items, max_seconds)}
    with _pg_database() as url:
        results["postgresql"] = (
            _one_backend(url, clients, items, max_seconds)
            if url is not None
            else {"skipped": f"no PostgreSQL at {PG_URL}"}
        )
    pg, lite = results["postgresql"], results["sqlite"]
    if "throughput_pairs_per_s" in pg and lite["throughput_pairs_per_s"]:
        results["ratio_pg_over_sqlite_throughput"] = round(
            pg["throughput_pairs_per_s"] / lite["throughput_pairs_per_s"], 2
        )
    return results


if __name__ == "__main__":
    import json

    sys.stdout.write(json.dumps(run(), indent=1) + "\n")
