"""``any2cap export --format control``: a real build on a frame grid (tiny random models,
demo clips), reviewed in the review store, exported through the CLI, then read back the way
a control-video trainer would: every control video has exactly the grid's frames at the
target's fps and size, the metadata rows are the instances, every path exists, and
``shards verify`` passes (and catches what breaks). Records whose conditions are not on the
export's grid are refused with the reason."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from any2capins.annotators.camera import parse_realestate10k
from any2capins.pipeline.build import run_build
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.schemas import (
    CAPTION_COMPONENTS,
    FrameGrid,
    Instance,
    Record,
    ReviewState,
    make_instance_id,
)
from any2capins.workflows.cli import app
from any2capins.workflows.export import Reviewed, export_shards, verify_shards
from any2capins.workflows.export.formats.control import COLUMNS, ControlFormat
from any2capins.workflows.recipes import load_recipe
from any2capins.workflows.review import open_store
from tests.instance_fixtures import make_instance_run
from tests.tiny_env import tiny_model_env

runner = CliRunner()
GRID = FrameGrid(num_frames=12, size=256)
DEPS = ["clip_stats", "keyframes", "identities", "depth", "pose", "camera"]
RECIPE: dict[str, Any] = {
    "name": "control-grid",
    "frame_grid": GRID.model_dump(exclude_defaults=True),
    "spans": {"mode": "whole", "max_len_s": 30},
    "stages": [
        {"annotator": "clip_stats"},
        {"annotator": "keyframes"},
        {"annotator": "identities", "params": {"max_identities": 2, "detection_frames": 4}},
        {"annotator": "depth"},
        {"annotator": "pose"},
        {"annotator": "camera", "depends_on": ["identities", "pose"]},
        {"annotator": "captions", "depends_on": DEPS, "params": {"writer": "grounded"}},
        {
            "annotator": "instances",
            "depends_on": DEPS,
            "params": {"writer": "grounded", "compositions": [["camera", "depth"]]},
        },
    ],
}
PROMPT_IDS = "A person and a dog, shown in the reference images, walk through the scene."


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory, demo_clips: Path) -> Iterator[Path]:
    """Two demo clips built on the grid, every record reviewed (accepted) in the store; each
    record also gets an identities instance (the tiny detector's subjects may be judged
    unsuitable), so all four control types go out."""
    root = tmp_path_factory.mktemp("control")
    env = tiny_model_env(root / "models")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
            mp.delenv(var, raising=False)
        src = root / "clips"
        src.mkdir()
        for name in ("dog.mp4", "bedroom.mp4"):
            (src / name).symlink_to(demo_clips / name)
        path = root / "recipe.yaml"
        path.write_text(yaml.safe_dump(RECIPE))
        run = root / "run"
        report = run_build(
            load_recipe(str(path)), list_sources(str(src)), str(run), executor="local"
        )
        assert report.failed == 0, report.failures
    rundir = RunDir(str(run))
    for record in rundir.records():
        keys = {i.key for i in record.instances or []}
        if "identities" not in keys and record.conditions.identities is not None:
            extra = Instance(
                instance_id=make_instance_id(record.clip_id, ["identities"]),
                condition_types=["identities"],
                short_prompt=PROMPT_IDS,
            )
            record = record.model_copy(update={"instances": [*(record.instances or []), extra]})
            rundir.save_record(record)
    store = open_store(str(run))
    store.ingest()
    ann = store.add_user("ann", "annotator", None)
    while (view := store.claim(ann)) is not None:
        store.decide(ann, view.id, "accept", view.version)
    store.close()
    yield run


def _records(run: Path) -> list[Record]:
    return sorted(RunDir(str(run)).records(), key=lambda r: r.clip_id)


def _video(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate or 0)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "metadata.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_control_export_through_the_cli(grid_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "control"
    started = time.perf_counter()
    result = runner.invoke(
        app,
        ["export", "--run", str(grid_run), "--out", str(out), "--format", "control", "--json"],
        catch_exceptions=False,
    )
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    records = _records(grid_run)
    instances = {i.instance_id: (r, i) for r in records for i in r.instances or []}
    assert report["incomplete"] == [] and report["new_rows"] == len(instances) >= 8
    print(f"control export: {len(instances)} instances of {len(records)} clips in {seconds:.1f} s")

    rows = _rows(out)
    assert tuple(rows[0]) == COLUMNS
    assert sorted(r["instance_id"] for r in rows) == sorted(instances)
    kinds = set()
    for row in rows:
        record, inst = instances[row["instance_id"]]
        types = inst.condition_types
        kinds.update(types)
        assert row["clip_id"] == record.clip_id and row["condition_types"] == "+".join(types)
        assert row["text"] == inst.short_prompt
        assert list(json.loads(row["structured_caption"])) == list(CAPTION_COMPONENTS)
        assert FrameGrid.model_validate_json(row["frame_grid"]) == GRID
        n, fps = int(row["num_frames"]), float(row["fps"])
        size = (int(row["width"]), int(row["height"]))
        assert n == 12 and max(size) == 256
        assert np.isclose(fps, 12 / record.clip.duration_s, rtol=1e-4)
        # exactly the columns of the instance's types are filled
        filled = {
            "depth": row["control_depth_path"],
            "pose": row["control_pose_path"],
            "identities": row["ref_image_paths"],
            "camera": row["camera_path"],
        }
        assert {k for k, v in filled.items() if v} == set(types)
        target, target_fps = _video(out / row["file_path"])
        assert target.shape == (n, size[1], size[0], 3)
        assert np.isclose(target_fps, fps, rtol=2e-3)
        for key in ("control_depth_path", "control_pose_path"):
            if row[key]:
                frames, rate = _video(out / row[key])
                assert frames.shape == target.shape, key
                assert np.isclose(rate, target_fps, rtol=1e-6), key
                if key == "control_pose_path":
                    assert np.median(frames) == 0  # skeletons on black
                else:  # grey: the three channels agree (up to the codec)
                    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).mean() < 2
        if row["camera_path"]:
            camera = parse_realestate10k((out / row["camera_path"]).read_text())
            assert len(camera) == n
            assert record.conditions.depth is not None
            assert np.allclose(camera.timestamps_s, record.conditions.depth.timestamps_s, atol=1e-4)
        for ref in json.loads(row["ref_image_paths"] or "[]"):
            image = cv2.imread(str(out / ref), cv2.IMREAD_UNCHANGED)
            assert image is not None and image.ndim == 3 and image.shape[2] == 3
    assert kinds == {"camera", "depth", "identities", "pose"}
    # a clip's files are shared by its instances: one target video per clip
    assert len(list((out / "videos").iterdir())) == len(records)

    verify = runner.invoke(app, ["shards", "verify", str(out)], catch_exceptions=False)
    assert verify.exit_code == 0, verify.output
    assert verify_shards(str(out)) == []

    # incremental: nothing new the second time, metadata.csv unchanged
    before = (out / "metadata.csv").read_bytes()
    again = runner.invoke(
        app, ["export", "--run", str(grid_run), "--out", str(out), "--format", "control", "--json"]
    )
    assert again.exit_code == 0 and json.loads(again.stdout.splitlines()[-1])["new_rows"] == 0
    assert (out / "metadata.csv").read_bytes() == before

    # verify catches a control video with a frame too few and a missing reference image
    pose = next(r for r in rows if r["control_pose_path"])
    frames, rate = _video(out / pose["control_pose_path"])
    from any2capins.annotators._media import encode_mp4

    (out / pose["control_pose_path"]).write_bytes(encode_mp4(frames[:-1], rate))
    ref = next(r for r in rows if r["ref_image_paths"])
    (out / json.loads(ref["ref_image_paths"])[0]).unlink()
    problems = verify_shards(str(out))
    assert any(
        f"{pose['control_pose_path']}: 11 frames" in p and "the row says 12" in p for p in problems
    ), problems
    assert any(f"{pose['control_pose_path']} does not match its sha256" in p for p in problems)
    assert any("is missing" in p and p.endswith(".png is missing") for p in problems)
    bad = runner.invoke(app, ["shards", "verify", str(out)])
    assert bad.exit_code == 1
    # and a metadata.csv that lost a row
    lines = (out / "metadata.csv").read_text().splitlines(keepends=True)
    (out / "metadata.csv").write_text("".join(lines[:-1]))
    assert any("1 of its rows are not in metadata.csv" in p for p in verify_shards(str(out)))


def _accepted(records: list[Record]) -> list[Reviewed]:
    return [Reviewed(r, ReviewState(status="accepted", reviewer="ann")) for r in records]


def test_records_off_the_grid_are_refused(grid_run: Path, tmp_path: Path) -> None:
    # conditions sampled without a grid (the hand-made fixture run): not exported, and why
    loose = make_instance_run(tmp_path / "loose")
    report = export_shards(_accepted(_records(loose)), str(tmp_path / "a"), format="control")
    assert report.new_rows == 0 and len(report.incomplete) == 3
    assert all("was not sampled on a frame grid" in why for _, why in report.incomplete)

    records = _records(grid_run)
    # timestamps that are not the grid's frames of the clip (e.g. another reader's)
    first = records[0]
    assert first.conditions.depth is not None
    shifted = first.conditions.depth.model_copy(
        update={"timestamps_s": [t + 0.02 for t in first.conditions.depth.timestamps_s]}
    )
    moved = first.model_copy(
        update={"conditions": first.conditions.model_copy(update={"depth": shifted})}
    )
    report = export_shards(_accepted([moved]), str(tmp_path / "b"), format="control")
    (why,) = [w for _, w in report.incomplete]
    assert "its depth condition has 12 frames" in why and "not the grid's 12 frames" in why

    # an export asked for another grid refuses records of this one
    other = ControlFormat(grid=FrameGrid(num_frames=16, size=256))
    report = export_shards(_accepted(records), str(tmp_path / "c"), format=other)
    assert report.new_rows == 0 and len(report.incomplete) == len(records)
    assert all("this export's grid is num_frames=16, size=256" in w for _, w in report.incomplete)
