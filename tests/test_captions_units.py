"""The caption writer's parts on their own: config resolution, templates, structural checks,
tolerant parsing, facts and colour names, rate limiter, backoff, the grounded writer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from any2capins.annotators import PROVENANCE_KEY, config_hash
from any2capins.annotators.captions import (
    CaptionsAnnotator,
    CaptionsConfig,
    InvalidCaption,
    caption_integrity,
    load_templates,
)
from any2capins.annotators.captions.facts import build_context, colour_name
from any2capins.annotators.captions.grounded import compose
from any2capins.annotators.captions.limits import RateLimiter, backoff_delay, retry_after_seconds
from any2capins.annotators.captions.templates import TEMPLATE_NAMES
from any2capins.annotators.captions.validate import (
    is_refusal,
    parse_answer,
    part_problems,
    word_count,
)
from any2capins.annotators.captions.writer import part_messages
from tests.openai_server import TEST_TYPES, make_inputs, make_record

ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL", "ANY2CAP_CACHE_DIR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANY2CAP_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setattr(
        "any2capins.annotators.captions.annotator.condition_types", lambda: TEST_TYPES
    )


# configuration
def test_auto_writer_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANY2CAP_CACHE_DIR")
    assert CaptionsConfig().resolved_cache_dir().endswith("any2capins/captions")
    assert CaptionsConfig().writer == "grounded"
    assert CaptionsConfig().model is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("OPENAI_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct")
    cfg = CaptionsConfig()
    assert cfg.writer == "openai" and cfg.base_url == "http://127.0.0.1:8000/v1"
    assert cfg.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    grounded_hash = config_hash(CaptionsConfig(writer="grounded"))
    assert config_hash(cfg) != grounded_hash  # switching to an endpoint re-runs the stage
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    cfg = CaptionsConfig()
    assert cfg.writer == "openai" and cfg.base_url is None  # api.openai.com
    assert "sk-secret" not in cfg.model_dump_json()  # the key never enters config or hash


def test_bounds_merge_and_unknown_keys_are_refused() -> None:
    cfg = CaptionsConfig.model_validate(
        {"bounds": {"components": {"camera": {"min": 3, "max": 50}}}}
    )
    assert cfg.bounds.components["camera"].min == 3
    assert cfg.bounds.components["dense"].min == 40  # the others keep their defaults
    with pytest.raises(ValidationError, match="unknown components"):
        CaptionsConfig.model_validate({"bounds": {"components": {"camra": {"min": 1, "max": 9}}}})
    with pytest.raises(ValidationError, match="larger than max"):
        CaptionsConfig.model_validate({"bounds": {"short_prompt": {"min": 90, "max": 10}}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        CaptionsConfig.model_validate({"limits": {"concurency": 3}})


def test_openai_writer_without_endpoint_is_a_clear_error() -> None:
    from any2capins.annotators import MissingDependency

    with pytest.raises(MissingDependency, match="OPENAI_API_KEY"):
        CaptionsAnnotator(CaptionsConfig(writer="openai"))


# templates
def test_templates_are_versioned_files_with_hashes() -> None:
    t = load_templates("v1")
    hashes = t.hashes()
    assert set(hashes) == {f"{n}.v1" for n in TEMPLATE_NAMES}
    assert all(len(h) == 16 for h in hashes.values())
    with pytest.raises(FileNotFoundError, match=r"system\.v9\.txt"):
        load_templates("v9")
    assert (
        CaptionsAnnotator(CaptionsConfig(writer="openai", base_url="http://x/v1")).prompt_hashes()
        == hashes
    )


def test_shared_prefix_is_identical_across_the_seven_requests(tmp_path: Path) -> None:
    record = make_record(tmp_path, 0, camera=True, identities=True)
    cfg = CaptionsConfig(writer="openai", base_url="http://x/v1")
    ctx = build_context(record, TEST_TYPES, cfg.images, with_images=True)
    assert [img.label for img in ctx.images] == [
        "keyframe 1 of 2 at 0.5 s",
        "keyframe 2 of 2 at 1.5 s",
        "identities condition: stitched reference",  # camera's text payload is no image
    ]
    t = load_templates("v1")
    requests = {p: part_messages(ctx, p, t, cfg) for p in ("dense", "camera", "short_prompt")}
    prefixes = [m[:2] for m in requests.values()]
    assert prefixes[0] == prefixes[1] == prefixes[2]
    facts = prefixes[0][1]["content"][0]["text"]
    assert "measured camera motion: slow pan to the left" in facts
    assert "1 main subjects tracked: person" in facts
    assert "Dominant colours by area: brown (60%) and light grey (40%)" in facts
    short = requests["short_prompt"][-1]["content"]
    assert "Do not describe camera movement" in short and "refer to the subjects" in short
    assert "Do not describe camera movement" not in requests["dense"][-1]["content"]
    flat = part_messages(ctx, "dense", t, cfg, shared_prefix=False)
    assert flat[1]["content"][0]["text"].startswith("Component: dense caption.")


# structural checks
def test_word_count_and_text_problems() -> None:
    assert word_count("A dog's well-known trick, 3 times.") == 6
    text = "A woman walks along a quiet street at dusk."
    assert part_problems("camera", text, CaptionsConfig().bounds) == []
    assert any("fewer than" in p for p in part_problems("dense", text, CaptionsConfig().bounds))
    listed = "- a woman\n- a street\n- a dog"
    problems = part_problems("style", listed, CaptionsConfig().grounded_bounds)
    assert any("list" in p for p in problems) and any("line breaks" in p for p in problems)
    assert any(
        "markdown" in p
        for p in part_problems(
            "style", "**Bold** warm light and soft shadows", CaptionsConfig().grounded_bounds
        )
    )
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot describe this video.")
    assert not is_refusal("Sorry-looking clouds hang over a grey harbour.")


def test_caption_integrity_needs_all_six_and_a_prompt() -> None:
    bounds = CaptionsConfig().grounded_bounds
    good = {
        c: "Plain words about the clip here."
        for c in ("dense", "main_object", "background", "camera", "style", "action")
    }
    assert caption_integrity(
        good, "A calm scene in warm brown tones at the end of a day.", bounds
    ).ok
    missing = dict(good, style="")
    verdict = caption_integrity(missing, None, bounds)
    assert not verdict.ok and set(verdict.problems) == {"style", "short_prompt"}


def test_parse_answer_is_tolerant_but_not_lenient() -> None:
    assert parse_answer('{"dense": "A dog runs."}', "dense", True).text == "A dog runs."
    fenced = '```json\n{"dense": "A dog runs."}\n```'
    assert parse_answer(fenced, "dense", True).text == "A dog runs."
    assert parse_answer('{"caption": "A dog runs."}', "dense", True).text == "A dog runs."
    assert parse_answer("Dense caption: A dog runs.", "dense", False).text == "A dog runs."
    assert parse_answer('{"dense": "A dog', "dense", True).problem is not None
    assert parse_answer('{"a": "x", "b": "y"}', "dense", True).problem is not None
    assert parse_answer("A dog runs.", "dense", True).problem is not None


# facts
def test_colour_names() -> None:
    assert colour_name("#000000") == "black"
    assert colour_name("#f4f4f4") == "white"
    assert colour_name("#1f3fbf") == "blue"
    assert colour_name("#c83232") == "red"
    assert colour_name("#7a4a2a") == "brown"
    with pytest.raises(ValueError):
        colour_name("#12")


def test_unregistered_condition_fails_the_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("any2capins.annotators.captions.annotator.condition_types", lambda: {})
    inputs = make_inputs(tmp_path, 2)
    inputs[1].record.conditions.camera = make_record(tmp_path, 1, camera=True).conditions.camera
    out = CaptionsAnnotator(CaptionsConfig())(inputs)
    assert isinstance(out[0], dict)
    assert type(out[1]).__name__ == "CaptionInputError" and "'camera'" in str(out[1])


# limits
def test_rate_limiter_windows() -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=3000, window_s=0.2)
    # 3000 tokens/min over 0.2 s windows = 10 tokens per window: two requests of 5 fit
    start = time.monotonic()
    for _ in range(6):
        limiter.acquire(5)
    assert time.monotonic() - start >= 0.4
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None, window_s=0.2)
    start = time.monotonic()
    for _ in range(4):
        limiter.acquire(1)
    assert time.monotonic() - start >= 0.2  # 2 per window
    limiter.pause(0.15)
    t = time.monotonic()
    limiter.acquire(1)
    assert time.monotonic() - t >= 0.14


def test_backoff_honours_retry_after() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None
    for attempt in range(6):
        d = backoff_delay(attempt, 1.0, 8.0)
        cap = min(8.0, 2.0**attempt)
        assert cap / 2 <= d <= cap
    assert 3.0 <= backoff_delay(0, 1.0, 8.0, retry_after=3.0) <= 3.3


# the grounded writer
def test_grounded_writer_says_only_what_was_measured(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 3, camera=True, identities=True)
    inputs[2].record.stats = None
    out = CaptionsAnnotator(CaptionsConfig())(inputs)
    for o in out:
        assert isinstance(o, dict), o
        assert o[PROVENANCE_KEY]["writer"] == "grounded"
        assert o["provenance.cost_usd"] == 0.0
    first = out[0]
    assert isinstance(first, dict)
    caption = first["caption"].model_dump()
    assert "slow pan to the left" in caption["camera"]
    assert "1 main subjects tracked: person" in caption["main_object"]
    assert "brown (60%) and light grey (40%)" in caption["style"]
    assert "not measured" in caption["background"]
    # the short prompt leaves what the conditions show to the conditions
    prompt = first["short_prompt"]
    assert "pan" not in prompt and "person" not in prompt
    assert (
        TEST_TYPES["camera"].short_prompt_violations(
            prompt, inputs[0].record.conditions.camera, inputs[0].record
        )
        == []
    )  # type: ignore[arg-type]
    no_stats = out[2]
    assert isinstance(no_stats, dict)
    assert "not measured" in no_stats["caption"].style


def test_grounded_writer_drops_sentences_a_rule_forbids(tmp_path: Path) -> None:
    record = make_record(tmp_path, 0, camera=True)
    ctx = build_context(record, TEST_TYPES, CaptionsConfig().images, with_images=False)
    _, prompt = compose(ctx)
    base = prompt

    class Strict(type(TEST_TYPES["camera"])):  # type: ignore[misc]
        def short_prompt_violations(
            self, prompt: str, summary: object, record: object
        ) -> list[str]:
            return ["mentions change"] if "change" in prompt else []

    ctx = build_context(record, {"camera": Strict()}, CaptionsConfig().images, with_images=False)
    _, prompt = compose(ctx)
    assert "change" in base and "change" not in prompt and prompt


def test_grounded_bounds_are_enforced(tmp_path: Path) -> None:
    cfg = CaptionsConfig.model_validate(
        {"grounded_bounds": {"short_prompt": {"min": 60, "max": 100}}}
    )
    out = CaptionsAnnotator(cfg)(make_inputs(tmp_path, 1))
    assert isinstance(out[0], InvalidCaption) and "short prompt" in str(out[0])


# the cache shared by the actors of a pool
def _cache_worker(directory: str, worker: int, n: int) -> int:
    from any2capins.annotators.captions.cache import ResponseCache, Usage

    cache = ResponseCache(directory)
    for i in range(n):
        cache.put(
            f"w{worker}-{i}",
            "m",
            {"choices": [{"message": {"content": str(i)}}]},
            Usage(10, 0, 5),
            0.001,
            "online",
            "run-shared",
            f"clip{i}",
        )
        cache.get(f"w{1 - worker}-{i}")  # read what the other process writes meanwhile
    return n


def test_cache_is_shared_by_processes(tmp_path: Path) -> None:
    import multiprocessing

    from any2capins.annotators.captions import ResponseCache

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.starmap(_cache_worker, [(str(tmp_path), 0, 150), (str(tmp_path), 1, 150)])
    assert done == [150, 150]
    cache = ResponseCache(str(tmp_path))
    spend = cache.spend("run-shared")
    assert spend.requests == 300 and spend.cost_usd == pytest.approx(0.3)
    assert cache.get("w0-149") is not None and cache.get("w1-0") is not None


def _open_at_once(directory: str, barrier: Any, worker: int) -> str | None:
    from any2capins.annotators.captions.cache import ResponseCache, Usage

    barrier.wait()
    cache = ResponseCache(directory)
    cache.put(f"k{worker}", "m", {"n": worker}, Usage(1, 0, 1), 0.0, "online", "r", "c")
    return json.dumps(cache.get(f"k{worker}").response)  # type: ignore[union-attr]


def test_cache_opened_by_many_processes_at_once(tmp_path: Path) -> None:
    """The actors of a pool start together: opening a new cache file at the same instant
    (which switches it to WAL) must not fail any of them with "database is locked"."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = 6
    with ctx.Manager() as manager, ctx.Pool(workers) as pool:
        for round_ in range(4):
            directory = str(tmp_path / f"round{round_}")
            barrier = manager.Barrier(workers)
            got = pool.starmap(_open_at_once, [(directory, barrier, w) for w in range(workers)])
            assert got == [json.dumps({"n": w}) for w in range(workers)]


def test_condition_visuals_plugin_video_and_turns(tmp_path: Path) -> None:
    """A third-party condition's video payload gives frames; the cap is shared in turns."""
    import cv2
    import numpy as np
    from pydantic import BaseModel

    from any2capins.annotators.conditions import ConditionType
    from any2capins.schemas import PayloadRef
    from tests.openai_server import _payload

    class Sketch(BaseModel):
        strokes: int
        animation: PayloadRef

    class SketchType(ConditionType[Sketch]):
        name = "sketch"
        summary_model = Sketch

        def grounding_facts(self, summary: BaseModel, record: object) -> list[str]:
            return ["a hand-drawn sketch outlines the scene"]

    path = tmp_path / "sketch.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    record = make_record(tmp_path, 0, identities=True)
    ref = _payload(path, path.read_bytes(), "video/mp4")
    record.conditions.extra["sketch"] = Sketch(strokes=3, animation=ref).model_dump_json()
    types = {**TEST_TYPES, "sketch": SketchType()}
    cfg = CaptionsConfig.model_validate({"images": {"condition_images": 2, "video_frames": 3}})
    ctx = build_context(record, types, cfg.images, with_images=True)
    labels = [i.label for i in ctx.images]
    assert labels[2:] == [
        "identities condition: stitched reference",
        "sketch condition: animation, frame 1 of 3",
    ]
    assert "- sketch: a hand-drawn sketch outlines the scene" in ctx.facts_text()
    cfg = CaptionsConfig.model_validate({"images": {"condition_images": 8, "video_frames": 3}})
    ctx = build_context(record, types, cfg.images, with_images=True)
    assert len(ctx.images) == 2 + 1 + 3
