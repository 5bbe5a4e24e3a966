"""Ray pipeline overhead: wall time of the Ray build vs the same stages in a plain loop."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from any2capins.pipeline.build import run_build
from any2capins.pipeline.sources import list_sources
from any2capins.workflows.recipes import load_recipe


def run(input_dir: str, repeats: int = 2, recipe: str = "demo") -> dict[str, Any]:
    resolved = load_recipe(recipe)
    sources = list_sources(input_dir)
    walls: dict[str, list[float]] = {"ray": [], "local": []}
    clips = 0
    # Warm Ray up once so the ratio measures the pipeline, not the cluster start.
    from any2capins.pipeline.engine import ensure_ray

    t0 = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - t0
    for _ in range(repeats):
        for executor in ("local", "ray"):
            out = tempfile.mkdtemp(prefix=f"bench-{executor}-")
            try:
                t = time.perf_counter()
                report = run_build(resolved, sources, out, executor=executor)
                walls[executor].append(time.perf_counter() - t)
                clips = report.records_ok
                assert report.failed == 0, report.failures
            finally:
                shutil.rmtree(out, ignore_errors=True)
    best = {k: min(v) for k, v in walls.items()}
    return {
        "recipe": recipe,
        "clips": clips,
        "sources": [Path(s.uri).name for s in sources],
        "repeats": repeats,
        "ray_init_seconds": round(ray_start, 2),
        "local_wall_s": round(best["local"], 3),
        "ray_wall_s": round(best["ray"], 3),
        "overhead_ratio_ray_over_loop": round(best["ray"] / best["local"], 3),
    }
