"""An answer that failed validation is kept (record, ledger) but never replayed: the next
build asks again, so a clip whose caption was refused or invalid can succeed later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from any2capins.annotators.captions import ResponseCache
from any2capins.annotators.captions.cache import Usage, request_key
from any2capins.workflows.cli import app
from tests import media
from tests.openai_server import FakeOpenAI

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANY2CAP_CACHE_DIR", str(tmp_path / "default-cache"))


def _recipe(tmp: Path) -> str:
    data = {
        "name": "captions-revalidate",
        "spans": {"mode": "whole", "min_len_s": 1.0, "max_len_s": 30.0},
        "stages": [
            {"annotator": "clip_stats", "sampling": {"num_frames": 4, "max_side": 128}},
            {"annotator": "keyframes", "sampling": {"num_frames": 2, "max_side": 128}},
            {
                "annotator": "captions",
                "depends_on": ["clip_stats", "keyframes"],
                "params": {
                    "cache_dir": str(tmp / "cache"),
                    "limits": {"max_retries": 0, "backoff_base_s": 0.01, "timeout_s": 5},
                },
            },
        ],
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _build(ref: str, src: Path, out: Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(
        app,
        ["build", ref, "-i", str(src), "-o", str(out), "--executor", "local", "--no-progress"],
        catch_exceptions=False,
    )
    return result.exit_code, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize(("kind", "component"), [("short", "style"), ("refusal", "dense")])
def test_an_invalid_answer_is_asked_again_on_the_next_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, component: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    media.make_video(src / "clip.mp4", seconds=1.5)
    ref = _recipe(tmp_path)
    out = tmp_path / "run"
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        # the first answer and both repairs are bad: the clip fails after its repairs
        server.add_fault(kind, component=component, times=3)
        code, report = _build(ref, src, out)
        assert report["failed"] == 1 and report["records_ok"] == 0, report
        (failure,) = report["failures"]
        assert failure["stage"] == "captions"
        assert failure["error_type"] in ("InvalidCaption", "CaptionRefused")
        assert failure["attempt"] == 1
        assert server.stats.faults_fired == {kind: 3}
        sent = server.stats.chat_requests

        # the fault is gone; the cached bad answers must not be replayed
        code, report = _build(ref, src, out)
        assert code == 0 and report["failed"] == 0 and report["records_ok"] == 1, report
        asked = server.stats.chat_requests - sent
        assert asked >= 1  # before the fix: 0 (every answer replayed from the cache)
        assert asked <= 3  # only the bad part's first request; the good parts come from disk
        assert not list((out / "failures").glob("*.json"))

        # a third build is free: the good answers are replayed
        sent = server.stats.chat_requests
        code, report = _build(ref, src, out)
        assert code == 0 and server.stats.chat_requests == sent

    # the bad answers stayed in the cache and the ledger: the first build paid for them
    cache = ResponseCache(str(tmp_path / "cache"))
    try:
        conn = cache._conn()
        invalid = "SELECT COUNT(*) FROM responses WHERE invalid = 1 AND invalid_reason != ''"
        replaced = "SELECT COUNT(*) FROM rejected WHERE reason != ''"
        # the repairs' answers are still the answers to their requests; the first request's
        # was asked again and replaced, its rejected answer moved aside
        assert conn.execute(invalid).fetchone()[0] == 2
        assert conn.execute(replaced).fetchone()[0] == 1
        by_run = cache.spend_by_run()
        assert len(by_run) == 2  # the first build and the second (the third paid nothing)
    finally:
        cache.close()


def test_cache_skips_answers_marked_invalid(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path))
    key = request_key({"model": "m", "messages": []})
    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
    cache.put(key, "m", answer, Usage(10, 0, 2), 0.5, "online", "run1", "clip")
    assert cache.get(key) is not None and cache.invalid_reason(key) is None
    cache.mark_invalid(key, "too short")
    assert cache.get(key) is None and cache.invalid_reason(key) == "too short"
    assert cache.spend().requests == 1  # still paid for
    cache.put(key, "m", answer, Usage(10, 0, 2), 0.5, "online", "run2", "clip")  # asked again
    assert cache.get(key) is not None and cache.invalid_reason(key) is None
    assert cache.spend().requests == 2
    kept = cache._conn().execute("SELECT reason FROM rejected WHERE key = ?", (key,)).fetchall()
    assert kept == [("too short",)]
    cache.close()


def test_a_cache_file_from_before_gains_the_invalid_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "responses.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT "
        "NULL, tokens_in INTEGER NOT NULL, tokens_cached INTEGER NOT NULL, tokens_out INTEGER "
        "NOT NULL, cost_usd REAL NOT NULL, source TEXT NOT NULL, created REAL NOT NULL)"
    )
    conn.execute(
        "INSERT INTO responses VALUES ('k', 'm', '{\"choices\": []}', 1, 0, 1, 0.1, 'online', 0)"
    )
    conn.commit()
    conn.close()
    cache = ResponseCache(str(tmp_path))
    hit = cache.get("k")
    assert hit is not None and hit.response == {"choices": []}
    cache.mark_invalid("k", "bad")
    assert cache.get("k") is None
    cache.close()
