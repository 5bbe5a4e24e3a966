"""tools/ensure_venv.sh, which `make install` runs first: on a fresh Debian machine whose
python3 lacks the venv module (Debian ships it apart), it installs python3.X-venv with apt
and creates the venv; without apt it says what to install and fails; a too-old PYTHON is
refused by name. The fresh machine is made of stubs on PATH (apt-get, python3.11)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "ensure_venv.sh"

# A python3.11 whose venv module works only once apt has installed python3.11-venv.
PYTHON_STUB = """#!/bin/sh
case "$1" in
  -c) case "$2" in *version_info\\[:2\\]*) echo 3.11 ;; esac; exit 0 ;;
  -m) if [ -e "$STATE/venv-installed" ]; then mkdir -p "$3/bin"; : > "$3/bin/python"; exit 0; fi
      echo "The virtual environment was not created successfully because ensurepip is not" >&2
      echo "available. On Debian/Ubuntu systems, install the python3-venv package." >&2
      exit 1 ;;
esac
exit 2
"""
APT_STUB = """#!/bin/sh
echo "apt-get $*" >> "$STATE/apt.log"
case "$*" in *"install --no-install-recommends python3.11-venv"*) : > "$STATE/venv-installed" ;; esac
exit 0
"""


def _run(tmp_path: Path, stubs: dict[str, str], **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    for name, body in {"python3.11": PYTHON_STUB, **stubs}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "venv")],
        env={
            **os.environ,
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "STATE": str(state),
            "PYTHON": str(bin_dir / "python3.11"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_installs_the_missing_venv_module_with_apt(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("the apt path runs only as root")
    done = _run(tmp_path, {"apt-get": APT_STUB})
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "state" / "apt.log").read_text()
    assert "install --no-install-recommends python3.11-venv" in log
    assert "installing python3.11-venv with apt" in done.stderr
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert not (tmp_path / "venv.err").exists()


def test_without_apt_it_names_the_package_and_fails(tmp_path: Path) -> None:
    # not root (a stub `id`): apt is out of reach, so it says what to install
    done = _run(tmp_path, {"id": "#!/bin/sh\necho 1000\n", "apt-get": APT_STUB})
    assert done.returncode == 1
    assert "-m venv failed:\n    The virtual environment was not created" in done.stderr
    assert "apt-get install python3.11-venv" in done.stderr
    assert not (tmp_path / "state" / "apt.log").exists()
    assert not (tmp_path / "venv").exists() and not (tmp_path / "venv.err").exists()


def test_a_failing_apt_is_a_clear_error(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("the apt path runs only as root")
    done = _run(tmp_path, {"apt-get": "#!/bin/sh\nexit 100\n"})
    assert done.returncode == 1
    assert "apt could not install the venv module" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_refuses_a_python_older_than_3_11(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\nexit 1\n")  # fails the version check
    old.chmod(0o755)
    done = _run(tmp_path, {"apt-get": APT_STUB}, PYTHON=str(old))
    assert done.returncode == 1
    assert f"PYTHON={old} is not Python 3.11+" in done.stderr
    assert not (tmp_path / "state" / "apt.log").exists()
