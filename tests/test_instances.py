"""Instances: suitability judged per condition type, the deterministic plan, one short prompt
per instance under that instance's rules only, and the ``any2capins`` recipe end to end
through the CLI with tiny models and the local OpenAI-compatible server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from any2capins.annotators.captions.config import ImageOptions
from any2capins.annotators.captions.facts import build_context
from any2capins.annotators.captions.instances import InstancesConfig, plan_instances
from any2capins.annotators.conditions import condition_types
from any2capins.pipeline.recipe import RecipeError, load_recipe_file
from any2capins.pipeline.rundir import RunDir
from any2capins.schemas import (
    CameraCondition,
    DepthCondition,
    PayloadRef,
    Record,
    Suitability,
    make_instance_id,
)
from any2capins.workflows.cli import app
from any2capins.workflows.recipes import load_recipe
from tests.media import _encode
from tests.openai_server import FakeOpenAI, make_record
from tests.tiny_env import tiny_model_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "workflows" / "recipes" / "any2capins.yaml"
runner = CliRunner()
_GIVEN = re.compile(r"The user will also give the model these conditions: ([^.]+)\.")


def _suit(**verdicts: bool) -> dict[str, Suitability]:
    return {name: Suitability(suitable=ok, reason="test") for name, ok in verdicts.items()}


# --------------------------------------------------------------------------- the plan


def test_plan_follows_suitability_and_is_deterministic() -> None:
    cfg = InstancesConfig(
        writer="grounded", compositions=[["depth", "camera"], ["camera", "identities"]]
    )
    suit = _suit(camera=True, depth=True, pose=False, identities=False)
    plan = plan_instances("clip-1", suit, cfg)
    assert [i.key for i in plan] == ["camera", "depth", "camera+depth"]
    assert [i.composition for i in plan] == [False, False, True]
    assert plan[2].instance_id == make_instance_id("clip-1", ["depth", "camera"])
    assert plan == plan_instances("clip-1", suit, cfg)
    assert plan_instances("clip-1", _suit(pose=False), cfg) == []
    singles_off = InstancesConfig(
        writer="grounded", singles=False, compositions=[["camera", "depth"]]
    )
    assert [i.key for i in plan_instances("clip-1", suit, singles_off)] == ["camera+depth"]


def test_keep_share_is_a_seeded_draw() -> None:
    suit = _suit(depth=True, camera=True)
    half = InstancesConfig(writer="grounded", keep={"depth": 0.5})
    kept = [
        any(i.key == "depth" for i in plan_instances(f"clip-{n}", suit, half)) for n in range(400)
    ]
    assert 0.4 < sum(kept) / len(kept) < 0.6
    # every clip keeps its camera instance; the draw is the same on a re-run
    assert all(
        any(i.key == "camera" for i in plan_instances(f"clip-{n}", suit, half)) for n in range(50)
    )
    again = [
        any(i.key == "depth" for i in plan_instances(f"clip-{n}", suit, half)) for n in range(400)
    ]
    assert kept == again
    other_seed = InstancesConfig(writer="grounded", keep={"depth": 0.5}, seed=7)
    reseeded = [
        any(i.key == "depth" for i in plan_instances(f"clip-{n}", suit, other_seed))
        for n in range(400)
    ]
    assert reseeded != kept


def _recipe_with(params: dict[str, Any]) -> dict[str, Any]:
    data = load_recipe_file(RECIPE)
    stage = next(s for s in data["stages"] if s["annotator"] == "instances")
    stage["params"].update(params)
    return data


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"suitability": {"posee": {}}}, "unknown condition type 'posee'"),
        ({"suitability": {"camera": {"min_trackz": 3}}}, "suitability.camera: unknown thresholds"),
        ({"compositions": [["camera"]]}, "needs two or more condition types"),
        ({"keep": {"depth": 1.5}}, "is not a share between 0 and 1"),
    ],
)
def test_recipe_refuses_bad_instance_params(
    params: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe_with(params)))
    with pytest.raises(RecipeError, match=re.escape(message)) as info:
        load_recipe(str(path))
    index = [s["annotator"] for s in load_recipe_file(RECIPE)["stages"]].index("instances")
    assert f"stages[{index}].params" in str(info.value)


# --------------------------------------------------------------------------- rules per instance


def _ref() -> PayloadRef:
    return PayloadRef(
        uri="file:///nowhere", media_type="application/octet-stream", bytes=0, sha256="0"
    )


def _record_with_camera_and_depth(tmp_path: Path) -> Record:
    record = make_record(tmp_path, 0, camera=True)
    record.conditions.depth = DepthCondition(
        model_id="tiny",
        frames=16,
        timestamps_s=[0.1 * i for i in range(16)],
        normalization="clip",
        payload=_ref(),
    )
    return record


def test_an_instance_prompt_obeys_its_own_conditions_rules(tmp_path: Path) -> None:
    record = _record_with_camera_and_depth(tmp_path)
    assert isinstance(record.conditions.camera, CameraCondition)
    types = condition_types()
    ctx = build_context(record, types, ImageOptions(), with_images=False)
    depth_only = ctx.for_conditions(["depth"], types)
    camera_only = ctx.for_conditions(["camera"], types)
    both = ctx.for_conditions(["camera", "depth"], types)
    # the facts (the shared prefix) are the clip's, whatever the instance
    assert depth_only.facts_text() == camera_only.facts_text() == ctx.facts_text()
    assert set(depth_only.rules()) == {"depth"} and set(both.rules()) == {"camera", "depth"}
    # depth's rules about the camera movement depend on whether the instance gives a camera
    assert any("camera movement" in r for r in depth_only.rules()["depth"])
    assert not any("camera movement" in r for r in both.rules()["depth"])
    pan = "A quiet street at dusk as the camera pans left past the shops."
    assert depth_only.violations(pan) == []
    assert camera_only.violations(pan) and both.violations(pan)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def model_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_model_env(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def tiny_models(model_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in model_env.items():
        monkeypatch.setenv(name, value)
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    yield


def _clips(tmp_path: Path, demo_clips: Path) -> Path:
    """Two demo clips and a black one."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("dog.mp4", "bedroom.mp4"):
        (folder / name).symlink_to(demo_clips / name)
    black = [np.zeros((240, 320, 3), np.uint8)] * 48
    _encode(
        folder / "black.mp4",
        black,
        list(range(48)),
        Fraction(1, 24),
        Fraction(24),
        "libx264",
        "yuv420p",
        12,
    )
    return folder


def _build(recipe: str, src: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = runner.invoke(
        app,
        ["build", recipe, "-i", str(src), "-o", str(out), "--no-progress", *extra],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _by_name(out: Path) -> dict[str, Record]:
    return {Path(r.clip.source_uri).stem: r for r in RunDir(str(out)).records()}


def _check_plan(record: Record) -> None:
    """The record's instances are exactly what its suitability allows under the recipe."""
    suitable = {n for n, s in record.suitability.items() if s.suitable}
    assert set(record.conditions.present()) <= set(record.suitability)
    compositions = [["camera", "identities"], ["camera", "depth"], ["depth", "identities"]]
    compositions.append(["camera", "depth", "identities"])
    expected = [[n] for n in sorted(suitable)] + [c for c in compositions if set(c) <= suitable]
    assert record.instances is not None
    assert [i.condition_types for i in record.instances] == expected
    for inst in record.instances:
        assert inst.instance_id == make_instance_id(record.clip_id, inst.condition_types)
        assert inst.short_prompt


def test_any2capins_recipe_end_to_end_with_an_endpoint(
    tiny_models: None, demo_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _clips(tmp_path, demo_clips)
    out = tmp_path / "run"
    with FakeOpenAI(plain_prompts=True) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ANY2CAP_CACHE_DIR", str(tmp_path / "cache"))
        # every short prompt's first answer talks about the camera: only instances that
        # give the camera must send it back for repair
        server.add_fault("violation", component="short_prompt", times=1000, unless="cannot be used")
        report = _build("any2capins", src, out, "--executor", "local")
        assert report["failed"] == 0, report["failures"]
        records = _by_name(out)
        assert set(records) == {"dog", "bedroom"}
        for record in records.values():
            _check_plan(record)
            assert record.short_prompt is None  # the clip has no prompt of its own
            assert record.caption is not None
        # curation drops the black clip before any condition stage sees it
        (black,) = report["filtered"]
        assert black["source_uri"].endswith("black.mp4"), black
        assert black["score"] in ("motion_fraction", "black_fraction"), black
        assert black["clip_id"] not in RunDir(str(out)).markers("depth")
        for name in ("dog", "bedroom"):
            keys = {i.key for i in records[name].instances or []}
            assert {"camera", "depth"} <= keys, keys
        # each prompt request carried the rules of its instance's conditions only
        given = [
            m.group(1)
            for body in server.bodies
            for m in [_GIVEN.search(json.dumps(body["messages"][-1]["content"]))]
            if m
        ]
        planned = {
            " and ".join(i.condition_types) if len(i.condition_types) < 3 else None
            for r in records.values()
            for i in r.instances or []
        }
        assert {g for g in given if "," not in g} == {p for p in planned if p}
        # camera instances were repaired away from the camera talk; depth alone kept it
        for record in records.values():
            for inst in record.instances or []:
                assert inst.short_prompt is not None
                talks_camera = "pans left" in inst.short_prompt
                assert talks_camera == ("camera" not in inst.condition_types), inst
        # the test server's camera component describes a dolly in on these static clips
        for name in ("dog", "bedroom"):
            camera = records[name].conditions.camera
            assert camera is not None and camera.labels == ["static"]
            flags = [f for f in records[name].checks if f.check == "camera_motion"]
            assert flags and flags[0].component == "camera" and "static" in flags[0].fact
        stage = next(s for s in records["dog"].provenance.stages if s.stage == "instances")
        assert stage.details["writer"] == "openai" and int(stage.details["repairs"]) > 0
        assert records["dog"].provenance.tokens_in > 0

        # a re-run does nothing
        requests = server.stats.chat_requests
        again = _build("any2capins", src, out, "--executor", "local")
        assert again["records_resumed"] == 2 and server.stats.chat_requests == requests
        assert again["records_filtered"] == 1

        # a new instance plan re-runs planning and prompts, nothing else
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump(_recipe_with({"compositions": [["camera", "pose"]]})))
        replanned = _build(str(path), src, out, "--executor", "local")
    stages = replanned["stages"]
    assert stages["instances"]["clips"] == 2
    assert all(t["clips"] == 0 for name, t in stages.items() if name != "instances")
    records = _by_name(out)
    for record in records.values():
        keys = [i.key for i in record.instances or []]
        suitable = sorted(n for n, s in record.suitability.items() if s.suitable)
        assert keys == suitable + (["camera+pose"] if {"camera", "pose"} <= set(suitable) else [])

    # review -> export -> HF datasets: one row per accepted instance
    review_and_export(out, tmp_path / "shards", records)


def review_and_export(run: Path, shards: Path, records: dict[str, Record]) -> None:
    """Accept every item, editing one instance's prompt, export, read back the shards."""
    from datasets import load_dataset

    from any2capins.workflows.review import open_store

    store = open_store(str(run))
    try:
        assert store.ingest().added == len(records)
        user = store.add_user("ann", "annotator", "a-long-password")
        edited: tuple[str, str] | None = None
        while (item := store.claim(user)) is not None:
            instances = Record.model_validate(item.record).instances or []
            edits = {}
            if edited is None and instances:
                key = instances[0].key
                edits = {f"short_prompt:{key}": "A person shows a dog a new trick at home."}
                edited = (instances[0].instance_id, edits[f"short_prompt:{key}"])
            store.decide(user, item.id, "edit" if edits else "accept", item.version, edits=edits)
    finally:
        store.close()
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(shards), "--json"])
    assert result.exit_code == 0, result.output
    expected = {i.instance_id: i for r in records.values() for i in r.instances or []}
    data = load_dataset("parquet", data_files=str(shards / "*" / "*.parquet"), split="train")
    assert sorted(data["instance_id"]) == sorted(expected)
    by_id = {row["instance_id"]: row for row in data}
    assert edited is not None and by_id[edited[0]]["short_prompt"] == edited[1]
    for instance_id, row in by_id.items():
        inst = expected[instance_id]
        assert row["condition_types"] == inst.condition_types
        if instance_id != edited[0]:
            assert row["short_prompt"] == inst.short_prompt
    card = (shards / "README.md").read_text()
    assert "| camera | " in card and "total" in card


@pytest.mark.slow
def test_any2capins_recipe_on_local_ray(
    ray_session: None, tiny_models: None, demo_clips: Path, tmp_path: Path
) -> None:
    """The shipped recipe on the default local Ray (its pools fitted to this 2-core machine)
    against the test endpoint, then the plain loop: the same plan. (The prompts may differ:
    the tiny random models' outputs, shown to the writer, differ in their last bits between
    processes.)"""
    src = _clips(tmp_path, demo_clips)
    cache = {"cache_dir": str(tmp_path / "cache")}
    data = _recipe_with(cache)
    next(s for s in data["stages"] if s["annotator"] == "captions")["params"].update(cache)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with FakeOpenAI(plain_prompts=True) as server:
        data["stages"][-1]["params"]["base_url"] = server.base_url
        next(s for s in data["stages"] if s["annotator"] == "captions")["params"]["base_url"] = (
            server.base_url
        )
        path.write_text(yaml.safe_dump(data))
        report = _build(str(path), src, tmp_path / "ray")
        assert report["failed"] == 0, report["failures"]
        assert report["resource_fit"], "the pools were not checked against the machine"
        assert server.stats.by_component["short_prompt"] == sum(report["instances"].values())
        local = _build(str(path), src, tmp_path / "local", "--executor", "local")
        assert local["failed"] == 0
    assert report["instances"] == local["instances"] and report["instances"]["camera"] == 2
    ray_records, local_records = _by_name(tmp_path / "ray"), _by_name(tmp_path / "local")
    for name, record in ray_records.items():
        _check_plan(record)
        stage = next(s for s in record.provenance.stages if s.stage == "instances")
        assert stage.details["writer"] == "openai"
        assert [i.key for i in record.instances or []] == [
            i.key for i in local_records[name].instances or []
        ]


def test_a_prompt_that_keeps_breaking_its_rules_fails_only_its_clip(tmp_path: Path) -> None:
    """Every answer for clip 0's camera instance describes the camera: after the repair
    prompts the clip is an InvalidCaption (a failure row in a build), the other clip is
    written, and nothing raises."""
    from any2capins.annotators.captions.errors import InvalidCaption
    from any2capins.annotators.captions.instances import InstancesAnnotator
    from tests.openai_server import make_inputs, match_clip

    inputs = make_inputs(tmp_path / "data", 2, camera=True)
    for item in inputs:  # an imported trajectory: always suits camera
        camera = item.record.conditions.camera
        assert camera is not None
        item.record.conditions.camera = camera.model_copy(update={"source": "realestate10k"})
    with FakeOpenAI(plain_prompts=True) as server:
        server.add_fault("violation", component="short_prompt", match=match_clip(0), times=99)
        stage = InstancesAnnotator(
            InstancesConfig(
                writer="openai",
                base_url=server.base_url,
                model="test-model",
                cache_dir=str(tmp_path / "cache"),
                repair_attempts=2,
            )
        )
        try:
            failed, ok = stage(inputs)
        finally:
            stage.close()
    assert isinstance(failed, InvalidCaption)
    assert "camera" in str(failed) and "after 2 repair prompts" in str(failed)
    assert isinstance(ok, dict)
    (instance,) = ok["instances"]
    assert instance["condition_types"] == ["camera"] and "pans left" not in instance["short_prompt"]
    assert server.stats.faults_fired["violation"] == 3  # the first answer and two repairs
