"""``any2cap export --format sft``: one ShareGPT JSON line per instance, for LLaMA-Factory
and ms-swift, with the condition media written once beside it.

A line::

    {"messages": [{"role": "user", "content": "<short prompt>\\nDepth: <video>\\n..."},
                  {"role": "assistant", "content": "{\\"dense\\": ..., \\"action\\": ...}"}],
     "images": ["media/<sha256>.png"], "videos": ["media/<sha256>.mp4"],
     "instance_id": "..."}

The user turn is the instance's short prompt, then one line per condition type of the
instance in sorted order, the camera last: depth and pose as ``<video>`` (the depth preview and the pose
rendering MP4s), identities as ``<image>`` (the stitched reference, or one per identity
crop with ``identities="crops"``), the camera as its RealEstate10K text inline (or, with
``camera="path"``, the path of the text file). ``<image>`` / ``<video>`` placeholders appear
in the order and number of the ``images`` / ``videos`` lists, as LLaMA-Factory's
``mm_plugin`` requires. The assistant turn is the six-part structured caption as JSON.

Media paths are relative to the export folder (LLaMA-Factory resolves them against its
``media_dir``, which defaults to ``dataset_dir``: point ``dataset_dir`` at the folder), named
by their sha256 so a clip's media is written once for all its instances and exports.
``dataset_info.json`` has one entry per partition folder (``any2capins_camera``, ...).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from any2capins.pipeline.storage import Storage
from any2capins.schemas import CAPTION_COMPONENTS, PayloadRef, ShardRow
from any2capins.workflows.export.formats.base import ShardFormat, extension, payload_bytes

MEDIA_DIR = "media"
DATASET_INFO = "dataset_info.json"
IMAGE, VIDEO = "<image>", "<video>"
IDENTITIES_MODES = ("reference", "crops")
CAMERA_MODES = ("inline", "path")


class SftMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: str


class SftLine(BaseModel):
    """One line of the JSONL, as LLaMA-Factory's sharegpt format reads it (``columns``:
    messages / images / videos; ``tags``: role / content / user / assistant); ``instance_id``
    is ours (trainers drop columns they are not told about)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[SftMessage]
    images: list[str]
    videos: list[str]
    instance_id: str


class SftError(ValueError):
    """An instance that cannot become an SFT line (a condition without its media)."""


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    """A ``dataset_info.json`` entry in LLaMA-Factory's documented sharegpt format."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "videos": "videos"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }


def dataset_name(partition: str) -> str:
    return "any2capins_" + partition.replace("+", "_")


def caption_json(row: ShardRow) -> str:
    return json.dumps({k: getattr(row.caption, k) for k in CAPTION_COMPONENTS}, ensure_ascii=False)


def media_path(ref: PayloadRef) -> str:
    return f"{MEDIA_DIR}/{ref.sha256}{extension(ref)}"


class SftFormat(ShardFormat):
    name = "sft"
    suffix = ".jsonl"

    def __init__(self, identities: str = "reference", camera: str = "inline") -> None:
        if identities not in IDENTITIES_MODES or camera not in CAMERA_MODES:
            raise ValueError(f"identities one of {IDENTITIES_MODES}, camera one of {CAMERA_MODES}")
        self.identities, self.camera = identities, camera
        self._written: set[str] = set()  # media paths known to be on disk in this export

    # one line
    def line(self, row: ShardRow, media: dict[str, bytes]) -> dict[str, Any]:
        """The line of ROW; MEDIA collects path -> bytes of the files it refers to."""
        images: list[str] = []
        videos: list[str] = []
        parts = [row.short_prompt.strip()]
        camera = ""  # last: the trajectory text runs over many lines

        def add(ref: PayloadRef | None, what: str, into: list[str]) -> str:
            if ref is None:
                raise SftError(f"instance {row.instance_id}: the {what} has no file")
            path = media_path(ref)
            media[path] = payload_bytes(row, ref)
            into.append(path)
            return VIDEO if into is videos else IMAGE

        c = row.conditions
        for kind in row.condition_types:
            if kind == "depth" and c.depth is not None:
                parts.append("Depth: " + add(c.depth.preview, "depth preview video", videos))
            elif kind == "pose" and c.pose is not None:
                parts.append("Pose: " + add(c.pose.rendering, "pose rendering video", videos))
            elif kind == "identities" and c.identities is not None:
                ids = c.identities
                if self.identities == "crops":
                    refs = [i.crop for i in sorted(ids.identities, key=lambda i: i.identity_id)]
                    tags = "".join(add(r, "identity crop", images) for r in refs)
                else:
                    tags = add(ids.stitched_reference, "identity reference", images)
                parts.append("Identities: " + tags)
            elif kind == "camera" and c.camera is not None:
                ref = c.camera.trajectory
                if self.camera == "path":
                    path = media_path(ref)
                    media[path] = payload_bytes(row, ref)
                    camera = f"Camera trajectory (RealEstate10K file): {path}"
                else:
                    camera = "Camera trajectory (RealEstate10K):\n" + _re10k_text(row, ref)
            else:
                raise SftError(
                    f"instance {row.instance_id}: condition type {kind!r} has no SFT form"
                )
        return {
            "messages": [
                {"role": "user", "content": "\n".join([*parts, camera] if camera else parts)},
                {"role": "assistant", "content": caption_json(row)},
            ],
            "images": images,
            "videos": videos,
            "instance_id": row.instance_id,
        }

    def prepare(self, row: ShardRow) -> None:
        self.line(row, {})

    def encode(self, rows: list[ShardRow], storage: Storage, entry: dict[str, Any]) -> bytes:
        media: dict[str, bytes] = {}
        lines = [json.dumps(self.line(row, media), ensure_ascii=False) for row in rows]
        # media first: a listed shard never refers to a file that is not there yet
        for path in sorted(media):
            if path not in self._written and not storage.exists(path):
                storage.write_atomic(path, media[path])
            self._written.add(path)
        entry["media"] = sorted(media)
        return ("\n".join(lines) + "\n").encode("utf-8")

    def instance_ids(self, storage: Storage, rel: str) -> list[str]:
        return [json.loads(line)["instance_id"] for line in _lines(storage.read(rel))]

    def check(
        self, data: bytes, shard: dict[str, Any], storage: Storage
    ) -> tuple[list[str], list[str]]:
        rel = shard["path"]
        problems: list[str] = []
        ids: list[str] = []
        media: set[str] = set()
        try:
            lines = _lines(data)
        except UnicodeDecodeError as e:
            return [f"{rel}: not UTF-8 text: {e}"], []
        for n, text in enumerate(lines, 1):
            try:
                line = SftLine.model_validate_json(text)
            except ValidationError as e:
                problems.append(f"{rel}: line {n} is not a ShareGPT line: {e.errors()[0]['msg']}")
                continue
            ids.append(line.instance_id)
            problems += [f"{rel}: line {n}: {p}" for p in line_problems(line)]
            media.update(line.images + line.videos)
            media.update(_camera_paths(line))
        if len(lines) != shard["rows"]:
            problems.append(f"{rel}: {len(lines)} lines, manifest says {shard['rows']}")
        if "media" in shard and sorted(media) != shard["media"]:
            problems.append(f"{rel}: its lines refer to other media than the manifest lists")
        for path in sorted(media | set(shard.get("media", []))):
            try:
                body = storage.read(path)
            except FileNotFoundError:
                problems.append(f"{rel}: media {path} is missing")
                continue
            stem = posixpath.splitext(posixpath.basename(path))[0]
            if hashlib.sha256(body).hexdigest() != stem:
                problems.append(f"{rel}: media {path} does not match its sha256")
        return problems, ids

    def finish(self, storage: Storage, manifest: dict[str, Any]) -> None:
        partitions = sorted({s["partition"] for s in manifest["shards"]})
        info = {dataset_name(p): dataset_info_entry(p) for p in partitions}
        storage.write_atomic(DATASET_INFO, (json.dumps(info, indent=2) + "\n").encode())


def line_problems(line: SftLine) -> list[str]:
    """What breaks the sharegpt multimodal rules in one line: a user then an assistant turn,
    as many ``<image>`` / ``<video>`` placeholders as images / videos."""
    problems = []
    roles = [m.role for m in line.messages]
    if roles != ["user", "assistant"]:
        problems.append(f"roles {roles}, expected user then assistant")
    text = "".join(m.content for m in line.messages)
    for tag, files in ((IMAGE, line.images), (VIDEO, line.videos)):
        if text.count(tag) != len(files):
            problems.append(f"{text.count(tag)} {tag} placeholders for {len(files)} files")
    return problems


def _camera_paths(line: SftLine) -> list[str]:
    marker = "Camera trajectory (RealEstate10K file): "
    return [
        part.removeprefix(marker).strip()
        for m in line.messages
        for part in m.content.splitlines()
        if part.startswith(marker)
    ]


def _lines(data: bytes) -> list[str]:
    return [line for line in data.decode("utf-8").splitlines() if line.strip()]


def _re10k_text(row: ShardRow, ref: PayloadRef) -> str:
    body = payload_bytes(row, ref)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text.strip() or not ref.media_type.startswith("text/"):
        raise SftError(
            f"instance {row.instance_id}: the camera trajectory {ref.uri} is not RealEstate10K text"
        )
    return text.strip()
