"""The model caption writer against a real local HTTP server with faults injected: every
clip ends with all seven parts or a failure, retries and repairs work, the cache makes a
second run free, limits hold, costs add up, the budget stops cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from any2capins.annotators import PROVENANCE_KEY
from any2capins.annotators.captions import (
    PARTS,
    SHORT_PROMPT,
    CaptionsAnnotator,
    CaptionsConfig,
    ResponseCache,
    caption_integrity,
)
from any2capins.annotators.captions.config import Prices
from any2capins.schemas import CAPTION_COMPONENTS, StructuredCaption
from tests.openai_server import TEST_TYPES, FakeOpenAI, make_inputs, match_clip, windows

PRICES = {"input_per_mtok": 2.5, "cached_input_per_mtok": 1.25, "output_per_mtok": 10.0}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANY2CAP_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setattr(
        "any2capins.annotators.captions.annotator.condition_types", lambda: TEST_TYPES
    )


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def annotator(server: FakeOpenAI, cache_dir: Path, **params: Any) -> CaptionsAnnotator:
    limits = {
        "concurrency": 8,
        "timeout_s": 0.6,
        "max_retries": 2,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        **params.pop("limits", {}),
    }
    config = CaptionsConfig.model_validate(
        {
            "writer": "openai",
            "base_url": server.base_url,
            "model": "test-model",
            "cache_dir": str(cache_dir),
            "prices": PRICES,
            "limits": limits,
            **params,
        }
    )
    return CaptionsAnnotator(config)


def check_complete(out: dict[str, Any]) -> None:
    caption = out["caption"]
    assert isinstance(caption, StructuredCaption)
    texts = caption.model_dump()
    assert set(texts) == set(CAPTION_COMPONENTS) and all(texts.values())
    assert out["short_prompt"]
    verdict = caption_integrity(texts, out["short_prompt"], CaptionsConfig().bounds)
    assert verdict.ok, verdict.summary()


def test_fault_matrix_every_clip_complete_or_failed(server: FakeOpenAI, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "data", 14, camera=True)
    plan: dict[int, tuple[str, str, int, dict[str, Any]]] = {
        1: ("429", "dense", 2, {"retry_after": "0.3"}),
        2: ("500", "style", 2, {}),
        3: ("hang", "camera", 1, {"hang_s": 1.5}),
        4: ("malformed_body", "action", 1, {}),
        5: ("malformed_json", "main_object", 1, {}),
        6: ("missing", "background", 1, {}),
        7: ("short", "dense", 1, {}),
        8: ("refusal", SHORT_PROMPT, 1, {}),
        9: ("refusal", "dense", 3, {}),
        10: ("list", "style", 3, {}),
        11: ("500", "action", 10, {}),
        12: ("violation", SHORT_PROMPT, 1, {}),
        13: ("violation", SHORT_PROMPT, 3, {}),
    }
    for i, (kind, part, times, extra) in plan.items():
        server.add_fault(kind, component=part, match=match_clip(i), times=times, **extra)
    ann = annotator(server, tmp_path / "cache")
    outputs = ann(inputs)
    assert len(outputs) == len(inputs)
    failed = {i: o for i, o in enumerate(outputs) if isinstance(o, BaseException)}
    assert {i: type(e).__name__ for i, e in failed.items()} == {
        9: "CaptionRefused",
        10: "InvalidCaption",
        11: "CaptionAPIError",
        13: "InvalidCaption",
    }
    assert "dense caption" in str(failed[9]) and "HTTP 500" in str(failed[11])
    assert "camera movement" in str(failed[13])
    for i, out in enumerate(outputs):
        if i in failed:
            continue
        assert isinstance(out, dict)
        check_complete(out)
        details = out[PROVENANCE_KEY]
        assert details["writer"] == "openai" and details["model"] == "test-model"
        assert details["endpoint"] == server.base_url and "key" not in str(details).lower()
        assert details["conditions"] == "camera"
        # repairs show in provenance exactly where a bad answer was injected
        expected_repairs = 1 if i in (5, 6, 7, 8, 12) else 0
        assert int(details["repairs"]) == expected_repairs, i
        assert out["provenance.tokens_in"] > 0 and out["provenance.cost_usd"] > 0
    # the camera rule reached the short-prompt request, and every request was made by a part
    assert server.stats.by_component.keys() == set(PARTS)
    assert server.stats.max_in_flight <= 8
    # all faults fired as planned (the hang needed a retry after the client's timeout)
    assert server.stats.faults_fired["hang"] == 1
    assert server.stats.faults_fired["429"] == 2


def test_second_run_is_free_and_identical(server: FakeOpenAI, tmp_path: Path) -> None:
    """A re-run replays every valid cached answer for free and asks again only where a cached
    answer was refused by validation (never replayed: it would fail the same way)."""
    inputs = make_inputs(tmp_path / "data", 6, identities=True)
    server.add_fault("short", component="style", match=match_clip(2))
    server.add_fault("refusal", component="dense", match=match_clip(4), times=5)
    first = annotator(server, tmp_path / "cache")(inputs)
    sent = server.stats.chat_requests
    assert sent >= 6 * 7 + 1
    assert isinstance(first[4], BaseException)
    # a new annotator (a resumed crash, a re-run) with the same cache
    second = annotator(server, tmp_path / "cache")(inputs)
    # clip 2's refused first style answer once; clip 4's three refusals (two more refusals
    # left in the fault, then a good answer), plus clip 4's parts that the first run
    # abandoned before sending them (how many depends on timing)
    assert 4 <= server.stats.chat_requests - sent <= 4 + 6
    assert isinstance(second[4], dict)  # the refused clip succeeds now
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if i in (2, 4):
            continue
        assert isinstance(a, dict) and isinstance(b, dict)
        assert a["caption"] == b["caption"] and a["short_prompt"] == b["short_prompt"]
        assert a["provenance.cost_usd"] == b["provenance.cost_usd"]  # what it cost when bought
        assert b[PROVENANCE_KEY]["cache_hits"] == b[PROVENANCE_KEY]["requests"]
        assert float(b[PROVENANCE_KEY]["paid_usd"]) == 0.0
        # the stitched identity reference went with the keyframes
        assert a[PROVENANCE_KEY]["images"] == "3"


def test_costs_add_up(server: FakeOpenAI, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "data", 5, run_id="run-cost")
    server.add_fault("short", component="action", match=match_clip(1))  # a repair: paid twice
    server.add_fault("list", component="camera", match=match_clip(3), times=3)  # clip fails
    outputs = annotator(server, tmp_path / "cache")(inputs)
    assert isinstance(outputs[3], BaseException)
    ok = [o for o in outputs if isinstance(o, dict)]
    assert len(ok) == 4
    prices = Prices.model_validate(PRICES)
    st = server.stats
    server_usd = prices.cost(st.prompt_tokens, st.cached_tokens, st.completion_tokens, False)
    ledger = ResponseCache(str(tmp_path / "cache")).spend("run-cost")
    assert ledger.requests == st.chat_ok
    assert (ledger.tokens_in, ledger.tokens_out) == (st.prompt_tokens, st.completion_tokens)
    assert ledger.cost_usd == pytest.approx(server_usd, rel=1e-9)
    records_usd = sum(o["provenance.cost_usd"] for o in ok)
    failed_clip_usd = ledger.cost_usd - records_usd
    assert failed_clip_usd > 0  # the failed clip's three answers were paid for
    assert "paid now" in str(outputs[3])
    assert sum(o["provenance.tokens_in"] for o in ok) < ledger.tokens_in


def test_concurrency_and_rate_limits_hold(tmp_path: Path) -> None:
    with FakeOpenAI(latency_s=0.05) as server:
        inputs = make_inputs(tmp_path / "data", 3)
        ann = annotator(
            server,
            tmp_path / "cache",
            limits={"concurrency": 3, "requests_per_minute": 480, "rate_window_s": 1.0},
        )
        outputs = ann(inputs)
        assert all(isinstance(o, dict) for o in outputs)
        st = server.stats
        assert st.chat_requests == 21
        assert 2 <= st.max_in_flight <= 3
        # 8 requests per 1 s window; a little slack for arrival jitter on the window edge
        assert max(windows(st.request_times, 0.95)) <= 8
        assert st.request_times[-1] - st.request_times[0] >= 2.0


def test_budget_stops_cleanly_and_a_larger_budget_resumes(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "data", 6, run_id="run-budget")
    small = {"concurrency": 1}
    request = {"max_output_tokens": 100}  # keeps the in-flight reservation small
    # what one clip costs, measured on a separate cache
    one = annotator(server, tmp_path / "probe", limits=small, request=request)(inputs[:1])[0]
    assert isinstance(one, dict)
    clip_usd = one["provenance.cost_usd"]
    server.reset_stats()
    budget = 2.5 * clip_usd
    out = annotator(server, tmp_path / "cache", budget_usd=budget, limits=small, request=request)(
        inputs
    )
    kinds = [type(o).__name__ if isinstance(o, BaseException) else "ok" for o in out]
    assert kinds == ["ok", "ok"] + ["BudgetExceeded"] * 4
    assert "budget" in str(out[2])
    spent = ResponseCache(str(tmp_path / "cache")).spend("run-budget")
    assert 2 * clip_usd <= spent.cost_usd <= budget
    sent = server.stats.chat_requests
    assert 14 <= sent < 21
    # the same run with a larger budget pays only for what is missing
    again = annotator(server, tmp_path / "cache", budget_usd=1.0, request=request)(inputs)
    assert all(isinstance(o, dict) for o in again)
    assert server.stats.chat_requests == 6 * 7
    total = ResponseCache(str(tmp_path / "cache")).spend("run-budget")
    assert total.requests == 6 * 7


def test_json_schema_rejected_falls_back(tmp_path: Path) -> None:
    with FakeOpenAI(supports_json_schema=False) as server:
        outputs = annotator(server, tmp_path / "cache")(make_inputs(tmp_path / "data", 2))
        assert all(isinstance(o, dict) for o in outputs)
        assert {o[PROVENANCE_KEY]["json_mode"] for o in outputs if isinstance(o, dict)} == {
            "json_object"
        }


def test_retry_after_is_honoured(server: FakeOpenAI, tmp_path: Path) -> None:
    server.add_fault("429", component="dense", retry_after="1.0")
    outputs = annotator(server, tmp_path / "cache", limits={"concurrency": 1})(
        make_inputs(tmp_path / "data", 1)
    )
    assert isinstance(outputs[0], dict)
    times = server.stats.request_times
    # the request after the 429 came no sooner than the server asked
    assert times[1] - times[0] >= 1.0


def test_unreachable_endpoint_fails_each_clip(tmp_path: Path) -> None:
    config = CaptionsConfig.model_validate(
        {
            "writer": "openai",
            "base_url": "http://127.0.0.1:9/v1",  # discard port: nothing listens
            "cache_dir": str(tmp_path / "cache"),
            "limits": {"max_retries": 1, "backoff_base_s": 0.01, "timeout_s": 1},
        }
    )
    outputs = CaptionsAnnotator(config)(make_inputs(tmp_path / "data", 2))
    assert [type(o).__name__ for o in outputs] == ["CaptionAPIError", "CaptionAPIError"]
    assert "after 2 attempts" in str(outputs[0])


def test_missing_keyframes_fail_only_that_clip(server: FakeOpenAI, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "data", 3)
    inputs[1].record.keyframes = None
    Path(inputs[2].record.keyframes.frames[0].uri).write_bytes(b"tampered")  # type: ignore[union-attr]
    outputs = annotator(server, tmp_path / "cache")(inputs)
    assert isinstance(outputs[0], dict)
    assert type(outputs[1]).__name__ == "CaptionInputError" and "keyframes" in str(outputs[1])
    assert type(outputs[2]).__name__ == "CaptionInputError" and "sha256" in str(outputs[2])
    assert server.stats.chat_requests == 7
