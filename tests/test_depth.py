"""The depth condition: Depth Anything loading (tiny model through the real from_pretrained
path), lossless payloads and previews, layout facts, prompt rules, and recipe builds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import any2capins.annotators
from any2capins.annotators import ClipInput, MissingDependency
from any2capins.annotators._media import decode_mp4
from any2capins.annotators.depth import (
    DEFAULT_DEPTH_MODEL,
    ENV_DEPTH_MODEL,
    DepthAnnotator,
    DepthConditionType,
    DepthConfig,
    denormalize_depth,
    depth_license,
    layout_facts,
    measure_layout,
    normalize_depth,
)
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import load_recipe_file, resolve_recipe
from any2capins.pipeline.rundir import RunDir
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.storage import read_payload
from any2capins.schemas import ClipRef, DepthCondition, PayloadRef, Provenance, Record
from tests import tiny_models

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "workflows" / "recipes" / "depth.yaml"
REGISTRY: dict[str, type[any2capins.annotators.Annotator]] = {
    **any2capins.annotators.BUILTIN_ANNOTATORS,
    "depth": DepthAnnotator,
}


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.tiny_depth_model(tmp_path_factory.mktemp("tiny-depth") / "model")


@pytest.fixture(scope="module")
def annotator(tiny_depth: Path) -> DepthAnnotator:
    return DepthAnnotator(DepthConfig(model=str(tiny_depth), model_batch_size=3))


class DirSink:
    """An artifact sink writing plain files, as the engine's store does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        import hashlib

        path = self.folder / name
        path.write_bytes(data)
        return PayloadRef(
            uri=str(path),
            media_type=media_type,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


def clip_input(frames: np.ndarray, folder: Path, duration: float = 4.0) -> ClipInput:
    h, w = frames.shape[1:3]
    clip = ClipRef(
        clip_id=folder.name,
        source_uri=f"mem://{folder.name}",
        start_s=0.0,
        end_s=duration,
        fps=25.0,
        width=w,
        height=h,
        num_frames=int(duration * 25),
    )
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    times = list(np.linspace(0, duration, len(frames), endpoint=False) + duration / len(frames) / 2)
    return ClipInput(clip, frames, times, record, DirSink(folder))


def scene(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, h, dtype=np.float32)[None, :, None, None]
    noise = rng.normal(0, 20, size=(n, h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def record_with(summary: DepthCondition, camera: bool = False) -> Record:
    clip = ClipRef(
        clip_id="c", source_uri="x", start_s=0, end_s=4, fps=25, width=64, height=48, num_frames=100
    )
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    record.conditions.depth = summary
    if camera:
        from any2capins.schemas import CameraCondition

        record.conditions.camera = CameraCondition(
            source="estimated",
            frames=8,
            labels=["static"],
            description="",
            trajectory=summary.payload,
        )
    return record


# --------------------------------------------------------------------------- annotator


def test_batched_clips_of_different_sizes_give_lossless_payloads(
    annotator: DepthAnnotator, tmp_path: Path
) -> None:
    wide = clip_input(scene(5, 64, 112, seed=1), tmp_path / "wide")
    tall = clip_input(scene(4, 96, 54, seed=2), tmp_path / "tall", duration=2.0)
    outputs = annotator([wide, tall])
    assert len(outputs) == 2
    for item, out in zip((wide, tall), outputs, strict=True):
        assert isinstance(out, dict) and set(out) == {"conditions.depth"}
        summary = out["conditions.depth"]
        assert isinstance(summary, DepthCondition)
        t, h, w = item.frames.shape[:3]
        assert summary.frames == t and summary.model_id == annotator.config.model
        assert summary.timestamps_s == [round(x, 4) for x in item.timestamps_s]
        assert "per-clip min-max" in summary.normalization
        arrays = DepthConditionType().decode_payload(summary, read_payload)
        assert arrays["depth_u16"].dtype == np.uint16 and arrays["depth_u16"].shape == (t, h, w)
        assert arrays["depth_u16"].min() == 0 and arrays["depth_u16"].max() == 65535
        # Stored values map back to the model's own output within one quantisation step.
        direct = np.stack(annotator.predict(list(item.frames)))
        step = (direct.max() - direct.min()) / 65535
        assert np.abs(arrays["depth"] - direct).max() <= step * 0.51 + 1e-12
        assert np.allclose(arrays["timestamps_s"], item.timestamps_s)
        assert arrays["preview"].shape == (t, h + h % 2, w + w % 2, 3)
        assert summary.preview is not None and summary.preview.media_type == "video/mp4"
        assert summary.layout is not None and 0 <= summary.layout.near_fraction <= 1


def test_frame_normalisation_and_no_preview(tiny_depth: Path, tmp_path: Path) -> None:
    ann = DepthAnnotator(DepthConfig(model=str(tiny_depth), normalization="frame", preview=False))
    item = clip_input(scene(3, 48, 64), tmp_path / "c")
    (out,) = ann([item])
    assert isinstance(out, dict)
    summary = out["conditions.depth"]
    assert summary.preview is None and "per-frame" in summary.normalization
    arrays = DepthConditionType().decode_payload(summary, read_payload)
    assert "preview" not in arrays
    u16 = arrays["depth_u16"]
    assert all(f.min() == 0 and f.max() == 65535 for f in u16)  # every frame spans the range
    direct = np.stack(ann.predict(list(item.frames)))
    assert np.allclose(arrays["raw_min"], direct.min(axis=(1, 2)))
    assert np.allclose(arrays["raw_max"], direct.max(axis=(1, 2)))


def test_a_bad_clip_fails_alone(annotator: DepthAnnotator, tmp_path: Path) -> None:
    good = clip_input(scene(2, 48, 64), tmp_path / "good")
    bad = clip_input(scene(2, 48, 64), tmp_path / "bad")
    bad.frames = np.zeros((0, 48, 64, 3), np.uint8)
    out = annotator([good, bad])
    assert isinstance(out[0], dict)
    assert isinstance(out[1], ValueError) and "expected frames" in str(out[1])


def test_provenance_records_model_version_and_license(
    annotator: DepthAnnotator, tiny_depth: Path
) -> None:
    (info,) = annotator.models()
    assert info.model_id == str(tiny_depth)
    assert len(info.version) == 16  # digest of config + weights of the local folder
    assert info.license == "unknown"
    assert depth_license(DEFAULT_DEPTH_MODEL) == "Apache-2.0"
    assert depth_license("depth-anything/Depth-Anything-V2-Large-hf") == "CC-BY-NC-4.0"
    assert depth_license("/models/Depth-Anything-V2-Base-hf") == "CC-BY-NC-4.0"
    assert depth_license("anything", "MIT") == "MIT"


def test_license_from_a_local_model_card(tiny_depth: Path, tmp_path: Path) -> None:
    import shutil

    local = tmp_path / "copy"
    shutil.copytree(tiny_depth, local)
    (local / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n")
    assert depth_license(str(local)) == "apache-2.0"


# --------------------------------------------------------------------------- loading errors


def test_missing_local_model_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingDependency) as err:
        DepthAnnotator(DepthConfig(model=str(missing)))
    text = str(err.value)
    assert str(missing) in text and "hf download" in text and ENV_DEPTH_MODEL in text


def test_missing_hub_model_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingDependency) as err:
        DepthAnnotator(DepthConfig(model="depth-anything/Depth-Anything-V2-Small-hf"))
    text = str(err.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in text
    assert "hf download depth-anything/Depth-Anything-V2-Small-hf" in text


def test_incomplete_model_folder_is_a_clear_error(tiny_depth: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_depth, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(MissingDependency, match="broken"):
        DepthAnnotator(DepthConfig(model=str(broken)))


def test_metric_checkpoints_are_refused(tiny_depth: Path, tmp_path: Path) -> None:
    import shutil

    metric = tmp_path / "metric"
    shutil.copytree(tiny_depth, metric)
    config = json.loads((metric / "config.json").read_text())
    config["depth_estimation_type"] = "metric"
    (metric / "config.json").write_text(json.dumps(config))
    with pytest.raises(MissingDependency, match="metric depth"):
        DepthAnnotator(DepthConfig(model=str(metric)))


def test_env_var_overrides_the_recipe_and_enters_the_hash(
    monkeypatch: pytest.MonkeyPatch, tiny_depth: Path
) -> None:
    data = load_recipe_file(RECIPE)
    before = resolve_recipe(data, REGISTRY).stages[-1]
    assert before.config.model == DEFAULT_DEPTH_MODEL  # type: ignore[attr-defined]
    monkeypatch.setenv(ENV_DEPTH_MODEL, str(tiny_depth))
    after = resolve_recipe(data, REGISTRY).stages[-1]
    assert after.config.model == str(tiny_depth)  # type: ignore[attr-defined]
    assert after.config_hash != before.config_hash


# --------------------------------------------------------------------------- payload maths


def test_normalisation_round_trip_and_edge_cases() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 7.0, size=(3, 8, 10)).astype(np.float32)
    u16, lo, hi = normalize_depth(depth, per_frame=False)
    assert lo.tolist() == [lo[0]] * 3 and u16.min() == 0 and u16.max() == 65535
    back = denormalize_depth(u16, lo, hi)
    assert np.abs(back - depth).max() <= (hi[0] - lo[0]) / 65535
    u16f, lof, hif = normalize_depth(depth, per_frame=True)
    assert all(f.max() == 65535 for f in u16f)
    assert np.allclose(lof, depth.min(axis=(1, 2))) and np.allclose(hif, depth.max(axis=(1, 2)))
    flat, flo, fhi = normalize_depth(np.full((2, 4, 4), 3.0), per_frame=False)
    assert flat.max() == 0 and np.allclose(denormalize_depth(flat, flo, fhi), 3.0)
    with pytest.raises(ValueError, match="non-finite"):
        normalize_depth(np.array([[[np.nan, 1.0]]]), per_frame=False)
    with pytest.raises(ValueError, match="expected depth"):
        normalize_depth(np.zeros((4, 4)), per_frame=False)


# --------------------------------------------------------------------------- facts and rules


def ground_plane(frames: int = 6, h: int = 60, w: int = 90, shift: float = 0.0) -> np.ndarray:
    """Inverse depth growing towards the bottom (a floor) with a near box on the left."""
    ys = np.linspace(0.1, 1.0, h)[:, None] * np.ones((1, w))
    out = np.repeat(ys[None], frames, axis=0).astype(np.float32)
    for f in range(frames):
        x0 = int(5 + shift * f)
        out[f, 30:55, x0 : x0 + 20] = 2.0
    return out


def test_layout_of_a_known_scene() -> None:
    layout = measure_layout(ground_plane())
    assert layout.nearest_region == "bottom left"
    assert layout.farthest_region.startswith("top")
    assert not layout.flat and layout.mean_change == 0.0
    assert 0 < layout.foreground_fraction < 0.5 and layout.foreground_region.endswith("left")
    facts = layout_facts(layout, 6)
    assert facts[0].startswith("Depth layout: the nearest region is the bottom left")
    assert "stays stable" in facts[-1]
    moving = measure_layout(ground_plane(shift=12.0))
    assert moving.mean_change > 0.03
    assert "changes" in layout_facts(moving, 6)[-1]
    flat = measure_layout(np.ones((2, 10, 10), np.float32))
    assert flat.flat and layout_facts(flat, 2) == [
        "Depth layout: the depth maps are flat (no measurable depth variation)."
    ]


def summary_with(frames: int) -> DepthCondition:
    ref = PayloadRef(uri="/x", media_type="application/x-npz", bytes=1, sha256="0" * 64)
    return DepthCondition(
        model_id="m",
        frames=frames,
        timestamps_s=[0.0] * frames,
        normalization="n",
        payload=ref,
        layout=measure_layout(ground_plane(frames)),
    )


def test_short_prompt_rules_depend_on_frame_count_and_camera() -> None:
    ct = DepthConditionType()
    few, many = summary_with(4), summary_with(16)
    few_rules = ct.short_prompt_rules(few, record_with(few))
    many_rules = ct.short_prompt_rules(many, record_with(many))
    assert "do not restate" in few_rules[0] and "do not restate" in many_rules[0]
    assert "do describe the camera movement" in few_rules[1]
    assert "need not be described" in many_rules[1]
    assert len(ct.short_prompt_rules(few, record_with(few, camera=True))) == 1
    facts = ct.grounding_facts(few, record_with(few))
    assert facts and facts[0].startswith("Depth layout")


def test_short_prompt_violations() -> None:
    ct = DepthConditionType()
    few, many = summary_with(4), summary_with(16)
    prompt = "A man juggles while a dog sleeps in the background, far from the camera."
    (layout_v,) = ct.short_prompt_violations(prompt, many, record_with(many))
    assert "'in the background'" in layout_v and "'far from the camera'" in layout_v
    v = ct.short_prompt_violations("A man juggles three balls.", few, record_with(few))
    assert v == ["does not describe the camera movement, which 4 depth frames cannot show"]
    assert (
        ct.short_prompt_violations("A static shot of a man juggling.", few, record_with(few)) == []
    )
    assert ct.short_prompt_violations("A man juggles.", many, record_with(many)) == []


# --------------------------------------------------------------------------- builds


def test_depth_recipe_builds_the_demo_clips_and_resumes(
    demo_clips: Path, tiny_depth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DEPTH_MODEL, str(tiny_depth))
    resolved = resolve_recipe(load_recipe_file(RECIPE), REGISTRY)
    sources = list_sources(str(demo_clips))
    out = tmp_path / "run"
    report = run_build(resolved, sources, str(out), executor="local")
    assert report.failed == 0 and report.records_ok == len(sources)
    records = list(RunDir(str(out)).records())
    for record in records:
        summary = record.conditions.depth
        assert summary is not None and summary.frames == 16 and summary.layout is not None
        arrays = DepthConditionType().decode_payload(summary, read_payload)
        assert arrays["depth_u16"].shape[0] == 16
        assert max(arrays["depth_u16"].shape[1:]) == 512
        assert len(decode_mp4(read_payload(summary.preview))) == 16  # type: ignore[arg-type]
        stage = next(s for s in record.provenance.stages if s.stage == "depth")
        assert stage.models[0].model_id == str(tiny_depth)
        with np.load(io.BytesIO(read_payload(summary.payload))) as npz:
            assert set(npz.files) == {"depth", "raw_min", "raw_max", "timestamps_s"}
    again = run_build(resolved, sources, str(out), executor="local")
    assert again.records_resumed == len(sources) and again.stages["depth"].skipped == len(sources)


def test_cli_builds_the_shipped_depth_recipe(
    demo_clips: Path, tiny_depth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import any2capins.workflows.recipes
    from any2capins.workflows.cli import app

    # Until the entry points are installed, the CLI finds the stage through this registry.
    monkeypatch.setattr(any2capins.workflows.recipes, "all_annotators", lambda: REGISTRY)
    monkeypatch.setenv(ENV_DEPTH_MODEL, str(tiny_depth))
    clip = demo_clips / "dog.mp4"
    out = tmp_path / "run"
    args = ["build", "depth", "--input", str(clip), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--executor", "local", "--no-progress"])
    assert result.exit_code == 0, result.output
    (record,) = list(RunDir(str(out)).records())
    assert record.conditions.depth is not None
    assert record.conditions.present() == ["depth"]
