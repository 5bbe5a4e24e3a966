"""A third-party condition type installed the way a user installs one.

The example plugin (examples/any2cap-motion-energy) and a broken one (an entry point naming a
module that does not exist) are built and pip-installed offline into a fresh venv that sees
this project's environment. There the plugin is found through its entry point, `any2cap
build` runs its stage on the demo clips and on generated clips whose motion is known, and
the records carry its summary and a payload that reads back with the right values; the broken
plugin only warns. The project's own environment, which lacks the plugin, refuses the same
recipe before any work, naming the stage.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import any2capins.annotators
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import PayloadRef, Record
from tests import media
from tests.conftest import DEMO_CLIPS, REPO

pytestmark = pytest.mark.slow

PLUGIN_SRC = REPO / "examples" / "any2cap-motion-energy"
BUILTIN_CONDITIONS = {"depth", "pose", "identities", "camera"}
FPS, SAMPLE_FPS, SAMPLE_SIDE, GRID = 24, 4.0, 256, 8

GHOST_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "any2cap-ghost-condition"
version = "0.0.1"

[project.entry-points."any2capins.conditions"]
ghost = "any2cap_ghost_condition:GhostConditionType"

[tool.setuptools]
packages = []
"""

RECIPE = f"""\
name: motion_energy_test
spans:
  mode: whole
  min_len_s: 1.0
  max_len_s: 30.0
stages:
  - annotator: clip_stats
    sampling:
      num_frames: 8
      max_side: 128
  - annotator: keyframes
    sampling:
      num_frames: 2
      max_side: 128
  - annotator: motion_energy
    params:
      grid: {GRID}
    sampling:
      num_frames: null
      fps: {SAMPLE_FPS}
      max_frames: 64
      max_side: {SAMPLE_SIDE}
  - annotator: captions
    depends_on: [clip_stats, keyframes, motion_energy]
    params:
      writer: grounded
"""

# Run inside the plugin venv: the registry as that environment sees it.
REGISTRY_SCRIPT = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import any2capins.annotators
    from any2capins.annotators import all_annotators
    from any2capins.annotators.conditions import condition_types
    from any2capins.pipeline.recipe import RecipeError
    from any2capins.workflows.recipes import load_recipe
    types = condition_types()
    try:
        recipe = [s.name for s in load_recipe(sys.argv[1]).stages]
    except RecipeError as e:
        recipe = str(e)
print(json.dumps({
    "annotators_file": any2capins.annotators.__file__,
    "types": {n: type(t).__module__ + "." + type(t).__qualname__ for n, t in types.items()},
    "stages": sorted(all_annotators()),
    "recipe": recipe,
    "warnings": [str(w.message) for w in caught if "condition plugin" in str(w.message)],
}))
"""

# Run inside the plugin venv: the plugin's own decoder, facts and prompt check on each record.
DECODE_SCRIPT = """
import json, pathlib, sys
from any2capins.annotators.conditions import condition_types
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import Record
ctype = condition_types()["motion_energy"]
out = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    record = Record.model_validate_json(path.read_text())
    summary = type(ctype).read(record)
    arrays = ctype.decode_payload(summary, read_payload)
    out[record.clip_id] = {
        "energy": arrays["energy"].tolist(),
        "maps_shape": list(arrays["maps"].shape),
        "preview_shape": list(arrays["preview"].shape),
        "facts": ctype.grounding_facts(summary, record),
        "violations": ctype.short_prompt_violations(record.short_prompt, summary, record),
    }
print(json.dumps(out))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PIP_"))}
    for var in ("RAY_ADDRESS", "ANY2CAP_DISABLE_PLUGINS", "PYTHONPATH"):
        env.pop(var, None)
    # Rich wraps error messages at 80 columns when not on a terminal.
    return {**env, "COLUMNS": "400", "PYTHONNOUSERSITE": "1", **extra}


def _run(
    args: list[str | Path], timeout: float = 300, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_env(**env),
    )


def _flat(text: str) -> str:
    return " ".join(text.split())


def _project_site_dirs() -> list[str]:
    """Where this interpreter's packages live: the project's venv (any2capins installed in
    editable mode by `make install`, plus its dependencies)."""
    paths = sysconfig.get_paths()
    found: list[str] = []
    for p in [*site.getsitepackages(), paths["purelib"], paths["platlib"]]:
        if os.path.isdir(p) and p not in found:
            found.append(p)
    return found


@dataclass(frozen=True)
class PluginVenv:
    python: Path
    root: Path


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    root = tmp_path_factory.mktemp("plugin-venv")
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    made = _run([base, "-m", "venv", "--without-pip", venv], timeout=120)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    assert purelib.returncode == 0, purelib.stderr
    # addsitedir (not a plain path line) so the project venv's own .pth files run too: the
    # editable install's import hook, or its path entry, is one of them. The repo root comes
    # last for an editable install of any other kind. pip and setuptools (torch depends on
    # it) come from the project venv as well, which is what lets the install run offline.
    lines = [f"import site; site.addsitedir({p!r})" for p in _project_site_dirs()]
    lines.append(str(Path(any2capins.annotators.__file__).resolve().parents[1]))
    (Path(purelib.stdout.strip()) / "_any2capins_project.pth").write_text("\n".join(lines) + "\n")

    # Build from copies: setuptools writes build/ and *.egg-info next to the sources.
    plugin = shutil.copytree(
        PLUGIN_SRC,
        root / "src" / PLUGIN_SRC.name,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    ghost = root / "src" / "any2cap-ghost-condition"
    ghost.mkdir(parents=True)
    (ghost / "pyproject.toml").write_text(GHOST_PYPROJECT)
    # offline and without build isolation: nothing is downloaded, not even setuptools
    pip: list[str | Path] = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    flags = ["--no-index", "--no-cache-dir", "--disable-pip-version-check"]
    installed = _run([*pip, *flags, plugin, ghost], timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return PluginVenv(python=python, root=root)


GENERATED = {"still": 2.0, "moving": 2.0, "late": 3.0}  # generated clip -> seconds


def _generated_frame(name: str, i: int, n: int) -> np.ndarray:
    """Frame ``i`` of ``n`` of a generated clip. "late" holds frame 0 of the moving pattern
    until just past the middle, then moves: its first sampled step with any change lies in
    the clip's second half."""
    if name == "still":
        return media.frame_image(i, n, 320, 240, "static")
    if name == "late" and i < math.ceil(n / 2 + FPS / SAMPLE_FPS / 2):
        return media.frame_image(0, n, 320, 240)
    return media.frame_image(i, n, 320, 240)


def _generated_energy(name: str, count: int) -> list[float]:
    """The energy the plugin should measure on a generated clip, from the generator's own
    frames (before encoding): mean absolute luma change between the sampled frames."""
    n, step = round(GENERATED[name] * FPS), round(FPS / SAMPLE_FPS)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    lumas = [(_generated_frame(name, k * step, n) @ weights) / 255 for k in range(count)]
    return [0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(lumas)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of the demo clips and three generated clips with known motion."""
    folder = tmp_path_factory.mktemp("sources")
    rate = Fraction(FPS)
    for name, seconds in GENERATED.items():
        n = round(seconds * FPS)
        images = [_generated_frame(name, i, n) for i in range(n)]
        # media's own encoder (as make_video uses it), fed frames of our own
        path, times = folder / f"{name}.mp4", list(range(n))
        media._encode(path, images, times, 1 / rate, rate, media.DEFAULT_CODEC, "yuv420p", 12)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri"])
        writer.writerows([[str(p)] for p in sorted(DEMO_CLIPS.glob("*.mp4"))])
        writer.writerows([[f"{name}.mp4"] for name in GENERATED])
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder


def _build_args(sources: Path, out: Path) -> list[str | Path]:
    """`any2cap build` as a module, so any interpreter can run it (no console script needed)."""
    recipe, manifest = sources / "recipe.yaml", sources / "manifest.csv"
    return [
        *("-m", "any2capins.workflows.cli", "build", recipe, "--input", manifest, "--out", out),
        *("--executor", "local", "--no-progress"),
    ]


@pytest.fixture(scope="module")
def plugin_build(
    plugin_venv: PluginVenv, sources: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = plugin_venv.root / "run"
    proc = _run([plugin_venv.python, *_build_args(sources, out)])
    return proc, out


def _records(out: Path) -> dict[str, Record]:
    records = [Record.model_validate_json(p.read_text()) for p in (out / "records").glob("*.json")]
    return {Path(r.clip.source_uri).stem: r for r in records}


def _expected_frames(record: Record) -> int:
    return min(64, math.floor(record.clip.duration_s * SAMPLE_FPS - 1e-9) + 1)


def _payload(summary: dict[str, Any]) -> dict[str, np.ndarray]:
    data = read_payload(PayloadRef.model_validate(summary["payload"]))  # checks the sha256
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_entry_point_registers_the_plugin_and_skips_the_broken_one(
    plugin_venv: PluginVenv,
) -> None:
    example_recipe = PLUGIN_SRC / "motion_energy.yaml"
    proc = _run([plugin_venv.python, "-c", REGISTRY_SCRIPT, example_recipe])
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    # the venv really runs this checkout, through the project's environment
    assert Path(seen["annotators_file"]).resolve() == Path(any2capins.annotators.__file__).resolve()
    assert seen["types"]["motion_energy"] == (
        "any2cap_motion_energy.condition.MotionEnergyConditionType"
    )
    assert set(seen["types"]) == BUILTIN_CONDITIONS | {"motion_energy"}
    assert "motion_energy" in seen["stages"]
    assert seen["recipe"] == ["clip_stats", "keyframes", "motion_energy", "captions"]
    (warning,) = seen["warnings"]
    assert "skipping condition plugin 'ghost'" in warning
    assert "ModuleNotFoundError" in warning and "any2cap_ghost_condition" in warning

    proc = _run(
        [plugin_venv.python, "-c", REGISTRY_SCRIPT, example_recipe], ANY2CAP_DISABLE_PLUGINS="1"
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert set(seen["types"]) == BUILTIN_CONDITIONS
    assert "motion_energy" not in seen["stages"]
    assert seen["warnings"] == []  # disabled plugins are not even imported
    assert "unknown annotator 'motion_energy'" in seen["recipe"]


def test_build_runs_the_plugin_stage_and_the_payload_holds_the_right_values(
    plugin_build: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = plugin_build
    assert proc.returncode == 0, proc.stderr
    assert "skipping condition plugin 'ghost'" in _flat(proc.stderr)  # warned, build went on
    report = json.loads((out / "report.json").read_text())
    n = len(list(DEMO_CLIPS.glob("*.mp4"))) + len(GENERATED)
    assert report["clips_in"] == n and report["records_ok"] == n and report["failures"] == []
    assert report["stages"]["motion_energy"]["clips"] == n

    records = _records(out)
    assert len(records) == n
    for name, record in records.items():
        assert record.conditions.present() == ["motion_energy"]
        summary = json.loads(record.conditions.extra["motion_energy"])
        arrays = _payload(summary)
        frames = _expected_frames(record)
        energy, maps = arrays["energy"], arrays["maps"]
        assert summary["frames"] == frames and energy.shape == (frames,), name
        assert arrays["timestamps_s"] == pytest.approx(summary["timestamps_s"], abs=1e-4)
        assert maps.shape == (frames, GRID, GRID) and energy[0] == 0
        # every sampled frame size here divides into equal cells: the maps average to energy
        assert maps.mean(axis=(1, 2)) == pytest.approx(energy, abs=1e-6)
        assert summary["mean_energy"] == pytest.approx(float(energy[1:].mean()), abs=1e-5)
        preview = read_payload(PayloadRef.model_validate(summary["preview"]))
        assert preview[:8] == b"\x89PNG\r\n\x1a\n"

        stage = next(s for s in record.provenance.stages if s.stage == "motion_energy")
        assert stage.annotator_version == "1"
        captions = next(s for s in record.provenance.stages if s.stage == "captions")
        assert captions.details["conditions"] == "motion_energy"
        assert record.caption is not None
        # the grounded writer puts a plugin's facts in the dense caption
        assert f"Motion energy over {frames} frames sampled every 0.25 s" in record.caption.dense

        if name in GENERATED:
            expected = _generated_energy(name, frames)
            assert energy.tolist() == pytest.approx(expected, abs=0.006), name
        else:  # children on a bed, a dog, pouring coffee: real clips where things move
            assert summary["level"] in ("low", "moderate", "high"), name

    still, moving, late = records["still"], records["moving"], records["late"]
    s = json.loads(still.conditions.extra["motion_energy"])
    assert s["level"] == "still" and _payload(s)["energy"].max() < 0.004
    assert s["description"] == "still: the sampled frames barely change"
    m = json.loads(moving.conditions.extra["motion_energy"])
    assert m["level"] == "high" and m["description"].endswith("spread over the clip")
    la = json.loads(late.conditions.extra["motion_energy"])
    assert la["first_half"] < 0.004 < 0.03 < la["second_half"]
    assert la["description"].endswith("concentrated in the second half")
    assert late.caption is not None
    assert (
        "Motion is high in the second half of the clip and nearly absent in the first half"
        in late.caption.dense
    )


def test_plugin_decodes_its_payload_and_checks_prompts_in_its_environment(
    plugin_venv: PluginVenv, plugin_build: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    proc, out = plugin_build
    assert proc.returncode == 0, proc.stderr
    decoded = _run([plugin_venv.python, "-c", DECODE_SCRIPT, out / "records"])
    assert decoded.returncode == 0, decoded.stderr
    seen = json.loads(decoded.stdout)
    records = _records(out)
    assert set(seen) == {r.clip_id for r in records.values()}
    for record in records.values():
        got = seen[record.clip_id]
        summary = json.loads(record.conditions.extra["motion_energy"])
        assert got["energy"] == _payload(summary)["energy"].tolist()
        assert got["maps_shape"] == [summary["frames"], GRID, GRID]
        height, width, channels = got["preview_shape"]
        assert max(height, width) == SAMPLE_SIDE and channels == 3
        assert record.caption is not None and record.short_prompt
        assert all(fact in record.caption.dense for fact in got["facts"])
        # the grounded writer drops prompt sentences that break a condition's rule: here its
        # "The picture shows little change from moment to moment." sentence
        assert got["violations"] == []
        assert "change from moment to moment" not in record.short_prompt


def test_plugin_tests_pass_against_the_installed_plugin(plugin_venv: PluginVenv) -> None:
    tests_dir = plugin_venv.root / "src" / PLUGIN_SRC.name / "tests"
    proc = _run(
        [plugin_venv.python, "-m", "pytest", tests_dir, "-q", "-p", "no:cacheprovider"],
        timeout=300,
        cwd=plugin_venv.root,  # so the plugin is imported from the venv, not a source folder
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_without_the_plugin_the_recipe_is_refused_naming_the_stage(
    sources: Path, tmp_path: Path
) -> None:
    from any2capins.annotators.conditions import condition_types

    if "motion_energy" in condition_types():
        pytest.skip("the example plugin is installed in the project's own environment")
    out = tmp_path / "run"
    proc = _run([sys.executable, *_build_args(sources, out)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stages[2].annotator: unknown annotator 'motion_energy'" in _flat(proc.stderr)
    assert "a condition plugin's stage needs its package installed" in _flat(proc.stderr)
    assert not (out / "records").exists()  # refused before any work


READ_SHARDS_SCRIPT = """
import json, sys
from any2capins.workflows.export import ShardDataset
seen = {}
for sample in ShardDataset(sys.argv[1]):
    seen[sample["clip_id"]] = {
        "conditions": list(sample["conditions"]),
        "energy": sample["motion_energy.energy"].tolist(),
        "maps_shape": list(sample["motion_energy.maps"].shape),
    }
print(json.dumps(seen))
"""


def test_plugin_payloads_are_embedded_in_shards_and_decoded_by_the_reader(
    plugin_venv: PluginVenv,
    plugin_build: tuple[subprocess.CompletedProcess[str], Path],
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq

    from any2capins.schemas import ReviewState, payload_refs
    from any2capins.workflows.export import Reviewed, export_shards, verify_shards

    proc, out = plugin_build
    assert proc.returncode == 0, proc.stderr
    records = _records(out)
    shards = tmp_path / "shards"
    # the exporter needs no plugin code: it runs here, where the plugin is not installed
    export_shards(
        [Reviewed(r, ReviewState(status="accepted")) for r in records.values()], str(shards)
    )
    assert verify_shards(str(shards)) == []
    rows = {
        row["clip_id"]: row
        for path in shards.glob("*/*.parquet")
        for row in pq.read_table(path).to_pylist()
    }
    for record in records.values():
        embedded = {kv["key"] for kv in rows[record.clip_id]["payloads"]}
        plugin_refs = payload_refs(json.loads(record.conditions.extra["motion_energy"]))
        assert plugin_refs and {ref.uri for _, ref in plugin_refs} <= embedded
    # the artifact store goes away: the reader in the plugin's environment needs only shards
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    shutil.rmtree(out / "artifacts")
    try:
        read = _run([plugin_venv.python, "-c", READ_SHARDS_SCRIPT, shards])
    finally:
        shutil.rmtree(out)
        shutil.copytree(moved, out)
    assert read.returncode == 0, read.stderr
    seen = json.loads(read.stdout.strip().splitlines()[-1])
    assert set(seen) == {r.clip_id for r in records.values()}
    for record in records.values():
        summary = json.loads(record.conditions.extra["motion_energy"])
        got = seen[record.clip_id]
        assert "motion_energy" in got["conditions"]
        assert got["energy"] == _payload(summary)["energy"].tolist()
        assert got["maps_shape"] == [summary["frames"], GRID, GRID]
