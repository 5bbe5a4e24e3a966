"""The depth condition: Depth Anything (transformers) relative inverse depth per sampled frame,
stored losslessly as a compressed uint16 array with its normalisation, plus an 8-bit preview
video; the text facts and short-prompt rules that depth maps imply."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from any2capins.annotators._media import decode_mp4, encode_mp4, playback_fps
from any2capins.annotators._models import (
    fetch_hint,
    files_digest,
    hub_cache_only,
    model_folder_problem,
    torch_device,
)
from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    MissingDependency,
    Resources,
)
from any2capins.annotators.conditions import ConditionType, PayloadReader
from any2capins.annotators.keyframes import grid_field
from any2capins.annotators.model_catalog import DEFAULT_DEPTH_MODEL, ENV_DEPTH_MODEL
from any2capins.schemas import (
    DepthCondition,
    DepthLayout,
    FrameGrid,
    ModelInfo,
    Record,
    Suitability,
)

U16_MAX = 65535

# Licences of the published checkpoints (model cards). V2 Base/Large/Giant are non-commercial.
KNOWN_LICENSES: dict[str, str] = {
    "depth-anything/Depth-Anything-V2-Small-hf": "Apache-2.0",
    "depth-anything/Depth-Anything-V2-Base-hf": "CC-BY-NC-4.0",
    "depth-anything/Depth-Anything-V2-Large-hf": "CC-BY-NC-4.0",
    "LiheYoung/depth-anything-small-hf": "Apache-2.0",
    "LiheYoung/depth-anything-base-hf": "Apache-2.0",
    "LiheYoung/depth-anything-large-hf": "Apache-2.0",
}


def _looks_like_path(value: str) -> bool:
    """Hub ids are ``owner/name``; anything else (absolute, relative, deeper) is a path."""
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") != 1


class DepthConfig(AnnotatorConfig):
    model: str = Field(
        default=DEFAULT_DEPTH_MODEL,
        description=f"hub id or local directory; the env var {ENV_DEPTH_MODEL} overrides it",
    )
    license: str | None = Field(
        default=None, description="licence recorded in provenance (default: known table)"
    )
    normalization: Literal["clip", "frame"] = Field(
        default="clip", description="uint16 min-max over the whole clip or per frame"
    )
    model_batch_size: int = Field(default=8, ge=1, description="frames per forward pass")
    input_size: int | None = Field(
        default=None, ge=14, description="processor resize target (Depth Anything: 518)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when the stage's worker sees a GPU"
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads of this worker (default: torch's)"
    )
    preview: bool = True
    frame_grid: FrameGrid | None = grid_field()

    @model_validator(mode="before")
    @classmethod
    def _env_override(cls, data: Any) -> Any:
        # Applied when the recipe is resolved (on the driver), so the model actually used is
        # part of the stage's config hash and travels to every worker.
        env = os.environ.get(ENV_DEPTH_MODEL)
        if env and isinstance(data, dict):
            return {**data, "model": env}
        return data


def _card_license(folder: Path) -> str | None:
    """The ``license:`` of a downloaded model card's YAML front matter, if there is one."""
    try:
        lines = (folder / "README.md").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def depth_license(model: str, override: str | None = None) -> str:
    """Explicit config first, then the published checkpoints' licences, then a local
    directory's model card; "unknown" otherwise (recorded as such in provenance)."""
    if override:
        return override
    if model in KNOWN_LICENSES:
        return KNOWN_LICENSES[model]
    folder = Path(model).expanduser()
    if folder.is_dir() and (card := _card_license(folder)):
        return card
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    if "depth-anything-v2" in name and any(s in name for s in ("base", "large", "giant")):
        return "CC-BY-NC-4.0"
    return "unknown"


def _weights_digest(folder: Path) -> str:
    return files_digest(
        sorted(
            p
            for p in folder.iterdir()
            if p.suffix in (".safetensors", ".bin") or p.name == "config.json"
        )
    )


def normalize_depth(
    depth: np.ndarray, per_frame: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[F, H, W] float relative inverse depth -> (uint16 frames, raw_min [F], raw_max [F]).

    ``v = round((d - raw_min) / (raw_max - raw_min) * 65535)``; a constant map stores zeros.
    """
    if depth.ndim != 3 or depth.shape[0] == 0:
        raise ValueError(f"expected depth [F, H, W] with F >= 1, got {depth.shape}")
    if not np.isfinite(depth).all():
        raise ValueError("the depth model produced non-finite values (NaN or inf)")
    d = depth.astype(np.float64)
    if per_frame:
        lo = d.min(axis=(1, 2))
        hi = d.max(axis=(1, 2))
    else:
        lo = np.full(d.shape[0], d.min())
        hi = np.full(d.shape[0], d.max())
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    v = np.where(span[:, None, None] > 0, (d - lo[:, None, None]) / safe[:, None, None], 0.0)
    u16 = np.rint(np.clip(v, 0.0, 1.0) * U16_MAX).astype(np.uint16)
    return u16, lo.astype(np.float64), hi.astype(np.float64)


def denormalize_depth(u16: np.ndarray, raw_min: np.ndarray, raw_max: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize_depth` (up to the uint16 quantisation step)."""
    scale = (raw_max - raw_min)[:, None, None] / U16_MAX
    depth = raw_min[:, None, None] + u16.astype(np.float64) * scale
    return np.asarray(depth, dtype=np.float32)


def normalization_text(mode: str, raw_min: np.ndarray, raw_max: np.ndarray) -> str:
    if mode == "clip":
        lo, hi = float(raw_min[0]), float(raw_max[0])
        return (
            f"uint16 v -> relative inverse depth d = {lo:.6g} + v * {(hi - lo) / U16_MAX:.6g} "
            "(per-clip min-max; larger d = nearer; raw_min/raw_max in the payload)"
        )
    return (
        "uint16 v -> relative inverse depth d = raw_min[f] + v * (raw_max[f] - raw_min[f]) / 65535 "
        "(per-frame min-max; larger d = nearer; raw_min/raw_max in the payload)"
    )


def depth_preview(u16: np.ndarray) -> np.ndarray:
    """uint16 depth frames -> RGB frames coloured with inferno (bright = near)."""
    out = np.empty((*u16.shape, 3), np.uint8)
    for i, frame in enumerate(u16):
        bgr = cv2.applyColorMap((frame >> 8).astype(np.uint8), cv2.COLORMAP_INFERNO)
        out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


# --------------------------------------------------------------------------- facts

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def _region_name(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return f"middle {_COLS[col]}"
    return f"{_ROWS[row]} {_COLS[col]}"


def _per_frame_unit(depth: np.ndarray) -> np.ndarray:
    d = depth.astype(np.float64)
    lo = d.min(axis=(1, 2), keepdims=True)
    span = d.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (d - lo) / np.where(span > 0, span, 1.0), 0.0)


def measure_layout(depth: np.ndarray) -> DepthLayout:
    """Scene layout from [F, H, W] relative inverse depth (larger = nearer).

    Every frame is first scaled to 0..1 on its own, because Depth Anything's relative depth is
    only defined up to a per-frame scale and shift. The 3x3 grid of the mean map names where
    the nearest and farthest regions are; the thirds of the depth range give near/far
    coverage; Otsu's split of each frame's depth histogram separates a foreground; the mean
    absolute change between sampled frames says whether the layout stays put.
    """
    if depth.ndim != 3 or depth.shape[0] == 0:
        raise ValueError(f"expected depth [F, H, W] with F >= 1, got {depth.shape}")
    unit = _per_frame_unit(depth)
    f, h, w = unit.shape
    change = float(np.abs(np.diff(unit, axis=0)).mean()) if f > 1 else 0.0
    if float(unit.max()) == 0.0:
        return DepthLayout(
            nearest_region="center",
            farthest_region="center",
            near_fraction=0.0,
            far_fraction=1.0,
            foreground_fraction=0.0,
            mean_change=round(change, 4),
            flat=True,
        )
    mean = unit.mean(axis=0)
    rows = np.array_split(np.arange(h), 3)
    cols = np.array_split(np.arange(w), 3)
    grid = np.array([[mean[np.ix_(r, c)].mean() for c in cols] for r in rows])
    near_r, near_c = (int(v) for v in np.unravel_index(int(np.argmax(grid)), grid.shape))
    far_r, far_c = (int(v) for v in np.unravel_index(int(np.argmin(grid)), grid.shape))
    coverage, cy, cx = [], [], []
    for frame in unit:
        u8 = np.rint(frame * 255).astype(np.uint8)
        _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        fg = mask.astype(bool)
        coverage.append(float(fg.mean()))
        if fg.any():
            ys, xs = np.nonzero(fg)
            cy.append(float(ys.mean()) / h)
            cx.append(float(xs.mean()) / w)
    fg_region = (
        _region_name(min(2, int(np.mean(cy) * 3)), min(2, int(np.mean(cx) * 3))) if cy else ""
    )
    return DepthLayout(
        nearest_region=_region_name(near_r, near_c),
        farthest_region=_region_name(far_r, far_c),
        near_fraction=round(float((unit >= 2 / 3).mean()), 4),
        far_fraction=round(float((unit <= 1 / 3).mean()), 4),
        foreground_fraction=round(float(np.mean(coverage)), 4),
        foreground_region=fg_region,
        mean_change=round(change, 4),
    )


def _where(region: str) -> str:
    return "the middle of the frame" if region == "center" else f"the {region} of the frame"


def layout_facts(layout: DepthLayout, frames: int) -> list[str]:
    """The caption writer's sentences for a measured :class:`DepthLayout`."""
    if layout.flat:
        return ["Depth layout: the depth maps are flat (no measurable depth variation)."]
    facts = [
        f"Depth layout: the nearest region is {_where(layout.nearest_region)}; "
        f"the farthest is {_where(layout.farthest_region)}.",
        f"About {layout.near_fraction:.0%} of the frame lies in the nearest third of the depth "
        f"range and {layout.far_fraction:.0%} in the farthest third.",
    ]
    if layout.foreground_region:
        facts.append(
            f"A foreground (nearer than the Otsu split of the depth histogram) covers about "
            f"{layout.foreground_fraction:.0%} of the frame, centred in "
            f"{_where(layout.foreground_region)}."
        )
    if frames > 1:
        if layout.mean_change < 0.03:
            verdict = "the depth layout stays stable across the clip"
        elif layout.mean_change < 0.1:
            verdict = "the depth layout changes moderately across the clip"
        else:
            verdict = "the depth layout changes substantially (camera or subject motion)"
        facts.append(
            f"Over {frames} depth frames {verdict} (mean change between frames: "
            f"{layout.mean_change:.2f} of the depth range)."
        )
    return facts


# --------------------------------------------------------------------------- condition type

# Phrases that state depth or layout outright; ordinary scene nouns are left alone.
_DEPTH_PHRASES = re.compile(
    r"\b(depth|distance|distances|in the (fore|back)ground|(close|closer|near|nearer|far|farther|"
    r"further) (to|from) the (camera|viewer|lens)|meters? away|feet away)\b",
    re.IGNORECASE,
)
_CAMERA_WORDS = re.compile(
    r"\b(camera|shot|pans?|panning|tilts?|tilting|zooms?|zooming|dolly|dollies|tracking|"
    r"handheld|static|stationary|still|orbits?|pushes in|pulls (back|out)|truck(s|ing)?|pedestal)\b",
    re.IGNORECASE,
)
FEW_DEPTH_FRAMES = 5


class DepthConditionType(ConditionType[DepthCondition]):
    name: ClassVar[str] = "depth"
    summary_model: ClassVar[type[BaseModel]] = DepthCondition
    description: ClassVar[str] = (
        "Depth Anything relative inverse depth per sampled frame (uint16 .npz + preview MP4)"
    )

    # Any clip that is not degenerate: black (mean luma under 2%), flat depth maps, or frozen
    # (neither the pixels nor the depth maps change between samples). Brightness and motion
    # come from the clip_stats stage and are not judged when it did not run.
    default_thresholds: ClassVar[dict[str, float]] = {
        "min_mean_brightness": 0.02,
        "min_motion_magnitude": 0.001,
        "min_depth_change": 0.002,
    }

    def suitability(
        self, summary: BaseModel, record: Record, thresholds: Mapping[str, float]
    ) -> Suitability:
        s = self.summary_of(summary)
        min_bright = float(thresholds["min_mean_brightness"])
        min_motion = float(thresholds["min_motion_magnitude"])
        min_change = float(thresholds["min_depth_change"])
        measured: dict[str, float] = {}
        stats, layout = record.stats, s.layout
        if stats is not None:
            measured["mean_brightness"] = stats.mean_brightness
            measured["motion_magnitude"] = stats.motion_magnitude
        if layout is not None:
            measured["depth_mean_change"] = layout.mean_change
            measured["flat"] = 1.0 if layout.flat else 0.0
        problems = []
        if stats is not None and stats.mean_brightness < min_bright:
            problems.append(
                f"the clip is black (mean brightness {stats.mean_brightness:.3f} < {min_bright:.3f})"
            )
        if layout is not None and layout.flat:
            problems.append("the depth maps are flat (no measurable depth variation)")
        still = stats is None or stats.motion_magnitude < min_motion
        if layout is not None and s.frames > 1 and still and layout.mean_change < min_change:
            motion = (
                ""
                if stats is None
                else f"pixel motion {stats.motion_magnitude:.4f} < {min_motion:.4f}, "
            )
            problems.append(
                f"the clip is frozen ({motion}depth change {layout.mean_change:.4f} < "
                f"{min_change:.4f})"
            )
        limits = {
            "min_mean_brightness": min_bright,
            "min_motion_magnitude": min_motion,
            "min_depth_change": min_change,
        }
        if problems:
            reason = "the clip is degenerate for depth: " + "; ".join(problems)
        else:
            parts = []
            if stats is not None:
                parts.append(f"mean brightness {stats.mean_brightness:.3f} >= {min_bright:.3f}")
            if layout is not None:
                parts.append("the depth maps vary")
                parts.append(
                    f"pixel motion {stats.motion_magnitude:.4f} (min {min_motion:.4f}) or depth "
                    f"change {layout.mean_change:.4f} (min {min_change:.4f}) shows change"
                    if stats is not None
                    else f"depth change {layout.mean_change:.4f} (min {min_change:.4f})"
                )
            reason = "the clip is not degenerate: " + ("; ".join(parts) or "nothing measured")
        return Suitability(
            suitable=not problems, reason=reason, measured=measured, thresholds=limits
        )

    def decode_payload(self, summary: BaseModel, read: PayloadReader) -> dict[str, np.ndarray]:
        """``depth`` float32 [F, H, W] relative inverse depth (larger = nearer), ``depth_u16``,
        ``raw_min``/``raw_max`` [F], ``timestamps_s`` [F], and ``preview`` [F, H, W, 3] uint8
        when the record has one."""
        summary = self.summary_of(summary)
        with np.load(io.BytesIO(read(summary.payload))) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["depth_u16"] = arrays.pop("depth")
        arrays["depth"] = denormalize_depth(
            arrays["depth_u16"], arrays["raw_min"], arrays["raw_max"]
        )
        if summary.preview is not None:
            arrays["preview"] = decode_mp4(read(summary.preview))
        return arrays

    def grounding_facts(self, summary: BaseModel, record: Record) -> list[str]:
        s = self.summary_of(summary)
        return [] if s.layout is None else layout_facts(s.layout, s.frames)

    def short_prompt_rules(self, summary: BaseModel, record: Record) -> list[str]:
        summary = self.summary_of(summary)
        rules = [
            "The depth maps already show the scene's layout and geometry (what is near or far, "
            "where foreground and background lie, distances): do not restate them."
        ]
        if record.conditions.camera is None:
            if summary.frames <= FEW_DEPTH_FRAMES:
                rules.append(
                    f"Only {summary.frames} depth frames are given, too few to show how the "
                    "camera moves: do describe the camera movement (or that it is static)."
                )
            else:
                rules.append(
                    f"The {summary.frames} depth frames also show how the camera moves: the "
                    "camera movement need not be described."
                )
        return rules

    def short_prompt_violations(self, prompt: str, summary: BaseModel, record: Record) -> list[str]:
        summary = self.summary_of(summary)
        found = []
        phrases = sorted({m.group(0).lower() for m in _DEPTH_PHRASES.finditer(prompt)})
        if phrases:
            found.append(
                "restates the scene's depth or layout, which the depth maps show: "
                + ", ".join(repr(p) for p in phrases)
            )
        if (
            record.conditions.camera is None
            and summary.frames <= FEW_DEPTH_FRAMES
            and not _CAMERA_WORDS.search(prompt)
        ):
            found.append(
                f"does not describe the camera movement, which {summary.frames} depth frames "
                "cannot show"
            )
        return found


# --------------------------------------------------------------------------- annotator


class DepthAnnotator(Annotator):
    """Depth Anything over the sampled frames of each clip, batched across clips."""

    name: ClassVar[str] = "depth"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = DepthConfig
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=16, max_side=512)
    # CPU by default so a recipe runs anywhere; give num_gpus (e.g. 0.25) to use a GPU.
    default_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=2, concurrency=1)
    writes: ClassVar[tuple[str, ...]] = (DepthConditionType.output_key(),)

    config: DepthConfig

    @classmethod
    def preflight(cls, config: AnnotatorConfig) -> None:
        cls.check_requires()
        model = cast(DepthConfig, config).model
        source, _ = cls._locate(model)
        problem = model_folder_problem(source, local=Path(source).is_dir())
        if problem is not None:
            raise MissingDependency(cls._how_to_provide(model, problem))

    def setup(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        cfg = self.config
        self.device, self.dtype = torch_device("depth", cfg.device, cfg.threads)
        source, local_only = self._locate(cfg.model)
        try:
            self.processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                source, local_files_only=local_only
            )
            model = AutoModelForDepthEstimation.from_pretrained(
                source, local_files_only=local_only, dtype=self.dtype
            )
        except (OSError, ValueError) as e:
            raise MissingDependency(self._how_to_provide(cfg.model, str(e))) from e
        kind = getattr(model.config, "depth_estimation_type", "relative")
        if kind != "relative":
            raise MissingDependency(
                f"depth model {cfg.model!r} estimates {kind} depth; this stage stores relative "
                "inverse depth: use a relative checkpoint such as "
                f"{DEFAULT_DEPTH_MODEL!r}"
            )
        self.model = model.to(self.device).eval()
        self.model_version = self._version(source)

    @classmethod
    def _locate(cls, model: str) -> tuple[str, bool]:
        path = Path(model).expanduser()
        if path.is_dir():
            return str(path), True
        if _looks_like_path(model) or path.exists():
            raise MissingDependency(cls._how_to_provide(model, f"no model directory at {path}"))
        return model, hub_cache_only()

    @staticmethod
    def _how_to_provide(model: str, reason: str) -> str:
        hub_id = model if not _looks_like_path(model) else DEFAULT_DEPTH_MODEL
        return (
            f"depth model {model!r} is not available ({reason.splitlines()[0][:300]}). "
            f"On a machine with internet access run `hf download {hub_id} --local-dir DIR`, "
            f"copy DIR here and point the stage at it (params.model or {ENV_DEPTH_MODEL}=DIR); "
            "DIR must hold config.json, preprocessor_config.json and the weights. A hub id is "
            "read from the Hugging Face cache (ANY2CAP_ALLOW_DOWNLOADS=1 lets the stage "
            "download it). " + fetch_hint("depth")
        )

    def _version(self, source: str) -> str:
        folder = Path(source)
        if folder.is_dir():
            return _weights_digest(folder)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        if isinstance(cached, str):
            # .../snapshots/<commit>/config.json
            return Path(cached).parent.name
        return ""

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                model_id=self.config.model,
                version=self.model_version,
                license=depth_license(self.config.model, self.config.license),
            )
        ]

    def predict(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Same-size RGB frames -> relative inverse depth maps at the frames' size (float32)."""
        import torch

        if not frames:
            return []
        h, w = frames[0].shape[:2]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if self.config.input_size is not None:
            kwargs["size"] = {"height": self.config.input_size, "width": self.config.input_size}
        out: list[np.ndarray] = []
        bs = self.config.model_batch_size
        for i in range(0, len(frames), bs):
            chunk = frames[i : i + bs]
            inputs = self.processor(images=chunk, **kwargs)
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                result = self.model(pixel_values=pixels)
            # Resize in float32: fp16 bicubic can overflow on large inverse depths.
            result.predicted_depth = result.predicted_depth.float()
            post = self.processor.post_process_depth_estimation(
                result, target_sizes=[(h, w)] * len(chunk)
            )
            out.extend(p["predicted_depth"].float().cpu().numpy() for p in post)
        return out

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        # Frames of every clip in the batch share forward passes when their sizes agree.
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for ci, item in enumerate(batch):
            if item.frames.ndim != 4 or item.frames.shape[0] == 0:
                continue
            for fi in range(item.frames.shape[0]):
                groups.setdefault(item.frames.shape[1:3], []).append((ci, fi))
        maps: dict[tuple[int, int], np.ndarray] = {}
        for keys in groups.values():
            preds = self.predict([batch[ci].frames[fi] for ci, fi in keys])
            maps.update(zip(keys, preds, strict=True))
        out: list[dict[str, Any] | BaseException] = []
        for ci, item in enumerate(batch):
            try:
                if item.frames.ndim != 4 or item.frames.shape[0] == 0:
                    raise ValueError(f"expected frames [T, H, W, 3], got {item.frames.shape}")
                depth = np.stack([maps[(ci, fi)] for fi in range(item.frames.shape[0])])
                out.append(self._finish(item, depth))
            except Exception as e:  # noqa: BLE001 - one bad clip must not fail its batch
                out.append(e)
        return out

    def _finish(self, item: ClipInput, depth: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        u16, lo, hi = normalize_depth(depth, per_frame=cfg.normalization == "frame")
        times = np.asarray(item.timestamps_s, dtype=np.float64)
        buf = io.BytesIO()
        np.savez_compressed(buf, depth=u16, raw_min=lo, raw_max=hi, timestamps_s=times)
        payload = item.artifacts.put("depth.npz", buf.getvalue(), "application/x-npz")
        preview = None
        if cfg.preview:
            video = encode_mp4(depth_preview(u16), playback_fps(len(u16), item.clip.duration_s))
            preview = item.artifacts.put("depth_preview.mp4", video, "video/mp4")
        summary = DepthCondition(
            model_id=cfg.model,
            frames=int(u16.shape[0]),
            timestamps_s=[round(t, 4) for t in item.timestamps_s],
            normalization=normalization_text(cfg.normalization, lo, hi),
            payload=payload,
            preview=preview,
            layout=measure_layout(depth),
            frame_grid=cfg.frame_grid,
        )
        return DepthConditionType.to_output(summary)


DepthConditionType.annotators = (DepthAnnotator,)

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "ENV_DEPTH_MODEL",
    "DepthAnnotator",
    "DepthConditionType",
    "DepthConfig",
    "denormalize_depth",
    "depth_license",
    "layout_facts",
    "measure_layout",
    "normalize_depth",
]
