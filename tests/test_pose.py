"""The pose condition: the DWPose ONNX runner on tiny graphs with DWPose's signatures (decoded
boxes and keypoints known exactly), the OpenPose conversion, tracking, controlnet_aux-style
rendering, activity facts, prompt rules, model errors and recipe builds."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

import any2capins.annotators
from any2capins.annotators import ClipInput, MissingDependency
from any2capins.annotators._media import decode_mp4
from any2capins.annotators._onnx import open_model
from any2capins.annotators.pose import (
    DEFAULT_DETECTOR,
    ENV_DETECTOR,
    ENV_POSE_MODEL,
    PoseAnnotator,
    PoseConditionType,
    PoseConfig,
    activity_facts,
    draw_pose,
    measure_activity,
    posture,
    track_boxes,
    wholebody_to_openpose,
)
from any2capins.annotators.pose._draw import BODY_COLORS, hand_edge_color
from any2capins.annotators.pose._keypoints import select_tracks
from any2capins.annotators.pose._runner import decode_simcc, detect_people, estimate_poses
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import load_recipe_file, resolve_recipe
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import ClipRef, PayloadRef, PoseCondition, Provenance, Record
from tests import tiny_models
from tests.tiny_models import crop_to_image, standing_person

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "workflows" / "recipes" / "pose.yaml"
REGISTRY: dict[str, type[any2capins.annotators.Annotator]] = {
    **any2capins.annotators.BUILTIN_ANNOTATORS,
    "pose": PoseAnnotator,
}
CPU = ["CPUExecutionProvider"]

# COCO-WholeBody -> OpenPose body slots, written out from the two keypoint definitions.
COCO_FOR_OPENPOSE_BODY = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16,
                          11: 11, 12: 13, 13: 15, 14: 2, 15: 1, 16: 4, 17: 3}  # fmt: skip


@pytest.fixture(scope="module")
def dwpose(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_models.tiny_dwpose(tmp_path_factory.mktemp("tiny-dwpose"))


@pytest.fixture(scope="module")
def annotator(dwpose: tuple[Path, Path]) -> PoseAnnotator:
    det, pose = dwpose
    return PoseAnnotator(PoseConfig(detector=str(det), pose_model=str(pose), device="cpu"))


class DirSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        (self.folder / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        return PayloadRef(
            uri=str(self.folder / name), media_type=media_type, bytes=len(data), sha256=digest
        )


def clip_input(frames: np.ndarray, folder: Path) -> ClipInput:
    h, w = frames.shape[1:3]
    clip = ClipRef(
        clip_id=folder.name, source_uri="mem://x", start_s=0, end_s=4, fps=25, width=w,
        height=h, num_frames=100,
    )  # fmt: skip
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    times = [0.25 + 0.5 * i for i in range(len(frames))]
    return ClipInput(clip, frames, times, record, DirSink(folder))


def noise(n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- tiny graphs


def test_tiny_graphs_have_dwpose_signatures(dwpose: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    det = ort.InferenceSession(str(dwpose[0]), providers=CPU)
    assert det.get_inputs()[0].shape == [1, 3, 640, 640]
    assert [o.shape for o in det.get_outputs()] == [[1, 8400, 85]]
    pose = ort.InferenceSession(str(dwpose[1]), providers=CPU)
    assert pose.get_inputs()[0].shape == [1, 3, 384, 288]
    assert {o.name: o.shape for o in pose.get_outputs()} == {
        "simcc_x": [1, 133, 576],
        "simcc_y": [1, 133, 768],
    }


# --------------------------------------------------------------------------- runner


def test_detector_decoding_letterbox_nms_and_filters(tmp_path: Path) -> None:
    boxes = [
        (100.0, 80.0, 260.0, 400.0),  # kept
        (110.0, 90.0, 270.0, 410.0),  # IoU ~0.85 with the first, lower score: suppressed
        (400.0, 100.0, 520.0, 300.0),  # kept
        (40.0, 300.0, 90.0, 420.0),  # score 0.2 < 0.3: dropped
    ]
    path = tiny_models.tiny_detector(tmp_path / "det.onnx", boxes, [0.9, 0.8, 0.6, 0.2])
    model = open_model(path, CPU, None, "det")
    frame = noise(1, 360, 512)[0]  # letterboxed by 1.25 into 640x450
    ((found, scores),) = detect_people(model, [frame])
    expected = np.array([boxes[0], boxes[2]]) / 1.25
    assert np.allclose(found, expected, atol=1e-3)
    assert np.allclose(scores, [0.9, 0.6], atol=1e-6)


def test_non_person_classes_are_ignored(tmp_path: Path) -> None:
    rows = tiny_models.detector_output([(100.0, 100.0, 300.0, 400.0)])
    rows[rows[:, 4] > 0, 5] = 0.0
    rows[rows[:, 4] > 0, 5 + 16] = 1.0  # a dog
    path = tiny_models._constant_graph(
        tmp_path / "d.onnx", (3, 640, 640), {"output": rows}, False, "d"
    )
    ((found, _),) = detect_people(open_model(path, CPU, None, "det"), [noise(1, 640, 640)[0]])
    assert found.shape == (0, 4)


def test_simcc_decoding_takes_the_smaller_maximum() -> None:
    sx = np.zeros((1, 2, 576), np.float32)
    sy = np.zeros((1, 2, 768), np.float32)
    sx[0, 0, 100], sy[0, 0, 300] = 0.7, 0.9
    sx[0, 1, 10], sy[0, 1, 20] = 0.0, 0.0  # no response: location -1 / 2
    locs, scores = decode_simcc(sx, sy)
    assert locs[0, 0].tolist() == [50.0, 150.0] and scores[0, 0] == pytest.approx(0.7)
    assert locs[0, 1].tolist() == [-0.5, -0.5] and scores[0, 1] == 0.0


def test_keypoints_land_where_the_top_down_crop_puts_them(
    dwpose: tuple[Path, Path], tmp_path: Path
) -> None:
    pose = open_model(dwpose[1], CPU, None, "pose")
    points, scores = standing_person()
    boxes = [np.array([[60.0, 40.0, 252.0, 296.0], [300.0, 10.0, 340.0, 200.0]])]
    ((kp, sc),) = estimate_poses(pose, [noise(1, 320, 480)[0]], boxes)
    for i, box in enumerate(boxes[0]):
        assert np.allclose(kp[i], crop_to_image(points, tuple(box)), atol=1e-6)
        assert np.allclose(sc[i], scores, atol=1e-6)  # min of x/y peaks, not their max or mean


def test_dynamic_batch_models_give_the_same_results(tmp_path: Path) -> None:
    fixed = tiny_models.tiny_dwpose(tmp_path / "fixed")
    dynamic = tiny_models.tiny_dwpose(tmp_path / "dynamic", dynamic_batch=True)
    frames = list(noise(10, 288, 512))  # more than MAX_BATCH: chunked forward passes
    results = []
    for det_path, pose_path in (fixed, dynamic):
        det = open_model(det_path, CPU, None, "det")
        pose = open_model(pose_path, CPU, None, "pose")
        found = detect_people(det, frames)
        results.append((found, estimate_poses(pose, frames, [b for b, _ in found])))
    assert open_model(dynamic[0], CPU, None, "det").fixed_batch is None
    for (b1, s1), (b2, s2) in zip(results[0][0], results[1][0], strict=True):
        assert np.array_equal(b1, b2) and np.array_equal(s1, s2)
    for (k1, c1), (k2, c2) in zip(results[0][1], results[1][1], strict=True):
        assert np.array_equal(k1, k2) and np.array_equal(c1, c2)


# --------------------------------------------------------------------------- conventions


def test_wholebody_to_openpose_order_neck_and_tail() -> None:
    kp = np.zeros((1, 133, 2))
    kp[0, :, 0] = np.arange(133)  # x = COCO index, so every slot says where it came from
    kp[0, :, 1] = 7.0
    sc = np.full((1, 133), 0.9)
    sc[0, 6] = 0.2  # right shoulder unsure: the neck is not confident
    op, ops = wholebody_to_openpose(kp, sc)
    assert op.shape == (1, 134, 2) and ops.shape == (1, 134)
    for slot, coco in COCO_FOR_OPENPOSE_BODY.items():
        assert op[0, slot, 0] == coco
        assert ops[0, slot] == sc[0, coco]
    assert op[0, 1].tolist() == [5.5, 7.0]  # neck: mean of the shoulders
    assert ops[0, 1] == 0.0
    assert op[0, 18:, 0].tolist() == list(range(17, 133))  # feet, face, hands keep their order
    sc[0, 6] = 0.9
    assert wholebody_to_openpose(kp, sc)[1][0, 1] == 1.0


def test_annotator_end_to_end_keypoints_scores_and_masks(
    annotator: PoseAnnotator, tmp_path: Path
) -> None:
    frames = noise(4, 288, 512)
    (out,) = annotator([clip_input(frames, tmp_path / "c")])
    assert isinstance(out, dict)
    summary = out["conditions.pose"]
    assert isinstance(summary, PoseCondition)
    assert summary.frames == 4 and summary.max_persons == 1 and summary.people_max == 1
    arrays = PoseConditionType().decode_payload(summary, read_payload)
    assert arrays["keypoints"].shape == (4, 1, 134, 2) and arrays["scores"].shape == (4, 1, 134)
    assert arrays["person_ids"].tolist() == [0] and arrays["frame_size"].tolist() == [512, 288]
    assert arrays["rendering"].shape == (4, 288, 512, 3)
    # expected: the tiny detector's box (640 input) mapped back by the 1.25 letterbox ratio
    box = np.array([224.0, 64.0, 416.0, 320.0]) / 1.25
    assert np.allclose(arrays["boxes"][0, 0], box / [512, 288, 512, 288], atol=1e-5)
    points, scores = standing_person()
    coco = crop_to_image(points, tuple(box))
    expected, expected_scores = wholebody_to_openpose(coco[None], scores[None])
    norm = expected[0] / [512, 288]
    kp, sc = arrays["keypoints"][2, 0], arrays["scores"][2, 0]
    visible = expected_scores[0] >= 0.3
    assert np.allclose(kp[visible], norm[visible], atol=1e-5)
    assert np.allclose(sc, expected_scores[0], atol=1e-6)
    assert kp[10].tolist() == [-1.0, -1.0]  # right ankle scored 0.2
    assert kp[24].tolist() == [-1.0, -1.0]  # first face point scored 0.1
    assert int((~visible).sum()) == 2
    facts = PoseConditionType().grounding_facts(summary, clip_input(frames, tmp_path / "r").record)
    assert facts[0].startswith("Pose: up to 1 person visible at once")
    assert any("appears to be standing" in f for f in facts)


def test_two_people_keep_their_ids_and_render(dwpose: tuple[Path, Path], tmp_path: Path) -> None:
    det = tiny_models.tiny_detector(
        tmp_path / "two.onnx", [(40.0, 60.0, 200.0, 340.0), (420.0, 50.0, 600.0, 350.0)], [0.7, 0.9]
    )
    ann = PoseAnnotator(PoseConfig(detector=str(det), pose_model=str(dwpose[1])))
    (out,) = ann([clip_input(noise(3, 360, 640), tmp_path / "c")])
    assert isinstance(out, dict)
    summary = out["conditions.pose"]
    arrays = PoseConditionType().decode_payload(summary, read_payload)
    boxes = arrays["boxes"]
    assert boxes.shape == (3, 2, 4)
    # the higher-scoring right box is found first and keeps id 0 in every frame
    assert np.allclose(boxes[:, 0, 0], 420 / 640) and np.allclose(boxes[:, 1, 0], 40 / 640)
    assert summary.people_max == 2 and [a.position for a in summary.activity] == ["right", "left"]
    frame = arrays["rendering"][0]
    assert frame[:, 320:].sum() > 0 and frame[:, :320].sum() > 0


def test_a_bad_clip_fails_alone(annotator: PoseAnnotator, tmp_path: Path) -> None:
    good = clip_input(noise(2, 288, 512), tmp_path / "good")
    bad = clip_input(noise(2, 288, 512), tmp_path / "bad")
    bad.frames = bad.frames[..., :2]
    out = annotator([good, bad])
    assert isinstance(out[0], dict)
    assert isinstance(out[1], ValueError) and "expected frames" in str(out[1])


# --------------------------------------------------------------------------- tracking


def test_tracking_keeps_ids_through_motion_and_gaps() -> None:
    a = [np.array([10.0 + 8 * f, 10, 60 + 8 * f, 110]) for f in range(6)]
    b = np.array([200.0, 20, 260, 140])
    frames = [
        np.stack([a[0], b]),
        np.stack([b, a[1]]),  # detection order swaps
        np.stack([a[2]]),  # b missed for one frame
        np.stack([a[3], b]),
        np.stack([b]),
        np.stack([a[5], b, np.array([400.0, 0, 440, 60])]),  # a newcomer
    ]
    tracks = track_boxes(frames, iou_threshold=0.3, max_gap=2)
    assert tracks == [
        {0: 0, 1: 1, 2: 0, 3: 0, 5: 0},
        {0: 1, 1: 0, 3: 1, 4: 0, 5: 1},
        {5: 2},
    ]
    assert select_tracks(tracks, frames, 2) == tracks[:2]
    assert len(track_boxes(frames, max_gap=0)) > 3  # without gap tolerance ids break


# --------------------------------------------------------------------------- rendering


def _pose(
    points: Mapping[int, tuple[float, float]], w: int, h: int
) -> tuple[np.ndarray, np.ndarray]:
    kp = np.full((1, 134, 2), -1.0, np.float32)
    sc = np.zeros((1, 134), np.float32)
    for idx, (x, y) in points.items():
        kp[0, idx] = (x / w, y / h)
        sc[0, idx] = 0.9
    return kp, sc


def test_rendering_colours_widths_and_radii() -> None:
    w, h = 200, 200
    kp, sc = _pose(
        {1: (100, 100), 2: (60, 100), 92: (150, 150), 97: (180, 150), 24: (30, 30)}, w, h
    )
    sc[0, 3] = 0.2  # a masked elbow (coordinates kept) is not drawn
    kp[0, 3] = (20 / w, 180 / h)
    img = draw_pose(kp, sc, h, w)
    assert tuple(img[100, 80]) == (153, 0, 0)  # limb neck-right shoulder, red at 60%
    assert tuple(img[103, 80]) == (153, 0, 0) and tuple(img[106, 80]) == (0, 0, 0)  # width 4
    assert tuple(img[100, 100]) == BODY_COLORS[1]  # joints in full colour on top
    assert tuple(img[100, 60]) == BODY_COLORS[2]
    assert tuple(img[100, 96]) == BODY_COLORS[1] and tuple(img[100, 94]) == (153, 0, 0)
    assert img[170:190, 10:30].sum() == 0  # the masked elbow
    # hand bone 4 (wrist -> index base) hue 4/20, 2 px wide; joints blue, radius 4
    edge = tuple(round(c) for c in hand_edge_color(4))
    assert edge == (204, 255, 0) and tuple(img[150, 165]) == edge
    assert tuple(img[150, 150]) == (0, 0, 255) and tuple(img[150, 184]) == (0, 0, 255)
    assert tuple(img[150, 186]) == (0, 0, 0)
    # face dots white, radius 3
    assert tuple(img[30, 30]) == (255, 255, 255) and tuple(img[33, 30]) == (255, 255, 255)
    assert tuple(img[34, 30]) == (0, 0, 0)


def test_points_on_the_left_or_top_edge_follow_controlnet_aux() -> None:
    # controlnet_aux skips hand/face points whose integer pixel is 0, but draws body joints
    kp, sc = _pose({24: (0.4, 50), 0: (0.4, 50)}, 100, 100)
    img = draw_pose(kp, sc, 100, 100)
    assert tuple(img[50, 0]) == BODY_COLORS[0]
    kp, sc = _pose({24: (0.4, 50)}, 100, 100)
    assert draw_pose(kp, sc, 100, 100).sum() == 0


def test_rendering_of_a_fixed_pose_is_stable() -> None:
    """The standing person at 512x288 (pixel-identical to controlnet_aux 0.0.10's draw_pose
    when checked against it; this hash guards that result)."""
    points, scores = standing_person()
    box = (179.2, 51.2, 332.8, 256.0)
    op, ops = wholebody_to_openpose(crop_to_image(points, box)[None], scores[None])
    from any2capins.annotators.pose import normalize_and_mask

    img = draw_pose(normalize_and_mask(op, ops, 512, 288), ops, 288, 512)
    digest = hashlib.sha256(img.tobytes()).hexdigest()
    assert digest == RENDER_SHA256, digest


# sha256 of the RGB canvas, computed with controlnet_aux 0.0.10 util.py (draw_bodypose,
# draw_handpose, draw_facepose) after its DWposeDetector post-processing, on the same points.
RENDER_SHA256 = "ca409e3d660436030eb5b3ba48e5eaeae78698e47955e93741afeb81462bb7cc"


def test_draw_pose_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="134"):
        draw_pose(np.zeros((1, 133, 2)), np.zeros((1, 133)), 10, 10)


# --------------------------------------------------------------------------- facts and rules


def _body(points: Mapping[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    body = np.zeros((18, 2))
    ok = np.zeros(18, bool)
    for i, xy in points.items():
        body[i], ok[i] = xy, True
    return body, ok


def test_posture_rules() -> None:
    standing = {1: (100, 50), 8: (90, 150), 11: (110, 150), 9: (90, 220), 12: (110, 220),
                10: (90, 290), 13: (110, 290)}  # fmt: skip
    sitting = {1: (100, 50), 8: (90, 150), 11: (110, 150), 9: (170, 160), 12: (190, 160),
               10: (170, 230), 13: (190, 230)}  # fmt: skip
    lying = {1: (50, 100), 8: (150, 110), 11: (150, 95), 9: (220, 110), 12: (220, 95)}
    assert posture(*_body(standing)) == "standing"
    assert posture(*_body(sitting)) == "sitting"
    assert posture(*_body(lying)) == "lying"
    assert posture(*_body({0: (10, 10), 1: (10, 30)})) == "unknown"


def test_activity_measures_raised_arms_and_limb_motion() -> None:
    f, w, h = 6, 400, 300
    kp = np.full((f, 1, 134, 2), -1.0, np.float32)
    sc = np.zeros((f, 1, 134), np.float32)
    base = {1: (200, 80), 2: (180, 80), 5: (220, 80), 3: (170, 120), 6: (230, 120),
            8: (190, 160), 11: (210, 160), 9: (190, 220), 12: (210, 220), 10: (190, 280),
            13: (210, 280), 0: (200, 60)}  # fmt: skip
    for t in range(f):
        pts = dict(base)
        pts[4] = (160, 40 + 60 * (t % 2))  # right wrist waves above/below the shoulder line
        pts[7] = (240, 150)
        for i, (x, y) in pts.items():
            kp[t, 0, i] = (x / w, y / h)
            sc[t, 0, i] = 0.9
    people_max, typical, (person,) = measure_activity(kp, sc, w, h)
    assert (people_max, typical) == (1, 1)
    assert person.position == "center" and person.posture == "standing"
    assert person.arm_raised_frames == {"right": 3, "left": 0}
    assert person.arm_seen_frames == {"right": 6, "left": 6}
    assert max(person.limb_motion, key=lambda k: person.limb_motion[k]) == "right arm"
    assert person.limb_motion["left leg"] == 0.0
    facts = activity_facts(f, people_max, typical, [person])
    assert "right wrist above the shoulder in 3 of 6 frames" in " ".join(facts)
    assert "most moving limbs" in facts[-1] and "right arm" in facts[-1]
    assert activity_facts(4, 0, 0, []) == [
        "Pose: no person is detected in any of the 4 sampled frames."
    ]


def test_short_prompt_rules_and_violations() -> None:
    ct = PoseConditionType()
    ref = PayloadRef(uri="/x", media_type="application/x-npz", bytes=1, sha256="0" * 64)
    summary = PoseCondition(model_id="m", frames=8, max_persons=1, timestamps_s=[], keypoints=ref)
    clip = ClipRef(
        clip_id="c", source_uri="x", start_s=0, end_s=4, fps=25, width=64, height=48, num_frames=100
    )
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    rules = ct.short_prompt_rules(summary, record)
    assert any("do not describe postures" in r for r in rules)
    (v,) = ct.short_prompt_violations(
        "A man raises his left arm and kneels by a dog, arms outstretched.", summary, record
    )
    for phrase in ("raises his left arm", "kneels", "arms outstretched"):
        assert repr(phrase) in v
    (v,) = ct.short_prompt_violations("She holds a cup in her right hand.", summary, record)
    assert "'right hand'" in v
    assert ct.short_prompt_violations("A man plays with his dog in a park.", summary, record) == []


# --------------------------------------------------------------------------- model errors


def test_missing_files_are_clear_errors(
    tmp_path: Path, dwpose: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "yolox_l.onnx"
    with pytest.raises(MissingDependency) as err:
        PoseAnnotator(PoseConfig(detector=str(missing), pose_model=str(dwpose[1])))
    assert str(missing) in str(err.value) and ENV_DETECTOR in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingDependency) as err:
        PoseAnnotator(PoseConfig(detector=str(dwpose[0])))
    text = str(err.value)
    assert "yzd-v/DWPose:dw-ll_ucoco_384.onnx" in text
    assert "hf download yzd-v/DWPose dw-ll_ucoco_384.onnx" in text and ENV_POSE_MODEL in text


def test_a_file_that_is_not_a_model_or_has_the_wrong_outputs(
    tmp_path: Path, dwpose: tuple[Path, Path]
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx graph")
    with pytest.raises(MissingDependency, match="cannot be loaded by onnxruntime"):
        PoseAnnotator(PoseConfig(detector=str(junk), pose_model=str(dwpose[1])))
    # a detector passed as the pose model: one output, not SimCC's two
    with pytest.raises(ValueError, match="SimCC"):
        PoseAnnotator(PoseConfig(detector=str(dwpose[0]), pose_model=str(dwpose[0])))


def test_env_vars_override_the_recipe(
    monkeypatch: pytest.MonkeyPatch, dwpose: tuple[Path, Path]
) -> None:
    data = load_recipe_file(RECIPE)
    before = resolve_recipe(data, REGISTRY).stages[-1]
    assert before.config.detector == DEFAULT_DETECTOR  # type: ignore[attr-defined]
    monkeypatch.setenv(ENV_DETECTOR, str(dwpose[0]))
    monkeypatch.setenv(ENV_POSE_MODEL, str(dwpose[1]))
    after = resolve_recipe(data, REGISTRY).stages[-1]
    assert after.config.pose_model == str(dwpose[1])  # type: ignore[attr-defined]
    assert after.config_hash != before.config_hash


# --------------------------------------------------------------------------- builds


def test_pose_recipe_builds_the_demo_clips(
    demo_clips: Path, dwpose: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DETECTOR, str(dwpose[0]))
    monkeypatch.setenv(ENV_POSE_MODEL, str(dwpose[1]))
    resolved = resolve_recipe(load_recipe_file(RECIPE), REGISTRY)
    sources = list_sources(str(demo_clips))
    out = tmp_path / "run"
    report = run_build(resolved, sources, str(out), executor="local")
    assert report.failed == 0 and report.records_ok == len(sources)
    for record in RunDir(str(out)).records():
        summary = record.conditions.pose
        assert summary is not None and summary.frames == 16 and summary.max_persons == 1
        with np.load(io.BytesIO(read_payload(summary.keypoints))) as npz:
            assert npz["keypoints"].shape == (16, 1, 134, 2)
            assert npz["keypoints"].dtype == np.float32
        assert summary.rendering is not None
        video = decode_mp4(read_payload(summary.rendering))
        assert video.shape[0] == 16 and max(video.shape[1:3]) == 512
        stage = next(s for s in record.provenance.stages if s.stage == "pose")
        assert [m.license for m in stage.models] == ["Apache-2.0", "Apache-2.0"]


@pytest.mark.slow
def test_depth_and_pose_stages_run_on_ray(
    ray_session: None, demo_clips: Path, dwpose: tuple[Path, Path], tmp_path: Path
) -> None:
    from any2capins.annotators.depth import DepthAnnotator

    depth_model = tiny_models.tiny_depth_model(tmp_path / "depth")
    recipe = {
        "name": "depth+pose",
        "stages": [
            {
                "annotator": "depth",
                "params": {"model": str(depth_model)},
                "sampling": {"num_frames": 6, "max_side": 256},
                "resources": {"num_cpus": 0.5, "batch_size": 1},
            },
            {
                "annotator": "pose",
                "params": {"detector": str(dwpose[0]), "pose_model": str(dwpose[1])},
                "sampling": {"num_frames": 6, "max_side": 256},
                "resources": {"num_cpus": 0.5, "batch_size": 1},
            },
        ],
    }
    resolved = resolve_recipe(recipe, {**REGISTRY, "depth": DepthAnnotator})
    sources = list_sources(str(demo_clips / "bedroom.mp4"))
    report = run_build(resolved, sources, str(tmp_path / "run"), executor="ray")
    assert report.failed == 0 and report.records_ok == 1
    (record,) = list(RunDir(str(tmp_path / "run")).records())
    assert record.conditions.present() == ["depth", "pose"]
    node = {s.stage: s.node for s in record.provenance.stages}
    assert node["depth"] and node["pose"]  # Ray node ids: the stages ran in actors
