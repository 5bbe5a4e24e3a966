from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from any2capins.schemas import (
    SCHEMA_VERSION,
    CameraCondition,
    ClipRef,
    ClipStats,
    ColorSwatch,
    Conditions,
    DepthCondition,
    Failure,
    Keyframes,
    ModelInfo,
    PayloadRef,
    Provenance,
    Record,
    ReviewState,
    StageProvenance,
    StructuredCaption,
    from_table,
    make_clip_id,
    record_arrow_schema,
    to_table,
)
from any2capins.schemas._arrow import SCHEMA_VERSION_KEY


def _ref(name: str) -> PayloadRef:
    return PayloadRef(uri=f"/a/{name}", media_type="image/png", bytes=10, sha256="0" * 64)


def full_record() -> Record:
    clip = ClipRef(
        clip_id=make_clip_id("s3://b/v.mp4", 1.0, 5.5),
        source_uri="s3://b/v.mp4",
        start_s=1.0,
        end_s=5.5,
        fps=29.97,
        width=640,
        height=360,
        num_frames=135,
        rotation=90,
        codec="h264",
    )
    return Record(
        clip=clip,
        stats=ClipStats(
            frames_sampled=16,
            mean_brightness=0.4,
            palette=[
                ColorSwatch(hex="#aabbcc", fraction=0.6),
                ColorSwatch(hex="#000000", fraction=0.4),
            ],
            motion_magnitude=0.01,
        ),
        keyframes=Keyframes(timestamps_s=[1.5, 3.0], frames=[_ref("0.jpg"), _ref("1.jpg")]),
        conditions=Conditions(
            depth=DepthCondition(
                model_id="depth-anything/Depth-Anything-V2-Small-hf",
                frames=2,
                timestamps_s=[1.5, 3.0],
                normalization="min-max per clip, uint16",
                payload=_ref("depth.npz"),
            ),
            camera=CameraCondition(
                source="motionctrl",
                frames=16,
                labels=["dolly_in", "pan_left"],
                description="the camera slowly dollies in while panning left",
                trajectory=_ref("cam.txt"),
            ),
        ),
        caption=StructuredCaption(
            dense="d", main_object="m", background="b", camera="c", style="s", action="a"
        ),
        short_prompt="a dog runs",
        provenance=Provenance(
            recipe="demo",
            recipe_hash="abc",
            run_id="r1",
            stages=[
                StageProvenance(
                    stage="clip_stats",
                    annotator_version="1",
                    config_hash="h",
                    run_id="r1",
                    seconds=0.5,
                    finished_at=datetime(2026, 1, 1, tzinfo=UTC),
                    models=[ModelInfo(model_id="m", version="v", license="Apache-2.0")],
                    prompt_hashes={"dense": "x"},
                    details={"reader": "decord"},
                )
            ],
        ),
        review=ReviewState(status="edited", reviewer="ann", edits={"dense": "better"}),
    )


def test_clip_id_is_uuid5_of_uri_and_span() -> None:
    a = make_clip_id("file:///x.mp4", 0.0, 2.0)
    assert uuid.UUID(a).version == 5
    assert a == make_clip_id("file:///x.mp4", 0.0, 2.0004)  # millisecond rounding
    assert a != make_clip_id("file:///x.mp4", 0.0, 2.5)
    assert a != make_clip_id("file:///y.mp4", 0.0, 2.0)
    assert make_clip_id("file:///x.mp4", None, None) != a


def test_record_round_trips_through_arrow() -> None:
    minimal = Record(
        clip=full_record().clip, provenance=Provenance(recipe="demo", recipe_hash="h", run_id="r")
    )
    records = [full_record(), minimal]
    table = to_table(records, Record)
    assert table.schema.equals(record_arrow_schema(), check_metadata=True)
    assert table.schema.metadata[SCHEMA_VERSION_KEY] == SCHEMA_VERSION.encode()
    assert from_table(table, Record) == records


def test_failure_round_trips_and_table_survives_parquet(tmp_path: object) -> None:
    import pyarrow.parquet as pq

    failures = [
        Failure(
            clip_id="c", source_uri="u", stage="probe", error_type="EmptyFile", message="0 bytes"
        )
    ]
    table = to_table(failures, Failure)
    path = f"{tmp_path}/f.parquet"
    pq.write_table(table, path)
    assert from_table(pq.read_table(path), Failure) == failures


def test_other_schema_version_is_refused() -> None:
    table = to_table([full_record()], Record)
    meta = dict(table.schema.metadata)
    meta[SCHEMA_VERSION_KEY] = b"0.0.1"
    with pytest.raises(ValueError, match=r"schema version 0\.0\.1"):
        from_table(table.replace_schema_metadata(meta), Record)


def test_arrow_schema_covers_every_field() -> None:
    schema = record_arrow_schema()
    assert set(schema.names) == set(Record.model_fields)
    conditions = schema.field("conditions").type
    assert isinstance(conditions, pa.StructType)
    assert {conditions.field(i).name for i in range(conditions.num_fields)} == set(
        Conditions.model_fields
    )


def test_structured_caption_numbered_text() -> None:
    text = full_record().caption.numbered_text()  # type: ignore[union-attr]
    assert text.startswith("1. Dense caption: d\n2. Main object caption: m")
    assert text.endswith("6. Action caption: a")


def test_models_refuse_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        StructuredCaption(
            dense="d", main_object="m", background="b", camera="c", style="s", action="a", mood="x"
        )  # type: ignore[call-arg]
