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
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import media
from tests.conftest import REPO

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


def _plugin_path(folder: Path) -> str:
    """A PYTHONPATH that registers tests/cluster_rendezvous.py as an installed plugin does:
    through an entry point in a dist-info folder (read by importlib.metadata)."""
    dist = folder / "a2c_rendezvous_plugin-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: a2c-rendezvous-plugin\nVersion: 0.0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[any2capins.conditions]\nrendezvous = tests.cluster_rendezvous:RendezvousConditionType\n"
    )
    return os.pathsep.join([str(folder), str(REPO)])


@dataclass(frozen=True)
class Cluster:
    address: str
    pythonpath: str  # what its nodes were started with: the driver needs the same


@pytest.fixture
def two_node_cluster() -> Iterator[Cluster]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Short: Ray puts Unix sockets under it, and socket paths are limited to ~107 bytes.
    temp = tempfile.mkdtemp(prefix="a2c-ray-", dir="/tmp")
    # Every node's workers inherit the environment of the `ray start` that made the node.
    pythonpath = _plugin_path(Path(temp) / "plugin")
    env = {**os.environ, **CLUSTER_ENV, "PYTHONPATH": pythonpath}
    env.pop("RAY_ADDRESS", None)
    env.pop("ANY2CAP_DISABLE_PLUGINS", None)
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
        yield Cluster(address, pythonpath)
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_build_on_two_node_cluster(two_node_cluster: Cluster, tmp_path: Path) -> None:
    address = two_node_cluster.address
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        media.make_video(src / f"v{i}.mp4", seconds=1.5)
    recipe = tmp_path / "spread.yaml"
    # The two 2-CPU actors of `rendezvous` cannot share a 3-CPU node; each waits on its first
    # clip until the other has arrived, so neither can finish the six clips alone.
    meet = tmp_path / "meet"
    recipe.write_text(
        "name: spread\n"
        "stages:\n"
        "  - annotator: rendezvous\n"
        f"    params: {{directory: '{meet}', actors: 2, timeout_s: 240}}\n"
        "    resources: {num_cpus: 2, concurrency: 2, batch_size: 1}\n"
        "  - annotator: clip_stats\n"
        "    resources: {num_cpus: 0.5, concurrency: 1, batch_size: 2}\n"
    )
    out = tmp_path / "run"
    env = {
        **os.environ,
        **CLUSTER_ENV,
        "RAY_ADDRESS": address,
        "PYTHONPATH": two_node_cluster.pythonpath,
    }
    env.pop("ANY2CAP_DISABLE_PLUGINS", None)
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
    assert address in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["records_ok"] == 6 and report["failed"] == 0

    nodes = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray, json; ray.init(address='{address}', log_to_driver=False);"
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
        arrival = json.loads(record["conditions"]["extra"]["rendezvous"])
        assert arrival["met"] == 2, arrival
        assert record["stats"] is not None
        for stage in record["provenance"]["stages"]:
            if stage["stage"] == "rendezvous":
                used.add(stage["node"])
    assert len(list(meet.iterdir())) == 2
    assert used == alive, "the two rendezvous actors worked on both nodes"
