"""What the review screen shows for a record: its media files (and which of them may be
served), one pane per condition present, a camera trajectory plot, the editable fields (with
each instance's condition types and the cross-check flags), the clip's suitability per
condition type, and the provenance.

Everything here is data for templates; escaping is the templates' job (autoescape on).
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from any2capins.pipeline.storage import read_payload
from any2capins.schemas import CaptionFlag, PayloadRef, Record, payload_refs
from any2capins.workflows.review.store import Forbidden, NotFound
from any2capins.workflows.review.text import (
    PROMPT,
    field_title,
    is_prompt,
    prompt_field,
    structural_warnings,
    word_count,
)

# Served with their own type; anything else goes out as a download (an HTML or SVG file in
# the artifact store must never run in the app's origin).
INLINE_TYPES = {
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
}
VIDEO_EXTENSIONS = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/webm",
    ".ogv": "video/ogg",
}
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Media:
    index: int
    group: str  # clip | keyframes | <condition name>
    label: str
    uri: str
    media_type: str
    size: int | None

    @property
    def kind(self) -> str:
        if self.media_type.startswith("video/"):
            return "video"
        if self.media_type.startswith("image/") and self.media_type in INLINE_TYPES:
            return "image"
        return "data"


@dataclass
class Plot:
    """A top-down (x right, z forward) view of the camera centres, in SVG user units."""

    points: str
    start: tuple[float, float]
    end: tuple[float, float]
    frames: int
    extent_m: float


@dataclass
class Pane:
    name: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    description: str | None = None
    media: list[Media] = field(default_factory=list)
    plot: Plot | None = None
    plot_error: str | None = None


@dataclass
class FlagView:
    """A cross-check flag on a field: the check, what a condition measured, and the
    caption's words that disagree (``found``: they occur in the field's machine text)."""

    check: str
    component: str
    fact: str
    words: str
    found: bool


@dataclass
class FieldView:
    name: str
    number: int
    title: str
    machine: str
    value: str
    words: int
    warnings: list[str]
    dom_id: str = ""
    condition_types: list[str] = field(default_factory=list)
    composition: bool = False
    flags: list[FlagView] = field(default_factory=list)
    # the machine text in pieces, (text, flagged) for each, when a flag's words occur in it
    marked: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def is_prompt(self) -> bool:
        return is_prompt(self.name)


@dataclass
class SuitabilityView:
    condition: str
    suitable: bool
    reason: str
    measured: list[tuple[str, str]]
    thresholds: list[tuple[str, str]]


def _summaries(record: Record) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in record.conditions.present():
        value = getattr(record.conditions, name, None)
        if value is None:
            try:
                value = json.loads(record.conditions.extra[name])
            except (KeyError, ValueError):
                value = {}
        out.append((name, value))
    return out


def source_media_type(uri: str) -> str:
    ext = os.path.splitext(uri.split("?", 1)[0])[1].lower()
    return VIDEO_EXTENSIONS.get(ext, "application/octet-stream")


def media_of(record: Record) -> list[Media]:
    """The record's media in a fixed order; the index is the media URL's last part."""
    items: list[Media] = [
        Media(
            0,
            "clip",
            "source video",
            record.clip.source_uri,
            source_media_type(record.clip.source_uri),
            None,
        )
    ]

    def add(group: str, label: str, ref: PayloadRef) -> None:
        items.append(Media(len(items), group, label, ref.uri, ref.media_type, ref.bytes))

    if record.keyframes is not None:
        for t, ref in zip(record.keyframes.timestamps_s, record.keyframes.frames, strict=False):
            add("keyframes", f"{t:.2f} s", ref)
    for name, summary in _summaries(record):
        for path, ref in payload_refs(summary):
            add(name, path, ref)
    return items


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return None if "://" in uri else uri


def resolve_media(record: Record, index: int, artifacts_root: str) -> tuple[str, bool, str]:
    """(path or URI, is local, media type to send) for media ``index`` of a record.

    Payload files must lie inside the run's artifact store (real paths, after symlinks);
    the only other file ever served is the record's own source video.
    """
    media = media_of(record)
    if not 0 <= index < len(media):
        raise NotFound(f"no media {index} for this item")
    m = media[index]
    send_type = m.media_type if m.media_type in INLINE_TYPES else "application/octet-stream"
    local = _local_path(m.uri)
    if m.group == "clip":
        if send_type == "application/octet-stream":
            raise Forbidden("the source is not a video file the browser can play")
        if local is None:
            return m.uri, False, send_type
        if not os.path.isfile(local):
            raise NotFound("the source video is not on this machine")
        return os.path.realpath(local), True, send_type
    root_local = _local_path(artifacts_root)
    if local is not None and root_local is not None:
        real, root = os.path.realpath(local), os.path.realpath(root_local)
        if os.path.commonpath([real, root]) != root:
            raise Forbidden("media outside the run's artifact store is not served")
        if not os.path.isfile(real):
            raise NotFound("the media file is missing from the artifact store")
        return real, True, send_type
    if local is None and root_local is None:
        norm = posixpath.normpath(m.uri.split("://", 1)[1])
        root = posixpath.normpath(artifacts_root.split("://", 1)[1])
        same_scheme = m.uri.split("://", 1)[0] == artifacts_root.split("://", 1)[0]
        if same_scheme and (norm + "/").startswith(root.rstrip("/") + "/"):
            return m.uri, False, send_type
    raise Forbidden("media outside the run's artifact store is not served")


def _short(value: Any) -> str | None:
    if isinstance(value, bool):  # an annotator reads "yes", not Python's True
        return "yes" if value else "no"
    if isinstance(value, int | float | str):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        return text if len(text) <= 300 else text[:300] + "…"
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return f"{len(value)} values, {min(value):.2f}–{max(value):.2f}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return None


def panes_of(record: Record, media: list[Media]) -> list[Pane]:
    by_group: dict[str, list[Media]] = {}
    for m in media:
        by_group.setdefault(m.group, []).append(m)
    panes: list[Pane] = []
    for name, summary in _summaries(record):
        data = summary.model_dump() if isinstance(summary, BaseModel) else summary
        pane = Pane(name=name, media=by_group.get(name, []))
        if isinstance(data, dict):
            for key, value in data.items():
                if key == "labels" and isinstance(value, list):
                    pane.labels = [str(v) for v in value]
                elif key == "description" and isinstance(value, str):
                    pane.description = value
                elif key == "identities" and isinstance(value, list):
                    for ident in value:
                        if isinstance(ident, dict):
                            pane.labels.append(
                                f"#{ident.get('identity_id')} {ident.get('label', '')} "
                                f"({ident.get('frames_present', '?')} frames)"
                            )
                else:
                    shown = _short(value)
                    if shown is not None:
                        pane.facts.append((key, shown))
        if name == "camera":
            try:
                pane.plot = camera_plot(record)
            except (OSError, ValueError) as e:
                pane.plot_error = f"{type(e).__name__}: {e}"[:300]
        panes.append(pane)
    return panes


def _extrinsics(record: Record) -> np.ndarray | None:
    """Per-frame world-to-camera matrices of the record's camera condition, [T, 3, 4]."""
    camera = record.conditions.camera
    if camera is None:
        return None
    arrays: list[np.ndarray] = []
    try:
        from any2capins.annotators.conditions import condition_types

        ct = condition_types().get("camera")
        if ct is not None:
            arrays = list(ct.decode_payload(camera, read_payload).values())
    except Exception:  # noqa: BLE001 - a broken plugin must not take the review screen down
        arrays = []
    if not arrays:
        data = read_payload(camera.trajectory)
        if data[:6] == b"\x93NUMPY":
            arrays = [np.load(io.BytesIO(data), allow_pickle=False)]
        else:
            arrays = [np.asarray(json.loads(data), dtype=np.float64)]
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 2 and a.shape[1] in (12, 16):
            a = a.reshape(len(a), -1, 4)
        if a.ndim == 3 and a.shape[1:] in ((3, 4), (4, 4)) and len(a) >= 1:
            return a[:, :3, :]
    raise ValueError("the camera payload holds no [T, 3, 4] or [T, 4, 4] extrinsics")


def camera_plot(record: Record, size: float = 200.0, pad: float = 16.0) -> Plot | None:
    w2c = _extrinsics(record)
    if w2c is None:
        return None
    rot, t = w2c[:, :, :3], w2c[:, :, 3]
    centers = -np.einsum("nji,nj->ni", rot, t)  # C = -R^T t
    xz = centers[:, [0, 2]]
    if not np.all(np.isfinite(xz)):
        raise ValueError("non-finite camera positions")
    lo, hi = xz.min(axis=0), xz.max(axis=0)
    extent = float(max(hi - lo).max()) or 1.0
    mid = (lo + hi) / 2
    scale = (size - 2 * pad) / extent
    # SVG y grows downwards; forward (z) is drawn upwards.
    pts = [(size / 2 + (x - mid[0]) * scale, size / 2 - (z - mid[1]) * scale) for x, z in xz]
    return Plot(
        points=" ".join(f"{x:.1f},{y:.1f}" for x, y in pts),
        start=(round(pts[0][0], 1), round(pts[0][1], 1)),
        end=(round(pts[-1][0], 1), round(pts[-1][1], 1)),
        frames=len(pts),
        extent_m=round(extent, 3),
    )


def dom_id(name: str) -> str:
    """An element id for a field (``short_prompt:camera+depth`` -> ``short_prompt-camera_depth``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name.replace("+", "_"))


def mark_words(text: str, phrases: list[str]) -> list[tuple[str, bool]]:
    """``text`` cut into pieces, each with whether it is one of ``phrases`` (any case)."""
    wanted = [p.strip() for p in phrases if p.strip()]
    if not wanted or not text:
        return [(text, False)] if text else []
    pattern = re.compile(
        "|".join(re.escape(p) for p in sorted(wanted, key=len, reverse=True)), re.IGNORECASE
    )
    pieces: list[tuple[str, bool]] = []
    at = 0
    for m in pattern.finditer(text):
        if m.start() > at:
            pieces.append((text[at : m.start()], False))
        pieces.append((m.group(0), True))
        at = m.end()
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def _flags_for(name: str, checks: list[CaptionFlag]) -> list[CaptionFlag]:
    """The flags on a field: its component's, and for prompt fields those on
    ``short_prompt`` (all prompts) or on this very prompt field."""
    return [f for f in checks if f.component == name or (f.component == PROMPT and is_prompt(name))]


def fields_of(
    record: Record, machine: dict[str, str], values: dict[str, str] | None = None
) -> list[FieldView]:
    """The record's editable fields: the six components, then each instance's short prompt
    with its condition types (or the record's one short prompt without instances)."""
    values = values or {}
    instances = {prompt_field(i): i for i in record.instances or []}
    out = []
    for number, name in enumerate(machine, 1):
        value = values.get(name, machine[name])
        view = FieldView(
            name=name,
            number=number,
            title=field_title(name),
            machine=machine[name],
            value=value,
            words=word_count(value),
            warnings=structural_warnings(name, value) if value or machine[name] else ["empty"],
            dom_id=dom_id(name),
        )
        instance = instances.get(name)
        if instance is not None:
            view.condition_types = list(instance.condition_types)
            view.composition = instance.composition or len(instance.condition_types) > 1
        flags = _flags_for(name, record.checks)
        if flags:
            lowered = machine[name].lower()
            view.flags = [
                FlagView(
                    check=f.check,
                    component=f.component,
                    fact=f.fact,
                    words=f.words,
                    found=bool(f.words.strip()) and f.words.strip().lower() in lowered,
                )
                for f in flags
            ]
            view.marked = mark_words(machine[name], [f.words for f in flags])
        out.append(view)
    return out


def flags_of(record: Record, fields: list[FieldView]) -> list[tuple[FlagView, FieldView | None]]:
    """Every cross-check flag of the record with the field it points at (None: no field
    of this record has the flag's component)."""
    by_name = {f.name: f for f in fields}
    out: list[tuple[FlagView, FieldView | None]] = []
    for flag in record.checks:
        target = by_name.get(flag.component)
        if target is None and flag.component == PROMPT:
            target = next((f for f in fields if f.is_prompt), None)
        view = next(
            (
                v
                for v in (target.flags if target else [])
                if v.check == flag.check and v.words == flag.words
            ),
            FlagView(flag.check, flag.component, flag.fact, flag.words, False),
        )
        out.append((view, target))
    return out


def _number(value: float) -> str:
    return f"{value:.3g}"


def suitability_of(record: Record) -> list[SuitabilityView]:
    """The clip's suitability per condition type: suitable or not, why, and the values the
    rule measured with the recipe's limits (as text, never Python reprs)."""
    return [
        SuitabilityView(
            condition=name,
            suitable=s.suitable,
            reason=s.reason,
            measured=[(k, _number(v)) for k, v in sorted(s.measured.items())],
            thresholds=[(k, _number(v)) for k, v in sorted(s.thresholds.items())],
        )
        for name, s in sorted(record.suitability.items())
    ]


def provenance_of(record: Record) -> list[dict[str, Any]]:
    rows = []
    for stage in record.provenance.stages:
        rows.append(
            {
                "stage": stage.stage,
                "version": stage.annotator_version,
                "models": [
                    f"{m.model_id}{' ' + m.version if m.version else ''}"
                    f"{' (' + m.license + ')' if m.license else ''}"
                    for m in stage.models
                ],
                "prompts": [f"{k}: {v[:12]}" for k, v in sorted(stage.prompt_hashes.items())],
                "details": sorted(stage.details.items()),
                "config": stage.config_hash[:12],
                "run": stage.run_id,
                "seconds": f"{stage.seconds:.2f}",
                "finished": stage.finished_at.isoformat(timespec="seconds"),
            }
        )
    return rows


def caption_source(record: Record) -> str | None:
    """Who wrote the caption, in one line: the caption stage's writer (machine or
    grounded/fact-composed), its model and prompt version, so the two kinds are never
    confused; then the later stages that rewrote parts of it (instance prompts, fields
    regenerated after review)."""
    writers = [s for s in record.provenance.stages if "writer" in s.details or "caption" in s.stage]
    if not writers:
        return None
    main = next((s for s in writers if s.stage == "captions"), writers[0])
    parts = [f"stage {main.stage} v{main.annotator_version}"]
    if "writer" in main.details:
        parts.insert(0, f"writer: {main.details['writer']}")
    if main.models:
        parts.append("model " + ", ".join(m.model_id for m in main.models))
    if main.prompt_hashes:
        parts.append(
            "prompts " + ", ".join(f"{k}@{v[:8]}" for k, v in sorted(main.prompt_hashes.items()))
        )
    later = [
        s.stage + (f" ({s.details['fields']})" if s.details.get("fields") else "")
        for s in writers
        if s is not main
    ]
    if later:
        parts.append("then " + ", ".join(later))
    return " · ".join(parts)


def palette_of(record: Record) -> list[tuple[str, float]]:
    if record.stats is None:
        return []
    return [(s.hex, s.fraction) for s in record.stats.palette if _HEX.match(s.hex)]


def guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
