"""The camera stage end to end: the recipe through the engine (local executor), import from
camera files beside the videos, subject masks taken from earlier conditions, the condition
type's facts, rules and prompt checks, and the ``any2cap camera`` commands."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

import any2capins.annotators
from any2capins.annotators import PROVENANCE_KEY, Annotator, ClipInput
from any2capins.annotators.camera import (
    CameraAnnotator,
    CameraConditionType,
    CameraConfig,
    format_realestate10k,
    parse_realestate10k,
    read_trajectory,
)
from any2capins.annotators.camera.masks import subject_masks
from any2capins.annotators.camera.synthetic import render_clip
from any2capins.annotators.conditions import ConditionType, PayloadReader
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import resolve_recipe
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import (
    CameraCondition,
    ClipRef,
    Conditions,
    IdentitiesCondition,
    PayloadRef,
    PoseCondition,
    Provenance,
    Record,
)
from any2capins.workflows.cli import app
from tests.conftest import REPO, SHARED_DATA

RECIPE = REPO / "workflows" / "recipes" / "camera.yaml"
MOTIONCTRL = SHARED_DATA / "camera" / "motionctrl"
RE10K = SHARED_DATA / "camera" / "realestate10k"
REGISTRY: dict[str, type[Annotator]] = {
    **any2capins.annotators.BUILTIN_ANNOTATORS,
    "camera": CameraAnnotator,
}
runner = CliRunner()


def _recipe(**camera_params: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RECIPE.read_text())
    data["stages"][-1]["params"].update(camera_params)
    return data


class _Sink:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        path = self.root / name
        path.write_bytes(data)
        return PayloadRef(
            uri=str(path),
            media_type=media_type,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


def _record(
    uri: str = "/v/clip.mp4", width: int = 480, height: int = 272, end: float = 3.0
) -> Record:
    clip = ClipRef(
        clip_id="c1",
        source_uri=uri,
        start_s=0.0,
        end_s=end,
        fps=10.0,
        width=width,
        height=height,
        num_frames=round(end * 10),
    )
    return Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))


# --- the recipe through the engine ----------------------------------------------------------


def test_camera_recipe_on_demo_clips(demo_clips: Path, tmp_path: Path) -> None:
    resolved = resolve_recipe(_recipe(), REGISTRY)
    assert [s.name for s in resolved.stages] == ["clip_stats", "keyframes", "camera"]
    out = tmp_path / "run"
    report = run_build(resolved, list_sources(str(demo_clips)), str(out), executor="local")
    n = len(list(demo_clips.glob("*.mp4")))
    assert report.records_ok == n and report.failed == 0
    ctype = CameraConditionType()
    for rec in RunDir(str(out)).records():
        cam = rec.conditions.camera
        assert cam is not None and cam.source == "estimated"
        assert cam.labels == ["static"] and cam.speed == ""
        assert cam.description == "the camera is static"
        assert cam.frames >= 30  # 5 frames per second over 6-10 s clips
        arrays = ctype.decode_payload(cam, read_payload)
        assert arrays["w2c"].shape == (cam.frames, 3, 4)
        assert arrays["c2w"].shape == (cam.frames, 4, 4)
        assert arrays["intrinsics"].shape == (cam.frames, 4)
        np.testing.assert_allclose(arrays["w2c"][0], np.hstack([np.eye(3), np.zeros((3, 1))]))
        prov = next(s for s in rec.provenance.stages if s.stage == "camera")
        assert prov.details["masks"] == "none" and "estimator_modes" in prov.details
        assert prov.models[0].model_id == "opencv-klt-essential-pnp"
    again = run_build(resolved, list_sources(str(demo_clips)), str(out), executor="local")
    assert again.stages["camera"].skipped == n and again.stages["camera"].clips == 0


def test_import_from_camera_files_beside_the_videos(demo_clips: Path, tmp_path: Path) -> None:
    if not (RE10K.is_dir() and MOTIONCTRL.is_dir()):
        pytest.skip(f"camera files not present under {SHARED_DATA} (set ANY2CAP_SHARED_DATA)")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("dog", "coffee", "bedroom"):
        shutil.copy(demo_clips / f"{name}.mp4", videos / f"{name}.mp4")
    # a RealEstate10K file on the video's own timeline, a MotionCtrl file, and nothing
    re10k = read_trajectory(RE10K / "0c11dbe781b1c11c.txt")
    re10k = re10k.replace(timestamps_s=np.linspace(0.5, 4.5, len(re10k)))
    (videos / "dog.camera.txt").write_text(format_realestate10k(re10k))
    shutil.copy(MOTIONCTRL / "L.json", videos / "coffee.camera.json")
    resolved = resolve_recipe(_recipe(source="import"), REGISTRY)
    out = tmp_path / "run"
    report = run_build(resolved, list_sources(str(videos)), str(out), executor="local")
    assert report.records_ok == 2 and report.failed == 1
    failure = report.failures[0]
    assert failure.stage == "camera" and failure.error_type == "CameraImportError"
    assert "bedroom.camera.txt" in failure.message
    by_name = {Path(r.clip.source_uri).stem: r for r in RunDir(str(out)).records()}
    dog = by_name["dog"].conditions.camera
    coffee = by_name["coffee"].conditions.camera
    assert dog is not None and coffee is not None
    assert dog.source == "realestate10k" and dog.labels[:2] == ["pan_left", "dolly_in"]
    assert coffee.source == "motionctrl" and coffee.labels == ["truck_left"]
    stored = CameraConditionType().trajectory(dog, read_payload)
    np.testing.assert_allclose(stored.w2c, re10k.w2c, atol=1e-9)
    times = CameraConditionType().decode_payload(coffee, read_payload)["timestamps_s"]
    clip = by_name["coffee"].clip
    assert times[0] == pytest.approx(clip.start_s) and times[-1] == pytest.approx(clip.end_s)
    prov = next(s for s in by_name["dog"].provenance.stages if s.stage == "camera")
    assert prov.details["file"].endswith("dog.camera.txt") and prov.models == []


def test_import_cuts_to_the_span_and_refuses_a_mismatch(tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    cams.mkdir()
    traj = parse_realestate10k(format_realestate10k(render_clip("pan_right", seconds=2.0).truth))
    (cams / "clip.txt").write_text(format_realestate10k(traj))
    ann = CameraAnnotator(CameraConfig(source="import", import_dir=str(cams)))
    rec = _record(uri=str(tmp_path / "clip.mp4"), end=1.0)
    item = ClipInput(rec.clip, np.zeros((1, 8, 8, 3), np.uint8), [0.0], rec, _Sink(tmp_path / "a"))
    out = ann([item])[0]
    assert not isinstance(out, BaseException)
    cam = out["conditions.camera"]
    assert cam.frames == 11  # 10 per second, 0.0-1.0 s inclusive of the rounding margin
    late = _record(uri=str(tmp_path / "clip.mp4"), end=9.0).model_copy()
    late.clip.start_s, late.clip.end_s = 5.0, 9.0
    item = ClipInput(
        late.clip, np.zeros((1, 8, 8, 3), np.uint8), [5.0], late, _Sink(tmp_path / "b")
    )
    err = ann([item])[0]
    assert isinstance(err, ValueError) and "do not overlap" in str(err)


# --- masks from earlier conditions ------------------------------------------------------------


class _FakeIdentities(ConditionType[IdentitiesCondition]):
    """Stands in for the identities condition: its documented decode_payload arrays."""

    name: ClassVar[str] = "identities"
    summary_model: ClassVar[type[BaseModel]] = IdentitiesCondition

    def __init__(self, masks: np.ndarray, times: np.ndarray) -> None:
        self.masks, self.times = masks, times

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        return {
            "masks": self.masks[None],
            "timestamps_s": self.times,
            "mask_identity_ids": np.array([1]),
        }


class _FakePose(ConditionType[PoseCondition]):
    name: ClassVar[str] = "pose"
    summary_model: ClassVar[type[BaseModel]] = PoseCondition

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        boxes = -np.ones((2, 1, 4))
        boxes[0, 0] = [0.1, 0.2, 0.3, 0.6]
        return {"boxes": boxes, "timestamps_s": np.array([0.0, 1.0])}


class _Broken(_FakePose):
    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        raise OSError("payload gone")


def _ref() -> PayloadRef:
    return PayloadRef(uri="/x", media_type="application/octet-stream", bytes=0, sha256="0")


def _with_conditions(rec: Record, identities: bool = True, pose: bool = False) -> Record:
    conds = Conditions(
        identities=IdentitiesCondition(model_ids=["m"], identities=[], stitched_reference=_ref())
        if identities
        else None,
        pose=PoseCondition(
            model_id="p", frames=2, max_persons=1, timestamps_s=[0, 1], keypoints=_ref()
        )
        if pose
        else None,
    )
    return rec.model_copy(update={"conditions": conds})


def test_subject_masks_align_resize_and_combine() -> None:
    small = np.zeros((3, 10, 20), bool)
    small[0, :, :5] = True  # subject on the left at t=0
    small[2, :, 15:] = True  # and on the right at t=2
    rec = _with_conditions(_record(), identities=True, pose=True)
    registry = {
        "identities": _FakeIdentities(small, np.array([0.0, 1.0, 2.0])),
        "pose": _FakePose(),
    }
    got = subject_masks(rec, [0.0, 0.5, 2.0], 40, 80, registry=registry)
    assert got.masks is not None and got.masks.shape == (3, 40, 80)
    assert got.sources == ["identities", "pose"] and got.notes == []
    # t=0.5 lies between mask frames 0 and 1: the union of both
    assert got.masks[1, :, :20].all() and not got.masks[1, :, 60:].any()
    assert got.masks[2, :, 60:].all()
    # pose box (0.1-0.3 of the width, 0.2-0.6 of the height, plus a margin) at t=0
    assert got.masks[0, 20, 20] and not got.masks[0, 38, 40]


def test_subject_masks_note_what_they_cannot_use() -> None:
    rec = _with_conditions(_record(), identities=True, pose=True)
    got = subject_masks(rec, [0.0], 10, 10, registry={"pose": _Broken()})
    assert got.masks is None and got.sources == []
    assert any("identities: condition type not registered" in n for n in got.notes)
    assert any("payload gone" in n for n in got.notes)
    assert subject_masks(_record(), [0.0], 10, 10, registry={}).masks is None


def test_annotator_uses_identity_masks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A dolly with three people walking across 40% of the frame: the identities masks reach
    the estimator (provenance says so) and the motion reads as a clean dolly in."""
    clip = render_clip("dolly_in", moving_objects=3, seed=3)
    registry = {"identities": _FakeIdentities(clip.masks, clip.truth.timestamps_s)}
    monkeypatch.setattr("any2capins.annotators.camera.masks.condition_types", lambda: registry)
    rec = _with_conditions(_record())
    times = list(clip.truth.timestamps_s)
    ann = CameraAnnotator(CameraConfig(fov_deg=60.0))
    item = ClipInput(rec.clip, clip.frames, times, rec, _Sink(tmp_path / "with"))
    out = ann([item])[0]
    assert not isinstance(out, BaseException)
    assert out[PROVENANCE_KEY]["masks"] == "identities"
    assert out["conditions.camera"].labels == ["dolly_in"]
    blind = CameraAnnotator(CameraConfig(use_subject_masks=False))
    item = ClipInput(rec.clip, clip.frames, times, rec, _Sink(tmp_path / "without"))
    out_blind = blind([item])[0]
    assert not isinstance(out_blind, BaseException)
    assert "masks" not in out_blind[PROVENANCE_KEY]


def test_one_bad_clip_does_not_fail_the_batch(tmp_path: Path) -> None:
    good = render_clip("pan_right", seconds=1.0)
    rec = _record()
    ann = CameraAnnotator()
    items = [
        # one frame: no motion can be estimated (a blank clip is not a failure: it gets an
        # unusable camera condition, see tests/test_suitability.py)
        ClipInput(rec.clip, good.frames[:1], [0.0], rec, _Sink(tmp_path / "a")),
        ClipInput(rec.clip, good.frames, list(good.truth.timestamps_s), rec, _Sink(tmp_path / "b")),
    ]
    bad, ok = ann(items)
    assert isinstance(bad, RuntimeError) and "at least 2 frames" in str(bad)
    assert not isinstance(ok, BaseException) and ok["conditions.camera"].labels == ["pan_right"]


def test_recipe_params_are_validated() -> None:
    from any2capins.pipeline.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"stages\[2\]\.params\.fov"):
        resolve_recipe(_recipe(fov=50), REGISTRY)
    with pytest.raises(RecipeError, match="source"):
        resolve_recipe(_recipe(source="guess"), REGISTRY)


# --- the condition type ------------------------------------------------------------------------


def _summary(labels: list[str], speed: str, description: str) -> CameraCondition:
    return CameraCondition(
        source="estimated",
        frames=30,
        labels=labels,
        description=description,
        trajectory=_ref(),
        speed=speed,
    )


def test_grounding_facts_and_rules() -> None:
    ctype = CameraConditionType()
    rec = _record()
    moving = _summary(
        ["dolly_in", "pan_left"], "slowly", "the camera slowly dollies in while panning left"
    )
    facts = ctype.grounding_facts(moving, rec)
    assert "the camera slowly dollies in while panning left" in facts[0]
    assert "estimated from the video" in facts[0] and "30 camera poses" in facts[0]
    assert any("dolly_in, pan_left" in f for f in facts)
    assert any("slowly" in f for f in facts[1:])
    static = ctype.grounding_facts(_summary(["static"], "", "the camera is static"), rec)
    assert any("does not move" in f for f in static)
    rules = ctype.short_prompt_rules(moving, rec)
    assert rules and "must not describe" in rules[0]
    assert CameraConditionType.output_key() == "conditions.camera"
    assert CameraConditionType.annotators == (CameraAnnotator,)


@pytest.mark.parametrize(
    ("prompt", "flagged"),
    [
        ("A woman fries an egg in a pan on a red truck.", []),
        ("A dog runs across the lawn while the camera pans left.", ["camera pans"]),
        ("Slow zoom in on a mug of coffee.", ["zoom in"]),
        ("Tracking shot of a cyclist; dolly in to her face.", ["dolly in", "tracking shot"]),
        ("Static camera: two kids jump on a bed.", ["static camera"]),
        ("The camera orbits around a statue.", ["camera orbits"]),
        (
            "A statue; orbiting shot at dusk, then the view pans to the right.",
            ["orbiting", "pans to the right"],
        ),
        ("Handheld footage of a market, the view tilts up to the sky.", ["handheld", "tilts up"]),
        ("A close-up of hands kneading dough.", []),
    ],
)
def test_short_prompt_violations(prompt: str, flagged: list[str]) -> None:
    ctype = CameraConditionType()
    found = ctype.short_prompt_violations(prompt, _summary(["static"], "", "x"), _record())
    if not flagged:
        assert found == []
    else:
        assert len(found) == 1
        for phrase in flagged:
            assert f"'{phrase}'" in found[0], found


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_label_motionctrl_and_realestate10k() -> None:
    if not MOTIONCTRL.is_dir():
        pytest.skip(f"MotionCtrl files not present at {MOTIONCTRL}")
    result = runner.invoke(
        app, ["camera", "label", str(MOTIONCTRL / "I.json"), "--format", "motionctrl", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["labels"] == ["dolly_in"] and doc["description"].startswith("the camera")
    result = runner.invoke(
        app, ["camera", "label", str(RE10K / "0c11dbe781b1c11c.txt"), "--format", "realestate10k"]
    )
    assert result.exit_code == 0 and "pan_left" in result.stdout


def test_cli_label_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("url\n1 2 3\n")
    result = runner.invoke(app, ["camera", "label", str(bad), "--json"])
    assert result.exit_code == 2 and "line 2" in result.output
    result = runner.invoke(app, ["camera", "label", str(bad), "--format", "colmap"])
    assert result.exit_code == 2 and "unknown format" in result.output


def test_cli_estimate(demo_clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "dog.txt"
    result = runner.invoke(
        app, ["camera", "estimate", str(demo_clips / "dog.mp4"), "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["labels"] == ["static"] and doc["description"] == "the camera is static"
    assert len(doc["frames"]) >= 40
    frame = doc["frames"][1]
    assert len(frame["intrinsics"]) == 4 and np.asarray(frame["w2c"]).shape == (3, 4)
    assert len(read_trajectory(out)) == len(doc["frames"])
    not_video = tmp_path / "x.mp4"
    not_video.write_text("hello")
    result = runner.invoke(app, ["camera", "estimate", str(not_video), "--json"])
    assert result.exit_code == 2 and "NotAVideo" in result.output
