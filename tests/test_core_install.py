"""The core install (no extras) reads shards: a fresh virtualenv gets the project from this
checkout with pip and PyPI, and must not bring in any role's heavy packages.

Slow (a venv and a pip install; pip's cache keeps reruns short); skipped when PyPI cannot
be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# the package folder (its links to the four top-level folders kept as links) and the folders
PACKAGES = ("any2capins", "schemas", "annotators", "pipeline", "workflows")
# One package of each extra, and the decoders: none may be in a core install.
HEAVY = (
    "ray", "fastapi", "sqlalchemy", "openai", "transformers", "torch", "torchvision",
    "decord", "av", "cv2", "onnxruntime", "pandas", "matplotlib", "webdataset",
)  # fmt: skip


def _pypi_reachable() -> str | None:
    """None when pip can reach its index, else why not."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as e:
        return f"PyPI is unreachable from here ({e}): the core install cannot be tried"
    return None


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def core_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = _pypi_reachable()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("core")
    # A copy of the project, so pip's build leaves nothing in the checkout.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            src / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    done = _run([str(python), "-m", "pip", "install", "--quiet", str(src)])
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def test_core_install_has_no_heavy_package(core_python: Path) -> None:
    code = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if importlib.util.find_spec(m)]))"
    )
    done = _run([str(core_python), "-c", code])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_core_install_cli_names_the_missing_extra(core_python: Path, tmp_path: Path) -> None:
    any2cap = str(core_python.parent / "any2cap")
    done = _run([any2cap, "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run([any2cap, "build", "demo", "-i", str(tmp_path), "-o", str(tmp_path / "r")])
    assert done.returncode == 2
    assert "install any2capins[build]" in " ".join(done.stderr.split())
    done = _run([any2cap, "review", "serve", "--run", str(tmp_path)])
    assert done.returncode == 2
    assert "install any2capins[review]" in " ".join(done.stderr.split())


def test_core_install_reads_shards(core_python: Path, tmp_path: Path) -> None:
    from any2capins.pipeline.rundir import RunDir
    from any2capins.schemas import ReviewState
    from any2capins.workflows.export import Reviewed, export_shards
    from tests.test_export import build_run

    run = build_run(tmp_path / "b", clips=2)
    items = [Reviewed(r, ReviewState(status="accepted")) for r in RunDir(str(run)).records()]
    shards = tmp_path / "shards"
    export_shards(items, str(shards))
    code = (
        "import json, sys\n"
        "from any2capins import ShardDataset\n"
        f"rows = list(ShardDataset({str(shards)!r}, decode=False))\n"
        f"heavy = sorted(m for m in {list(HEAVY)!r} if m in sys.modules)\n"
        "try:\n"
        f"    ShardDataset({str(shards)!r})\n"
        "    decode = 'no error'\n"
        "except ModuleNotFoundError as e:\n"
        "    decode = str(e)\n"
        "print(json.dumps({'rows': len(rows), 'heavy': heavy, 'decode': decode}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = _run([str(core_python), "-c", code], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["rows"], result["heavy"]) == (2, [])
    # decoding payloads into tensors needs the train extra, and says so
    assert "any2capins[train]" in result["decode"]
