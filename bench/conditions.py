"""Depth, pose, identities and camera stage throughput with the tiny test models: the engine under Ray Data and as
a plain loop (``--executor local``), against calling the annotator directly in a loop on
frames decoded beforehand.

The tiny models cost almost nothing, so the figures measure what the pipeline adds around a
model (decoding, payload encoding, markers, Ray scheduling), not model speed: real Depth
Anything and DWPose cost seconds per clip on CPU, which the same overhead then amortises.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from any2capins.annotators import Annotator, ClipInput
from any2capins.annotators.camera import CameraAnnotator
from any2capins.annotators.depth import DepthAnnotator
from any2capins.annotators.identities import IdentitiesAnnotator
from any2capins.annotators.pose import PoseAnnotator
from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import SpanConfig, resolve_recipe
from any2capins.pipeline.sources import list_sources
from any2capins.pipeline.spans import make_spans
from any2capins.pipeline.storage import ArtifactStore
from any2capins.pipeline.video import probe_video, sample_frames
from any2capins.schemas import ClipRef, Provenance, Record

REPO = Path(__file__).resolve().parents[1]
# Fixed 2-second windows of the demo clips, as in bench/demo-windows.yaml: enough clips for a
# steady state.
SPANS: dict[str, Any] = {"mode": "fixed", "window_s": 2.0, "min_len_s": 1.0}
SAMPLING: dict[str, Any] = {"num_frames": 16, "max_side": 512}
RESOURCES: dict[str, Any] = {"num_cpus": 1, "batch_size": 2, "concurrency": 1}


def _tiny_models(folder: Path) -> dict[str, dict[str, str]]:
    sys.path.insert(0, str(REPO))  # tests/ is not installed: the builders live there
    from tests import tiny_models, tiny_sam2

    depth = tiny_models.tiny_depth_model(folder / "depth")
    det, pose = tiny_models.tiny_dwpose(folder / "dwpose")
    # two subjects the detector always finds, in 640x640 letterboxed detector coordinates
    coco = tiny_sam2.tiny_coco_detector(
        folder / "yolox.onnx",
        [(64.0, 40.0, 224.0, 340.0), (400.0, 200.0, 600.0, 330.0)],
        ["person", "dog"],
        [0.9, 0.8],
    )
    return {
        "depth": {"model": str(depth)},
        "pose": {"detector": str(det), "pose_model": str(pose)},
        "identities": {
            "detector_model": str(coco),
            "sam2_model": str(tiny_sam2.tiny_sam2(folder / "sam2")),
        },
        "camera": {},  # OpenCV estimation: no model
    }


def _recipe(stage: str, params: dict[str, str]) -> dict[str, Any]:
    return {
        "name": f"bench-{stage}",
        "spans": SPANS,
        "stages": [
            {"annotator": stage, "params": params, "sampling": SAMPLING, "resources": RESOURCES}
        ],
    }


def _clip_inputs(clips_dir: str, spec_sampling: Any, artifacts: ArtifactStore) -> list[ClipInput]:
    """Every window of every demo clip, decoded once (what the plain loop is handed)."""
    spans = SpanConfig.model_validate(SPANS)
    inputs = []
    for source in list_sources(clips_dir):
        info = probe_video(source.uri)
        for start, end in make_spans(info, source.uri, spans):
            sampled = sample_frames(source.uri, info, start, end, spec_sampling)
            clip = ClipRef(
                clip_id=f"{Path(source.uri).stem}-{start:.1f}",
                source_uri=source.uri,
                start_s=start,
                end_s=end,
                fps=info.fps,
                width=info.width,
                height=info.height,
                num_frames=round((end - start) * info.fps),
            )
            record = Record(
                clip=clip, provenance=Provenance(recipe="bench", recipe_hash="", run_id="bench")
            )
            sink = artifacts.sink(clip.clip_id, "bench")
            inputs.append(ClipInput(clip, sampled.frames, list(sampled.timestamps_s), record, sink))
    return inputs


def _loop(annotator: Annotator, inputs: list[ClipInput], batch_size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        for out in annotator(inputs[i : i + batch_size]):
            if isinstance(out, BaseException):
                raise out
    return time.perf_counter() - started


def run(
    clips_dir: str | None = None, repeats: int = 2, stages: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Best-of-``repeats`` wall time and clips/s per stage for: the annotator in a plain loop
    on pre-decoded frames, the engine's plain loop, and the engine on Ray Data."""
    from any2capins.pipeline.engine import ensure_ray

    clips_dir = clips_dir or str(REPO / "demo" / "clips")
    work = Path(tempfile.mkdtemp(prefix="bench-conditions-"))
    try:
        params = _tiny_models(work / "models")
        registry: dict[str, type[Annotator]] = {
            "depth": DepthAnnotator,
            "pose": PoseAnnotator,
            "identities": IdentitiesAnnotator,
            "camera": CameraAnnotator,
        }
        started = time.perf_counter()
        ensure_ray()  # not counted: the ratio measures the pipeline, not the cluster start
        ray_init = time.perf_counter() - started
        sources = list_sources(clips_dir)
        results: dict[str, Any] = {"ray_init_seconds": round(ray_init, 2), "stages": {}}
        for stage, stage_params in params.items():
            if stages is not None and stage not in stages:
                continue
            resolved = resolve_recipe(_recipe(stage, stage_params), registry)
            spec = resolved.stages[0]
            annotator = spec.build()
            inputs = _clip_inputs(clips_dir, spec.sampling, ArtifactStore(str(work / "loop")))
            annotator(inputs[:1])  # warm-up: first-call allocations are not throughput
            walls: dict[str, list[float]] = {"annotator_loop": [], "local": [], "ray": []}
            clips = 0
            for _ in range(repeats):
                walls["annotator_loop"].append(_loop(annotator, inputs, spec.resources.batch_size))
                for executor in ("local", "ray"):
                    out = work / f"run-{stage}-{executor}"
                    t = time.perf_counter()
                    report = run_build(resolved, sources, str(out), executor=executor)
                    walls[executor].append(time.perf_counter() - t)
                    if report.failed:
                        raise RuntimeError(f"bench {stage}/{executor}: {report.failures[:3]}")
                    clips = report.records_ok
                    shutil.rmtree(out, ignore_errors=True)
            best = {k: min(v) for k, v in walls.items()}
            results["stages"][stage] = {
                "clips": clips,
                "frames_per_clip": SAMPLING["num_frames"],
                "max_side": SAMPLING["max_side"],
                **{f"{k}_wall_s": round(v, 3) for k, v in best.items()},
                **{f"{k}_clips_per_s": round(clips / v, 2) for k, v in best.items()},
                "ratio_local_over_annotator": round(best["local"] / best["annotator_loop"], 2),
                "ratio_ray_over_annotator": round(best["ray"] / best["annotator_loop"], 2),
                "ratio_ray_over_local": round(best["ray"] / best["local"], 2),
            }
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import json

    sys.stdout.write(json.dumps(run(), indent=1) + "\n")
