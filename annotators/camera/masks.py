"""Moving-subject masks for camera estimation, taken from the conditions an earlier stage put in
the record (identities masks or boxes, pose boxes), decoded through their condition types and
aligned to the camera stage's own frame times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import fsspec
import numpy as np
import numpy.typing as npt

from any2capins.annotators.conditions import ConditionType, condition_types
from any2capins.schemas import PayloadRef, Record

BoolArray = npt.NDArray[np.bool_]
# Pose boxes are drawn around keypoints, which miss hair, clothes and held objects.
POSE_BOX_MARGIN = 0.15


@dataclass
class SubjectMasks:
    masks: BoolArray | None  # [T, H, W], True on a moving subject
    sources: list[str] = field(default_factory=list)  # which conditions contributed
    notes: list[str] = field(default_factory=list)  # what could not be used, and why


def read_payload(ref: PayloadRef) -> bytes:
    """A payload file's bytes (any fsspec URI), checked against its recorded sha256."""
    with fsspec.open(ref.uri, "rb") as f:
        data: bytes = f.read()
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"payload {ref.uri} does not match its recorded sha256")
    return data


def _nearest_two(src_t: npt.NDArray[np.float64], t: float) -> list[int]:
    """Indices of the source frames just before and just after ``t`` (one if exact)."""
    i = int(np.searchsorted(src_t, t))
    return sorted({min(max(i - 1, 0), len(src_t) - 1), min(i, len(src_t) - 1)})


def _align(
    per_frame: BoolArray, src_t: npt.NDArray[np.float64], times: list[float], h: int, w: int
) -> BoolArray:
    """Masks at ``times``: the union of the two nearest source frames, resized to h x w.

    A subject moves between the stages' samples; the union covers it on both sides.
    """
    out = np.zeros((len(times), h, w), bool)
    for k, t in enumerate(times):
        m: BoolArray = np.zeros(per_frame.shape[1:], bool)
        for i in _nearest_two(src_t, t):
            m |= per_frame[i]
        if m.shape[:2] != (h, w):
            m = np.asarray(
                cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            )
        out[k] = m
    return out


def _boxes_raster(boxes: npt.NDArray[np.float64], h: int, w: int, margin: float) -> BoolArray:
    """[T, N, 4] xyxy boxes in 0..1 (NaN or negative = absent) as [T, h, w] masks."""
    out = np.zeros((boxes.shape[0], h, w), bool)
    for t in range(boxes.shape[0]):
        for x0, y0, x1, y1 in boxes[t]:
            if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0 or x0 < -0.5:
                continue
            mx, my = (x1 - x0) * margin, (y1 - y0) * margin
            a = (max(0, int((x0 - mx) * w)), max(0, int((y0 - my) * h)))
            b = (min(w, int(np.ceil((x1 + mx) * w))), min(h, int(np.ceil((y1 + my) * h))))
            out[t, a[1] : b[1], a[0] : b[0]] = True
    return out


def _times(arrays: dict[str, np.ndarray], frames: int, record: Record) -> npt.NDArray[np.float64]:
    if "timestamps_s" in arrays and len(arrays["timestamps_s"]) == frames:
        return np.asarray(arrays["timestamps_s"], dtype=np.float64)
    clip = record.clip
    return np.linspace(clip.start_s, clip.end_s, frames, endpoint=False)


def _from_identities(
    arrays: dict[str, np.ndarray], record: Record, times: list[float], h: int, w: int
) -> BoolArray | None:
    if "masks" in arrays:
        m = np.asarray(arrays["masks"]).astype(bool)  # [N, T, h, w]
        if m.ndim == 4 and m.shape[0] > 0:
            per_frame: BoolArray = np.asarray(m.any(axis=0))
            return _align(per_frame, _times(arrays, per_frame.shape[0], record), times, h, w)
    boxes = [np.asarray(v, np.float64) for k, v in arrays.items() if k.startswith("boxes_")]
    if boxes and all(b.ndim == 2 and b.shape[1] == 4 for b in boxes):
        n = min(len(b) for b in boxes)
        # identities boxes are in display pixels of the clip
        scale = np.array([record.clip.width, record.clip.height] * 2, np.float64)
        stacked = np.stack([b[:n] / scale for b in boxes], axis=1)
        per_frame = _boxes_raster(stacked, h, w, 0.05)
        return _align(per_frame, _times(arrays, n, record), times, h, w)
    return None


def _from_pose(
    arrays: dict[str, np.ndarray], record: Record, times: list[float], h: int, w: int
) -> BoolArray | None:
    if "boxes" not in arrays:
        return None
    boxes = np.asarray(arrays["boxes"], np.float64)  # [F, P, 4] xyxy in 0..1, -1 = absent
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] == 0:
        return None
    per_frame = _boxes_raster(boxes, h, w, POSE_BOX_MARGIN)
    return _align(per_frame, _times(arrays, boxes.shape[0], record), times, h, w)


_DECODERS: dict[str, Callable[..., BoolArray | None]] = {
    "identities": _from_identities,
    "pose": _from_pose,
}


def subject_masks(
    record: Record,
    times: list[float],
    height: int,
    width: int,
    read: Callable[[PayloadRef], bytes] = read_payload,
    registry: dict[str, ConditionType[Any]] | None = None,
) -> SubjectMasks:
    """Masks of the record's moving subjects at ``times`` (``[T, height, width]``), from its
    identities and pose conditions; ``masks`` is None when there is nothing to use.

    A condition that is present but cannot be decoded is noted, not fatal: RANSAC still
    rejects moving subjects, the masks only make it more robust.
    """
    types = registry if registry is not None else condition_types()
    result = SubjectMasks(None)
    present = record.conditions.present()
    for name, decode in _DECODERS.items():
        if name not in present:
            continue
        ctype = types.get(name)
        if ctype is None:
            result.notes.append(f"{name}: condition type not registered")
            continue
        try:
            summary = ctype.read(record)
            if summary is None:
                continue
            arrays = ctype.decode_payload(summary, read)
            m = decode(arrays, record, times, height, width)
        except Exception as e:  # noqa: BLE001 - a bad payload must not fail the camera stage
            result.notes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if m is None:
            result.notes.append(f"{name}: no masks or boxes in its payload")
            continue
        result.masks = m if result.masks is None else (result.masks | m)
        result.sources.append(name)
    return result


__all__ = ["SubjectMasks", "read_payload", "subject_masks"]
