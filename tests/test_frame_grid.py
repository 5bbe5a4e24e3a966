"""The recipe's ``frame_grid``: every condition stage samples the same timestamps (one rule,
``any2capins.annotators.keyframes.stage_sampling``), each condition records the grid, imported cameras
are resampled onto it, and recipes without a grid resolve exactly as before."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from any2capins.annotators.camera import Trajectory, TrajectoryError, parse_realestate10k
from any2capins.annotators.keyframes import grid_sampling, stage_sampling
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import RecipeError
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import FrameGrid, Record
from any2capins.workflows.recipes import load_recipe
from tests.media import make_video
from tests.tiny_env import tiny_model_env

CONDITIONS = ("identities", "depth", "pose", "camera")


def _stages(camera: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"annotator": "clip_stats", "sampling": {"num_frames": 4, "max_side": 128}},
        {"annotator": "identities", "params": {"max_identities": 2, "detection_frames": 3}},
        {"annotator": "depth"},
        {"annotator": "pose"},
        {"annotator": "camera", "depends_on": ["identities", "pose"], "params": camera or {}},
    ]


def _recipe(tmp_path: Path, grid: dict[str, Any] | None, **extra: Any) -> str:
    data: dict[str, Any] = {"name": "grid", "stages": _stages(), **extra}
    if grid is not None:
        data["frame_grid"] = grid
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_condition_stage_samples_the_grid(tmp_path: Path) -> None:
    resolved = load_recipe(_recipe(tmp_path, {"fps": 4, "size": 320}))
    grid = FrameGrid(fps=4, size=320)
    by_name = {s.name: s for s in resolved.stages}
    for name in CONDITIONS:
        assert by_name[name].sampling == grid_sampling(grid)
        assert by_name[name].config.frame_grid == grid  # type: ignore[attr-defined]
    # stages that write no condition keep their own sampling
    assert by_name["clip_stats"].sampling.num_frames == 4
    # a different grid is a different stage hash (the stages run again)
    other = load_recipe(_recipe(tmp_path, {"fps": 5, "size": 320}))
    assert {s.name: s.config_hash for s in other.stages}["depth"] != by_name["depth"].config_hash


def test_the_grid_keeps_a_stage_max_side_when_it_has_no_size(tmp_path: Path) -> None:
    stages = _stages()
    stages[2]["sampling"] = {"max_side": 200}
    data = {"name": "g", "frame_grid": {"num_frames": 9}, "stages": stages}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    by_name = {s.name: s for s in load_recipe(str(path)).stages}
    assert by_name["depth"].sampling.max_side == 200 and by_name["depth"].sampling.num_frames == 9
    assert by_name["pose"].sampling.max_side == 512  # the annotator's default


def test_without_a_grid_nothing_changes(tmp_path: Path) -> None:
    resolved = load_recipe(_recipe(tmp_path, None))
    camera = next(s for s in resolved.stages if s.name == "camera")
    assert camera.sampling.fps == 5.0 and camera.sampling.num_frames is None
    # neither the stage hashes nor the recipe hash change for recipes without a grid
    assert "frame_grid" not in camera.config.model_dump()
    assert "frame_grid" not in resolved.recipe.model_dump()
    for spec in resolved.stages:
        if spec.name in CONDITIONS:  # no sampling of their own: the annotators' defaults
            assert spec.sampling == stage_sampling(spec.annotator_cls, None, None)
            assert spec.sampling == spec.annotator_cls.default_sampling


@pytest.mark.parametrize(
    ("grid", "edit", "needle"),
    [
        (
            {"fps": 4},
            {"sampling": {"num_frames": 8}},
            "stages[2].sampling.num_frames: the recipe's",
        ),
        ({"fps": 4, "size": 256}, {"sampling": {"max_side": 128}}, "stages[2].sampling.max_side"),
        ({"fps": 4}, {"params": {"frame_grid": {"fps": 4}}}, "stages[2].params.frame_grid: set"),
        ({"fps": 4, "num_frames": 8}, {}, "frame_grid: Value error, set exactly one"),
        ({}, {}, "frame_grid: Value error, set exactly one"),
    ],
)
def test_bad_grids_are_refused(
    tmp_path: Path, grid: dict[str, Any], edit: dict[str, Any], needle: str
) -> None:
    data: dict[str, Any] = {"name": "g", "frame_grid": grid, "stages": _stages()}
    data["stages"][2].update(edit)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert needle in str(info.value)


def test_trajectory_at_interpolates_between_cameras() -> None:
    angle = np.radians(10.0)
    turned = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    w2c = np.stack([np.hstack([np.eye(3), [[0], [0], [0]]]), np.hstack([turned, [[-2], [0], [0]]])])
    traj = Trajectory(np.array([0.8, 1.0, 0.5, 0.5]), w2c, np.array([0.0, 1.0]))
    mid = traj.at([0.0, 0.5, 1.0])
    assert np.allclose(mid.w2c[0], w2c[0]) and np.allclose(mid.w2c[2], w2c[1])
    centre = (traj.centers()[0] + traj.centers()[1]) / 2
    assert np.allclose(mid.centers()[1], centre)
    half = mid.rotations[1]
    assert np.isclose(np.degrees(np.arccos((np.trace(half) - 1) / 2)), 5.0)
    assert len(traj.at([1.02], tolerance_s=0.05)) == 1
    with pytest.raises(TrajectoryError, match="outside"):
        traj.at([1.2], tolerance_s=0.05)


@pytest.fixture(scope="module")
def model_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_model_env(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def tiny_models(model_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in model_env.items():
        monkeypatch.setenv(name, value)
    yield


def _re10k(url: str, fps: float, frames: int) -> str:
    rows = [url]
    for i in range(frames):
        m = [1, 0, 0, -0.05 * i, 0, 1, 0, 0, 0, 0, 1, 0]
        rows.append(f"{round(i / fps * 1e6)} 0.8 1.1 0.5 0.5 0 0 " + " ".join(map(str, m)))
    return "\n".join(rows) + "\n"


def test_conditions_share_the_grid_timestamps(tiny_models: None, tmp_path: Path) -> None:
    """A real build (tiny random models, a real video): depth, pose, identity masks and
    cameras, estimated and imported, all exist at the same timestamps, and say so."""
    src = tmp_path / "clips"
    src.mkdir()
    make_video(src / "walk.mp4", seconds=2.0, fps=24, width=320, height=240)
    # a RealEstate10K file beside the video (24 fps cameras) for the imported camera
    (src / "walk.camera.txt").write_text(_re10k(str(src / "walk.mp4"), 24, 48))
    grid = {"fps": 6, "size": 160}
    for source in ("estimate", "import"):
        data = {"name": "grid", "frame_grid": grid, "stages": _stages({"source": source})}
        path = tmp_path / f"{source}.yaml"
        path.write_text(yaml.safe_dump(data))
        out = tmp_path / source
        report = run_build(
            load_recipe(str(path)), list_sources(str(src)), str(out), executor="local"
        )
        assert report.failed == 0, report.failures
        (record,) = list(RunDir(str(out)).records())
        _check_record(record, FrameGrid(**grid), source)


def _check_record(record: Record, grid: FrameGrid, source: str) -> None:
    c = record.conditions
    assert c.depth and c.pose and c.identities and c.camera
    times = c.depth.timestamps_s
    # 2 s at 6 fps: frames at 0, 1/6, ... (the nearest real frames of the 24 fps video)
    assert len(times) == 12 and np.allclose(times, np.arange(12) / 6, atol=1 / 48)
    assert c.pose.timestamps_s == times
    assert c.identities.timestamps_s == times
    assert c.camera.timestamps_s == times
    for summary in (c.depth, c.pose, c.identities, c.camera):
        assert summary.frame_grid == grid
    assert c.depth.frames == c.pose.frames == c.identities.frames == c.camera.frames == 12
    assert c.camera.source == ("estimated" if source == "estimate" else "realestate10k")
    # the payloads hold the same times
    trajectory = parse_realestate10k(read_payload(c.camera.trajectory).decode())
    assert np.allclose(trajectory.timestamps_s, times, atol=1e-4)
    if source == "import":
        # resampled from the file's 24 fps cameras: x translation -0.05 per file frame
        assert np.allclose(trajectory.w2c[:, 0, 3], -0.05 * np.asarray(times) * 24, atol=1e-4)
    assert c.identities.masks is not None
    with np.load(io.BytesIO(read_payload(c.identities.masks))) as npz:
        assert np.allclose(npz["timestamps_s"], times, atol=1e-4)
