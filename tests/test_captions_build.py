"""The captions stage inside real builds (``--executor local``) on the demo clips: the
grounded writer offline, an endpoint given by OPENAI_BASE_URL, resume after a failing
endpoint, and Batch API mode resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from any2capins.annotators.captions import ResponseCache
from any2capins.annotators.captions.batch import BatchRunner
from any2capins.annotators.captions.config import CaptionsConfig
from any2capins.workflows.cli import app
from tests.openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANY2CAP_CACHE_DIR", str(tmp_path / "default-cache"))


def recipe(tmp: Path, **params: Any) -> str:
    data = {
        "name": "captions-test",
        "spans": {"mode": "whole", "min_len_s": 1.0, "max_len_s": 30.0},
        "stages": [
            {"annotator": "clip_stats", "sampling": {"num_frames": 8, "max_side": 128}},
            {"annotator": "keyframes", "sampling": {"num_frames": 2, "max_side": 256}},
            {
                "annotator": "captions",
                "depends_on": ["clip_stats", "keyframes"],
                "params": {"cache_dir": str(tmp / "cache"), **params},
            },
        ],
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def build(recipe_ref: str, src: Path, out: Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(
        app,
        [
            "build",
            recipe_ref,
            "-i",
            str(src),
            "-o",
            str(out),
            "--executor",
            "local",
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    report = json.loads((out / "report.json").read_text())
    return result.exit_code, report


def outcome(out: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}
    failures = {p.stem: json.loads(p.read_text()) for p in (out / "failures").glob("*.json")}
    return records, failures


def test_demo_recipe_offline_uses_the_grounded_writer(demo_clips: Path, tmp_path: Path) -> None:
    code, report = build("demo", demo_clips, tmp_path / "run")
    assert code == 0 and report["failed"] == 0
    assert "captions" in report["stages"]
    records, failures = outcome(tmp_path / "run")
    assert len(records) == len(list(demo_clips.glob("*.mp4"))) and not failures
    for r in records.values():
        assert all(r["caption"][c] for c in r["caption"]) and r["short_prompt"]
        stage = next(s for s in r["provenance"]["stages"] if s["stage"] == "captions")
        assert stage["details"]["writer"] == "grounded"
        assert stage["models"][0]["model_id"] == "any2capins/grounded-writer"
        assert r["provenance"]["cost_usd"] == 0


def test_build_through_an_endpoint_and_resume(
    demo_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        ref = recipe(
            tmp_path,
            limits={"max_retries": 1, "backoff_base_s": 0.01, "timeout_s": 5},
            prices={"input_per_mtok": 1.0, "output_per_mtok": 4.0},
        )
        # the bedroom clip (6.7 s) meets an endpoint that keeps failing on one part
        server.add_fault("500", component="style", match="Duration 6.7 seconds", times=2)
        out = tmp_path / "run"
        code, report = build(ref, demo_clips, out)
        assert code == 0
        records, failures = outcome(out)
        assert len(records) == 2 and len(failures) == 1
        assert not set(records) & set(failures)  # every clip exactly once
        (failure,) = failures.values()
        assert failure["stage"] == "captions" and failure["error_type"] == "CaptionAPIError"
        for r in records.values():
            stage = next(s for s in r["provenance"]["stages"] if s["stage"] == "captions")
            assert stage["details"]["writer"] == "openai"
            assert stage["details"]["endpoint"] == server.base_url
            assert set(stage["prompt_hashes"]) >= {"dense.v1", "short_prompt.v1", "system.v1"}
            assert r["provenance"]["cost_usd"] > 0 and r["provenance"]["tokens_in"] > 0
        sent = server.stats.chat_requests
        # the endpoint recovered: only the failed clip's unanswered parts are requested
        code, report = build(ref, demo_clips, out)
        assert code == 0 and report["failed"] == 0
        records, failures = outcome(out)
        assert len(records) == 3 and not failures
        assert 1 <= server.stats.chat_requests - sent <= 7
        # spend per build: the ledger's totals cover the records' costs
        result = runner.invoke(app, ["captions", "cost", str(out), "--json"])
        cost = json.loads(result.stdout)
        assert len(cost["runs"]) == 2
        assert cost["paid_usd"] == pytest.approx(cost["records_cost_usd"], rel=1e-6)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "any2capins.workflows.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_batch_mode_resumes_after_a_kill(
    demo_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(batch_delay_s=3600) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        ref = recipe(tmp_path, mode="batch", prices={"input_per_mtok": 1.0, "output_per_mtok": 4.0})
        out = tmp_path / "run"
        code, _ = build(ref, demo_clips, out)
        assert code == 1  # every clip waits for the batch
        _, failures = outcome(out)
        assert {f["error_type"] for f in failures.values()} == {"AwaitingBatch"}
        assert server.stats.chat_requests == 0
        cache = ResponseCache(str(tmp_path / "cache"))
        assert cache.pending_counts() == {"": 21}

        env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
        proc = _cli(["captions", "batch", "run", str(out), "--poll-interval", "0.1"], env)
        deadline = time.monotonic() + 60
        while server.stats.batches_created == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # polling now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert server.stats.batches_created == 1

        server.batch_delay_s = 0.0  # the provider finishes the batch
        proc = _cli(["captions", "batch", "run", str(out), "--poll-interval", "0.1"], env)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "21 answers collected" in stdout
        assert server.stats.batches_created == 1 and server.stats.files_uploaded == 1
        assert cache.pending_counts() == {}

        code, report = build(ref, demo_clips, out)
        assert code == 0 and report["failed"] == 0
        assert server.stats.chat_requests == 0  # every answer came from the batch
        records, failures = outcome(out)
        assert len(records) == 3 and not failures
        spend = cache.spend()
        assert spend.requests == 21
        # batch prices: half of 1.0 / 4.0 USD per million tokens
        expected = (spend.tokens_in * 1.0 + spend.tokens_out * 4.0) / 1e6 * 0.5
        assert spend.cost_usd == pytest.approx(expected)
        assert sum(r["provenance"]["cost_usd"] for r in records.values()) == pytest.approx(expected)


def test_batch_submit_finds_an_interrupted_upload_and_batch(tmp_path: Path) -> None:
    with FakeOpenAI(batch_delay_s=0) as server:
        config = CaptionsConfig.model_validate(
            {
                "writer": "openai",
                "mode": "batch",
                "base_url": server.base_url,
                "cache_dir": str(tmp_path),
                "limits": {"timeout_s": 0.5, "max_retries": 0},
            }
        )
        cache = ResponseCache(str(tmp_path))
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        for i in range(3):
            cache.add_pending(f"k{i}", BatchRunner(config, cache).endpoint, "m", body, "c", "r")
        # killed after the upload, before its id was recorded
        first = BatchRunner(config, cache)
        assert cache.claim_pending("sub1", first.endpoint, 100, 10**9) == 3
        first._upload("sub1")
        # killed while the batch was being created (the server created it, the answer was lost)
        server.batch_create_hang_s = 2.0
        with pytest.raises(Exception, match="timed out"):
            first.submit()
        assert server.stats.files_uploaded == 1 and server.stats.batches_created == 1
        server.batch_create_hang_s = 0.0
        ids = BatchRunner(config, cache).submit()
        assert len(ids) == 1
        assert server.stats.files_uploaded == 1 and server.stats.batches_created == 1
        report = BatchRunner(config, cache).collect()
        assert report.collected == 3 and report.requeued == 0
