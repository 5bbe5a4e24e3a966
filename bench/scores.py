"""Curation score stages: each stage's clips/s against decoding the same frames alone, so the
score's own cost shows, on the demo clips.

Every stage runs its real code on the frames its default sampling asks for. Aesthetics runs a
full-size randomly initialised CLIP ViT-L/14 vision tower and a 768-d head (the published
model's compute; no weights can be downloaded here) on one clip: on CPU it costs seconds a
frame, which is why the recipe gives it a GPU on real runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from any2capins.annotators.base import Annotator, ClipInput, FrameSampling
from any2capins.annotators.curation.aesthetics import AestheticsAnnotator
from any2capins.pipeline.video import probe_video, sample_frames
from any2capins.schemas import ClipRef, Provenance, Record

CLIPS = sorted((Path(__file__).resolve().parents[1] / "demo" / "clips").glob("*.mp4"))


def _inputs(sampling: FrameSampling, clips: list[Path]) -> tuple[list[ClipInput], float]:
    """The stage's inputs and the seconds spent decoding them."""
    started = time.perf_counter()
    out = []
    for path in clips:
        info = probe_video(str(path), str(path))
        sampled = sample_frames(str(path), info, 0.0, info.duration_s, sampling)
        clip = ClipRef(
            clip_id=path.stem,
            source_uri=str(path),
            start_s=0.0,
            end_s=info.duration_s,
            fps=info.fps,
            width=info.width,
            height=info.height,
            num_frames=len(sampled.timestamps_s),
        )
        record = Record(clip=clip, provenance=Provenance(recipe="b", recipe_hash="b", run_id="b"))
        out.append(ClipInput(clip, sampled.frames, list(sampled.timestamps_s), record, None))  # type: ignore[arg-type]
    return out, time.perf_counter() - started


def _full_size_aesthetics(folder: Path) -> AestheticsAnnotator:
    """The aesthetics stage built through its real loading code on tiny files, then given a
    full-size random ViT-L/14 vision tower and 768-d head, which cost what the real ones do."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from any2capins.annotators.curation.aesthetics import (
        AestheticsConfig,
        build_head,
        load_head_state,
    )
    from tests.tiny_models import tiny_aesthetic_head, tiny_clip_model

    clip = tiny_clip_model(folder / "clip")
    head = tiny_aesthetic_head(folder / "head.pth")
    stage = AestheticsAnnotator(
        AestheticsConfig(clip_model=str(clip), head=str(head), device="cpu")
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    stage.model = CLIPVisionModelWithProjection(vision).eval()  # type: ignore[no-untyped-call]
    stage.processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    stage.head = build_head(
        load_head_state(tiny_aesthetic_head(folder / "head768.pth", in_features=768))
    )
    return stage


def run() -> dict[str, Any]:
    from any2capins.annotators.curation import (
        CutsAnnotator,
        MotionAnnotator,
        QualityAnnotator,
        TextOverlayAnnotator,
    )

    results: dict[str, Any] = {"clips": len(CLIPS)}
    with tempfile.TemporaryDirectory() as tmp:
        stages: list[tuple[Annotator, list[Path]]] = [
            (QualityAnnotator(), CLIPS),
            (MotionAnnotator(), CLIPS),
            (CutsAnnotator(), CLIPS),
            (TextOverlayAnnotator(), CLIPS),
            (_full_size_aesthetics(Path(tmp)), CLIPS[:1]),
        ]
        for stage, clips in stages:
            items, decode_s = _inputs(stage.default_sampling, clips)
            started = time.perf_counter()
            outputs = stage(items)
            score_s = time.perf_counter() - started
            bad = [o for o in outputs if isinstance(o, BaseException)]
            if bad:
                raise RuntimeError(f"{stage.name}: {bad[0]}")
            n = len(items)
            results[stage.name] = {
                "clips": n,
                "frames": sum(int(i.frames.shape[0]) for i in items),
                "decode_clips_s": n / decode_s,
                "end_to_end_clips_s": n / (decode_s + score_s),
                "ratio_end_to_end_over_decode": decode_s / (decode_s + score_s),
            }
    return results
