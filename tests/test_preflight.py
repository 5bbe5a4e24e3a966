"""The build's preflight: before any work, `any2cap build` checks every stage's packages and
model files in the driver without loading a model, and without the device checks that only
a worker can answer (a driver with no GPU may drive GPU workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from any2capins.annotators import MissingDependency
from any2capins.annotators.depth import DepthAnnotator, DepthConfig
from any2capins.annotators.identities import IdentitiesAnnotator, IdentitiesConfig
from any2capins.annotators.pose import PoseAnnotator, PoseConfig
from any2capins.workflows.cli import app
from tests import media
from tests.tiny_models import tiny_depth_model, tiny_dwpose
from tests.tiny_sam2 import tiny_coco_detector, tiny_grounding_dino, tiny_sam2

BOX = (64.0, 40.0, 224.0, 340.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preflight-models")
    det, pose = tiny_dwpose(root / "dwpose")
    return {
        "depth": tiny_depth_model(root / "depth"),
        "dwpose_det": det,
        "dwpose_pose": pose,
        "yolox": tiny_coco_detector(root / "yolox.onnx", [BOX], ["person"], [0.9]),
        "sam2": tiny_sam2(root / "sam2"),
        "grounding": tiny_grounding_dino(root / "grounding"),
    }


def _configs(models: dict[str, Path], device: str = "cpu") -> list[tuple[Any, Any]]:
    return [
        (DepthAnnotator, DepthConfig(model=str(models["depth"]), device=device)),
        (
            PoseAnnotator,
            PoseConfig(detector=str(models["dwpose_det"]), pose_model=str(models["dwpose_pose"])),
        ),
        (
            IdentitiesAnnotator,
            IdentitiesConfig(
                detector_model=str(models["yolox"]),
                sam2_model=str(models["sam2"]),
                grounding_model=str(models["grounding"]),
                open_vocabulary=["ball"],
                device=device,
            ),
        ),
    ]


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load fails the test: the preflight must only look."""
    import onnxruntime
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("preflight loaded a model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    for name in (
        "AutoModelForDepthEstimation",
        "AutoImageProcessor",
        "Sam2VideoModel",
        "Sam2VideoProcessor",
        "AutoModelForZeroShotObjectDetection",
        "AutoProcessor",
    ):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def test_preflight_passes_without_loading_a_model(
    models: dict[str, Path], no_loading: None
) -> None:
    for cls, config in _configs(models):
        cls.preflight(config)
    with pytest.raises(AssertionError, match="loaded a model"):
        DepthAnnotator(_configs(models)[0][1])  # building the stage does load it


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_preflight_leaves_the_device_to_the_workers(models: dict[str, Path]) -> None:
    for cls, config in _configs(models, device="cuda"):
        if cls is PoseAnnotator:
            continue  # its device is onnxruntime's provider list, a property of the install
        cls.preflight(config)
        with pytest.raises(MissingDependency, match="sees no CUDA GPU"):
            cls(config)


def test_preflight_names_a_missing_model_as_building_would(
    models: dict[str, Path], tmp_path: Path
) -> None:
    gone = str(tmp_path / "gone")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (DepthAnnotator, DepthConfig(model=gone), r"depth model .*no model directory"),
        (DepthAnnotator, DepthConfig(model=str(empty)), r"holds no config\.json.*hf download"),
        (
            PoseAnnotator,
            PoseConfig(detector=gone + ".onnx", pose_model=str(models["dwpose_pose"])),
            r"DWPose detector model file .*gone\.onnx does not exist.*hf download",
        ),
        (
            IdentitiesAnnotator,
            IdentitiesConfig(detector_model=gone + ".onnx", sam2_model=str(models["sam2"])),
            r"YOLOX detector model file .* does not exist",
        ),
        (
            IdentitiesAnnotator,
            IdentitiesConfig(detector_model=str(models["yolox"]), sam2_model=gone),
            r"SAM 2 model .*no such folder",
        ),
        (
            IdentitiesAnnotator,
            IdentitiesConfig(
                detector_model=str(models["yolox"]),
                sam2_model=str(models["sam2"]),
                grounding_model=gone,
                open_vocabulary=["ball"],
            ),
            r"Grounding DINO model .*open_vocabulary",
        ),
    ]
    for cls, config, message in cases:
        with pytest.raises(MissingDependency, match=message):
            cls.preflight(config)
        with pytest.raises(MissingDependency):
            cls(config)


def test_preflight_offline_hub_ids_must_be_cached(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingDependency, match=r"not in the Hugging Face cache"):
        DepthAnnotator.preflight(DepthConfig(model="depth-anything/Depth-Anything-V2-Small-hf"))
    with pytest.raises(MissingDependency, match=r"facebook/sam2\.1-hiera-tiny.*cache"):
        IdentitiesAnnotator.preflight(
            IdentitiesConfig(
                detector_model=str(models["yolox"]), sam2_model="facebook/sam2.1-hiera-tiny"
            )
        )
    with pytest.raises(MissingDependency, match=r"DWPose detector .*not available.*hf download"):
        PoseAnnotator.preflight(
            PoseConfig(detector="yzd-v/DWPose:yolox_l.onnx", pose_model=str(models["dwpose_pose"]))
        )


def test_build_refuses_a_missing_model_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    media.make_video(src / "a.mp4", seconds=1.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nstages:\n  - annotator: depth\n    params: {{model: '{tmp_path / 'nope'}'}}\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["build", str(recipe), "--input", str(src), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    assert "no model directory" in result.output
    assert not out.exists(), "nothing was started"
