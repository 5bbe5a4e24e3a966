"""Perceptual hashes of a clip's sampled frames, for near-duplicate grouping across a run.

The hash is the classic DCT pHash (as ``imagehash.phash``): grey, 32x32 area resize, 2-D
DCT, the 8x8 lowest frequencies compared with their median -> 64 bits. It survives
re-encoding, rescaling and mild colour shifts, which is what separates a re-upload from a
different clip. Written as 16 hex digits per frame; the grouping is the engine's
(:mod:`any2capins.pipeline.dedup`), over every clip of the run at once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import Field

from any2capins.annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)

HASH_BITS = 64


def phash(image_rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash of one [H, W, 3] uint8 RGB image."""
    grey = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def clip_phashes(frames: np.ndarray, count: int) -> list[str]:
    """``count`` hashes at evenly spaced frames (a short clip repeats frames), as hex."""
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    # Every clip gets the same number of hashes so clips compare frame by frame.
    picks = np.round(np.linspace(0, frames.shape[0] - 1, count)).astype(int)
    return [f"{phash(frames[i]):016x}" for i in picks]


class DedupHashConfig(AnnotatorConfig):
    hashes: int = Field(
        default=4, ge=1, le=64, description="hashes per clip, at evenly spaced sampled frames"
    )


class DedupHashAnnotator(Annotator):
    """``phashes``: ``hashes`` pHashes per clip (default 4, over 4 sampled frames)."""

    name: ClassVar[str] = "dedup_hash"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = DedupHashConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=4, max_side=128)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.25, batch_size=8)
    writes: ClassVar[tuple[str, ...]] = ("phashes",)

    config: DedupHashConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            out.append({"phashes": clip_phashes(item.frames, self.config.hashes)})
        return out


__all__ = ["DedupHashAnnotator", "clip_phashes", "phash"]
