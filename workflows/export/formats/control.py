"""``any2cap export --format control``: the layout controllable video generators train on
(VideoX-Fun / CogVideoX-control / Wan control, CameraCtrl), every file on one frame grid.

For each clip, on the frame grid its conditions were sampled on (the recipe's
``frame_grid``, recorded in each condition)::

    videos/<clip>.mp4            the clip's grid frames, H.264 at the grid's fps and size
    control/depth/<clip>.mp4     depth, grey (bright = near), same frames, fps and size
    control/pose/<clip>.mp4      OpenPose skeletons on black (controlnet_aux's draw_pose)
    ref/<clip>_<i>.png           identity i (0, 1, ...): the subject's crop over white
    camera/<clip>.txt            RealEstate10K camera file: one camera per grid frame

and one CSV row per instance (``metadata.csv``: the paths of the instance's condition
types, the short prompt, the six-part caption as JSON, the grid). ``<clip>`` is the clip
id: a clip's files serve all its instances and are written once.

The exactly-once protocol is the other formats': a shard is
``<partition>/part-NNNNN.control.csv`` (its instances' rows), its files are written before
it and listed with their sha256 in its manifest entry, and ``metadata.csv`` (every listed
shard's rows) is rewritten after each export. A record whose conditions were not sampled on
the export's grid (no grid recorded, another grid, or timestamps that are not the grid's
frames of the clip) is refused and listed as not exported, with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np

from any2capins.annotators._media import encode_mp4
from any2capins.annotators.camera import parse_realestate10k
from any2capins.annotators.camera.formats import CameraFormatError
from any2capins.annotators.depth import DepthConditionType
from any2capins.annotators.keyframes import grid_sampling
from any2capins.annotators.pose import PoseConditionType, draw_pose
from any2capins.pipeline.storage import Storage
from any2capins.pipeline.video import (
    DEFAULT_READERS,
    local_video,
    probe_video,
    sample_frames,
    target_times,
)
from any2capins.schemas import ClipRef, FrameGrid, PayloadRef, ShardRow
from any2capins.workflows.export.formats.base import ShardFormat, payload_bytes
from any2capins.workflows.export.formats.sft import caption_json

METADATA = "metadata.csv"
SUFFIX = ".control.csv"
COLUMNS = (
    "instance_id",
    "clip_id",
    "partition",
    "condition_types",
    "file_path",
    "control_depth_path",
    "control_pose_path",
    "ref_image_paths",
    "camera_path",
    "text",
    "structured_caption",
    "num_frames",
    "fps",
    "width",
    "height",
    "frame_grid",
)
CONTROL_TYPES = ("camera", "depth", "identities", "pose")
# Condition timestamps are stored rounded to 0.1 ms.
TIME_TOLERANCE_S = 1e-3


class ControlError(ValueError):
    """An instance that cannot go out in the control layout (the reason says why)."""


@dataclass
class _Clip:
    """One clip on the export's grid: its frames' times and files (path -> bytes)."""

    grid: FrameGrid
    timestamps_s: list[float]
    fps: float
    width: int
    height: int
    files: dict[str, bytes] = field(default_factory=dict)


def grid_fps(grid: FrameGrid, clip: ClipRef) -> float:
    """The frame rate of the grid's frames of CLIP: the grid's ``fps`` (unless ``max_frames``
    capped the count), else N frames over the clip's duration."""
    times = target_times(clip.start_s, clip.end_s, grid_sampling(grid))
    if len(times) < 2:
        return grid.fps or 1.0 / clip.duration_s
    fps = 1.0 / float(times[1] - times[0])
    if grid.fps is not None and math.isclose(fps, grid.fps, rel_tol=1e-6):
        return grid.fps
    return fps


def video_path(clip_id: str) -> str:
    return f"videos/{clip_id}.mp4"


def control_path(kind: str, clip_id: str) -> str:
    return f"control/{kind}/{clip_id}.mp4"


def ref_path(clip_id: str, i: int) -> str:
    return f"ref/{clip_id}_{i}.png"


def camera_path(clip_id: str) -> str:
    return f"camera/{clip_id}.txt"


def recorded_grid(row: ShardRow) -> FrameGrid:
    """The grid the instance's conditions were sampled on (they must agree)."""
    grids: dict[str, FrameGrid | None] = {}
    for kind in row.condition_types:
        if kind not in CONTROL_TYPES:
            raise ControlError(
                f"instance {row.instance_id}: condition type {kind!r} has no control form "
                f"(control exports {', '.join(CONTROL_TYPES)})"
            )
        summary = getattr(row.conditions, kind)
        if summary is None:
            raise ControlError(f"instance {row.instance_id}: its {kind} condition is missing")
        grids[kind] = summary.frame_grid
    loose = sorted(k for k, g in grids.items() if g is None)
    if loose:
        raise ControlError(
            f"instance {row.instance_id}: its {', '.join(loose)} condition was not sampled on "
            "a frame grid; the control format needs the conditions on one grid (set "
            "frame_grid in the recipe and build again, see docs/export.md)"
        )
    found = {k: g for k, g in grids.items() if g is not None}
    first = next(iter(found.values()))
    if any(g != first for g in found.values()):
        detail = "; ".join(f"{k}: {g.describe()}" for k, g in found.items())
        raise ControlError(
            f"instance {row.instance_id}: its conditions were sampled on different grids ({detail})"
        )
    return first


def _check_times(row: ShardRow, kind: str, times: list[float], grid_times: list[float]) -> None:
    if not times:
        raise ControlError(
            f"instance {row.instance_id}: its {kind} condition records no timestamps "
            "(built before schema 1.2.0: build it again)"
        )
    if len(times) != len(grid_times) or (
        float(np.max(np.abs(np.asarray(times) - np.asarray(grid_times)))) > TIME_TOLERANCE_S
    ):
        raise ControlError(
            f"instance {row.instance_id}: its {kind} condition has {len(times)} frames at "
            f"{times[0]:.3f}-{times[-1]:.3f} s, not the grid's {len(grid_times)} frames of the "
            f"clip at {grid_times[0]:.3f}-{grid_times[-1]:.3f} s (sampled from another "
            "file or by another reader?)"
        )


def _resize(frames: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    how = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (width, height), interpolation=how) for f in frames])


def depth_frames(u16: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint16 depth frames [F, h, w] -> grey RGB frames [F, H, W, 3] (bright = near, the
    Depth Anything convention depth-control models are trained with)."""
    grey = (u16 >> 8).astype(np.uint8)
    grey = _resize(grey, width, height)
    return np.repeat(grey[..., None], 3, axis=-1)


def pose_frames(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenPose skeletons on black, one frame per grid frame, at the target size."""
    return np.stack(
        [draw_pose(kp, sc, height, width) for kp, sc in zip(keypoints, scores, strict=True)]
    )


def reference_png(crop_png: bytes) -> bytes:
    """An identity crop (RGBA, transparent outside the subject) composited over white: the
    RGB reference image subject-to-video models take."""
    rgba = cv2.imdecode(np.frombuffer(crop_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if rgba is None:
        raise ControlError("an identity crop is not a readable PNG")
    if rgba.ndim == 2:
        rgba = cv2.cvtColor(rgba, cv2.COLOR_GRAY2BGRA)
    if rgba.shape[2] == 3:
        bgr = rgba
    else:
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        bgr = (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ControlError("PNG encoding failed")
    return bytes(buf.tobytes())


@dataclass(frozen=True)
class VideoFacts:
    frames: int
    fps: float
    width: int
    height: int


def video_facts(data: bytes) -> VideoFacts:
    """Frame count (every packet counted), average frame rate and size of MP4 bytes."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for p in container.demux(stream) if p.size)
        rate = stream.average_rate or stream.guessed_rate or 0
        return VideoFacts(
            frames, float(rate), stream.codec_context.width, stream.codec_context.height
        )


class ControlFormat(ShardFormat):
    """Control videos, reference images and camera files on one frame grid.

    ``grid``: the grid every exported record must have been sampled on; None takes the
    grid the records' conditions recorded (one grid per export folder either way).
    ``readers``: the frame readers that decode the target clips (the build's readers pick
    the same frames).
    """

    name = "control"
    suffix = SUFFIX

    def __init__(
        self, grid: FrameGrid | None = None, readers: tuple[str, ...] = DEFAULT_READERS
    ) -> None:
        self.grid = grid
        self.readers = readers
        self._folder_grid: FrameGrid | None = grid
        self._clips: dict[str, _Clip] = {}
        self._rows: dict[str, dict[str, str]] = {}
        self._written: set[str] = set()
        self._metadata: set[str] | None = None  # instance ids in metadata.csv (verify)

    # ---------------------------------------------------------------- building

    def _grid_for(self, row: ShardRow) -> FrameGrid:
        grid = recorded_grid(row)
        if self._folder_grid is not None and grid != self._folder_grid:
            raise ControlError(
                f"instance {row.instance_id}: its conditions were sampled on the grid "
                f"{grid.describe()}, this export's grid is {self._folder_grid.describe()} "
                "(export each grid to its own folder)"
            )
        self._folder_grid = grid
        return grid

    def _clip(self, row: ShardRow, grid: FrameGrid) -> _Clip:
        """The clip's grid frames, decoded once: the target video and the grid's times."""
        clip = row.clip
        cached = self._clips.get(clip.clip_id)
        if cached is not None:
            return cached
        side = grid.size or max(clip.width, clip.height)
        with local_video(clip.source_uri) as path:
            info = probe_video(path, clip.source_uri)
            sampled = sample_frames(
                path, info, clip.start_s, clip.end_s, grid_sampling(grid, side), self.readers
            )
        frames = sampled.frames
        height, width = frames.shape[1:3]
        fps = grid_fps(grid, clip)
        out = _Clip(grid, [round(t, 4) for t in sampled.timestamps_s], fps, width, height)
        path_ = video_path(clip.clip_id)
        if path_ not in self._written:
            out.files[path_] = encode_mp4(frames, fps, crf=18)
        self._clips[clip.clip_id] = out
        return out

    def _need(self, clip: _Clip, path: str) -> bool:
        return path not in self._written and path not in clip.files

    def prepare(self, row: ShardRow) -> None:
        if row.instance_id in self._rows:
            return
        grid = self._grid_for(row)
        clip = self._clip(row, grid)
        times = clip.timestamps_s
        cid = row.clip_id
        c = row.conditions
        out = dict.fromkeys(COLUMNS, "")
        refs: list[str] = []

        def read(ref: PayloadRef) -> bytes:
            return payload_bytes(row, ref)

        for kind in row.condition_types:
            if kind == "depth" and c.depth is not None:
                _check_times(row, kind, c.depth.timestamps_s, times)
                path = control_path("depth", cid)
                if self._need(clip, path):
                    u16 = DepthConditionType().decode_payload(c.depth, read)["depth_u16"]
                    rgb = depth_frames(u16, clip.width, clip.height)
                    clip.files[path] = encode_mp4(rgb, clip.fps, crf=15)
                out["control_depth_path"] = path
            elif kind == "pose" and c.pose is not None:
                _check_times(row, kind, c.pose.timestamps_s, times)
                path = control_path("pose", cid)
                if self._need(clip, path):
                    arrays = PoseConditionType().decode_payload(c.pose, read)
                    rgb = pose_frames(
                        arrays["keypoints"], arrays["scores"], clip.width, clip.height
                    )
                    clip.files[path] = encode_mp4(rgb, clip.fps, crf=15)
                out["control_pose_path"] = path
            elif kind == "identities" and c.identities is not None:
                _check_times(row, kind, c.identities.timestamps_s, times)
                ids = sorted(c.identities.identities, key=lambda i: i.identity_id)
                for i, identity in enumerate(ids):
                    path = ref_path(cid, i)
                    if self._need(clip, path):
                        clip.files[path] = reference_png(read(identity.crop))
                    refs.append(path)
                out["ref_image_paths"] = json.dumps(refs)
            elif kind == "camera" and c.camera is not None:
                _check_times(row, kind, c.camera.timestamps_s, times)
                path = camera_path(cid)
                if self._need(clip, path):
                    body = read(c.camera.trajectory)
                    try:
                        trajectory = parse_realestate10k(body.decode("utf-8"))
                    except (UnicodeDecodeError, CameraFormatError) as e:
                        raise ControlError(
                            f"instance {row.instance_id}: the camera trajectory is not "
                            f"RealEstate10K text: {e}"
                        ) from e
                    stamps = [round(float(t), 4) for t in trajectory.timestamps_s]
                    _check_times(row, "camera file's", stamps, times)
                    clip.files[path] = body
                out["camera_path"] = path
        out.update(
            instance_id=row.instance_id,
            clip_id=cid,
            partition=row.partition,
            condition_types="+".join(row.condition_types),
            file_path=video_path(cid),
            text=row.short_prompt,
            structured_caption=caption_json(row),
            num_frames=str(len(times)),
            fps=f"{clip.fps:.6g}",
            width=str(clip.width),
            height=str(clip.height),
            frame_grid=grid.model_dump_json(),
        )
        self._rows[row.instance_id] = out

    def encode(self, rows: list[ShardRow], storage: Storage, entry: dict[str, Any]) -> bytes:
        lines = []
        files: dict[str, str] = {}
        for row in rows:
            self.prepare(row)
            line = self._rows.pop(row.instance_id)
            lines.append(line)
            for path in _paths(line):
                files[path] = ""
        # files first: a listed shard never refers to a file that is not there yet
        for path in sorted(files):
            clip = self._clips.get(path_clip(path))
            data = clip.files.pop(path, None) if clip is not None else None
            if data is None or storage.exists(path):
                data = storage.read(path)
            else:
                storage.write_atomic(path, data)
            self._written.add(path)
            files[path] = hashlib.sha256(data).hexdigest()
        entry["files"] = files
        if self._folder_grid is not None:
            entry["frame_grid"] = self._folder_grid.model_dump(mode="json")
        return _csv_bytes(lines)

    # ---------------------------------------------------------------- reading back

    def instance_ids(self, storage: Storage, rel: str) -> list[str]:
        rows = _read_csv(storage.read(rel))
        if rows and self._folder_grid is None:
            # the folder's grid: later rows must share it
            self._folder_grid = FrameGrid.model_validate_json(rows[0]["frame_grid"])
        return [r["instance_id"] for r in rows]

    def check(
        self, data: bytes, shard: dict[str, Any], storage: Storage
    ) -> tuple[list[str], list[str]]:
        rel = shard["path"]
        try:
            rows = _read_csv(data)
        except (UnicodeDecodeError, csv.Error, ValueError) as e:
            return [f"{rel}: not a control metadata CSV: {e}"], []
        problems: list[str] = []
        if len(rows) != shard["rows"]:
            problems.append(f"{rel}: {len(rows)} rows, manifest says {shard['rows']}")
        listed: dict[str, str] = shard.get("files", {})
        for n, row in enumerate(rows, 1):
            paths = _paths(row)
            missing = sorted(set(paths) - set(listed))
            if missing:
                problems.append(f"{rel}: row {n} refers to files the manifest does not list")
            problems += [f"{rel}: row {n}: {p}" for p in _row_problems(row, storage)]
        ids = [r["instance_id"] for r in rows]
        missing_ids = sorted(set(ids) - self._metadata_ids(storage))
        if missing_ids:
            problems.append(f"{rel}: {len(missing_ids)} of its rows are not in {METADATA}")
        for path, digest in sorted(listed.items()):
            try:
                body = storage.read(path)
            except FileNotFoundError:
                problems.append(f"{rel}: file {path} is missing")
                continue
            if hashlib.sha256(body).hexdigest() != digest:
                problems.append(f"{rel}: file {path} does not match its sha256")
        return problems, ids

    def _metadata_ids(self, storage: Storage) -> set[str]:
        if self._metadata is None:
            try:
                self._metadata = {r["instance_id"] for r in _read_csv(storage.read(METADATA))}
            except (FileNotFoundError, UnicodeDecodeError, csv.Error, ValueError):
                self._metadata = set()
        return self._metadata

    def finish(self, storage: Storage, manifest: dict[str, Any]) -> None:
        rows: list[dict[str, str]] = []
        for shard in sorted(manifest["shards"], key=lambda s: s["path"]):
            rows += _read_csv(storage.read(shard["path"]))
        storage.write_atomic(METADATA, _csv_bytes(rows))


def path_clip(path: str) -> str:
    """The clip id a file path of this layout names."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.rsplit("_", 1)[0] if path.startswith("ref/") else stem


def _paths(row: dict[str, str]) -> list[str]:
    paths = [row["file_path"]]
    paths += [row[k] for k in ("control_depth_path", "control_pose_path", "camera_path") if row[k]]
    if row["ref_image_paths"]:
        paths += json.loads(row["ref_image_paths"])
    return paths


def _row_problems(row: dict[str, str], storage: Storage) -> list[str]:
    """Every video of the row has the row's frame count, fps and size; the camera file has
    one camera per frame."""
    problems: list[str] = []
    want = VideoFacts(
        int(row["num_frames"]), float(row["fps"]), int(row["width"]), int(row["height"])
    )
    for key in ("file_path", "control_depth_path", "control_pose_path"):
        path = row[key]
        if not path:
            continue
        try:
            facts = video_facts(storage.read(path))
        except FileNotFoundError:
            continue  # reported with the files
        except (av.FFmpegError, IndexError, OSError) as e:
            problems.append(f"{path} is not a readable video: {e}")
            continue
        if (facts.frames, facts.width, facts.height) != (want.frames, want.width, want.height):
            problems.append(
                f"{path}: {facts.frames} frames of {facts.width}x{facts.height}, the row says "
                f"{want.frames} of {want.width}x{want.height}"
            )
        if not math.isclose(facts.fps, want.fps, rel_tol=2e-3):
            problems.append(f"{path}: {facts.fps:.4g} fps, the row says {want.fps:.4g}")
    if row["camera_path"]:
        try:
            cameras = len(parse_realestate10k(storage.read(row["camera_path"]).decode()))
        except FileNotFoundError:
            cameras = want.frames
        except (UnicodeDecodeError, CameraFormatError) as e:
            problems.append(f"{row['camera_path']} is not a RealEstate10K file: {e}")
            cameras = want.frames
        if cameras != want.frames:
            problems.append(f"{row['camera_path']}: {cameras} cameras for {want.frames} frames")
    return problems


def _csv_bytes(rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _read_csv(data: bytes) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"columns {reader.fieldnames}, expected {list(COLUMNS)}")
    return list(reader)


__all__ = [
    "COLUMNS",
    "METADATA",
    "ControlError",
    "ControlFormat",
    "depth_frames",
    "grid_fps",
    "pose_frames",
    "recorded_grid",
    "reference_png",
    "video_facts",
]
