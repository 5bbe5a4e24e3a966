"""Review queue at a realistic offered load, one vs two server processes
(``any2cap review serve --workers N``), SQLite (WAL) and PostgreSQL.

Open loop: each of A annotators claims an item every ``period`` seconds (its own random
phase) and decides it a think time later (uniform in 30-90% of the period), whatever the
server's answers took: A=50 with a 10 s period offers 5 decisions/s, A=250 offers 25/s. A
request's latency counts from when it was due, not when it was sent, so a slow server is not
hidden by the client waiting for it (coordinated omission). Each annotator has its own bearer
token and its own kept-alive connection (so the kernel spreads them over the workers).

Closed loop (saturation): C clients claim and decide back to back, no think time: the most
decisions/s the server gives, with one and with two workers.

Every configuration gets a fresh store (a new SQLite file, or a new PostgreSQL database) on
the same run directory; items are never claimed twice (counted) and every decision gets
exactly one review (checked in the store afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.review import REPO, _free_port, _make_run, _percentile, _pg_database

LOADS = {"5/s": 50, "25/s": 250}  # offered decisions/s: annotators, each one every PERIOD_S
PERIOD_S = 10.0
TARGET_P95_MS = 50.0


@dataclass
class Tally:
    claim: list[float] = field(default_factory=list)
    decide: list[float] = field(default_factory=list)
    decided: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    holding: dict[int, str] = field(default_factory=dict)
    claimed: Counter[int] = field(default_factory=Counter)
    duplicates: int = 0
    empty: int = 0

    def took(self, name: str, item: int) -> None:
        if item in self.holding and self.holding[item] != name:
            self.duplicates += 1
        self.holding[item] = name
        self.claimed[item] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float | None:
            return round(1000 * _percentile(values, q), 1) if values else None

        return {
            "decisions": self.decided,
            "decisions_per_s": round(self.decided / seconds, 2),
            **{f"claim_p{int(q * 100)}_ms": ms(self.claim, q) for q in (0.5, 0.95, 0.99)},
            **{f"decide_p{int(q * 100)}_ms": ms(self.decide, q) for q in (0.5, 0.95, 0.99)},
            "duplicate_claims": self.duplicates + sum(1 for n in self.claimed.values() if n > 1),
            "queue_ran_out": self.empty > 0,
            "errors": dict(self.errors),
        }


def _body(rng: random.Random, version: int, name: str) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.2:
        return {"decision": "edit", "version": version, "edits": {"camera": f"Static ({name})."}}
    if roll < 0.3:
        return {"decision": "reject", "version": version, "reason": "bad_clip"}
    return {"decision": "accept", "version": version}


async def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _pair(
    c: httpx.AsyncClient,
    name: str,
    rng: random.Random,
    tally: Tally,
    claim_due: float,
    think_s: float,
) -> bool:
    """One claim + decision; latencies from when each was due. False when the queue is empty."""
    try:
        r = await c.post("/api/claim")
    except httpx.HTTPError as e:
        tally.errors[f"claim {type(e).__name__}"] += 1
        return True
    claimed_at = time.perf_counter()
    tally.claim.append(claimed_at - claim_due)
    if r.status_code == 204:
        tally.empty += 1
        return False
    if r.status_code != 200:
        tally.errors[f"claim {r.status_code}"] += 1
        return True
    item = r.json()
    tally.took(name, item["id"])
    decide_due = max(claim_due + think_s, claimed_at)
    await _sleep_until(decide_due)
    try:
        d = await c.post(
            f"/api/items/{item['id']}/decision", json=_body(rng, item["version"], name)
        )
    except httpx.HTTPError as e:
        tally.errors[f"decision {type(e).__name__}"] += 1
        return True
    tally.decide.append(time.perf_counter() - decide_due)
    tally.holding.pop(item["id"], None)
    if d.status_code != 200:
        tally.errors[f"decision {d.status_code}"] += 1
    else:
        tally.decided += 1
    return True


def _client(base: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


async def _open_loop(
    base: str, tokens: dict[str, str], period: float, seconds: float
) -> dict[str, Any]:
    tally = Tally()
    clients = {name: _client(base, tok) for name, tok in tokens.items()}
    try:
        # Warm up: every annotator opens its connection (and is authenticated once).
        await asyncio.gather(*(c.get("/api/me") for c in clients.values()))
        start = time.perf_counter() + 0.5
        stop = start + seconds

        async def annotator(name: str, c: httpx.AsyncClient) -> None:
            rng = random.Random(name)
            due = start + rng.uniform(0, period)
            while due < stop:
                await _sleep_until(due)
                if not await _pair(c, name, rng, tally, due, rng.uniform(0.3, 0.9) * period):
                    return
                due += period

        await asyncio.gather(*(annotator(n, c) for n, c in clients.items()))
        # Past `seconds` by the last think time, and more when answers come late.
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))
    # decisions_per_s: the claims due in the window that were decided, per second of window
    return {
        "annotators": len(tokens),
        "period_s": period,
        "wall_s": round(wall, 1),
        **tally.summary(seconds),
    }


async def _closed_loop(base: str, tokens: dict[str, str], seconds: float) -> dict[str, Any]:
    tally = Tally()
    clients = {name: _client(base, tok) for name, tok in tokens.items()}
    try:
        await asyncio.gather(*(c.get("/api/me") for c in clients.values()))
        start = time.perf_counter()
        stop = start + seconds

        async def worker(name: str, c: httpx.AsyncClient) -> None:
            rng = random.Random(name)
            while time.perf_counter() < stop:
                if not await _pair(c, name, rng, tally, time.perf_counter(), 0.0):
                    return

        await asyncio.gather(*(worker(n, c) for n, c in clients.items()))
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))
    return {"clients": len(tokens), "wall_s": round(wall, 1), **tally.summary(wall)}


@contextlib.contextmanager
def _serve(run: Path, db_url: str, workers: int, log: Path) -> Iterator[tuple[str, Any]]:
    """``any2cap review serve --workers N`` in its own process group, once every worker
    answers (probed with new connections until N distinct worker processes served one)."""
    import psutil  # type: ignore[import-untyped]

    port = _free_port()
    cmd = [sys.executable, "-m", "any2capins.workflows.cli", "review", "serve", "--run", str(run)]
    cmd += ["--db", db_url, "--port", str(port), "--no-ingest", "--workers", str(workers)]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        seen: set[int] = set()
        while len(seen) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"review server did not start: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=base) as c:
                r = c.get("/login", timeout=5)
                if r.status_code == 200:
                    if workers == 1:
                        break
                    seen.add(_worker_of(r, parent))
            time.sleep(0.05)
        yield base, parent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _worker_of(response: httpx.Response, parent: Any) -> int:
    import psutil

    port = response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
    for child in parent.children():
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                return int(child.pid)
    return -1


def _one_config(
    run: Path,
    db_url: str,
    workers: int,
    tokens: dict[str, str],
    seconds: float,
    saturation_s: float,
    saturation_clients: int,
    log: Path,
    loads: tuple[str, ...],
) -> dict[str, Any]:
    names = list(tokens)
    out: dict[str, Any] = {"workers": workers, "offered": {}}
    with _serve(run, db_url, workers, log) as (base, parent):

        def measured(phase: Any) -> dict[str, Any]:
            """``phase``'s result with the CPU time the server processes and this client
            process spent per decision (CPU time does not depend on what else runs here)."""
            server, client = _cpu_s(parent), time.process_time()
            result: dict[str, Any] = asyncio.run(phase)
            n = max(1, result["decisions"])
            result["server_cpu_ms_per_decision"] = round(1000 * (_cpu_s(parent) - server) / n, 1)
            result["client_cpu_ms_per_decision"] = round(
                1000 * (time.process_time() - client) / n, 1
            )
            return result

        for label in loads:
            annotators = LOADS[label]
            chosen = {n: tokens[n] for n in names[:annotators]}
            out["offered"][label] = measured(_open_loop(base, chosen, PERIOD_S, seconds))
        chosen = {n: tokens[n] for n in names[:saturation_clients]}
        out["saturation"] = measured(_closed_loop(base, chosen, saturation_s))
    return out


def _cpu_s(parent: Any) -> float:
    """User + system CPU seconds of ``serve`` and its worker processes."""
    import psutil

    total = 0.0
    for p in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _check_store(run: Path, db_url: str, decided: int) -> dict[str, Any]:
    from any2capins.workflows.review import open_store

    store = open_store(str(run), db_url)
    try:
        states = store.final_states()
    finally:
        store.close()
    per_item = Counter(len(s.reviews) for s in states.values())
    return {
        "reviews_in_store": sum(k * n for k, n in per_item.items()),
        "decisions_answered_200": decided,
        "items_with_more_than_one_review": sum(n for k, n in per_item.items() if k > 1),
    }


def _prepare_store(run: Path, db_url: str, users: int) -> dict[str, str]:
    from any2capins.workflows.review import open_store

    store = open_store(str(run), db_url)
    try:
        store.ingest()
        tokens = {}
        for i in range(users):
            name = f"ann{i:03d}"
            store.add_user(name, "annotator", None)
            tokens[name] = store.create_token(name)
    finally:
        store.close()
    return tokens


def run(
    seconds: float = 20.0,
    saturation_s: float = 15.0,
    saturation_clients: int = 32,
    items: int = 3000,
    workers: tuple[int, ...] = (1, 2),
    backends: tuple[str, ...] = ("sqlite", "postgresql"),
    loads: tuple[str, ...] = tuple(LOADS),
) -> dict[str, Any]:
    """Every backend x worker count: both offered loads (``seconds`` each), then the closed
    loop (``saturation_s``). About 2-3 min per configuration on the 2-vCPU VM (store set-up,
    server start and the last think times on top of the measured windows)."""
    users = max([saturation_clients, *(LOADS[x] for x in loads)])
    results: dict[str, Any] = {
        "period_s": PERIOD_S,
        "seconds_per_load": seconds,
        "saturation_s": saturation_s,
        "items": items,
        "cpus": os.cpu_count(),
        "target_p95_ms": TARGET_P95_MS,
    }
    with tempfile.TemporaryDirectory(prefix="a2c-bench-review-load-") as tmp:
        run_dir = Path(tmp) / "run"
        _make_run(run_dir, items)
        for backend in backends:
            results[backend] = {}
            for n in workers:
                with contextlib.ExitStack() as stack:
                    if backend == "sqlite":
                        url: str | None = f"sqlite:///{tmp}/review-{n}.db"
                    else:
                        url = stack.enter_context(_pg_database())
                    if url is None:
                        results[backend] = {"skipped": "no PostgreSQL server"}
                        break
                    sys.stderr.write(f"bench.review_load: {backend}, {n} worker(s)\n")
                    tokens = _prepare_store(run_dir, url, users)
                    load_before = os.getloadavg()[0]
                    r = _one_config(
                        run_dir,
                        url,
                        n,
                        tokens,
                        seconds,
                        saturation_s,
                        saturation_clients,
                        Path(tmp) / f"serve-{backend}-{n}.log",
                        loads,
                    )
                    decided = sum(o["decisions"] for o in r["offered"].values())
                    r["store_check"] = _check_store(
                        run_dir, url, decided + r["saturation"]["decisions"]
                    )
                    r["loadavg_1m_before"] = round(load_before, 1)
                    results[backend][f"{n}_workers"] = r
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=20.0, help="per offered load")
    p.add_argument("--saturation-s", type=float, default=15.0)
    p.add_argument("--saturation-clients", type=int, default=32)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument(
        "--loads", default=",".join(LOADS), help="offered loads, of: " + ", ".join(LOADS)
    )
    a = p.parse_args(argv)
    result = run(
        seconds=a.seconds,
        saturation_s=a.saturation_s,
        saturation_clients=a.saturation_clients,
        items=a.items,
        workers=tuple(int(w) for w in a.workers.split(",")),
        backends=tuple(a.backends.split(",")),
        loads=tuple(x for x in a.loads.split(",") if x),
    )
    sys.stdout.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
