"""Caption writer benchmarks against the local OpenAI-compatible test server.

1. Throughput: clips per minute with the server adding a fixed latency to every request,
   as a ratio of the ideal ``concurrency / latency / 7 requests per clip`` (what a writer
   with no overhead and no idle slots would reach).
2. Prompt caching: input tokens per clip with the shared-prefix layout (system, facts and
   images first, identical across a clip's seven requests) vs the instruction-first layout,
   with the server simulating provider-side prefix caching the way OpenAI documents it
   (prefixes of at least 1024 tokens, in 128-token steps; image tokens by OpenAI's formula).

Keyframes are the demo clips' own, produced by the demo recipe's earlier stages.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARTS_PER_CLIP = 7


def _demo_records(clips_dir: str, work: str) -> list[Any]:
    """Records with statistics and keyframes: the demo recipe without its captions stage."""
    import yaml

    from any2capins.annotators import all_annotators
    from any2capins.pipeline.build import run_build
    from any2capins.pipeline.recipe import resolve_recipe
    from any2capins.pipeline.rundir import RunDir
    from any2capins.pipeline.sources import list_sources

    data = yaml.safe_load((REPO / "workflows" / "recipes" / "demo.yaml").read_text())
    data["stages"] = [s for s in data["stages"] if s["annotator"] != "captions"]
    resolved = resolve_recipe(data, all_annotators())
    report = run_build(resolved, list_sources(clips_dir), work, executor="local")
    if report.failed:
        raise RuntimeError(f"demo build failed: {report.failures}")
    return sorted(RunDir(work).records(), key=lambda r: r.clip.source_uri)


def _inputs(records: list[Any], n: int) -> list[Any]:
    from any2capins.annotators import ClipInput

    class _NoArtifacts:
        def put(self, name: str, data: bytes, media_type: str) -> Any:
            raise AssertionError("captions write no payloads")

    return [
        ClipInput(
            clip=records[i % len(records)].clip,
            frames=np.zeros((1, 8, 8, 3), np.uint8),
            timestamps_s=[0.0],
            record=records[i % len(records)],
            artifacts=_NoArtifacts(),
        )
        for i in range(n)
    ]


def _config(base_url: str, cache_dir: str, **params: Any) -> Any:
    from any2capins.annotators.captions import CaptionsConfig

    return CaptionsConfig.model_validate(
        {
            "writer": "openai",
            "base_url": base_url,
            "model": "bench-model",
            "cache_dir": cache_dir,
            **params,
        }
    )


def throughput(
    records: list[Any], clips: int, latency_s: float, concurrency: int, batch_size: int, work: str
) -> dict[str, Any]:
    from any2capins.annotators.captions import CaptionsAnnotator
    from tests.openai_server import FakeOpenAI

    with FakeOpenAI(latency_s=latency_s) as server:
        # cache off: the benchmark repeats the demo clips and must not answer from disk
        config = _config(
            server.base_url,
            os.path.join(work, "cache-throughput"),
            cache=False,
            limits={"concurrency": concurrency},
        )
        annotator = CaptionsAnnotator(config)
        inputs = _inputs(records, clips)
        t = time.perf_counter()
        ok = 0
        # batches as the engine hands them to the stage's actor
        for i in range(0, len(inputs), batch_size):
            ok += sum(isinstance(o, dict) for o in annotator(inputs[i : i + batch_size]))
        wall = time.perf_counter() - t
        annotator.close()
        assert server.stats.max_in_flight <= concurrency
        requests = server.stats.chat_requests
    ideal = concurrency / latency_s / PARTS_PER_CLIP * 60
    measured = ok / wall * 60
    return {
        "clips": clips,
        "captioned": ok,
        "requests": requests,
        "latency_s": latency_s,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "wall_s": round(wall, 2),
        "clips_per_min": round(measured, 1),
        "ideal_clips_per_min": round(ideal, 1),
        "ratio_of_ideal": round(measured / ideal, 3),
    }


def prompt_tokens(records: list[Any], detail: str, keyframes: int, work: str) -> dict[str, Any]:
    """Input tokens per clip, both layouts, through the real client and the test server."""
    from any2capins.annotators.captions.cache import ResponseCache
    from any2capins.annotators.captions.client import CaptionClient
    from any2capins.annotators.captions.config import PARTS
    from any2capins.annotators.captions.facts import build_context
    from any2capins.annotators.captions.templates import load_templates
    from any2capins.annotators.captions.writer import part_messages
    from tests.openai_server import FakeOpenAI

    out: dict[str, Any] = {"detail": detail, "keyframes": keyframes, "clips": len(records)}
    for layout, shared in (("shared_prefix", True), ("instruction_first", False)):
        with FakeOpenAI() as server:
            config = _config(
                server.base_url,
                os.path.join(work, f"cache-{detail}-{layout}"),
                images={"detail": detail, "keyframes": keyframes},
            )
            client = CaptionClient(config, ResponseCache(config.resolved_cache_dir()))
            templates = load_templates(config.templates)
            for record in records:
                ctx = build_context(record, {}, config.images, with_images=True)
                for part in PARTS:
                    messages = part_messages(ctx, part, templates, config, shared_prefix=shared)
                    client.complete(messages, part, record.clip_id, "bench")
            client.close()
            st = server.stats
            n = len(records)
            out[layout] = {
                "input_tokens_per_clip": round(st.prompt_tokens / n),
                "cached_tokens_per_clip": round(st.cached_tokens / n),
                "uncached_tokens_per_clip": round((st.prompt_tokens - st.cached_tokens) / n),
                # billed input at a 50% cached-token discount (gpt-4o class)
                "billed_equivalent_per_clip": round((st.prompt_tokens - st.cached_tokens / 2) / n),
            }
    a, b = out["shared_prefix"], out["instruction_first"]
    out["billed_ratio_shared_over_instruction_first"] = round(
        a["billed_equivalent_per_clip"] / b["billed_equivalent_per_clip"], 3
    )
    return out


def run(
    clips_dir: str | None = None,
    clips: int = 48,
    latency_s: float = 0.3,
    concurrency: int = 8,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Both figures; about 20 s with the defaults."""
    if str(REPO) not in sys.path:  # the test server lives in tests/
        sys.path.insert(0, str(REPO))
    work = tempfile.mkdtemp(prefix="bench-captions-")
    saved = {k: os.environ.pop(k, None) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    try:
        records = _demo_records(
            clips_dir or str(REPO / "demo" / "clips"), os.path.join(work, "run")
        )
        return {
            "throughput": throughput(records, clips, latency_s, concurrency, batch_size, work),
            "prompt_tokens": {
                "low_detail_4_keyframes": prompt_tokens(records, "low", 4, work),
                "high_detail_4_keyframes": prompt_tokens(records, "high", 4, work),
            },
        }
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import json

    sys.stdout.write(json.dumps(run(), indent=1) + "\n")
