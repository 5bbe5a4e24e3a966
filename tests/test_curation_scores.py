"""Curation scores: each stage on crafted clips (static, panning, blurred, black, burnt-in
text, two shots), the aesthetic predictor through its real loading code with a tiny CLIP,
missing weights at preflight, scores of several stages side by side in ``record.scores``,
and one ``any2cap build`` of all the score stages on demo clips."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import any2capins.annotators
from any2capins.annotators import ClipInput, FrameSampling, MissingDependency
from any2capins.annotators import model_catalog as catalog
from any2capins.annotators.curation import (
    AESTHETIC_SCORES,
    CURATION_ANNOTATORS,
    SCORE_STAGES,
    AestheticsAnnotator,
    AestheticsConfig,
    CutsAnnotator,
    CutsConfig,
    MotionAnnotator,
    MotionConfig,
    QualityAnnotator,
    QualityConfig,
    TextOverlayAnnotator,
    TextOverlayConfig,
    cut_times,
    motion_scores,
    quality_scores,
)
from any2capins.pipeline.engine import apply_output
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.video import probe_video, sample_frames
from any2capins.schemas import ClipRef, ModelInfo, Provenance, Record, StageProvenance
from tests import media, tiny_models

W, H, N, FPS = 320, 180, 48, 24  # 2 s clips

ALL_SCORES = {
    "motion_mean",
    "motion_fraction",
    "sharpness",
    "luma_mean",
    "clipped_fraction",
    "black_fraction",
    "white_fraction",
    "flat_fraction",
    "frozen_fraction",
    "text_fraction",
    "aesthetic",
    "cuts",
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crafted")
    static = media.pan_frames(N, W, H, 0.0)
    frames = {
        "static": static,
        "panning": media.pan_frames(N, W, H, 4.0),
        "blurred": media.blurred(static),
        "black": [np.zeros((H, W, 3), np.uint8)] * N,
        "plain": media.pan_frames(N, 640, 360, 0.0, seed=3),
        "text": media.with_text(media.pan_frames(N, 640, 360, 0.0, seed=3)),
        "one_shot": media.pan_frames(N, W, H, 1.0, seed=0),
        "two_shots": media.pan_frames(N // 2, W, H, 1.0, seed=0)
        + media.pan_frames(N // 2, W, H, 1.0, seed=7),
    }
    return {k: media.make_frames_video(folder / f"{k}.mp4", v, FPS) for k, v in frames.items()}


def decode(path: Path, sampling: FrameSampling) -> tuple[np.ndarray, list[float]]:
    """The frames the engine would hand the stage (same reader, same sampling)."""
    info = probe_video(str(path), str(path))
    sampled = sample_frames(str(path), info, 0.0, info.duration_s, sampling)
    return sampled.frames, list(sampled.timestamps_s)


def clip_input(path: Path, sampling: FrameSampling) -> ClipInput:
    frames, times = decode(path, sampling)
    ref = ClipRef(
        clip_id=path.stem,
        source_uri=str(path),
        start_s=0.0,
        end_s=times[-1] + 1 / FPS,
        fps=FPS,
        width=frames.shape[2],
        height=frames.shape[1],
        num_frames=len(times),
    )
    return ClipInput(
        ref,
        frames,
        times,
        Record(clip=ref, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r")),
        None,  # type: ignore[arg-type]  # the score stages write no payload files
    )


# --------------------------------------------------------------------------- cheap CPU scores


def test_motion_separates_static_from_panning(clips: dict[str, Path]) -> None:
    sampling = MotionAnnotator.default_sampling
    cfg = MotionConfig()
    static = motion_scores(*decode(clips["static"], sampling), cfg)
    pan = motion_scores(*decode(clips["panning"], sampling), cfg)
    assert static["motion_fraction"] < 0.01 and static["motion_mean"] < 0.002
    assert pan["motion_fraction"] > 0.9
    # 4 px per frame at 24 fps over a 320x180 frame: 96 px/s / 367 px diagonal = 0.26 /s
    assert pan["motion_mean"] == pytest.approx(96 / math.hypot(W, H), rel=0.15)


def test_motion_does_not_depend_on_the_frame_size(clips: dict[str, Path]) -> None:
    cfg = MotionConfig()
    small = motion_scores(
        *decode(clips["panning"], FrameSampling(num_frames=None, fps=4, max_side=160)), cfg
    )
    large = motion_scores(
        *decode(clips["panning"], FrameSampling(num_frames=None, fps=8, max_side=320)), cfg
    )
    assert small["motion_mean"] == pytest.approx(large["motion_mean"], rel=0.15)


def test_blur_lowers_sharpness(clips: dict[str, Path]) -> None:
    cfg = QualityConfig()
    sampling = QualityAnnotator.default_sampling
    sharp = quality_scores(decode(clips["static"], sampling)[0], cfg)
    soft = quality_scores(decode(clips["blurred"], sampling)[0], cfg)
    assert soft["sharpness"] < 0.5 * sharp["sharpness"]
    assert sharp["black_fraction"] == 0 and sharp["flat_fraction"] == 0
    assert 0.3 < sharp["luma_mean"] < 0.8 and sharp["clipped_fraction"] < 0.01
    # a synthetic static shot repeats the same picture: frozen
    assert sharp["frozen_fraction"] > 0.8


def test_black_clip_is_black_flat_and_clipped(clips: dict[str, Path]) -> None:
    cfg = QualityConfig()
    black = quality_scores(decode(clips["black"], QualityAnnotator.default_sampling)[0], cfg)
    assert black["black_fraction"] == 1.0 and black["luma_mean"] < 0.01
    assert black["flat_fraction"] == 1.0 and black["white_fraction"] == 0.0
    assert black["clipped_fraction"] > 0.99 and black["sharpness"] < 1.0
    pan = quality_scores(decode(clips["panning"], QualityAnnotator.default_sampling)[0], cfg)
    assert pan["frozen_fraction"] == 0.0


def test_white_frames_and_a_single_frame() -> None:
    cfg = QualityConfig()
    white = quality_scores(np.full((3, 32, 48, 3), 255, np.uint8), cfg)
    assert white["white_fraction"] == 1.0 and white["luma_mean"] == pytest.approx(1.0)
    one = quality_scores(np.full((1, 32, 48, 3), 128, np.uint8), cfg)
    assert one["frozen_fraction"] == 0.0 and one["flat_fraction"] == 1.0
    assert motion_scores(np.zeros((1, 32, 48, 3), np.uint8), [0.0], MotionConfig()) == {
        "motion_mean": 0.0,
        "motion_fraction": 0.0,
    }


def test_cuts_counts_the_boundary_of_two_shots(clips: dict[str, Path]) -> None:
    sampling = CutsAnnotator.default_sampling
    cfg = CutsConfig()
    two = cut_times(*decode(clips["two_shots"], sampling), cfg)
    assert len(two) == 1 and two[0] == pytest.approx(1.0, abs=0.1)
    assert cut_times(*decode(clips["one_shot"], sampling), cfg) == []
    assert cut_times(*decode(clips["panning"], sampling), cfg) == []
    stage = CutsAnnotator()
    (out,) = stage([clip_input(clips["two_shots"], sampling)])
    assert isinstance(out, dict) and out["scores.cuts"] == 1.0
    assert out[any2capins.annotators.PROVENANCE_KEY]["cut_times_s"] == f"{two[0]:.3f}"


# --------------------------------------------------------------------------- text (real detector)


@pytest.fixture(scope="module")
def text_stage() -> TextOverlayAnnotator:
    return TextOverlayAnnotator(TextOverlayConfig(threads=1))


def test_text_fraction_with_the_real_detector(
    clips: dict[str, Path], text_stage: TextOverlayAnnotator
) -> None:
    sampling = TextOverlayAnnotator.default_sampling
    with_text, plain = text_stage(
        [clip_input(clips["text"], sampling), clip_input(clips["plain"], sampling)]
    )
    assert isinstance(with_text, dict) and isinstance(plain, dict)
    assert with_text["scores.text_fraction"] > 0.05
    assert plain["scores.text_fraction"] < 0.01
    (model,) = text_stage.models()
    assert model.model_id.endswith("ch_PP-OCRv4_det_infer.onnx") and model.license == "Apache-2.0"
    assert "rapidocr-onnxruntime" in model.version and "sha256" in model.version


def test_text_preflight_checks_the_model_file(tmp_path: Path) -> None:
    TextOverlayAnnotator.preflight(TextOverlayConfig())
    with pytest.raises(MissingDependency, match="does not exist"):
        TextOverlayAnnotator.preflight(TextOverlayConfig(model=str(tmp_path / "x.onnx")))


# --------------------------------------------------------------------------- aesthetics


@pytest.fixture(scope="module")
def tiny_aesthetics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-aesthetics")
    clip = tiny_models.tiny_clip_model(root / "clip")
    head = tiny_models.tiny_aesthetic_head(root / "head" / "aesthetic-model.pth", in_features=16)
    return clip, head


@pytest.fixture(scope="module")
def aesthetics(tiny_aesthetics: tuple[Path, Path]) -> AestheticsAnnotator:
    clip, head = tiny_aesthetics
    return AestheticsAnnotator(AestheticsConfig(clip_model=str(clip), head=str(head), device="cpu"))


def test_aesthetics_through_the_real_loading_code(
    clips: dict[str, Path], aesthetics: AestheticsAnnotator, tiny_aesthetics: tuple[Path, Path]
) -> None:
    import torch
    from transformers import CLIPModel

    clip, head = tiny_aesthetics
    AestheticsAnnotator.preflight(aesthetics.config)
    sampling = AestheticsAnnotator.default_sampling
    batch = [clip_input(clips[k], sampling) for k in ("static", "panning", "black")]
    first = aesthetics(batch)
    again = aesthetics(batch[::-1])[::-1]
    for out, same in zip(first, again, strict=True):
        assert isinstance(out, dict) and isinstance(same, dict)
        assert set(out) == {"scores.aesthetic", any2capins.annotators.PROVENANCE_KEY}
        assert (
            math.isfinite(out["scores.aesthetic"])
            and out["scores.aesthetic"] == same["scores.aesthetic"]
        )
        assert out[any2capins.annotators.PROVENANCE_KEY]["frames"] == "4"
    # The vision tower and projection came from the whole CLIP checkpoint, not random init.
    frames = list(batch[0].frames)
    pixels = aesthetics.processor(images=frames, return_tensors="pt")["pixel_values"]
    reference = CLIPModel.from_pretrained(clip).eval()  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        want = reference.get_image_features(pixel_values=pixels)
        want = getattr(want, "pooler_output", want)
        got = aesthetics.model(pixel_values=pixels).image_embeds
    torch.testing.assert_close(got, want)
    clip_info, head_info = aesthetics.models()
    assert clip_info.model_id == str(clip) and len(clip_info.version) == 16
    assert head_info.model_id == str(head) and head_info.version.startswith("sha256 ")


def test_the_head_follows_the_published_layout(tmp_path: Path) -> None:
    import torch

    from any2capins.annotators.curation.aesthetics import build_head, load_head_state

    head = build_head(load_head_state(tiny_models.tiny_aesthetic_head(tmp_path / "h.pth", 8)))
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (8, 32),
        (32, 16),
        (16, 8),
        (8, 4),
        (4, 1),
    ]
    state = load_head_state(tmp_path / "h.pth")
    state["layers.9.weight"] = state.pop("layers.7.weight")
    with pytest.raises(MissingDependency, match="LAION aesthetic predictor"):
        build_head(state)


def test_a_head_for_another_clip_is_refused(
    tiny_aesthetics: tuple[Path, Path], tmp_path: Path
) -> None:
    clip, _ = tiny_aesthetics
    head = tiny_models.tiny_aesthetic_head(tmp_path / "768.pth", in_features=768)
    with pytest.raises(MissingDependency, match="768-d embeddings"):
        AestheticsAnnotator(AestheticsConfig(clip_model=str(clip), head=str(head), device="cpu"))


def test_missing_aesthetic_weights_stop_at_preflight(
    tiny_aesthetics: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip, head = tiny_aesthetics
    for entry in catalog.DEFAULT_MODELS:
        monkeypatch.delenv(entry.env, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("ANY2CAP_ALLOW_DOWNLOADS", raising=False)
    # the defaults, not in the (empty) cache
    with pytest.raises(MissingDependency) as err:
        AestheticsAnnotator.preflight(AestheticsConfig())
    assert catalog.DEFAULT_CLIP_MODEL in str(err.value)
    assert "any2cap models fetch aesthetics" in str(err.value)
    # CLIP there, head missing
    missing = tmp_path / "nowhere" / "aesthetic-model.pth"
    with pytest.raises(MissingDependency) as err:
        AestheticsAnnotator.preflight(AestheticsConfig(clip_model=str(clip), head=str(missing)))
    assert str(missing) in str(err.value) and "any2cap models fetch aesthetics" in str(err.value)
    assert catalog.ENV_AESTHETIC_HEAD in str(err.value)
    # the default head, not cached
    with pytest.raises(MissingDependency) as err:
        AestheticsAnnotator.preflight(AestheticsConfig(clip_model=str(clip)))
    assert catalog.DEFAULT_AESTHETIC_HEAD in str(err.value)
    assert "any2cap models fetch aesthetics" in str(err.value)
    # a CLIP folder that is not there
    with pytest.raises(MissingDependency, match="any2cap models fetch aesthetics"):
        AestheticsAnnotator.preflight(
            AestheticsConfig(clip_model=str(tmp_path / "no-clip"), head=str(head))
        )


def test_catalog_lists_the_aesthetic_models(
    tiny_aesthetics: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    clip, head = tiny_aesthetics
    by = catalog.MODELS_BY_NAME
    assert [m.name for m in catalog.select(["aesthetics"])] == [
        "clip-vit-l14",
        "aesthetic-predictor",
    ]
    for entry in catalog.DEFAULT_MODELS:
        monkeypatch.delenv(entry.env, raising=False)
    cfg = AestheticsConfig()
    assert cfg.clip_model == by["clip-vit-l14"].ref and by["clip-vit-l14"].license == "MIT"
    assert cfg.head == by["aesthetic-predictor"].ref
    assert by["aesthetic-predictor"].license == "Apache-2.0"
    for name, field, value in (
        ("clip-vit-l14", "clip_model", clip),
        ("aesthetic-predictor", "head", head),
    ):
        entry = by[name]
        assert entry.param == field and entry.stages == ("aesthetics",)
        monkeypatch.setenv(entry.env, str(value))
        assert getattr(AestheticsConfig(), field) == str(value)
        row = catalog.status(entry)
        assert row["present"] and row["looked_for"] == str(value)


# --------------------------------------------------------------------------- record.scores


def _provenance(stage: str) -> StageProvenance:
    return StageProvenance(
        stage=stage,
        annotator_version="1",
        config_hash="x",
        run_id="r",
        seconds=0.0,
        finished_at=datetime.now(UTC),
        models=[ModelInfo(model_id=stage)],
    )


def test_stages_write_only_their_own_keys_of_record_scores() -> None:
    ref = ClipRef(
        clip_id="c",
        source_uri="/x.mp4",
        start_s=0,
        end_s=1,
        fps=24,
        width=2,
        height=2,
        num_frames=24,
    )
    record = Record(clip=ref, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    record = apply_output(
        record, {"scores.motion_mean": 0.2, "scores.motion_fraction": 0.9}, _provenance("motion")
    )
    record = apply_output(record, {"scores.text_fraction": 0.1}, _provenance("text_overlay"))
    assert record.scores == {"motion_mean": 0.2, "motion_fraction": 0.9, "text_fraction": 0.1}
    # a re-run of one stage replaces its keys and leaves the others' alone
    record = apply_output(
        record, {"scores.motion_mean": 0.5, "scores.motion_fraction": 0.1}, _provenance("motion")
    )
    assert record.scores == {"motion_mean": 0.5, "motion_fraction": 0.1, "text_fraction": 0.1}
    assert [s.stage for s in record.provenance.stages] == ["text_overlay", "motion"]
    # every stage declares exactly its keys, no two stages share one
    declared = [w for cls in CURATION_ANNOTATORS for w in cls.writes]
    assert sorted(declared) == sorted(f"scores.{n}" for n in ALL_SCORES)
    assert set(SCORE_STAGES) == ALL_SCORES and SCORE_STAGES["aesthetic"] == "aesthetics"
    assert AESTHETIC_SCORES == ("aesthetic",)
    for cls in CURATION_ANNOTATORS:
        assert any2capins.annotators.BUILTIN_ANNOTATORS[cls.name] is cls


def test_a_bad_clip_fails_alone(clips: dict[str, Path]) -> None:
    stage = QualityAnnotator()
    good = clip_input(clips["static"], QualityAnnotator.default_sampling)
    bad = ClipInput(good.clip, np.zeros((0, 4, 4, 3), np.uint8), [], good.record, good.artifacts)
    out = stage([good, bad])
    assert isinstance(out[0], dict) and isinstance(out[1], ValueError)


# --------------------------------------------------------------------------- a build


def test_cli_builds_every_score_stage_on_demo_clips(
    demo_clips: Path,
    tiny_aesthetics: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from any2capins.workflows.cli import app

    clip, head = tiny_aesthetics
    monkeypatch.setenv(catalog.ENV_CLIP_MODEL, str(clip))
    monkeypatch.setenv(catalog.ENV_AESTHETIC_HEAD, str(head))
    stages = [
        {"annotator": "quality"},
        {"annotator": "motion"},
        {"annotator": "cuts"},
        {"annotator": "text_overlay", "params": {"threads": 1}},
        {"annotator": "aesthetics", "params": {"device": "cpu", "threads": 1}},
    ]
    recipe = tmp_path / "scores.yaml"
    recipe.write_text(yaml.safe_dump({"name": "scores", "stages": stages}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("dog.mp4", "coffee.mp4"):
        (inputs / name).symlink_to(demo_clips / name)
    out = tmp_path / "run"
    args = ["build", str(recipe), "--input", str(inputs), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--executor", "local", "--no-progress", "--strict"])
    assert result.exit_code == 0, result.output
    records = list(RunDir(str(out)).records())
    assert len(records) == 2
    for record in records:
        assert set(record.scores) == ALL_SCORES
        assert all(math.isfinite(v) for v in record.scores.values())
        assert record.scores["cuts"] == 0.0 and record.scores["black_fraction"] == 0.0
        by_stage = {s.stage: s for s in record.provenance.stages}
        assert set(by_stage) == {"quality", "motion", "cuts", "text_overlay", "aesthetics"}
        assert [m.model_id for m in by_stage["aesthetics"].models] == [str(clip), str(head)]
        assert by_stage["cuts"].models[0].model_id == "pyscenedetect/ContentDetector"
    print(json.dumps({r.clip.source_uri.rsplit("/", 1)[-1]: r.scores for r in records}, indent=1))
