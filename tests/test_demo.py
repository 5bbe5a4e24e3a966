"""`make demo` as a new user meets it: offline, no model weights anywhere, the `any2capins`
recipe on the demo clips through the default local Ray. It must finish, leave out the stages
it cannot run and say how to bring them in, and still make an instance of every clip."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
MODEL_STAGES = {"depth", "pose", "identities"}


@pytest.mark.slow
def test_make_demo_offline_without_models(tmp_path: Path, demo_clips: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANY2CAP_", "OPENAI_", "RAY_ADDRESS", "HF_"))
    }
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    run_dir = tmp_path / "demo-run"
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"RUN_DIR={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "stages left out" in output
    assert "to bring them in: any2cap models fetch identities depth pose" in output
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["left_out"]) == MODEL_STAGES
    assert report["failed"] == 0 and report["records_ok"] == len(list(demo_clips.glob("*.mp4")))
    assert report["instances"]["camera"] == report["records_ok"]
    for record in RunDir(str(run_dir)).records():
        ran = {s.stage for s in record.provenance.stages}
        assert ran == {"clip_stats", "keyframes", "camera", "captions", "instances"}
        assert set(record.provenance.stages_left_out) == MODEL_STAGES
        assert record.caption is not None and record.conditions.camera is not None
        assert record.instances and record.instances[0].condition_types == ["camera"]
        assert record.instances[0].short_prompt
