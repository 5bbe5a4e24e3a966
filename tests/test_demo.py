"""`make demo` as a new user meets it: offline, no model weights anywhere, the `any2capins`
recipe on the demo clips through the default local Ray. It must finish, leave out the stages
it cannot run and say how to bring them in, and still make an instance of every clip."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from any2capins.pipeline.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
MODEL_STAGES = {"aesthetics", "depth", "pose", "identities"}
RAN = {"clip_stats", "quality", "motion", "cuts", "text_overlay", "dedup_hash", "keyframes"}
RAN |= {"camera", "captions", "instances"}


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
    # Ray core's once-per-process error line about restartable actors is spent quietly
    # (pipeline/engine.py _spend_restart_warning)
    assert "has constructor arguments in the object store" not in output
    assert "to bring them in: any2cap models fetch aesthetics identities depth pose" in output
    report = json.loads((run_dir / "report.json").read_text())
    # the stages, and the curation rule whose score only the aesthetics stage gives
    assert set(report["left_out"]) == MODEL_STAGES | {"curation.keep.aesthetic"}
    assert "(aesthetics) is left out" in report["left_out"]["curation.keep.aesthetic"]
    assert report["records_filtered"] == 0
    assert report["failed"] == 0 and report["records_ok"] == len(list(demo_clips.glob("*.mp4")))
    assert report["instances"]["camera"] == report["records_ok"]
    for record in RunDir(str(run_dir)).records():
        ran = {s.stage for s in record.provenance.stages}
        assert ran == RAN
        assert set(record.provenance.stages_left_out) >= MODEL_STAGES
        assert {"motion_fraction", "sharpness", "text_fraction", "cuts"} <= set(record.scores)
        assert record.caption is not None and record.conditions.camera is not None
        assert record.instances and record.instances[0].condition_types == ["camera"]
        assert record.instances[0].short_prompt
