"""What a caption writer knows about one clip: facts measured from the clip (size, duration,
brightness, palette, motion), the grounding facts and short-prompt rules of each condition
type the record has, and the images (keyframes and condition visuals) for the model.

Everything here is derived from the record; nothing is guessed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import fsspec
import numpy as np
from pydantic import BaseModel

from any2capins.annotators.captions.config import ImageOptions
from any2capins.annotators.captions.errors import CaptionInputError
from any2capins.annotators.conditions import ConditionType
from any2capins.schemas import ClipStats, Conditions, PayloadRef, Record

# A small colour-name table (sRGB); names are matched by distance in CIE Lab.
COLOUR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (10, 10, 10)),
    ("charcoal", (54, 54, 56)),
    ("dark grey", (90, 90, 92)),
    ("grey", (128, 128, 128)),
    ("light grey", (190, 190, 190)),
    ("white", (245, 245, 245)),
    ("dark brown", (70, 45, 30)),
    ("brown", (125, 85, 55)),
    ("tan", (190, 150, 110)),
    ("beige", (225, 205, 170)),
    ("cream", (245, 235, 210)),
    ("dark red", (110, 20, 25)),
    ("red", (200, 35, 35)),
    ("pink", (230, 150, 170)),
    ("orange", (230, 120, 30)),
    ("yellow", (230, 210, 50)),
    ("olive", (110, 110, 40)),
    ("dark green", (30, 70, 35)),
    ("green", (60, 140, 60)),
    ("light green", (150, 200, 120)),
    ("teal", (30, 120, 120)),
    ("navy", (25, 35, 80)),
    ("slate blue", (70, 85, 110)),
    ("blue", (40, 90, 190)),
    ("light blue", (150, 190, 230)),
    ("purple", (110, 50, 130)),
    ("lavender", (180, 160, 210)),
)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 sRGB -> [N, 3] float Lab (OpenCV's float conversion, L in 0..100)."""
    img = (rgb.reshape(-1, 1, 3).astype(np.float32)) / 255.0
    return np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2Lab).reshape(-1, 3))


_TABLE_LAB = _lab(np.array([rgb for _, rgb in COLOUR_NAMES], dtype=np.uint8))


def colour_name(hex_colour: str) -> str:
    """The nearest name in :data:`COLOUR_NAMES` for ``#rrggbb``."""
    h = hex_colour.lstrip("#")
    if len(h) != 6:
        raise ValueError(f"not a #rrggbb colour: {hex_colour!r}")
    rgb = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)]], dtype=np.uint8)
    d = np.linalg.norm(_TABLE_LAB - _lab(rgb), axis=1)
    return COLOUR_NAMES[int(np.argmin(d))][0]


def brightness_word(luma: float) -> str:
    for limit, word in (
        (0.15, "very dark"),
        (0.3, "dark"),
        (0.45, "moderately dark"),
        (0.6, "moderately bright"),
        (0.75, "bright"),
    ):
        if luma < limit:
            return word
    return "very bright"


def motion_word(magnitude: float) -> str:
    for limit, word in ((0.005, "almost no"), (0.02, "little"), (0.05, "moderate")):
        if magnitude < limit:
            return word
    return "strong"


def orientation(width: int, height: int) -> str:
    if width > height * 1.05:
        return "landscape"
    if height > width * 1.05:
        return "portrait"
    return "square"


def palette_phrase(stats: ClipStats, limit: int = 4) -> str:
    """ "dark brown (41%), beige (22%) and grey (15%)": names merged, largest first."""
    merged: dict[str, float] = {}
    for swatch in stats.palette:
        name = colour_name(swatch.hex)
        merged[name] = merged.get(name, 0.0) + swatch.fraction
    items = sorted(merged.items(), key=lambda kv: -kv[1])[:limit]
    parts = [f"{name} ({round(100 * frac)}%)" for name, frac in items]
    return join_words(parts)


def join_words(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def clip_facts(record: Record) -> list[str]:
    """Facts about the clip itself, from its probe and its statistics."""
    clip = record.clip
    facts = [
        f"Duration {clip.duration_s:.1f} seconds at {clip.fps:.0f} frames per second; "
        f"frame size {clip.width}x{clip.height} ({orientation(clip.width, clip.height)})."
    ]
    stats = record.stats
    if stats is not None:
        facts.append(
            f"Overall brightness: {brightness_word(stats.mean_brightness)} "
            f"(mean luma {stats.mean_brightness:.2f} on a 0 to 1 scale)."
        )
        if stats.palette:
            facts.append(f"Dominant colours by area: {palette_phrase(stats, limit=5)}.")
        facts.append(
            f"Frame-to-frame change: {motion_word(stats.motion_magnitude)} change between "
            f"{stats.frames_sampled} frames sampled over the clip (mean absolute luma "
            f"difference {stats.motion_magnitude:.3f}); this counts subject and camera "
            "motion together."
        )
    return facts


@dataclass
class ImagePart:
    label: str
    jpeg: bytes

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode()


@dataclass
class ConditionView:
    """One condition of the record as the writer sees it."""

    name: str
    facts: list[str]
    rules: list[str]
    check: Callable[[str], list[str]]


@dataclass
class ClipContext:
    """What the writer knows of one clip. ``conditions`` give the facts (every condition the
    clip has); ``given`` are the conditions the short prompt is written for, whose rules it
    must obey: all of them for a clip's own prompt, one instance's set otherwise."""

    record: Record
    clip_facts: list[str]
    conditions: list[ConditionView]
    images: list[ImagePart] = field(default_factory=list)
    given: list[ConditionView] | None = None

    @property
    def clip_id(self) -> str:
        return self.record.clip_id

    @property
    def run_id(self) -> str:
        return self.record.provenance.run_id

    def facts_text(self) -> str:
        lines = [f"- {f}" for f in self.clip_facts]
        for cond in self.conditions:
            lines.extend(f"- {cond.name}: {f}" for f in cond.facts)
        return "\n".join(lines)

    @property
    def given_conditions(self) -> list[ConditionView]:
        return self.conditions if self.given is None else self.given

    def rules(self) -> dict[str, list[str]]:
        return {c.name: c.rules for c in self.given_conditions if c.rules}

    def violations(self, prompt: str) -> list[str]:
        out: list[str] = []
        for cond in self.given_conditions:
            out.extend(f"{cond.name}: {v}" for v in cond.check(prompt))
        return out

    def for_conditions(self, names: list[str], types: dict[str, ConditionType[Any]]) -> ClipContext:
        """The same clip (facts and images unchanged, so requests share their prefix) with a
        short prompt written for ``names`` only.

        Rules are taken from a copy of the record that holds just those conditions, so a
        rule that depends on what else is given (depth asks for the camera to be described
        when no camera is given) follows the instance, not the clip.
        """
        return replace(self, given=condition_views(restrict_conditions(self.record, names), types))


def restrict_conditions(record: Record, names: list[str]) -> Record:
    """A copy of ``record`` whose conditions are only ``names``."""
    conditions = record.conditions
    kept = Conditions(
        **{
            name: getattr(conditions, name)
            for name in type(conditions).model_fields
            if name != "extra" and name in names
        },
        extra={k: v for k, v in conditions.extra.items() if k in names},
    )
    return record.model_copy(update={"conditions": kept})


def condition_views(record: Record, types: dict[str, ConditionType[Any]]) -> list[ConditionView]:
    """Facts, rules and the violation check of every condition the record has."""
    views: list[ConditionView] = []
    for name in record.conditions.present():
        ctype = types.get(name)
        if ctype is None:
            raise CaptionInputError(
                f"the record has a {name!r} condition but no condition type {name!r} is "
                "registered (entry point group any2capins.conditions): cannot ground the caption"
            )
        try:
            summary = type(ctype).read(record)
            if summary is None:
                continue
            facts = [str(f) for f in ctype.grounding_facts(summary, record)]
            rules = [str(r) for r in ctype.short_prompt_rules(summary, record)]
        except Exception as e:  # a condition plugin's bug is this clip's failure
            raise CaptionInputError(
                f"condition type {name!r} failed to give facts: {type(e).__name__}: {e}"
            ) from e
        views.append(ConditionView(name, facts, rules, _checker(ctype, summary, record)))
    return views


def _checker(
    ctype: ConditionType[Any], summary: BaseModel, record: Record
) -> Callable[[str], list[str]]:
    def check(prompt: str) -> list[str]:
        return [str(v) for v in ctype.short_prompt_violations(prompt, summary, record)]

    return check


# reading and shrinking images
def read_payload(ref: PayloadRef) -> bytes:
    try:
        with fsspec.open(ref.uri, "rb") as f:
            data: bytes = f.read()
    except (OSError, ValueError) as e:
        raise CaptionInputError(f"cannot read payload {ref.uri}: {e}") from e
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise CaptionInputError(f"payload {ref.uri} does not match its recorded sha256")
    return data


def _encode(img: np.ndarray, options: ImageOptions) -> bytes:
    h, w = img.shape[:2]
    scale = options.max_side / max(h, w)
    if scale < 1:
        img = cv2.resize(
            img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    if not ok:
        raise CaptionInputError("JPEG encoding failed")
    return bytes(buf.tobytes())


def image_jpeg(data: bytes, options: ImageOptions, what: str) -> bytes:
    """An image payload (JPEG, PNG, WebP; alpha dropped) as a JPEG of at most max_side."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise CaptionInputError(f"{what} is not a decodable image")
    return _encode(img, options)


def video_jpegs(data: bytes, options: ImageOptions, what: str) -> list[bytes]:
    """A few evenly spaced frames of a video payload (e.g. a pose rendering) as JPEGs."""
    fd, path = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        cap = cv2.VideoCapture(path)
        frames: list[np.ndarray] = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
    finally:
        os.unlink(path)
    if not frames:
        raise CaptionInputError(f"{what} is not a decodable video")
    n = min(options.video_frames, len(frames))
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [_encode(frames[i], options) for i in idx]


def keyframe_images(record: Record, options: ImageOptions) -> list[ImagePart]:
    kf = record.keyframes
    if kf is None or not kf.frames:
        raise CaptionInputError(
            "the record has no keyframes: run the keyframes stage before captions "
            "(depends_on: [keyframes])"
        )
    n = min(options.keyframes, len(kf.frames))
    idx = np.linspace(0, len(kf.frames) - 1, n).round().astype(int)
    parts = []
    for k, i in enumerate(idx, 1):
        t = kf.timestamps_s[i] - record.clip.start_s if i < len(kf.timestamps_s) else None
        label = f"keyframe {k} of {n}" + (f" at {max(t, 0.0):.1f} s" if t is not None else "")
        parts.append(ImagePart(label, image_jpeg(read_payload(kf.frames[i]), options, label)))
    return parts


def _top_level_refs(summary: Any) -> list[tuple[str, PayloadRef]]:
    """Payload refs held directly by a condition summary (stitched reference, preview, ...).

    Nested refs (e.g. every identity's own crop) are left out: the stitched image shows them.
    """
    out = []
    if isinstance(summary, BaseModel):
        for name in type(summary).model_fields:
            value = getattr(summary, name)
            if isinstance(value, PayloadRef):
                out.append((name, value))
    return out


def condition_images(
    record: Record, types: dict[str, ConditionType[Any]], options: ImageOptions
) -> list[ImagePart]:
    """Image and video payloads of the record's conditions, at most ``condition_images``,
    taken in turns so that every condition shows at least one before any shows two."""
    per_condition: list[list[ImagePart]] = []
    for name in record.conditions.present():
        ctype = types.get(name)
        summary = type(ctype).read(record) if ctype is not None else None
        parts: list[ImagePart] = []
        for field_name, ref in _top_level_refs(summary):
            label = f"{name} condition: {field_name.replace('_', ' ')}"
            if ref.media_type.startswith("image/"):
                parts.append(ImagePart(label, image_jpeg(read_payload(ref), options, label)))
            elif ref.media_type.startswith("video/"):
                frames = video_jpegs(read_payload(ref), options, label)
                parts.extend(
                    ImagePart(f"{label}, frame {i + 1} of {len(frames)}", jpeg)
                    for i, jpeg in enumerate(frames)
                )
        per_condition.append(parts)
    taken: list[ImagePart] = []
    for turn in range(max((len(p) for p in per_condition), default=0)):
        taken.extend(p[turn] for p in per_condition if turn < len(p))
    # keep each condition's images together and in order
    chosen = {id(part) for part in taken[: options.condition_images]}
    return [part for parts in per_condition for part in parts if id(part) in chosen]


def build_context(
    record: Record,
    types: dict[str, ConditionType[Any]],
    options: ImageOptions,
    with_images: bool,
) -> ClipContext:
    ctx = ClipContext(record, clip_facts(record), condition_views(record, types))
    if with_images:
        ctx.images = keyframe_images(record, options) + condition_images(record, types, options)
    return ctx
