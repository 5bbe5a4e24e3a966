"""Pure array logic of the identities condition: linking detections into tracklets, choosing
the 1-3 main identities from their masks, per-frame boxes, the clearest frame, RGBA crops,
the stitched reference image and the packed mask payload. No models here, so every rule is
tested with known boxes and masks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from any2capins.annotators.identities.detector import Detection
from any2capins.annotators.yolox import box_iou

Box = tuple[float, float, float, float]


@dataclass
class Tracklet:
    """Detections of one class linked across frames by box overlap."""

    label: str
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def presence(self, frame_area: float) -> float:
        """Sum over its frames of the box's share of the frame (area x frames present)."""
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes) / frame_area)

    def anchor(self) -> tuple[int, Box]:
        """The frame to prompt SAM 2 on: its most confident detection, larger box on ties."""
        best = max(
            range(len(self.frames)),
            key=lambda i: (
                self.scores[i],
                (self.boxes[i][2] - self.boxes[i][0]) * (self.boxes[i][3] - self.boxes[i][1]),
            ),
        )
        return self.frames[best], self.boxes[best]


def link_tracklets(
    detections: Sequence[tuple[int, Sequence[Detection]]], iou_threshold: float
) -> list[Tracklet]:
    """Greedy IoU linking, frame by frame: each detection joins the same-class tracklet whose
    last box it overlaps most (at least ``iou_threshold``), or starts a new one. Gaps are
    allowed, so a subject the detector misses on one frame keeps its tracklet."""
    tracklets: list[Tracklet] = []
    for frame, dets in sorted(detections, key=lambda fd: fd[0]):
        pairs: list[tuple[float, int, int]] = []
        for di, det in enumerate(dets):
            for ti, tr in enumerate(tracklets):
                if tr.label != det.label or tr.frames[-1] == frame:
                    continue
                iou = float(box_iou(np.array(det.box), np.array([tr.boxes[-1]]))[0])
                if iou >= iou_threshold:
                    pairs.append((iou, di, ti))
        used_d: set[int] = set()
        used_t: set[int] = set()
        for _, di, ti in sorted(pairs, key=lambda p: -p[0]):
            if di in used_d or ti in used_t:
                continue
            used_d.add(di)
            used_t.add(ti)
            tr, det = tracklets[ti], dets[di]
            tr.frames.append(frame)
            tr.boxes.append(det.box)
            tr.scores.append(det.score)
        for di, det in enumerate(dets):
            if di not in used_d:
                tracklets.append(Tracklet(det.label, [frame], [det.box], [det.score]))
    return tracklets


def pick_candidates(
    tracklets: Sequence[Tracklet], frame_area: float, max_candidates: int, min_box_fraction: float
) -> list[Tracklet]:
    """The tracklets worth segmenting: largest presence first, tiny boxes left out."""
    kept = [
        t
        for t in tracklets
        if max((b[2] - b[0]) * (b[3] - b[1]) for b in t.boxes) / frame_area >= min_box_fraction
    ]
    kept.sort(key=lambda t: -t.presence(frame_area))
    return kept[:max_candidates]


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box (x1, y1, x2, y2; x2/y2 exclusive) of a boolean mask, None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    """A boolean mask filling ``box`` (pixel coordinates, clipped to the frame)."""
    out = np.zeros((height, width), dtype=bool)
    # Partly covered pixels count, float noise (63.99998 for 64) does not.
    x1, y1 = max(0, int(np.floor(box[0] + 1e-3))), max(0, int(np.floor(box[1] + 1e-3)))
    x2, y2 = min(width, int(np.ceil(box[2] - 1e-3))), min(height, int(np.ceil(box[3] - 1e-3)))
    out[y1:y2, x1:x2] = True
    return out


@dataclass
class IdentityTrack:
    """One candidate subject over the sampled frames, with the masks it was judged on."""

    label: str
    masks: np.ndarray  # [T, H, W] bool
    source: Literal["mask", "box"]
    detector_score: float
    box_agreement: float = 1.0  # see box_agreement()

    @property
    def areas(self) -> np.ndarray:
        t, h, w = self.masks.shape
        return np.asarray(self.masks.reshape(t, -1).sum(axis=1) / float(h * w))

    @property
    def present(self) -> np.ndarray:
        return self.areas > 0

    @property
    def frames_present(self) -> int:
        return int(self.present.sum())

    @property
    def mean_area_fraction(self) -> float:
        """Mean share of the frame over the frames where it is present."""
        present = self.present
        return float(self.areas[present].mean()) if present.any() else 0.0

    @property
    def score(self) -> float:
        """Main-subject score: mask area x frames present (the sum of per-frame areas)."""
        return float(self.areas.sum())

    def boxes(self) -> list[Box | None]:
        return [mask_box(m) for m in self.masks]

    def center(self) -> tuple[float, float]:
        """Mean box centre over present frames, as fractions of width and height."""
        _, h, w = self.masks.shape
        centres = [((b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h) for b in self.boxes() if b]
        if not centres:
            return (0.5, 0.5)
        arr = np.array(centres)
        return (float(arr[:, 0].mean()), float(arr[:, 1].mean()))


def box_agreement(masks: np.ndarray, tracklet: Tracklet) -> float:
    """Mean IoU, over the frames the detector saw the subject, between the detector's box and
    the box of the mask (0 where the mask is empty)."""
    ious = []
    for frame, box in zip(tracklet.frames, tracklet.boxes, strict=True):
        mb = mask_box(masks[frame])
        ious.append(0.0 if mb is None else float(box_iou(np.array(box), np.array([mb]))[0]))
    return float(np.mean(ious)) if ious else 0.0


def tracks_from_masks(
    candidates: Sequence[Tracklet],
    masks: np.ndarray,
    min_pixels: int = 16,
    min_box_agreement: float = 0.3,
) -> list[IdentityTrack]:
    """Candidates (in prompt order) with their SAM 2 masks [N, T, H, W].

    Specks below ``min_pixels`` are no presence. A candidate whose masks are empty, or
    disagree with its own detections (:func:`box_agreement` below ``min_box_agreement``: the
    mask leaked into the background or latched onto something else), keeps its detector boxes
    as box-shaped masks on the frames it was detected and is marked ``source="box"``, so its
    crop is known to be a rectangle.
    """
    if masks.ndim != 4 or masks.shape[0] != len(candidates):
        raise ValueError(f"masks {masks.shape} do not match {len(candidates)} candidates")
    _, t, h, w = masks.shape
    tracks: list[IdentityTrack] = []
    for cand, m in zip(candidates, masks, strict=True):
        m = m.astype(bool).copy()
        m[m.reshape(t, -1).sum(axis=1) < min_pixels] = False
        agreement = box_agreement(m, cand)
        source: Literal["mask", "box"] = "mask"
        if not m.any() or agreement < min_box_agreement:
            source = "box"
            m = np.zeros((t, h, w), dtype=bool)
            for frame, box in zip(cand.frames, cand.boxes, strict=True):
                m[frame] = box_mask(box, h, w)
        tracks.append(IdentityTrack(cand.label, m, source, max(cand.scores), round(agreement, 4)))
    return tracks


def overlap(a: IdentityTrack, b: IdentityTrack) -> tuple[float, float]:
    """(IoU, intersection over the smaller mask), pooled over all frames."""
    inter = float(np.logical_and(a.masks, b.masks).sum())
    sa, sb = float(a.masks.sum()), float(b.masks.sum())
    if sa == 0 or sb == 0:
        return 0.0, 0.0
    return inter / (sa + sb - inter), inter / min(sa, sb)


def select_identities(
    tracks: Sequence[IdentityTrack],
    max_identities: int,
    min_area_fraction: float,
    min_frames_fraction: float,
    min_relative_score: float,
    duplicate_iou: float,
    duplicate_containment: float = 0.85,
) -> list[IdentityTrack]:
    """The main identities, best first.

    Rank by score (mask area x frames present); drop a candidate that is the same region as
    a better one (two detections of one subject, or a part such as a bag inside a person);
    drop what is too small, too briefly visible, or far behind the best subject; keep at
    most ``max_identities``.
    """
    if not tracks:
        return []
    t = tracks[0].masks.shape[0]
    ranked = sorted(tracks, key=lambda tr: -tr.score)
    kept: list[IdentityTrack] = []
    for tr in ranked:
        if tr.frames_present == 0 or tr.frames_present < min_frames_fraction * t:
            continue
        if tr.mean_area_fraction < min_area_fraction:
            continue
        if kept and tr.score < min_relative_score * kept[0].score:
            continue
        if any(
            iou >= duplicate_iou or contained >= duplicate_containment
            for iou, contained in (overlap(tr, k) for k in kept)
        ):
            continue
        kept.append(tr)
        if len(kept) == max_identities:
            break
    return kept


def sharpness(frame_rgb: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image over the mask's pixels."""
    if not mask.any():
        return 0.0
    grey = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    return float(lap[mask].var())


def clearest_frame(frames: np.ndarray, masks: np.ndarray) -> int:
    """Frame where the subject is both sharp and large: sharpness x mask area."""
    best, best_value = -1, -1.0
    for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        area = int(mask.sum())
        if area == 0:
            continue
        value = sharpness(frame, mask) * area
        if value > best_value:
            best, best_value = i, value
    if best < 0:
        raise ValueError("the subject is not present on any frame")
    return best


def rgba_crop(frame_rgb: np.ndarray, mask: np.ndarray, margin: float) -> np.ndarray:
    """The subject cut out of one frame: RGBA, alpha 255 inside the mask and 0 outside,
    cropped to the mask's box grown by ``margin`` of its size on each side."""
    box = mask_box(mask)
    if box is None:
        raise ValueError("cannot crop an empty mask")
    h, w = mask.shape
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1 = max(0, int(np.floor(box[0] - margin * bw)))
    y1 = max(0, int(np.floor(box[1] - margin * bh)))
    x2 = min(w, int(np.ceil(box[2] + margin * bw)))
    y2 = min(h, int(np.ceil(box[3] + margin * bh)))
    rgba = np.zeros((y2 - y1, x2 - x1, 4), dtype=np.uint8)
    rgba[..., :3] = frame_rgb[y1:y2, x1:x2]
    rgba[..., 3] = np.where(mask[y1:y2, x1:x2], 255, 0).astype(np.uint8)
    return rgba


def stitch(crops: Sequence[np.ndarray], height: int, gap: int = 8) -> np.ndarray:
    """Crops side by side, left to right in the order given, each resized to ``height``
    (aspect kept) and composited over white, ``gap`` white pixels apart: an RGB image, since
    caption models render transparency inconsistently."""
    if not crops:
        raise ValueError("nothing to stitch")
    parts = []
    for crop in crops:
        ch, cw = crop.shape[:2]
        new_w = max(1, round(cw * height / ch))
        interp = cv2.INTER_AREA if height < ch else cv2.INTER_CUBIC
        resized = cv2.resize(crop, (new_w, height), interpolation=interp)
        alpha = resized[..., 3:4].astype(np.float32) / 255.0
        rgb = resized[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        parts.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    total = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    out = np.full((height, total, 3), 255, dtype=np.uint8)
    x = 0
    for p in parts:
        out[:, x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB or RGBA uint8 image."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 or HxWx4 uint8, got {image.shape} {image.dtype}")
    code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, code))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(buf.tobytes())


def decode_png(data: bytes) -> np.ndarray:
    """RGB or RGBA array of PNG bytes (channels as stored)."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("not a PNG image")
    if arr.ndim == 2:
        return np.asarray(cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB))
    code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    return np.asarray(cv2.cvtColor(arr, code))


def boxes_json(
    identity_id: int,
    label: str,
    boxes: Sequence[Box | None],
    timestamps_s: Sequence[float],
    sampled_size: tuple[int, int],
    frame_size: tuple[int, int],
    source: str,
) -> bytes:
    """Per-frame boxes in the clip's display pixels (null where the subject is absent)."""
    sx = frame_size[0] / sampled_size[0]
    sy = frame_size[1] / sampled_size[1]
    scaled = [
        None
        if b is None
        else [round(b[0] * sx, 2), round(b[1] * sy, 2), round(b[2] * sx, 2), round(b[3] * sy, 2)]
        for b in boxes
    ]
    doc: dict[str, Any] = {
        "format": "any2capins.identity_boxes/1",
        "identity_id": identity_id,
        "label": label,
        "source": source,
        "box_format": "xyxy, display pixels, x2/y2 exclusive",
        "frame_size": list(frame_size),
        "timestamps_s": [round(t, 4) for t in timestamps_s],
        "boxes": scaled,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_boxes_json(data: bytes) -> np.ndarray:
    """[T, 4] float boxes, NaN rows where the subject is absent."""
    doc = json.loads(data)
    rows = [[np.nan] * 4 if b is None else b for b in doc["boxes"]]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def downscale_masks(masks: np.ndarray, max_side: int) -> np.ndarray:
    """[..., H, W] bool masks resized so the longer side is at most ``max_side``."""
    h, w = masks.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return masks.astype(bool)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    flat = masks.reshape(-1, h, w).astype(np.uint8) * 255
    out = np.stack([cv2.resize(m, (nw, nh), interpolation=cv2.INTER_AREA) for m in flat])
    # Any coverage counts: a thin limb must not vanish from a mask used to ignore subjects.
    return np.asarray(out > 0).reshape(*masks.shape[:-2], nh, nw)


def pack_masks(
    masks: np.ndarray,
    identity_ids: Sequence[int],
    labels: Sequence[str],
    timestamps_s: Sequence[float],
    max_side: int,
) -> bytes:
    """The masks payload (.npz): bit-packed low-resolution masks [N, T, h, w] of every
    identity, for later stages (the camera estimator ignores features on moving subjects)."""
    small = downscale_masks(masks, max_side)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        format=np.array("any2capins.identity_masks/1"),
        shape=np.array(small.shape, dtype=np.int64),
        packed=np.packbits(small.reshape(-1)),
        identity_ids=np.array(identity_ids, dtype=np.int64),
        labels=np.array(labels, dtype=str),
        timestamps_s=np.array(timestamps_s, dtype=np.float64),
    )
    return buf.getvalue()


def unpack_masks(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of a masks payload; ``masks`` is [N, T, h, w] bool."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        shape = tuple(int(s) for s in z["shape"])
        count = int(np.prod(shape))
        masks = np.unpackbits(z["packed"], count=count).astype(bool).reshape(shape)
        return {
            "masks": masks,
            "identity_ids": z["identity_ids"],
            "labels": z["labels"],
            "timestamps_s": z["timestamps_s"],
        }


__all__ = [
    "IdentityTrack",
    "Tracklet",
    "box_agreement",
    "box_mask",
    "boxes_json",
    "clearest_frame",
    "decode_png",
    "downscale_masks",
    "encode_png",
    "link_tracklets",
    "mask_box",
    "overlap",
    "pack_masks",
    "parse_boxes_json",
    "pick_candidates",
    "rgba_crop",
    "select_identities",
    "sharpness",
    "stitch",
    "tracks_from_masks",
    "unpack_masks",
]
