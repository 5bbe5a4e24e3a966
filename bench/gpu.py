"""GPU throughput of the depth and identities stages with full-size, randomly initialised models.

The models are built in code from the published configs (no download): Depth Anything V2
Small (DINOv2 ViT-S/14 backbone + DPT head, ~24.8 M parameters) and SAM 2.1 hiera-tiny
(~38.9 M). Random weights cost exactly what the trained ones do, so clips/hour and GPU
utilisation are those of the real models; the outputs are meaningless. Both are saved to a
temporary folder with their processors and loaded by the stages' own code
(``DepthAnnotator`` / ``IdentitiesAnnotator``), as ``tests/tiny_models.py`` does for the tiny
ones. The YOLOX detector is a constant ONNX graph (``tests/tiny_sam2.tiny_coco_detector``,
always a person and a dog): its cost is not what this measures, and a constant detector keeps
SAM 2's work (two tracked objects per clip) the same on every clip.

Clips: one generated 640x360 video (``tests/media.py``) sampled at 49 frames with each stage's
default ``max_side`` (depth 512, identities 640), reused as N clips with distinct ids. Each
stage: one warm-up batch (not timed), then batches until the clip count or the stage's time
budget is reached, so the whole benchmark stays under 8 minutes on one H200.

Precision: depth runs fp16 (the stage's own choice on CUDA). The identities stage loads SAM 2
in fp32, so it runs under ``torch.autocast(float16)``; if that fails in the warm-up it falls
back to fp32 and says so in the result.

Without CUDA it raises :class:`bench.__main__.Skip`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.__main__ import Skip as Skip  # re-exported: bench.__main__ catches it

REPO = Path(__file__).resolve().parents[1]
FRAMES = 49

# Published configs (config.json of the hub checkpoints), written out so nothing is downloaded.
# depth-anything/Depth-Anything-V2-Small-hf
DEPTH_V2_SMALL: dict[str, Any] = {
    "backbone": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "layerscale_value": 1.0,
        "out_indices": [3, 6, 9, 12],
        "reshape_hidden_states": False,
    },
    "patch_size": 14,
    "reassemble_hidden_size": 384,
    "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [48, 96, 192, 384],
    "fusion_hidden_size": 64,
    "head_hidden_size": 32,
    "head_in_index": -1,
    "depth_estimation_type": "relative",
    "input_size": 518,
}
DEPTH_V2_SMALL_PARAMS = 24.8e6

# facebook/sam2.1-hiera-tiny
SAM21_HIERA_TINY: dict[str, Any] = {
    "backbone": {
        "hidden_size": 96,
        "num_attention_heads": 1,
        "image_size": [1024, 1024],
        "blocks_per_stage": [1, 2, 7, 2],
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
        "window_size_per_stage": [8, 4, 14, 7],
        "global_attention_blocks": [5, 7, 9],
        "window_positional_embedding_background_size": [7, 7],
    },
    "vision": {
        "backbone_channel_list": [768, 384, 192, 96],
        "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
        "fpn_hidden_size": 256,
    },
    "prompt_encoder": {"hidden_size": 256, "image_size": 1024, "patch_size": 16},
    "mask_decoder": {
        "hidden_size": 256,
        "mlp_dim": 2048,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
    },
    "image_size": 1024,
    "num_maskmem": 7,
    "memory_attention_hidden_size": 256,
    "memory_attention_num_layers": 4,
    "memory_attention_feed_forward_hidden_size": 2048,
    "memory_attention_rope_feat_sizes": [64, 64],
    "memory_encoder_hidden_size": 256,
    "memory_encoder_output_channels": 64,
    "mask_downsampler_embed_dim": 256,
    "memory_fuser_embed_dim": 256,
    "memory_fuser_intermediate_dim": 1024,
    "max_object_pointers_in_encoder": 16,
}
SAM21_HIERA_TINY_PARAMS = 38.9e6

# Bounded so the whole run (model build, warm-ups, both stages) stays under 8 min on one H200.
DEPTH_CLIPS = 96
IDENTITIES_CLIPS = 24
STAGE_BUDGET_S = 150.0  # timed part of one stage; it stops early (and says so) past this


# --------------------------------------------------------------------------- models


def depth_config() -> Any:
    """Depth Anything V2 Small's ``DepthAnythingConfig`` (DINOv2 ViT-S/14 backbone)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    b = dict(DEPTH_V2_SMALL["backbone"])
    out_indices = b.pop("out_indices")
    backbone = Dinov2Config(**b)
    backbone.out_indices = out_indices
    keys = (
        "patch_size",
        "reassemble_hidden_size",
        "reassemble_factors",
        "neck_hidden_sizes",
        "fusion_hidden_size",
        "head_hidden_size",
        "head_in_index",
        "depth_estimation_type",
    )
    return DepthAnythingConfig(backbone_config=backbone, **{k: DEPTH_V2_SMALL[k] for k in keys})


def sam2_config() -> Any:
    """SAM 2.1 hiera-tiny's ``Sam2VideoConfig``."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    c = SAM21_HIERA_TINY
    vision = Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**c["backbone"]), **c["vision"])
    rest = {
        k: v
        for k, v in c.items()
        if k not in ("backbone", "vision", "prompt_encoder", "mask_decoder")
    }
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(c["prompt_encoder"]),
        mask_decoder_config=dict(c["mask_decoder"]),
        **rest,
    )


def param_count(model_class: Callable[[Any], Any], config: Any) -> int:
    """Parameters of ``model_class(config)``, built on the meta device (no memory, no run)."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def depth_param_count() -> int:
    from transformers import DepthAnythingForDepthEstimation

    return param_count(DepthAnythingForDepthEstimation, depth_config())


def sam2_param_count() -> int:
    from transformers import Sam2VideoModel

    return param_count(Sam2VideoModel, sam2_config())


def save_depth_model(folder: Path, seed: int = 0) -> Path:
    """Random Depth Anything V2 Small + its published preprocessor, loadable by the stage."""
    import torch
    from transformers import DepthAnythingForDepthEstimation

    from tests.tiny_models import save_depth_processor

    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(depth_config())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_depth_processor(folder, DEPTH_V2_SMALL["input_size"])
    return folder


def save_sam2_model(folder: Path, seed: int = 0) -> Path:
    """Random SAM 2.1 hiera-tiny + its 1024 px video processor, loadable by the stage."""
    import torch
    from transformers import Sam2VideoModel

    from tests.tiny_sam2 import save_sam2

    size = SAM21_HIERA_TINY["image_size"]
    torch.manual_seed(seed)
    model = Sam2VideoModel(sam2_config())
    return save_sam2(model, folder, size)


# --------------------------------------------------------------------------- GPU sampling


class GpuSampler:
    """Samples utilisation (%) and memory used (MiB) of GPU 0 every ``period_s`` in a thread,
    with ``nvidia-smi`` (or pynvml when nvidia-smi is missing). Memory is the whole device's,
    other processes included."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.util: list[float] = []
        self.mem_mib: list[float] = []
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader()

    def _reader(self) -> Callable[[], tuple[float, float]] | None:
        smi = shutil.which("nvidia-smi")
        if smi is not None:

            def read_smi() -> tuple[float, float]:
                out = subprocess.run(
                    [
                        smi,
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                        "--id=0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                util, mem = (float(v) for v in out.strip().splitlines()[0].split(","))
                return util, mem

            return read_smi
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            self.problem = "neither nvidia-smi nor pynvml is available"
            return None
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def read_nvml() -> tuple[float, float]:
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return float(rates.gpu), info.used / 2**20

        return read_nvml

    def _loop(self) -> None:
        assert self._read is not None
        while not self._stop.is_set():
            try:
                util, mem = self._read()
            except Exception as e:  # noqa: BLE001 - a failed sample must not stop the bench
                self.problem = f"{type(e).__name__}: {e}"
                return
            self.util.append(util)
            self.mem_mib.append(mem)
            self._stop.wait(self.period_s)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[GpuSampler]:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.util:
            return {"samples": 0, "problem": self.problem or "no samples"}
        return {
            "samples": len(self.util),
            "period_s": self.period_s,
            "util_mean_pct": round(statistics.fmean(self.util), 1),
            "util_max_pct": round(max(self.util), 1),
            "mem_used_mean_mib": round(statistics.fmean(self.mem_mib)),
            "mem_used_max_mib": round(max(self.mem_mib)),
        }


# --------------------------------------------------------------------------- clips


def _clips(work: Path, count: int, max_side: int, tag: str) -> list[Any]:
    """``count`` ClipInputs of one generated 640x360 video sampled at 49 frames (shared
    frames, distinct clip ids and artifact sinks)."""
    from any2capins.annotators import ClipInput
    from any2capins.annotators.base import FrameSampling
    from any2capins.pipeline.storage import ArtifactStore
    from any2capins.pipeline.video import probe_video, sample_frames
    from any2capins.schemas import ClipRef, Provenance, Record
    from tests.media import make_video

    video = work / "clip.mp4"
    if not video.exists():
        make_video(video, seconds=4.0, fps=24, width=640, height=360)
    info = probe_video(str(video))
    sampled = sample_frames(
        str(video),
        info,
        0.0,
        info.duration_s,
        FrameSampling(num_frames=FRAMES, max_side=max_side),
    )
    if sampled.frames.shape[0] != FRAMES:
        raise RuntimeError(f"sampled {sampled.frames.shape[0]} frames, wanted {FRAMES}")
    store = ArtifactStore(str(work / f"artifacts-{tag}"))
    out = []
    for i in range(count):
        clip = ClipRef(
            clip_id=f"gpu-{tag}-{i:04d}",
            source_uri=str(video),
            start_s=0.0,
            end_s=info.duration_s,
            fps=info.fps,
            width=info.width,
            height=info.height,
            num_frames=round(info.duration_s * info.fps),
        )
        record = Record(
            clip=clip, provenance=Provenance(recipe="bench", recipe_hash="", run_id="b")
        )
        sink = store.sink(clip.clip_id, "bench")
        out.append(ClipInput(clip, sampled.frames, list(sampled.timestamps_s), record, sink))
    return out


# --------------------------------------------------------------------------- timing


def _check(outs: list[Any]) -> None:
    for out in outs:
        if isinstance(out, BaseException):
            raise out


def _timed(
    call: Callable[[list[Any]], list[Any]],
    inputs: list[Any],
    batch: int,
    budget_s: float,
) -> dict[str, Any]:
    """Warm-up batch (untimed), then batches until ``inputs`` or ``budget_s`` runs out."""
    import torch

    _check(call(inputs[:batch]))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    sampler = GpuSampler()
    done = 0
    with sampler.sampling():
        started = time.perf_counter()
        for i in range(0, len(inputs), batch):
            chunk = inputs[i : i + batch]
            _check(call(chunk))
            done += len(chunk)
            if time.perf_counter() - started > budget_s:
                break
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    return {
        "clips": done,
        "clips_planned": len(inputs),
        "stopped_by_budget": done < len(inputs),
        "frames_per_clip": FRAMES,
        "wall_s": round(wall, 2),
        "clips_per_hour": round(done / wall * 3600, 1),
        "frames_per_s": round(done * FRAMES / wall, 1),
        "peak_torch_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "gpu": sampler.summary(),
    }


def _depth(models: Path, work: Path, clips: int, budget_s: float) -> dict[str, Any]:
    from any2capins.annotators.depth import DepthAnnotator, DepthConfig

    clips_per_call = 4  # the engine's batch: frames of 4 clips share forward passes
    model_batch = 2 * FRAMES
    annotator = DepthAnnotator(
        DepthConfig(model=str(models / "depth"), device="cuda", model_batch_size=model_batch)
    )
    inputs = _clips(work, clips + clips_per_call, max_side=512, tag="depth")
    result = _timed(annotator, inputs[clips_per_call:], clips_per_call, budget_s)
    return {
        "model": "Depth Anything V2 Small, random weights (published config)",
        "parameters": depth_param_count(),
        "precision": str(annotator.dtype).removeprefix("torch."),
        "clips_per_call": clips_per_call,
        "model_batch_size": model_batch,
        "frame_size": list(inputs[0].frames.shape[1:3]),
        "input_size": DEPTH_V2_SMALL["input_size"],
        **result,
    }


def _identities(models: Path, work: Path, clips: int, budget_s: float) -> dict[str, Any]:
    import torch

    from any2capins.annotators.identities import IdentitiesAnnotator, IdentitiesConfig
    from tests.tiny_sam2 import tiny_coco_detector

    detector = tiny_coco_detector(
        models / "yolox.onnx",
        [(64.0, 40.0, 224.0, 340.0), (400.0, 200.0, 600.0, 330.0)],
        ["person", "dog"],
        [0.9, 0.8],
    )
    annotator = IdentitiesAnnotator(
        IdentitiesConfig(
            detector_model=str(detector), sam2_model=str(models / "sam2"), device="cuda"
        )
    )
    inputs = _clips(work, clips + 1, max_side=640, tag="identities")

    def fp16(batch: list[Any]) -> list[Any]:
        with torch.autocast("cuda", dtype=torch.float16):
            return annotator(batch)

    precision = "fp16 (torch.autocast; the stage loads SAM 2 in fp32)"
    call: Callable[[list[Any]], list[Any]] = fp16
    try:
        _check(fp16(inputs[:1]))
    except Exception as e:  # noqa: BLE001 - fall back to what the stage does by itself
        precision = f"fp32 (autocast fp16 failed: {type(e).__name__}: {str(e)[:200]})"
        call = annotator
    result = _timed(call, inputs[1:], 1, budget_s)
    return {
        "model": "SAM 2.1 hiera-tiny, random weights (published config); YOLOX = constant "
        "ONNX graph (2 objects per clip, its cost is not measured)",
        "parameters": sam2_param_count(),
        "precision": precision,
        "clips_per_call": 1,
        "objects_per_clip": 2,
        "frame_size": list(inputs[0].frames.shape[1:3]),
        **result,
    }


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def run(
    depth_clips: int | None = None,
    identities_clips: int | None = None,
    budget_s: float = STAGE_BUDGET_S,
) -> dict[str, Any]:
    """clips/hour, GPU utilisation and peak memory per stage; Skip without CUDA."""
    try:
        import torch
    except ImportError as e:
        raise Skip("needs torch (with CUDA) for the GPU benchmark") from e
    if not torch.cuda.is_available():
        raise Skip(
            "no CUDA GPU visible (torch.cuda.is_available() is False); run bench/run_gpu.sh "
            "on a machine with a GPU"
        )
    depth_clips = depth_clips or _env_int("BENCH_GPU_DEPTH_CLIPS", DEPTH_CLIPS)
    identities_clips = identities_clips or _env_int("BENCH_GPU_IDENTITIES_CLIPS", IDENTITIES_CLIPS)
    sys.path.insert(0, str(REPO))  # tests/ is not installed: the clip and detector builders
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        started = time.perf_counter()
        save_depth_model(work / "models" / "depth")
        save_sam2_model(work / "models" / "sam2")
        build_s = time.perf_counter() - started
        results: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "model_build_s": round(build_s, 1),
            "stage_budget_s": budget_s,
            "stages": {},
        }
        results["stages"]["depth"] = _depth(work / "models", work, depth_clips, budget_s)
        torch.cuda.empty_cache()
        results["stages"]["identities"] = _identities(
            work / "models", work, identities_clips, budget_s
        )
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rows(g: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: clips/hour against the GPU's utilisation and peak memory."""
    out = []
    for stage, s in g["stages"].items():
        gpu = s["gpu"]
        util = (
            f"GPU util mean {gpu['util_mean_pct']:.0f}% / max {gpu['util_max_pct']:.0f}%"
            if gpu.get("samples")
            else f"GPU util: {gpu.get('problem', 'not sampled')}"
        )
        out.append(
            (
                f"{stage}, clips/hour ({s['clips']} clips x {s['frames_per_clip']} frames, "
                f"{s['precision'].split(' ')[0]}, {s['parameters'] / 1e6:.1f} M params, "
                f"{g['device']})",
                util,
                f"{s['clips_per_hour']:.0f}",
                f"peak torch memory {s['peak_torch_allocated_gib']:.1f} GiB",
            )
        )
    return out


if __name__ == "__main__":
    import json

    sys.stdout.write(json.dumps(run(), indent=1) + "\n")
