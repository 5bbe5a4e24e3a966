"""The same build on a real two-node Ray cluster started on this machine (`ray start`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import media

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A loopback-only test cluster: no token auth, so `ray start` of the second node and the
# driver need no shared token file.
CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_cluster(temp: str) -> None:
    """Kill this cluster's processes only (`ray stop` would also stop other tests' Ray)."""
    import psutil

    for _ in range(3):
        victims = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(temp in part for part in proc.info["cmdline"] or []):
                    victims.append(proc)
            except psutil.Error:
                continue
        if not victims:
            return
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(victims, timeout=10)


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **CLUSTER_ENV}
    env.pop("RAY_ADDRESS", None)
    # Short: Ray puts Unix sockets under it, and socket paths are limited to ~107 bytes.
    temp = tempfile.mkdtemp(prefix="a2c-ray-", dir="/tmp")
    # 3 logical CPUs per node: two 2-CPU actors of one stage cannot share a node.
    common = [
        "--disable-usage-stats",
        "--num-gpus=0",
        "--num-cpus=3",
        "--node-ip-address=127.0.0.1",
    ]
    try:
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                f"--temp-dir={temp}",
                *common,
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=180,
        )
        subprocess.run(
            [str(BIN / "ray"), "start", f"--address={address}", *common],
            check=True,
            env=env,
            capture_output=True,
            timeout=180,
        )
        yield address
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_build_on_two_node_cluster(two_node_cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        media.make_video(src / f"v{i}.mp4", seconds=1.5)
    recipe = tmp_path / "spread.yaml"
    recipe.write_text(
        "name: spread\n"
        "stages:\n"
        "  - annotator: clip_stats\n"
        "    resources: {num_cpus: 2, concurrency: 2, batch_size: 1}\n"
        "  - annotator: keyframes\n"
        "    resources: {num_cpus: 0.25, concurrency: 1, batch_size: 2}\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, **CLUSTER_ENV, "RAY_ADDRESS": two_node_cluster}
    proc = subprocess.run(
        [
            str(BIN / "any2cap"),
            "build",
            str(recipe),
            "--input",
            str(src),
            "--out",
            str(out),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert two_node_cluster in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["records_ok"] == 6 and report["failed"] == 0

    nodes = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray, json; ray.init(address='{two_node_cluster}', log_to_driver=False);"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    alive = set(json.loads(nodes.stdout.strip().splitlines()[-1]))
    assert len(alive) == 2
    used = set()
    for path in (out / "records").glob("*.json"):
        record = json.loads(path.read_text())
        for stage in record["provenance"]["stages"]:
            if stage["stage"] == "clip_stats":
                used.add(stage["node"])
    assert used == alive, "the two clip_stats actors ran on both nodes"
