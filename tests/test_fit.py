"""No recipe may hang: the build fits the stages' actor pools to local Ray, or refuses before
any work on a cluster (or where a GPU ask cannot be met), and stages whose models are missing
can be left out with --skip-unavailable."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from any2capins.annotators import all_annotators
from any2capins.pipeline.fit import (
    Pool,
    ResourceRefusal,
    Supply,
    apply_fit,
    demand,
    fit_pools,
    ray_supply,
)
from any2capins.pipeline.recipe import RecipeError, resolve_recipe
from any2capins.workflows.cli import app
from tests.tiny_models import tiny_depth_model

runner = CliRunner()

SIX = [
    Pool("probe", 0.25, task=True),
    Pool("clip_stats", 0.5),
    Pool("keyframes", 0.5),
    Pool("identities", 1.0),
    Pool("depth", 1.0),
    Pool("pose", 1.0),
    Pool("camera", 1.0),
    Pool("finalize", 0.25, task=True),
]


def _flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- arithmetic


def test_pools_that_fit_run_as_asked() -> None:
    fit = fit_pools(SIX, Supply(num_cpus=8), may_scale=True)
    assert not fit.scaled and fit.fitted == fit.asked and fit.line() == ""
    assert fit.report()["depth"] == {"concurrency": 1.0, "num_cpus_asked": 1.0, "num_cpus": 1.0}


def test_local_ray_scales_every_cpu_ask_to_the_machine() -> None:
    fit = fit_pools(SIX, Supply(num_cpus=2), may_scale=True, where="local Ray")
    assert fit.scaled
    cpus = {p.name: p.num_cpus for p in fit.fitted}
    assert sum(cpus.values()) <= 2.0
    assert all(v > 0 for v in cpus.values())
    # each keeps its share: 5.5 asked on 2 CPUs -> x 0.3636, floored to Ray's 0.0001 unit
    assert cpus["depth"] == pytest.approx(0.3636) and cpus["clip_stats"] == pytest.approx(0.1818)
    assert cpus["probe"] == pytest.approx(0.0909)
    line = fit.line()
    assert "\n" not in line and "CPU asked 5.5 > 2 on local Ray" in line
    assert "depth 1->0.3636" in line and "keyframes 0.5->0.1818" in line
    assert fit.report()["camera"]["num_cpus_asked"] == 1.0


def test_concurrency_and_gpus_and_memory_are_counted() -> None:
    pools = [
        Pool("probe", 0.25, task=True),
        Pool("depth", 2.0, num_gpus=0.5, memory_gb=8, concurrency=3),
        Pool("identities", 1.0, num_gpus=1.0, memory_gb=4),
    ]
    # 3 x 0.5 + 1 = 2.5 GPUs on a 2-GPU machine, 28 GiB of memory on 16
    fit = fit_pools(pools, Supply(num_cpus=16, num_gpus=2, memory_gb=16), may_scale=True)
    by = {p.name: p for p in fit.fitted}
    assert by["depth"].num_cpus == 2.0  # 7.25 CPUs fit in 16
    assert sum(p.total("num_gpus") for p in fit.fitted) <= 2
    assert by["depth"].num_gpus == pytest.approx(0.4) and by["identities"].num_gpus == 0.8
    assert sum(p.total("memory_gb") for p in fit.fitted) <= 16
    assert "GPU asked 2.5 > 2" in fit.line() and "depth 0.5->0.4 x3" in fit.line()


def test_a_cluster_refuses_naming_every_stage() -> None:
    with pytest.raises(ResourceRefusal) as info:
        fit_pools(
            SIX,
            Supply(num_cpus=4, node_num_cpus=2),
            may_scale=False,
            where="the Ray cluster at ray://head:10001",
        )
    message = str(info.value)
    assert "do not fit on the Ray cluster at ray://head:10001; nothing was started" in message
    for name in ("clip_stats", "keyframes", "identities", "depth", "pose", "camera"):
        assert f"{name}: 1 x " in message
    assert "probe: per task = 0.25 CPU" in message
    assert "total 5.5 CPU asked; the Ray cluster at ray://head:10001 has 4 (largest node 2)" in (
        message
    )


def test_a_cluster_refuses_an_actor_larger_than_any_node() -> None:
    pools = [Pool("depth", 4.0)]
    with pytest.raises(ResourceRefusal, match=r"depth: 1 x 4 = 4 CPU"):
        fit_pools(pools, Supply(num_cpus=8, node_num_cpus=2), may_scale=False)
    assert fit_pools(pools, Supply(num_cpus=8, node_num_cpus=4), may_scale=False).fitted == (
        pools[0],
    )


def test_a_gpu_ask_no_node_meets_is_refused_even_locally() -> None:
    pools = [*SIX[:-1], Pool("depth_gpu", 1.0, num_gpus=1.0), SIX[-1]]
    with pytest.raises(ResourceRefusal) as info:
        fit_pools(pools, Supply(num_cpus=2, num_gpus=0), may_scale=True, where="local Ray")
    message = str(info.value)
    assert "depth_gpu: 1 x 1 = 1 GPU" in message
    assert "one depth_gpu actor needs 1 GPU, the largest node has 0" in message
    # two GPUs on the cluster, but on two nodes: one actor asking 2 cannot be placed
    with pytest.raises(ResourceRefusal, match="largest node has 1"):
        fit_pools(
            [Pool("big", 1, num_gpus=2)],
            Supply(num_cpus=8, num_gpus=2, node_num_gpus=1),
            may_scale=True,
        )


def test_too_many_operators_for_the_smallest_share_are_refused() -> None:
    pools = [Pool(f"s{i}", 1.0) for i in range(30)]
    with pytest.raises(ResourceRefusal, match=r"cannot share 0\.001 CPU"):
        fit_pools(pools, Supply(num_cpus=0.001), may_scale=True)


def test_ray_supply_reads_cluster_resources_and_nodes() -> None:
    supply = ray_supply(
        {"CPU": 6.0, "GPU": 2.0, "memory": 12 * 2**30, "object_store_memory": 1e9},
        [
            {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0, "memory": 8 * 2**30}},
            {"Alive": True, "Resources": {"CPU": 2.0, "memory": 4 * 2**30}},
            {"Alive": False, "Resources": {"CPU": 64.0}},
        ],
    )
    assert supply == Supply(
        num_cpus=6, num_gpus=2, memory_gb=12, node_num_cpus=4, node_num_gpus=2, node_memory_gb=8
    )


def test_applying_a_fit_changes_resources_not_hashes() -> None:
    resolved = resolve_recipe(
        {
            "name": "r",
            "stages": [
                {"annotator": "clip_stats", "resources": {"num_cpus": 2}},
                {"annotator": "keyframes", "resources": {"num_cpus": 2, "concurrency": 2}},
            ],
        },
        all_annotators(),
    )
    pools = demand(resolved)
    assert [(p.name, p.num_cpus, p.concurrency) for p in pools] == [
        ("probe", 0.25, 1),
        ("clip_stats", 2, 1),
        ("keyframes", 2, 2),
        ("finalize", 0.25, 1),
    ]
    fitted = apply_fit(resolved, fit_pools(pools, Supply(num_cpus=2), may_scale=True))
    assert [s.config_hash for s in fitted.stages] == [s.config_hash for s in resolved.stages]
    assert fitted.recipe_hash == resolved.recipe_hash
    assert sum(s.resources.num_cpus * s.resources.concurrency for s in fitted.stages) < 2
    assert 0 < fitted.task_cpus < 0.25


# --------------------------------------------------------------------------- leaving out


def _recipe(depends: list[str]) -> dict[str, Any]:
    return {
        "name": "r",
        "stages": [
            {"annotator": "clip_stats"},
            {"annotator": "keyframes"},
            {"annotator": "depth"},
            {"annotator": "captions", "depends_on": depends},
        ],
    }


def test_without_rederives_hashes_as_resolving_the_pruned_recipe_would() -> None:
    registry = all_annotators()
    full = resolve_recipe(_recipe(["clip_stats", "depth"]), registry)
    pruned = full.without({"depth": "no depth model"})
    expected = resolve_recipe(
        {
            "name": "r",
            "stages": [
                {"annotator": "clip_stats"},
                {"annotator": "keyframes"},
                {"annotator": "captions", "depends_on": ["clip_stats"]},
            ],
        },
        registry,
    )
    assert [s.name for s in pruned.stages] == ["clip_stats", "keyframes", "captions"]
    assert pruned.left_out == {"depth": "no depth model"}
    assert pruned.stages[2].depends_on == ("clip_stats",)
    assert [s.config_hash for s in pruned.stages] == [s.config_hash for s in expected.stages]
    assert pruned.recipe_hash == expected.recipe_hash
    by_name = {s.name: s.config_hash for s in full.stages}
    assert pruned.stages[0].config_hash == by_name["clip_stats"]  # did not read depth
    assert pruned.stages[2].config_hash != by_name["captions"]  # did
    assert full.without({}) is full
    with pytest.raises(RecipeError, match="not stages"):
        full.without({"pose": "x"})
    with pytest.raises(RecipeError, match="every stage"):
        full.without({s.name: "x" for s in full.stages})


# --------------------------------------------------------------------------- through the CLI


def _build(recipe: Path, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["build", str(recipe), "--input", str(src), "--out", str(out), "--no-progress", *extra],
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


def _records(out: Path) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["runs", "records", str(out), "--json"])
    assert result.exit_code == 0
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def two_clips(demo_clips: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in sorted(p.name for p in demo_clips.glob("*.mp4"))[:2]:
        shutil.copy(demo_clips / name, src / name)
    return src


def test_pools_larger_than_the_machine_are_fitted_and_complete(
    ray_session: None, two_clips: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "big.yaml"
    recipe.write_text(
        "name: big\nstages:\n"
        + "".join(
            f"  - {{annotator: {a}, resources: {{num_cpus: 2, batch_size: 2}}}}\n"
            for a in ("clip_stats", "keyframes", "camera")
        )
    )
    out = tmp_path / "run"
    code, output = _build(recipe, two_clips, out)
    assert code == 0, output
    assert "CPU asked 6.5 > 2 on local Ray" in _flat(output)
    assert "camera 2->0.6153" in _flat(output)
    report = _report(out)
    assert report["records_ok"] == 2 and report["failed"] == 0
    fit = report["resource_fit"]
    assert set(fit) == {"probe", "clip_stats", "keyframes", "camera", "finalize"}
    assert fit["camera"]["num_cpus_asked"] == 2 and 0 < fit["camera"]["num_cpus"] < 1
    assert sum(v["num_cpus"] * v["concurrency"] for v in fit.values()) <= 2


def test_a_gpu_ask_on_a_machine_without_one_is_refused_at_once(
    ray_session: None, two_clips: Path, tmp_path: Path
) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0) >= 1:
        pytest.skip("this machine has a GPU")
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(
        "name: gpu\nstages:\n  - annotator: clip_stats\n"
        "    resources: {num_cpus: 0.5, num_gpus: 1}\n"
    )
    out = tmp_path / "run"
    started = time.monotonic()
    code, output = _build(recipe, two_clips, out)
    assert time.monotonic() - started < 20
    assert code == 2, output
    text = _flat(output)
    assert "do not fit on local Ray; nothing was started" in text
    assert "clip_stats: 1 x 1 = 1 GPU" in text
    assert "one clip_stats actor needs 1 GPU, the largest node has 0" in text
    assert not out.exists()


def test_a_cluster_short_of_cpus_is_refused_at_once(
    ray_session: None, two_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray is already up in this process, so the build joins it; RAY_ADDRESS makes it a
    # cluster, where nothing is scaled down.
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    recipe = tmp_path / "big.yaml"
    recipe.write_text(
        "name: big\nstages:\n  - {annotator: clip_stats, resources: {num_cpus: 2}}\n"
        "  - {annotator: keyframes, resources: {num_cpus: 1, concurrency: 2}}\n"
    )
    out = tmp_path / "run"
    started = time.monotonic()
    code, output = _build(recipe, two_clips, out)
    assert time.monotonic() - started < 20
    assert code == 2, output
    text = _flat(output)
    assert "do not fit on the Ray cluster at ray://head.example:10001" in text
    assert "clip_stats: 1 x 2 = 2 CPU" in text and "keyframes: 2 x 1 = 2 CPU" in text
    assert "total 4.5 CPU asked; the Ray cluster at ray://head.example:10001 has 2" in text
    assert not out.exists()


# keyframes does not read depth; declaring it stands for any stage that does
DEPTH_RECIPE = """\
name: depth-left-out
stages:
  - {annotator: clip_stats, sampling: {num_frames: 8, max_side: 128}}
  - {annotator: depth, sampling: {num_frames: 4, max_side: 128}}
  - {annotator: keyframes, depends_on: [depth], sampling: {num_frames: 2, max_side: 128}}
"""


def test_skip_unavailable_leaves_out_a_stage_until_its_model_comes(
    two_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DEPTH_RECIPE)
    model = tmp_path / "models" / "depth"
    monkeypatch.setenv("ANY2CAP_DEPTH_MODEL", str(model))
    out = tmp_path / "run"

    # without the flag: refused before any work, with the way to fetch it
    code, output = _build(recipe, two_clips, out, "--executor", "local")
    assert code == 2 and not out.exists()
    assert "no model directory" in output
    assert "any2cap models fetch depth" in _flat(output)

    code, output = _build(recipe, two_clips, out, "--executor", "local", "--skip-unavailable")
    assert code == 0, output
    text = _flat(output)
    assert "stages left out" in text and "to bring them in: any2cap models fetch depth" in text
    report = _report(out)
    assert set(report["left_out"]) == {"depth"}
    assert "no model directory" in report["left_out"]["depth"]
    assert set(report["stages"]) == {"clip_stats", "keyframes"}
    assert report["records_ok"] == 2 and report["resource_fit"] == {}
    for r in _records(out):
        assert set(r["provenance"]["stages_left_out"]) == {"depth"}
        assert "depth" not in {s["stage"] for s in r["provenance"]["stages"]}

    tiny_depth_model(model)  # the model arrives
    code, output = _build(recipe, two_clips, out, "--executor", "local", "--skip-unavailable")
    assert code == 0, output
    assert "left out" not in output
    again = _report(out)
    assert again["left_out"] == {}
    runs = {name: (t["clips"], t["skipped"]) for name, t in again["stages"].items()}
    assert runs == {
        "clip_stats": (0, 2),
        "depth": (2, 0),
        "keyframes": (2, 0),  # it depends on depth: its hash changed
    }
    for r in _records(out):
        assert r["provenance"]["stages_left_out"] == {}
        assert [s["stage"] for s in r["provenance"]["stages"]] == [
            "clip_stats",
            "depth",
            "keyframes",
        ]
        assert r["conditions"]["depth"] is not None
