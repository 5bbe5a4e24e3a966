"""The plugin on its own, without Ray or a run directory: the measurement on frames whose
motion is known exactly, the annotator with an in-memory artifact sink, the payload decoded
back, the facts and the short-prompt check.

Run with the plugin installed next to any2capins (see the README):
``pytest examples/any2cap-motion-energy``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from any2cap_motion_energy import (
    LEVELS,
    MotionEnergyAnnotator,
    MotionEnergyCondition,
    MotionEnergyConditionType,
    MotionEnergyConfig,
    measure_motion_energy,
)
from pydantic import ValidationError

from any2capins.plugins import ClipInput, ClipRef, PayloadRef, Provenance, Record

SIDE, BLOCK = 64, 16


def block_frames(positions: list[int | None]) -> np.ndarray:
    """Black 64x64 frames with a white 16x16 block in the top row at column ``x`` (or none)."""
    frames = np.zeros((len(positions), SIDE, SIDE, 3), np.uint8)
    for f, x in enumerate(positions):
        if x is not None:
            frames[f, :BLOCK, x : x + BLOCK] = 255
    return frames


class MemorySink:
    """An ArtifactSink that keeps payload files in memory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, media_type: str) -> PayloadRef:
        uri = f"memory://{name}"
        self.files[uri] = data
        return PayloadRef(
            uri=uri, media_type=media_type, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
        )

    def read(self, ref: PayloadRef) -> bytes:
        return self.files[ref.uri]


def clip_input(frames: np.ndarray, sink: MemorySink) -> ClipInput:
    times = [0.5 * i for i in range(len(frames))]
    clip = ClipRef(
        clip_id="c0",
        source_uri="memory://clip.mp4",
        start_s=0.0,
        end_s=0.5 * len(frames),
        fps=2.0,
        width=SIDE,
        height=SIDE,
        num_frames=len(frames),
    )
    record = Record(clip=clip, provenance=Provenance(recipe="t", recipe_hash="h", run_id="r"))
    return ClipInput(clip=clip, frames=frames, timestamps_s=times, record=record, artifacts=sink)


def test_energy_is_the_changed_fraction_of_the_frame() -> None:
    # still for the first half (to 2.0 s), then the block jumps one block width per frame
    frames = block_frames([0, 0, 0, 0, 0, 16, 32, 48])
    times = [0.5 * i for i in range(len(frames))]
    m = measure_motion_energy(frames, times, (0.0, 4.0), grid=4)
    # a jump changes two 16x16 blocks from black to white or back: 512 of 4096 pixels
    assert m.energy.tolist() == pytest.approx([0, 0, 0, 0, 0, 0.125, 0.125, 0.125])
    assert m.maps.shape == (8, 4, 4)
    assert m.maps.mean(axis=(1, 2)) == pytest.approx(m.energy)
    assert m.maps[5, 0].tolist() == pytest.approx([1, 1, 0, 0])  # cells 0 and 1 of the top row
    assert m.first_half == pytest.approx(0.0) and m.second_half == pytest.approx(0.125)
    assert m.peak == pytest.approx(0.125) and m.peak_index == 5
    assert m.busiest_region.startswith("top")


def test_still_frames_and_too_few_frames() -> None:
    still = measure_motion_energy(block_frames([8] * 5), [0, 1, 2, 3, 4], (0.0, 5.0))
    assert still.mean == 0 and LEVELS.word(still.mean) == "still"
    with pytest.raises(ValueError, match="at least 2 sampled frames"):
        measure_motion_energy(block_frames([8]), [0.0], (0.0, 1.0))


def test_annotator_writes_a_summary_and_a_payload_that_decodes_back() -> None:
    sink = MemorySink()
    frames = block_frames([0, 0, 0, 0, 0, 16, 32, 48])
    annotator = MotionEnergyAnnotator(MotionEnergyConfig(grid=4))
    (out,) = annotator([clip_input(frames, sink)])
    assert not isinstance(out, BaseException), out
    assert list(out) == ["conditions.extra.motion_energy"]
    summary = MotionEnergyCondition.model_validate(
        json.loads(out["conditions.extra.motion_energy"])
    )
    assert summary.level == "high" and summary.frames == 8 and summary.grid == 4
    assert summary.description.endswith("concentrated in the second half")

    ctype = MotionEnergyConditionType()
    arrays = ctype.decode_payload(summary, sink.read)
    assert arrays["energy"].dtype == np.float32 and arrays["energy"][5] == pytest.approx(0.125)
    assert arrays["maps"].shape == (8, 4, 4)
    assert arrays["timestamps_s"].tolist() == [0.5 * i for i in range(8)]
    assert arrays["preview"].shape == (SIDE, SIDE, 3)

    record = clip_input(frames, sink).record
    facts = ctype.grounding_facts(summary, record)
    assert "Motion is high in the second half of the clip and nearly absent" in facts[1]
    assert ctype.short_prompt_violations("A white block slides rapidly.", summary, record)
    assert not ctype.short_prompt_violations("A white block slides to the right.", summary, record)


def test_one_bad_clip_fails_alone_and_params_are_checked() -> None:
    sink = MemorySink()
    good, short = block_frames([0, 16]), block_frames([0])
    outputs = MotionEnergyAnnotator()([clip_input(short, sink), clip_input(good, sink)])
    assert isinstance(outputs[0], ValueError) and not isinstance(outputs[1], BaseException)
    with pytest.raises(ValidationError, match="grdi"):
        MotionEnergyConfig.model_validate({"grdi": 4})


def test_summary_maps_to_arrow() -> None:
    struct = MotionEnergyConditionType.arrow_type()
    assert isinstance(struct, pa.StructType)
    assert struct.field("mean_energy").type == pa.float64()
    assert isinstance(struct.field("payload").type, pa.StructType)
