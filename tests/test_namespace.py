"""One import namespace (docs/architecture.md, "One import namespace"): the code imports
`any2capins.*` only, the installed distribution provides the `any2capins` package alone, and
the public surface imports from outside the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from any2capins.schemas import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]
BARE = {"schemas", "annotators", "pipeline", "workflows"}
FOLDERS = (*sorted(BARE), "any2capins", "bench", "tools", "tests", "examples")
CODE_IMPORT = re.compile(r"(?:^|[\n;])\s*(?:from|import) ([\w.]+)")


def _python_files() -> list[Path]:
    found = []
    for folder in FOLDERS:
        # os.walk does not follow the links in any2capins/, so each file is read once
        for root, dirs, files in os.walk(REPO / folder):
            dirs[:] = [d for d in dirs if d not in {"__pycache__", ".venv", "build"}]
            found += [Path(root) / f for f in files if f.endswith(".py")]
    return found


def test_no_module_imports_a_bare_folder_name() -> None:
    offenders = []
    files = _python_files()
    assert len(files) > 200
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                # code run in a subprocess (python -c) or printed for users
                names = [m.group(1) for m in CODE_IMPORT.finditer(node.value)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in BARE
            ]
    assert offenders == [], "import these as any2capins.<package>:\n" + "\n".join(offenders)


def test_the_folders_are_linked_into_the_package() -> None:
    for name in BARE:
        link = REPO / "any2capins" / name
        assert link.is_symlink() and os.readlink(link) == f"../{name}"
    assert (REPO / "any2capins" / "py.typed").is_file()


def test_the_distribution_installs_only_the_any2capins_package() -> None:
    top = importlib.metadata.distribution("any2capins").read_text("top_level.txt")
    assert top is not None and top.split() == ["any2capins"]
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["any2cap"] == "any2capins.workflows.cli:app"


def test_the_public_surface_imports_from_outside_the_checkout(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import any2capins\n"
        "from any2capins import SCHEMA_VERSION, Record, ShardDataset\n"
        "from any2capins.plugins import Annotator, ConditionType, PayloadRef\n"
        "bare = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(BARE)!r})\n"
        "print(any2capins.__version__, SCHEMA_VERSION, ShardDataset.__name__, bare)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    version, schema, reader, bare = done.stdout.split(" ", 3)
    assert version == importlib.metadata.version("any2capins")
    assert schema == SCHEMA_VERSION
    assert reader == "ShardDataset" and bare.strip() == "[]"
