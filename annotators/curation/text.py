"""The ``text_overlay`` score: how much of the frame burnt-in text (subtitles, captions,
watermarks, tickers) covers, from a real text detector.

The detector is PP-OCRv4's DBNet text detector (``ch_PP-OCRv4_det_infer.onnx``) as
``rapidocr-onnxruntime`` ships it inside its wheel, run with that package's own pre- and
post-processing (resize to multiples of 32, DB threshold + contours + unclip) on
onnxruntime. The recogniser is not run: only where text is matters, not what it says.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators._models import files_digest
from any2capins.annotators.base import (
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
)
from any2capins.annotators.curation._common import ScoreAnnotator, check_frames
from any2capins.schemas import ModelInfo

TEXT_SCORES: tuple[str, ...] = ("text_fraction",)
RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
RAPIDOCR_DISTRIBUTION = "rapidocr-onnxruntime"
WHEEL_DET_MODEL = "models/ch_PP-OCRv4_det_infer.onnx"
# RapidOCR is Apache-2.0, and so are the PaddleOCR (PP-OCR) models it converts to ONNX.
DETECTOR_LICENSE = "Apache-2.0"


class TextOverlayConfig(AnnotatorConfig):
    model: str | None = Field(
        default=None,
        description="a DBNet text-detection ONNX file (default: PP-OCRv4 det from "
        "rapidocr-onnxruntime's wheel)",
    )
    working_size: int = Field(
        default=640,
        ge=64,
        description="longer side (px) the detector sees at most (rounded to multiples of 32)",
    )
    reduce: Literal["mean", "max"] = Field(
        default="mean", description="how the per-frame text fractions become the clip's"
    )
    thresh: float = Field(default=0.3, gt=0, lt=1, description="DB probability threshold")
    box_thresh: float = Field(default=0.5, gt=0, lt=1, description="minimum box score")
    unclip_ratio: float = Field(default=1.6, gt=0, description="DB box expansion")
    threads: int | None = Field(
        default=None, ge=1, description="onnxruntime threads of this worker (default: its own)"
    )


def wheel_model_path() -> Path | None:
    """The detector in the installed rapidocr-onnxruntime wheel (found without importing)."""
    spec = importlib.util.find_spec(RAPIDOCR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / WHEEL_DET_MODEL


def text_mask(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """[H, W] bool: the union of the detected quadrilaterals (each [4, 2] x, y)."""
    mask = np.zeros(shape, np.uint8)
    if len(boxes):
        polys = [np.round(b).astype(np.int32).reshape(-1, 1, 2) for b in boxes]
        cv2.fillPoly(mask, polys, 1)
    return mask.astype(bool)


class TextOverlayAnnotator(ScoreAnnotator):
    """``text_fraction``: the union of detected text boxes over the frame area, 0..1, averaged
    over the sampled frames (``reduce: max`` takes the worst frame instead)."""

    name: ClassVar[str] = "text_overlay"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = TextOverlayConfig
    requires: ClassVar[tuple[str, ...]] = (RAPIDOCR_PACKAGE, "onnxruntime", "pyclipper", "shapely")
    score_names: ClassVar[tuple[str, ...]] = TEXT_SCORES
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=4, max_side=640)
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=2)

    config: TextOverlayConfig

    @classmethod
    def _model_path(cls, config: TextOverlayConfig) -> Path:
        if config.model is not None:
            path = Path(config.model).expanduser()
            if not path.is_file():
                raise MissingDependency(
                    f"text_overlay: text-detection model {config.model} does not exist; point "
                    "params.model at a DBNet ONNX file or leave it unset for the detector in "
                    "rapidocr-onnxruntime's wheel"
                )
            return path
        shipped = wheel_model_path()
        if shipped is None or not shipped.is_file():
            raise MissingDependency(
                f"text_overlay: the text detector {WHEEL_DET_MODEL} is not in the installed "
                f"rapidocr-onnxruntime ({shipped}); reinstall it: pip install "
                "--force-reinstall --no-deps rapidocr-onnxruntime"
            )
        return shipped

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        cls.check_requires()
        assert isinstance(config, TextOverlayConfig)
        cls._model_path(config)

    def setup(self) -> None:
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

        cfg = self.config
        path = self._model_path(cfg)
        threads = cfg.threads or -1
        self.detector = TextDetector(
            {
                "model_path": str(path),
                "use_cuda": False,
                "use_dml": False,
                "intra_op_num_threads": threads,
                "inter_op_num_threads": threads,
                # "max": scale down to the working size, never up (frames arrive at it)
                "limit_type": "max",
                "limit_side_len": cfg.working_size,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "thresh": cfg.thresh,
                "box_thresh": cfg.box_thresh,
                "max_candidates": 1000,
                "unclip_ratio": cfg.unclip_ratio,
                "use_dilation": True,
                "score_mode": "fast",
            }
        )
        version = importlib.metadata.version(RAPIDOCR_DISTRIBUTION)
        self._models = [
            ModelInfo(
                model_id=f"{RAPIDOCR_DISTRIBUTION}:{WHEEL_DET_MODEL}"
                if cfg.model is None
                else cfg.model,
                version=f"{RAPIDOCR_DISTRIBUTION} {version}; sha256 {files_digest([path], with_names=False)}",
                license=DETECTOR_LICENSE if cfg.model is None else "unknown",
            )
        ]

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Text quadrilaterals [N, 4, 2] (x, y in the frame's pixels) in one RGB frame."""
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        boxes, _ = self.detector(bgr)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4, 2)

    def text_fractions(self, frames: np.ndarray) -> list[float]:
        check_frames(frames)
        h, w = frames.shape[1:3]
        return [float(text_mask((h, w), self.detect(f)).mean()) for f in frames]

    def score(self, item: ClipInput) -> dict[str, float]:
        fractions = self.text_fractions(item.frames)
        value = max(fractions) if self.config.reduce == "max" else float(np.mean(fractions))
        return {"text_fraction": round(value, 6)}


__all__ = [
    "TEXT_SCORES",
    "TextOverlayAnnotator",
    "TextOverlayConfig",
    "text_mask",
    "wheel_model_path",
]
