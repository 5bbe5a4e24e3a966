"""`make bench`: run every benchmark and write bench-results/latest.json plus a summary."""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import decode, pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    clips_dir = REPO / "demo" / "clips"
    clips = sorted(str(p) for p in clips_dir.glob("*.mp4"))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "platform": platform.platform(),
        },
        "decode": decode.run(clips, repeats=3),
        "pipeline": pipeline.run(
            str(clips_dir), repeats=2, recipe=str(REPO / "bench" / "demo-windows.yaml")
        ),
    }
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1))
    d, p = results["decode"], results["pipeline"]
    decord = "not installed" if d["decord_fps"] is None else f"{d['decord_fps']:.1f}"
    ratio = "-" if d["ratio_decord_over_pyav"] is None else f"{d['ratio_decord_over_pyav']:.2f}x"
    sys.stdout.write(
        "| benchmark | baseline | measured | ratio |\n|---|---|---|---|\n"
        f"| 16-frame sampling, frames/s | PyAV {d['pyav_fps']:.1f} | decord {decord} | {ratio} |\n"
        f"| demo-windows build wall time, s ({p['clips']} clips) | plain loop {p['local_wall_s']:.2f} "
        f"| Ray Data {p['ray_wall_s']:.2f} | {p['overhead_ratio_ray_over_loop']:.2f}x |\n"
        f"\nraw: {out / 'latest.json'}\n"
    )
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
