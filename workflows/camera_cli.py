"""``any2cap camera``: motion labels for a camera file, and a camera trajectory estimated from
a video, printed for people or as JSON."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import fsspec
import typer
from rich.console import Console
from rich.table import Table

from any2capins.annotators.base import FrameSampling
from any2capins.annotators.camera import (
    CameraFormatError,
    EstimationError,
    EstimatorSettings,
    analyze_motion,
    estimate_with_report,
    read_trajectory,
    write_realestate10k,
)
from any2capins.annotators.camera.formats import FORMATS, parse_motionctrl
from any2capins.annotators.camera.labels import MotionAnalysis
from any2capins.pipeline.video import (
    DEFAULT_READERS,
    VideoError,
    local_video,
    probe_video,
    sample_frames,
)

camera_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Camera trajectories: motion labels of camera files, estimation from videos.",
    no_args_is_help=True,
)
err = Console(stderr=True)
out = Console()


def _motion_json(a: MotionAnalysis) -> dict[str, Any]:
    return {"labels": a.labels, "speed": a.speed, "description": a.description}


def _print_motion(title: str, a: MotionAnalysis) -> None:
    table = Table(title=title, show_header=False)
    table.add_row("labels", ", ".join(a.labels))
    table.add_row("speed", a.speed or "-")
    table.add_row("description", a.description)
    tilt, pan, roll = a.rotation_deg
    table.add_row(
        "rotation (deg)", f"tilt up {tilt:+.1f}, pan right {pan:+.1f}, roll cw {roll:+.1f}"
    )
    if any(a.translation_direction):
        x, y, z = a.translation_direction
        table.add_row(
            "translation direction",
            f"right {x:+.2f}, down {y:+.2f}, forward {z:+.2f} (straightness {a.straightness:.2f})",
        )
    table.add_row("zoom (focal ratio)", f"{a.zoom_ratio:.3f}")
    table.add_row("rotation jitter (deg)", f"{a.jitter_rotation_deg:.2f}")
    out.print(table)


@camera_app.command("label")
def label(
    file: Annotated[str, typer.Argument(help="camera file (path or URI)")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="motionctrl or realestate10k (default: from the suffix)"),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(help="MotionCtrl only: frame rate of its poses (they carry no times)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Motion labels, speed and a one-sentence description of a camera FILE."""
    if fmt is not None and fmt not in FORMATS:
        err.print(f"[red]error:[/red] unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        raise typer.Exit(2)
    try:
        if fps is not None:
            if (fmt or "") != "motionctrl" and not file.lower().endswith(".json"):
                err.print("[red]error:[/red] --fps applies to MotionCtrl files only")
                raise typer.Exit(2)
            with fsspec.open(file, "rt", encoding="utf-8") as f:
                trajectory = parse_motionctrl(f.read(), file, fps=fps)
        else:
            trajectory = read_trajectory(file, fmt)
    except (CameraFormatError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    analysis = analyze_motion(trajectory)
    if as_json:
        sys.stdout.write(json.dumps(_motion_json(analysis)) + "\n")
    else:
        _print_motion(f"{file} ({len(trajectory)} poses)", analysis)


@camera_app.command("estimate")
def estimate(
    video: Annotated[str, typer.Argument(help="video file (path or URI)")],
    fps: Annotated[float, typer.Option(help="frames sampled per second", min=0.1)] = 5.0,
    max_frames: Annotated[int, typer.Option(help="at most this many frames", min=2)] = 96,
    max_side: Annotated[int, typer.Option(help="sampled frame size (longer side)", min=64)] = 480,
    fov: Annotated[float, typer.Option(help="horizontal field of view guess, degrees")] = 60.0,
    start: Annotated[float | None, typer.Option(help="span start, seconds")] = None,
    end: Annotated[float | None, typer.Option(help="span end, seconds")] = None,
    out_file: Annotated[
        str | None, typer.Option("--out", help="also write the trajectory as RealEstate10K txt")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Estimate the per-frame cameras of VIDEO (OpenCV) and label the motion."""
    if not 1.0 <= fov <= 179.0:
        err.print(f"[red]error:[/red] --fov must be in [1, 179], got {fov}")
        raise typer.Exit(2)
    sampling = FrameSampling(num_frames=None, fps=fps, max_frames=max_frames, max_side=max_side)
    try:
        with local_video(video) as path:
            info = probe_video(path, video)
            s0 = 0.0 if start is None else start
            s1 = info.duration_s if end is None else min(end, info.duration_s)
            if not 0 <= s0 < s1:
                err.print(f"[red]error:[/red] empty span {s0}-{s1} s")
                raise typer.Exit(2)
            sampled = sample_frames(path, info, s0, s1, sampling, DEFAULT_READERS)
    except VideoError as e:
        err.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        raise typer.Exit(2) from e
    try:
        trajectory, report = estimate_with_report(
            sampled.frames,
            sampled.timestamps_s,
            fov_deg=fov,
            settings=EstimatorSettings(max_side=max_side),
        )
    except EstimationError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    trajectory = trajectory.replace(source_uri=video)
    analysis = analyze_motion(trajectory)
    if out_file:
        write_realestate10k(trajectory, out_file, url=video)
    if as_json:
        doc = {
            "video": video,
            **_motion_json(analysis),
            **trajectory.to_json(),
            "estimator": report.summary(),
        }
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    _print_motion(f"{video} ({len(trajectory)} frames)", analysis)
    out.print(
        f"estimator: {report.summary()['modes']}, {report.frames_per_second:.1f} frames/s"
        + (f"; written to {out_file}" if out_file else "")
    )


__all__ = ["camera_app"]
