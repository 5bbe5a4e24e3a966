"""Keyframes: a few JPEG frames per clip in the artifact store, the images the caption
writer is shown and the review UI's poster frames."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
from pydantic import Field

from annotators.base import (
    Annotator,
    AnnotatorConfig,
    ClipInput,
    FrameSampling,
    Resources,
)
from schemas import Keyframes


class KeyframesConfig(AnnotatorConfig):
    jpeg_quality: int = Field(default=85, ge=10, le=100)


class KeyframesAnnotator(Annotator):
    name: ClassVar[str] = "keyframes"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[AnnotatorConfig]] = KeyframesConfig
    default_sampling: ClassVar[FrameSampling] = FrameSampling(num_frames=4, max_side=512)
    default_resources: ClassVar[Resources] = Resources(num_cpus=0.5, batch_size=4)
    writes: ClassVar[tuple[str, ...]] = ("keyframes",)

    config: KeyframesConfig

    def __call__(self, batch: list[ClipInput]) -> list[dict[str, Any] | BaseException]:
        out: list[dict[str, Any] | BaseException] = []
        for item in batch:
            refs = []
            for i, frame in enumerate(item.frames):
                ok, buf = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality],
                )
                if not ok:
                    raise RuntimeError(f"JPEG encoding failed for frame {i}")
                refs.append(item.artifacts.put(f"{i:03d}.jpg", buf.tobytes(), "image/jpeg"))
            out.append(
                {
                    "keyframes": Keyframes(
                        timestamps_s=[round(t, 4) for t in item.timestamps_s], frames=refs
                    )
                }
            )
        return out
