"""The cheap recipe the engine-scale benchmarks share (bench/resume.py, bench/scale.py):
clip statistics, two small keyframes (the captions stage reads them) and the offline
grounded caption writer; no model, no network, so what they measure is the engine."""

from __future__ import annotations

from typing import Any


def cheap_recipe(name: str) -> dict[str, Any]:
    """A fresh copy of the recipe, named ``name``."""
    stage_resources = {"num_cpus": 0.5, "batch_size": 8, "concurrency": 1}
    return {
        "name": name,
        "description": "Clip statistics, two small keyframes and grounded captions: no model.",
        "spans": {"mode": "whole", "min_len_s": 0.5, "max_len_s": 30.0},
        "stages": [
            {
                "annotator": "clip_stats",
                "params": {"palette_size": 3},
                "sampling": {"num_frames": 4, "max_side": 64},
                "resources": dict(stage_resources),
            },
            {
                "annotator": "keyframes",
                "sampling": {"num_frames": 2, "max_side": 64},
                "resources": dict(stage_resources),
            },
            {
                "annotator": "captions",
                "depends_on": ["clip_stats", "keyframes"],
                "params": {"writer": "grounded"},
                "resources": {"num_cpus": 0.25, "batch_size": 16, "concurrency": 1},
            },
        ],
    }
