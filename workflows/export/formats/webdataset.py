"""``any2cap export --format webdataset``: tar shards in video2dataset's layout.

Each instance is one sample whose key is its instance id (unique, and the members of a
shard are sorted by it), with:

- ``key.mp4``: the clip, cut from its source video to ``[start_s, end_s)`` and re-encoded
  with PyAV (H.264, yuv420p) at the clip's fps and display orientation; cut once per clip
  and shared by all its instances;
- ``key.json``: the row's metadata (ids, condition types, caption, structured caption,
  short prompt, clip span, suitability, cross-check flags, review state, a provenance
  summary);
- ``key.txt``: the short prompt;
- the condition payload files as stored (not decoded): ``key.depth.<ext>`` (the depth
  frames), ``key.pose.<ext>`` (the keypoints), ``key.reference.png`` (the stitched identity
  reference), ``key.camera.txt`` (the RealEstate10K trajectory), and every other payload
  of the instance's conditions under its field path (``key.depth.preview.mp4``,
  ``key.pose.rendering.mp4``, ``key.identities.identities0.crop.png``, plugin payloads).

Tar members carry fixed owners and times, so the same rows give the same bytes.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from fractions import Fraction
from typing import Any

import av
import numpy as np

from any2capins.pipeline.storage import Storage
from any2capins.pipeline.video import _rotate, local_video
from any2capins.schemas import ClipRef, ShardRow, payload_refs
from any2capins.workflows.export.formats.base import ShardFormat, extension, payload_bytes

_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
# payload field path -> member name (without the extension); others use the path itself
RENAMED = {
    "depth.payload": "depth",
    "pose.keypoints": "pose",
    "identities.stitched_reference": "reference",
    "camera.trajectory": "camera",
}
REQUIRED = ("mp4", "json", "txt")


def cut_clip(clip: ClipRef) -> bytes:
    """The clip's span of its source video as MP4 bytes (H.264 at the clip's fps)."""
    with local_video(clip.source_uri) as path, av.open(path, metadata_errors="ignore") as src:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        if base is None:
            raise ValueError(f"{clip.source_uri}: the video stream has no time base")
        origin = float((stream.start_time or 0) * base)
        if clip.start_s > 0:
            src.seek(int((clip.start_s + origin) / base), stream=stream)
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as out:
            ost: av.video.stream.VideoStream | None = None
            for frame in src.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * base) - origin
                if t < clip.start_s - 1e-6:
                    continue
                if t >= clip.end_s - 1e-6:
                    break
                rgb = _rotate(frame.to_ndarray(format="rgb24")[None], clip.rotation)[0]
                h, w = rgb.shape[:2]
                if h % 2 or w % 2:
                    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
                if ost is None:
                    created = out.add_stream(
                        _CODEC, rate=Fraction(clip.fps).limit_denominator(1001)
                    )
                    assert isinstance(created, av.video.stream.VideoStream)
                    ost = created
                    ost.height, ost.width = rgb.shape[:2]
                    ost.pix_fmt = "yuv420p"
                    if _CODEC == "libx264":
                        ost.options = {"crf": "20", "preset": "veryfast"}
                for packet in ost.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
            if ost is None:
                raise ValueError(f"{clip.source_uri}: no frame in [{clip.start_s}, {clip.end_s}) s")
            for packet in ost.encode():
                out.mux(packet)
    return buf.getvalue()


def member_name(path: str) -> str:
    return RENAMED.get(path) or re.sub(r"[^A-Za-z0-9_.]", "", path.replace("[", ""))


def metadata(row: ShardRow) -> dict[str, Any]:
    """``key.json``: the row without its payload bytes, provenance summarised."""
    data = row.model_dump(
        mode="json",
        include={
            "instance_id",
            "clip_id",
            "partition",
            "condition_types",
            "composition",
            "schema_version",
            "clip",
            "caption",
            "short_prompt",
            "structured_caption",
            "machine_caption",
            "machine_short_prompt",
            "suitability",
            "checks",
        },
    )
    p = row.provenance
    data["provenance"] = {
        "recipe": p.recipe,
        "recipe_hash": p.recipe_hash,
        "run_id": p.run_id,
        "stages": [s.stage for s in p.stages],
        "models": sorted({m.model_id for s in p.stages for m in s.models}),
        "licenses": sorted({m.license for s in p.stages for m in s.models if m.license}),
    }
    data["review"] = {"status": row.review.status, "edited_fields": sorted(row.review.edits)}
    data["files"] = sorted(sample_files(row))
    return data


def sample_files(row: ShardRow) -> dict[str, tuple[str, Any]]:
    """Member extension -> (payload uri, ref) for the instance's condition payloads."""
    files: dict[str, tuple[str, Any]] = {}
    for path, ref in payload_refs(row.conditions):
        files[member_name(path) + extension(ref)] = (ref.uri, ref)
    return files


class WebDatasetFormat(ShardFormat):
    name = "webdataset"
    suffix = ".tar"

    def __init__(self) -> None:
        self._clips: dict[str, bytes] = {}

    def prepare(self, row: ShardRow) -> None:
        if row.clip_id not in self._clips:
            self._clips[row.clip_id] = cut_clip(row.clip)
        for _, ref in sample_files(row).values():
            payload_bytes(row, ref)

    def encode(self, rows: list[ShardRow], storage: Storage, entry: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for row in sorted(rows, key=lambda r: r.instance_id):
                self.prepare(row)
                members = {
                    "mp4": self._clips[row.clip_id],
                    "json": json.dumps(metadata(row), ensure_ascii=False, indent=1).encode(),
                    "txt": row.short_prompt.encode("utf-8"),
                }
                for ext, (_, ref) in sample_files(row).items():
                    members[ext] = payload_bytes(row, ref)
                for ext in sorted(members):
                    _add(tar, f"{row.instance_id}.{ext}", members[ext])
        return buf.getvalue()

    def instance_ids(self, storage: Storage, rel: str) -> list[str]:
        with storage.open(rel) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            return _keys(tar.getnames())

    def check(
        self, data: bytes, shard: dict[str, Any], storage: Storage
    ) -> tuple[list[str], list[str]]:
        rel = shard["path"]
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                names = tar.getnames()
                meta = {
                    n.split(".", 1)[0]: tar.extractfile(n).read()  # type: ignore[union-attr]
                    for n in names
                    if n.endswith(".json")
                }
        except (tarfile.TarError, OSError, EOFError) as e:
            return [f"{rel}: not readable as a tar file: {e}"], []
        problems: list[str] = []
        keys = _keys(names)
        if len(keys) != shard["rows"]:
            problems.append(f"{rel}: {len(keys)} samples, manifest says {shard['rows']}")
        have: dict[str, set[str]] = {}
        for n in names:
            key, _, ext = n.partition(".")
            have.setdefault(key, set()).add(ext)
        for key in keys:
            try:
                listed = set(json.loads(meta[key])["files"])
            except (KeyError, ValueError) as e:
                problems.append(f"{rel}: sample {key} has no readable key.json ({e})")
                continue
            missing = sorted((set(REQUIRED) | listed) - have[key])
            if missing:
                problems.append(f"{rel}: sample {key} lacks {', '.join(missing)}")
        return problems, keys


def _keys(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
