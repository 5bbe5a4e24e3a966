"""Camera file formats: RealEstate10K text (read and write) and MotionCtrl JSON (read and
write), parsed into :class:`Trajectory` with errors that name the line or frame at fault.

RealEstate10K: the first line is the video URL; then one line per frame of 19 numbers,
``timestamp_us fx fy cx cy k1 k2`` (intrinsics normalised by width/height, ``k1 k2`` unused
and written as 0) followed by the row-major 3x4 world-to-camera matrix.
MotionCtrl: a JSON list with one row-major 3x4 world-to-camera ``[R|t]`` per frame (12
numbers; ``[3, 4]`` and ``[4, 4]`` nested lists are accepted too), OpenCV axes, no
intrinsics and no timestamps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import fsspec
import numpy as np

from any2capins.annotators.camera.trajectory import (
    Trajectory,
    TrajectoryError,
    normalized_intrinsics,
)

CameraFormat = Literal["realestate10k", "motionctrl"]
FORMATS: tuple[CameraFormat, ...] = ("realestate10k", "motionctrl")

# MotionCtrl files carry neither intrinsics nor times. These defaults only matter for the
# Plücker embedding and the speed word; they are recorded in Trajectory.meta.
MOTIONCTRL_FPS = 8.0
MOTIONCTRL_FOV_DEG = 60.0
MOTIONCTRL_ASPECT = 16 / 9


class CameraFormatError(ValueError):
    """A camera file that cannot be parsed; the message names the file and the line/frame."""


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _where(name: str) -> str:
    return f" in {name}" if name else ""


def parse_realestate10k(text: str, name: str = "") -> Trajectory:
    """A RealEstate10K camera file's text as a trajectory (timestamps in seconds)."""
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        raise CameraFormatError(f"empty RealEstate10K file{_where(name)}")
    url = ""
    if not _is_number(lines[0][1].split()[0]):
        url = lines[0][1]
        lines = lines[1:]
    if not lines:
        raise CameraFormatError(f"RealEstate10K file{_where(name)} has no camera lines")
    rows = []
    for n, line in lines:
        parts = line.split()
        if len(parts) != 19:
            raise CameraFormatError(
                f"line {n}{_where(name)}: expected 19 numbers "
                f"(timestamp fx fy cx cy 0 0 and a 3x4 matrix), got {len(parts)}"
            )
        try:
            rows.append([float(p) for p in parts])
        except ValueError as e:
            raise CameraFormatError(f"line {n}{_where(name)}: {e}") from e
    a = np.array(rows)
    try:
        return Trajectory(
            intrinsics=a[:, 1:5],
            w2c=a[:, 7:].reshape(-1, 3, 4),
            timestamps_s=a[:, 0] / 1e6,
            source_uri=url,
            meta={"format": "realestate10k"},
        )
    except TrajectoryError as e:
        raise CameraFormatError(f"RealEstate10K file{_where(name)}: {e}") from e


def format_realestate10k(trajectory: Trajectory, url: str | None = None) -> str:
    """RealEstate10K text for a trajectory (9 decimals, integer microsecond timestamps)."""
    head = (url if url is not None else trajectory.source_uri) or "unknown"
    if _is_number(head.split()[0] if head.split() else ""):
        # a numeric first line would be read back as a camera line
        head = f"source:{head}"
    out = [head.replace("\n", " ")]
    for t, k, m in zip(trajectory.timestamps_s, trajectory.intrinsics, trajectory.w2c, strict=True):
        nums = [*(f"{v:.9f}" for v in k), "0.000000000", "0.000000000"]
        nums += [f"{v:.9f}" for v in m.reshape(-1)]
        out.append(f"{round(float(t) * 1e6)} " + " ".join(nums))
    return "\n".join(out) + "\n"


def parse_motionctrl(
    text: str,
    name: str = "",
    *,
    fps: float = MOTIONCTRL_FPS,
    fov_deg: float = MOTIONCTRL_FOV_DEG,
    aspect: float = MOTIONCTRL_ASPECT,
) -> Trajectory:
    """A MotionCtrl camera JSON as a trajectory; frames are ``1/fps`` apart."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CameraFormatError(f"MotionCtrl file{_where(name)} is not JSON: {e}") from e
    if isinstance(data, dict):
        # some exports wrap the list, e.g. {"RT": [...]}; take the single list value
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise CameraFormatError(
                f"MotionCtrl file{_where(name)}: expected a list of 3x4 matrices"
            )
        data = lists[0]
    if not isinstance(data, list) or not data:
        raise CameraFormatError(f"MotionCtrl file{_where(name)}: expected a non-empty list")
    mats = []
    for i, frame in enumerate(data):
        try:
            m = np.asarray(frame, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise CameraFormatError(f"frame {i}{_where(name)}: not numbers ({e})") from e
        if m.size == 12:
            m = m.reshape(3, 4)
        elif m.size == 16:
            m = m.reshape(4, 4)
            if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
                raise CameraFormatError(f"frame {i}{_where(name)}: last row of 4x4 is not 0 0 0 1")
            m = m[:3]
        else:
            raise CameraFormatError(
                f"frame {i}{_where(name)}: expected 12 numbers (row-major 3x4), got {m.size}"
            )
        mats.append(m)
    if not (math.isfinite(fps) and fps > 0):
        raise CameraFormatError(f"fps must be positive, got {fps}")
    width, height = 1000, max(1, round(1000 / aspect))
    try:
        return Trajectory(
            intrinsics=normalized_intrinsics(fov_deg, width, height),
            w2c=np.stack(mats),
            timestamps_s=np.arange(len(mats)) / fps,
            meta={
                "format": "motionctrl",
                "assumed": f"fps={fps:g}, horizontal fov={fov_deg:g} deg, aspect={aspect:.4g}",
            },
        )
    except TrajectoryError as e:
        raise CameraFormatError(f"MotionCtrl file{_where(name)}: {e}") from e


def format_motionctrl(trajectory: Trajectory) -> str:
    """MotionCtrl JSON (row-major 3x4 per frame); intrinsics and times are not kept."""
    return json.dumps([[round(float(v), 9) for v in m.reshape(-1)] for m in trajectory.w2c])


def detect_format(path: str | Path) -> CameraFormat:
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".json":
        return "motionctrl"
    if suffix == ".txt":
        return "realestate10k"
    raise CameraFormatError(
        f"cannot tell the camera format of {path} from its suffix (.txt = realestate10k, "
        ".json = motionctrl); pass the format explicitly"
    )


def parse_trajectory(text: str, fmt: CameraFormat, name: str = "") -> Trajectory:
    if fmt == "realestate10k":
        return parse_realestate10k(text, name)
    if fmt == "motionctrl":
        return parse_motionctrl(text, name)
    raise CameraFormatError(f"unknown camera format {fmt!r} (known: {', '.join(FORMATS)})")


def read_trajectory(path: str | Path, fmt: CameraFormat | None = None) -> Trajectory:
    """Read a camera file (local path or fsspec URI); the format defaults from the suffix."""
    fmt = fmt or detect_format(path)
    try:
        with fsspec.open(str(path), "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise CameraFormatError(f"camera file {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise CameraFormatError(f"camera file {path} is not UTF-8 text") from e
    return parse_trajectory(text, fmt, str(path))


def write_realestate10k(trajectory: Trajectory, path: str | Path, url: str | None = None) -> None:
    with fsspec.open(str(path), "wt", encoding="utf-8") as f:
        f.write(format_realestate10k(trajectory, url))


__all__ = [
    "FORMATS",
    "MOTIONCTRL_FPS",
    "CameraFormat",
    "CameraFormatError",
    "detect_format",
    "format_motionctrl",
    "format_realestate10k",
    "parse_motionctrl",
    "parse_realestate10k",
    "parse_trajectory",
    "read_trajectory",
    "write_realestate10k",
]
