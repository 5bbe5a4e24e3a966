"""Suitability per clip and condition type: each built-in's rule on crafted summaries, the
measurements the annotators add for it (pose body keypoints, identity mask stability, camera
estimate quality), an imported camera, a black clip that suits nothing, a demo clip that
suits camera, threshold overrides, and default thresholds that are exactly what each rule reads.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

import any2capins.annotators
from any2capins.annotators import ClipInput
from any2capins.annotators.base import PROVENANCE_KEY
from any2capins.annotators.camera import CameraAnnotator, CameraConditionType, CameraConfig
from any2capins.annotators.camera.estimate import (
    EstimationError,
    UntrackableError,
    estimate_with_report,
)
from any2capins.annotators.camera.synthetic import render_clip
from any2capins.annotators.conditions import ConditionType
from any2capins.annotators.depth import DepthAnnotator, DepthConditionType
from any2capins.annotators.identities.annotator import IdentitiesConfig, write_identities
from any2capins.annotators.identities.condition import IdentitiesConditionType
from any2capins.annotators.identities.selection import IdentityTrack
from any2capins.annotators.pose import PoseAnnotator, PoseConditionType
from any2capins.annotators.pose._condition import PoseConfig
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import resolve_recipe
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.schemas import (
    CameraCondition,
    ClipRef,
    ClipStats,
    DepthCondition,
    DepthLayout,
    IdentitiesCondition,
    Identity,
    PayloadRef,
    PoseCondition,
    Provenance,
    Record,
    Suitability,
)
from tests import media, tiny_models
from tests.conftest import SHARED_DATA

MOTIONCTRL = SHARED_DATA / "camera" / "motionctrl"
RE10K = SHARED_DATA / "camera" / "realestate10k"
REGISTRY: dict[str, type[any2capins.annotators.Annotator]] = {
    **any2capins.annotators.BUILTIN_ANNOTATORS,
    "camera": CameraAnnotator,
    "depth": DepthAnnotator,
}
TYPES: dict[str, ConditionType[Any]] = {
    "pose": PoseConditionType(),
    "identities": IdentitiesConditionType(),
    "camera": CameraConditionType(),
    "depth": DepthConditionType(),
}


def judge(name: str, summary: BaseModel, record: Record, **overrides: float) -> Suitability:
    """As the caller does: the type's defaults with the recipe's overrides."""
    ctype = TYPES[name]
    unknown = set(overrides) - set(ctype.default_thresholds)
    assert not unknown, unknown
    return ctype.suitability(summary, record, {**ctype.default_thresholds, **overrides})


def _ref(name: str = "x") -> PayloadRef:
    return PayloadRef(uri=f"/{name}", media_type="application/octet-stream", bytes=0, sha256="0")


def _record(stats: ClipStats | None = None, uri: str = "/v/clip.mp4", end: float = 4.0) -> Record:
    clip = ClipRef(
        clip_id="c1", source_uri=uri, start_s=0.0, end_s=end, fps=25.0, width=512, height=288,
        num_frames=round(end * 25),
    )  # fmt: skip
    return Record(
        clip=clip, stats=stats, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r")
    )


def _stats(brightness: float = 0.5, motion: float = 0.03) -> ClipStats:
    return ClipStats(
        frames_sampled=16, mean_brightness=brightness, palette=[], motion_magnitude=motion
    )


class Sink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        (self.folder / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        return PayloadRef(
            uri=str(self.folder / name), media_type=media_type, bytes=len(data), sha256=digest
        )


# --------------------------------------------------------------------------- crafted summaries


def pose(body_keypoints: list[int], people_max: int = 1) -> PoseCondition:
    n = len(body_keypoints)
    return PoseCondition(
        model_id="p", frames=n, max_persons=people_max, timestamps_s=[i * 0.25 for i in range(n)],
        keypoints=_ref(), people_max=people_max, body_keypoints=body_keypoints,
    )  # fmt: skip


def identities(*present_cv: tuple[int, float], frames: int = 16) -> IdentitiesCondition:
    return IdentitiesCondition(
        model_ids=["m"],
        identities=[
            Identity(
                identity_id=k,
                label="person",
                frames_present=p,
                mean_area_fraction=0.1,
                crop=_ref(),
                area_cv=cv,
            )
            for k, (p, cv) in enumerate(present_cv, start=1)
        ],
        stitched_reference=_ref(),
        frames=frames,
    )


def camera(source: str = "estimated", usable: bool = True, **quality: float) -> CameraCondition:
    q = {"mean_tracks": 300.0, "inlier_ratio": 0.9, "reprojection_rms_px": 0.5}
    q["lost_fraction"] = 0.0
    q.update(quality)
    return CameraCondition(
        source=source,
        frames=40,
        labels=["static"],
        description="the camera is static",
        trajectory=_ref(),
        usable=usable,
        quality=q if source == "estimated" else {},
    )


def depth(flat: bool = False, change: float = 0.05, frames: int = 16) -> DepthCondition:
    layout = DepthLayout(
        nearest_region="bottom center", farthest_region="top center", near_fraction=0.3,
        far_fraction=0.3, foreground_fraction=0.4, mean_change=change, flat=flat,
    )  # fmt: skip
    return DepthCondition(
        model_id="d", frames=frames, timestamps_s=[0.0] * frames, normalization="clip",
        payload=_ref(), layout=layout,
    )  # fmt: skip


# Summaries (with a record) that between them take every branch of each rule.
CASES: dict[str, list[tuple[BaseModel, Record]]] = {
    "pose": [(pose([17] * 16), _record()), (pose([0] * 16, 0), _record())],
    "identities": [
        (identities((16, 0.1)), _record()),
        (identities((16, 0.1), (4, 0.9), (16, 0.1), (16, 0.1)), _record()),
        (identities(), _record()),
    ],
    "camera": [
        (camera(), _record()),
        (camera(mean_tracks=3, inlier_ratio=0.1), _record()),
        (camera(usable=False), _record()),
        (camera("realestate10k"), _record()),
        (camera("motionctrl"), _record()),
    ],
    "depth": [
        (depth(), _record(_stats())),
        (depth(), _record()),
        (depth(flat=True, change=0.0), _record(_stats(0.0, 0.0))),
        (depth(change=0.0), _record(_stats(0.5, 0.0))),
    ],
}


class Reads(Mapping[str, float]):
    """Thresholds that remember which keys a rule looked up."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self._values, self.read = dict(values), set[str]()

    def __getitem__(self, key: str) -> float:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_default_thresholds_are_exactly_the_keys_the_rule_reads(name: str) -> None:
    ctype = TYPES[name]
    defaults = ctype.default_thresholds
    assert defaults and all(isinstance(v, float) for v in defaults.values())
    for summary, record in CASES[name]:
        reads = Reads(defaults)
        verdict = ctype.suitability(summary, record, reads)
        # nothing beyond the defaults is looked up (an unknown key would raise KeyError) ...
        assert reads.read <= set(defaults)
        assert verdict.thresholds == defaults
        assert verdict.reason and verdict.reason[-1] != " "
        # ... and every default is needed: without it the rule cannot decide
        for key in defaults:
            less = {k: v for k, v in defaults.items() if k != key}
            with pytest.raises(KeyError):
                ctype.suitability(summary, record, less)


def test_every_builtin_overrides_the_rule() -> None:
    for name, ctype in TYPES.items():
        assert type(ctype).suitability is not ConditionType.suitability, name
        assert type(ctype).default_thresholds is not ConditionType.default_thresholds, name


# --------------------------------------------------------------------------- pose


def test_pose_rule_and_overrides() -> None:
    rec = _record()
    nobody = judge("pose", pose([0] * 16, 0), rec)
    assert not nobody.suitable
    assert nobody.reason == (
        "no person with confident whole-body keypoints (>= 8 of 18 body points) in any of the "
        "16 sampled frames (0%; needs >= 50%)"
    )
    assert nobody.measured["person_frames_fraction"] == 0.0 and nobody.measured["people_max"] == 0
    some = pose([17] * 10 + [5] * 6, 2)
    ok = judge("pose", some, rec)
    assert ok.suitable and "in 10 of 16 sampled frames (62%; needs >= 50%)" in ok.reason
    assert ok.measured == {
        "person_frames_fraction": 0.625, "frames_with_person": 10.0, "frames": 16.0,
        "people_max": 2.0,
    }  # fmt: skip
    stricter = judge("pose", some, rec, min_person_frames_fraction=0.75)
    assert not stricter.suitable and "only 10 of 16" in stricter.reason
    assert stricter.thresholds["min_person_frames_fraction"] == 0.75
    looser = judge("pose", some, rec, min_body_keypoints=5)
    assert looser.suitable and looser.measured["frames_with_person"] == 16


def _pose_clip(frames: np.ndarray, folder: Path) -> ClipInput:
    rec = _record()
    times = [0.25 * i for i in range(len(frames))]
    return ClipInput(rec.clip, frames, times, rec, Sink(folder))


def test_pose_annotator_measures_people_per_frame(tmp_path: Path) -> None:
    det, model = tiny_models.tiny_dwpose(tmp_path / "m")
    nobody_det = tiny_models.tiny_detector(tmp_path / "empty.onnx", boxes=())
    frames = np.random.default_rng(0).integers(0, 255, (4, 288, 512, 3), dtype=np.uint8)
    cfg = {"pose_model": str(model), "device": "cpu", "render": False}
    (someone,) = PoseAnnotator(PoseConfig(detector=str(det), **cfg))(
        [_pose_clip(frames, tmp_path / "a")]
    )
    (nobody,) = PoseAnnotator(PoseConfig(detector=str(nobody_det), **cfg))(
        [_pose_clip(frames, tmp_path / "b")]
    )
    assert isinstance(someone, dict) and isinstance(nobody, dict)
    person, empty = someone["conditions.pose"], nobody["conditions.pose"]
    # the tiny model's standing person: 18 OpenPose body points, the right ankle below 0.3
    assert person.body_keypoints == [17] * 4
    assert empty.body_keypoints == [0] * 4 and empty.people_max == 0
    assert judge("pose", person, _record()).suitable
    verdict = judge("pose", empty, _record())
    assert not verdict.suitable and "no person" in verdict.reason and "0 of" not in verdict.reason


# --------------------------------------------------------------------------- identities


def test_identities_rule_and_overrides() -> None:
    rec = _record()
    good = judge("identities", identities((16, 0.1), (10, 0.3)), rec)
    assert good.suitable
    assert good.measured == {
        "identities": 2.0, "min_presence_fraction": 0.625, "max_area_cv": 0.3, "frames": 16.0
    }  # fmt: skip
    assert "present in 62% of 16 sampled frames (needs >= 50%)" in good.reason
    crowd = judge("identities", identities(*[(16, 0.1)] * 4), rec)
    assert not crowd.suitable and "4 subjects (needs 1-3)" in crowd.reason
    fleeting = judge("identities", identities((16, 0.1), (4, 0.1)), rec)
    assert not fleeting.suitable and "present in 25% of 16" in fleeting.reason
    flicker = identities((16, 0.9))
    unstable = judge("identities", flicker, rec)
    assert not unstable.suitable and "varies by 0.90" in unstable.reason
    assert "needs <= 0.50" in unstable.reason
    assert judge("identities", flicker, rec, max_area_cv=1.0).suitable
    assert not judge("identities", identities(), rec).suitable


def test_identities_annotator_measures_mask_stability(tmp_path: Path) -> None:
    t, h, w = 4, 40, 60
    frames = np.random.default_rng(0).integers(0, 255, (t, h, w, 3), dtype=np.uint8)
    steady = np.zeros((t, h, w), bool)
    steady[:, 10:20, 10:20] = True
    growing = np.zeros((t, h, w), bool)
    growing[0, 10:20, 30:40] = True  # 100 px
    growing[1, 10:20, 30:40] = True
    growing[2, 10:30, 30:40] = True  # 200 px
    # absent in the last frame: not counted
    tracks = [
        IdentityTrack("person", steady, "mask", 0.9),
        IdentityTrack("dog", growing, "mask", 0.9),
    ]
    summary = write_identities(
        frames, [0.0, 0.5, 1.0, 1.5], tracks, (w, h), Sink(tmp_path), IdentitiesConfig(), ["m"]
    )
    cvs = [i.area_cv for i in summary.identities]
    areas = np.array([100.0, 100.0, 200.0])
    assert cvs == [0.0, round(float(areas.std() / areas.mean()), 4)]
    verdict = judge("identities", summary, _record())
    assert verdict.suitable and verdict.measured["max_area_cv"] == cvs[1]
    assert verdict.measured["min_presence_fraction"] == 0.75


# --------------------------------------------------------------------------- camera


def test_camera_rule_and_overrides() -> None:
    rec = _record()
    ok = judge("camera", camera(), rec)
    assert ok.suitable and ok.reason.startswith("the estimated trajectory is trustworthy: 300")
    assert "inlier ratio 0.90 (needs >= 0.30)" in ok.reason
    bad = judge("camera", camera(mean_tracks=12, reprojection_rms_px=2.5), rec)
    assert not bad.suitable
    assert "12 tracked points per frame (needs >= 50)" in bad.reason
    assert "reprojection RMS 2.50 px (needs <= 1.50 px)" in bad.reason
    assert "inlier ratio" not in bad.reason  # only what failed is named
    lost = judge("camera", camera(lost_fraction=0.25), rec)
    assert not lost.suitable and "lost in 25% of frames (needs <= 10%)" in lost.reason
    assert judge("camera", camera(lost_fraction=0.25), rec, max_lost_fraction=0.3).suitable
    assert not judge("camera", camera(), rec, min_inlier_ratio=0.95).suitable
    unusable = judge("camera", camera(usable=False), rec)
    assert not unusable.suitable and "unusable" in unusable.reason
    for source in ("realestate10k", "motionctrl"):
        imported = judge("camera", camera(source), rec, min_mean_tracks=1e9)
        assert imported.suitable and "imported" in imported.reason


@pytest.mark.parametrize("fmt", ["realestate10k", "motionctrl"])
def test_an_imported_trajectory_always_suits(fmt: str, tmp_path: Path) -> None:
    folder = RE10K if fmt == "realestate10k" else MOTIONCTRL
    if not folder.is_dir():
        pytest.skip(f"camera files not present at {folder}")
    cams = tmp_path / "cams"
    cams.mkdir()
    if fmt == "motionctrl":
        shutil.copy(MOTIONCTRL / "I.json", cams / "clip.json")
        start, end = 0.0, 2.0
    else:
        src = sorted(RE10K.glob("*.txt"))[0]
        shutil.copy(src, cams / "clip.txt")
        first_us = int(src.read_text().splitlines()[1].split()[0])
        start, end = first_us / 1e6, first_us / 1e6 + 2.0
    rec = _record(uri=str(tmp_path / "clip.mp4"), end=end)
    rec.clip.start_s = start
    # black frames: an imported camera does not look at them
    item = ClipInput(
        rec.clip, np.zeros((2, 16, 16, 3), np.uint8), [start, end], rec, Sink(tmp_path)
    )
    ann = CameraAnnotator(CameraConfig(source="import", import_dir=str(cams)))
    (out,) = ann([item])
    assert isinstance(out, dict), out
    cam = out["conditions.camera"]
    assert cam.source == fmt and cam.quality == {} and cam.usable
    # whatever the thresholds say about estimates
    verdict = judge("camera", cam, rec, min_mean_tracks=1e9, min_inlier_ratio=1.0)
    assert verdict.suitable and verdict.measured == {"frames": float(cam.frames)}


@pytest.mark.parametrize("motion", ["pan_right", "dolly_in"])
def test_estimates_of_a_moving_camera_report_their_quality(motion: str, tmp_path: Path) -> None:
    clip = render_clip(motion, seconds=1.5)
    rec = _record(end=1.5)
    (out,) = CameraAnnotator()(
        [ClipInput(rec.clip, clip.frames, list(clip.truth.timestamps_s), rec, Sink(tmp_path))]
    )
    assert isinstance(out, dict), out
    cam = out["conditions.camera"]
    assert cam.labels[0] == motion and cam.usable
    # rotation-only frames (pan) and frames located against the map (dolly) alike
    assert cam.quality["inlier_ratio"] > 0.95 and 0 < cam.quality["reprojection_rms_px"] < 1.0
    assert judge("camera", cam, rec).suitable
    reported = float(out[PROVENANCE_KEY]["estimator_inlier_ratio"])
    assert reported == pytest.approx(cam.quality["inlier_ratio"], abs=1e-3)


def test_blank_frames_are_untrackable_and_one_frame_is_an_error(tmp_path: Path) -> None:
    black = np.zeros((6, 64, 96, 3), np.uint8)
    with pytest.raises(UntrackableError, match="textureless"):
        estimate_with_report(black, np.arange(6) * 0.2)
    rec = _record()
    ann = CameraAnnotator()
    blank, single = ann(
        [
            ClipInput(rec.clip, black, list(np.arange(6) * 0.2), rec, Sink(tmp_path / "a")),
            ClipInput(rec.clip, black[:1], [0.0], rec, Sink(tmp_path / "b")),
        ]
    )
    assert isinstance(single, EstimationError) and not isinstance(single, UntrackableError)
    assert isinstance(blank, dict)
    cam = blank["conditions.camera"]
    assert not cam.usable and cam.frames == 6 and cam.labels == ["static"]
    assert cam.quality["mean_tracks"] == 0 and cam.quality["lost_fraction"] == 1.0
    assert "could not be measured" in cam.description
    facts = CameraConditionType().grounding_facts(cam, rec)
    assert facts == ["Camera motion could not be measured from the video (too little to track)."]
    assert "textureless" in blank[PROVENANCE_KEY]["estimator_error"]


# --------------------------------------------------------------------------- depth


def test_depth_rule_and_overrides() -> None:
    ok = judge("depth", depth(), _record(_stats()))
    assert ok.suitable and ok.reason.startswith("the clip is not degenerate: mean brightness 0.500")
    assert ok.measured == {
        "mean_brightness": 0.5, "motion_magnitude": 0.03, "depth_mean_change": 0.05, "flat": 0.0
    }  # fmt: skip
    dark = judge("depth", depth(), _record(_stats(brightness=0.01)))
    assert not dark.suitable and "black (mean brightness 0.010 < 0.020)" in dark.reason
    assert judge(
        "depth", depth(), _record(_stats(brightness=0.01)), min_mean_brightness=0.005
    ).suitable
    flat = judge("depth", depth(flat=True), _record(_stats()))
    assert not flat.suitable and "flat" in flat.reason
    frozen = judge("depth", depth(change=0.0005), _record(_stats(motion=0.0002)))
    assert (
        not frozen.suitable
        and "frozen (pixel motion 0.0002 < 0.0010, depth change" in frozen.reason
    )
    # a static shot whose pixels still change is not frozen, nor one whose depth changes
    assert judge("depth", depth(change=0.0005), _record(_stats(motion=0.01))).suitable
    assert judge("depth", depth(change=0.01), _record(_stats(motion=0.0))).suitable
    # without clip statistics only the depth maps are judged
    assert judge("depth", depth(), _record()).suitable
    assert not judge("depth", depth(change=0.0), _record()).suitable


# --------------------------------------------------------------------------- whole clips


def _black_clip(path: Path, seconds: float = 2.0, fps: int = 10) -> Path:
    n = round(seconds * fps)
    images = [np.zeros((120, 160, 3), np.uint8)] * n
    return media._encode(
        path, images, list(range(n)), Fraction(1, fps), Fraction(fps), media.DEFAULT_CODEC,
        "yuv420p", 12,
    )  # fmt: skip


def _recipe(depth_model: Path | None) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [
        {"annotator": "clip_stats", "sampling": {"num_frames": 8, "max_side": 128}},
        {
            "annotator": "camera",
            "params": {"source": "estimate"},
            "sampling": {"num_frames": None, "fps": 5.0, "max_frames": 96, "max_side": 480},
        },
    ]
    if depth_model is not None:
        stages.append(
            {
                "annotator": "depth",
                "params": {"model": str(depth_model)},
                "sampling": {"num_frames": 4, "max_side": 128},
            }
        )
    return {
        "name": "suitability",
        "spans": {"mode": "whole", "min_len_s": 0.5, "max_len_s": 30.0},
        "stages": stages,
    }


def _build(recipe: dict[str, Any], source: Path, out: Path) -> list[Record]:
    resolved = resolve_recipe(recipe, REGISTRY)
    report = run_build(resolved, list_sources(str(source)), str(out), executor="local")
    assert report.failed == 0, report
    return list(RunDir(str(out)).records())


def _verdicts(record: Record) -> dict[str, Suitability]:
    out: dict[str, Suitability] = {}
    for name in record.conditions.present():
        summary = TYPES[name].read(record)
        assert summary is not None
        out[name] = judge(name, summary, record)
    return out


def test_a_black_clip_suits_nothing(tmp_path: Path) -> None:
    clip = _black_clip(tmp_path / "black.mp4")
    model = tiny_models.tiny_depth_model(tmp_path / "depth-model")
    (record,) = _build(_recipe(model), clip, tmp_path / "run")
    assert record.stats is not None and record.stats.mean_brightness < 0.02
    assert sorted(record.conditions.present()) == ["camera", "depth"]
    assert record.conditions.camera is not None and not record.conditions.camera.usable
    verdicts = _verdicts(record)
    assert all(not v.suitable for v in verdicts.values()), verdicts
    assert "black" in verdicts["depth"].reason
    assert "unusable" in verdicts["camera"].reason
    stage = next(s for s in record.provenance.stages if s.stage == "camera")
    assert "textureless" in stage.details["estimator_error"]


def test_a_demo_clip_suits_camera(demo_clips: Path, tmp_path: Path) -> None:
    (record,) = _build(_recipe(None), demo_clips / "dog.mp4", tmp_path / "run")
    cam = record.conditions.camera
    assert cam is not None and cam.usable and cam.labels == ["static"]
    assert set(cam.quality) == {
        "mean_tracks",
        "inlier_ratio",
        "reprojection_rms_px",
        "lost_fraction",
    }
    verdict = _verdicts(record)["camera"]
    assert verdict.suitable, verdict.reason
    assert verdict.measured["mean_tracks"] > 100 and verdict.measured["lost_fraction"] == 0.0
    assert not judge("camera", cam, record, max_reprojection_rms_px=0.01).suitable
