"""Containers and codecs beyond MP4/H.264: MPEG-TS (timestamps that start late, no index)
and AV1 (decoded by libdav1d, named av1)."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from any2capins.annotators.base import FrameSampling
from any2capins.pipeline import video
from any2capins.pipeline.video import DecodeError, ReaderUnavailable, probe_video, sample_frames
from tests import media

HAS_DECORD = importlib.util.find_spec("decord") is not None
AV1_ENCODERS = [c for c in ("libsvtav1", "libaom-av1", "librav1e") if c in av.codecs_available]


@pytest.fixture(scope="module")
def ts_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ts")
    times = media.vfr_timestamps(2.0)
    n = len(times)
    vfr = media._encode(
        d / "vfr.ts",
        [media.frame_image(i, n, 320, 240) for i in range(n)],
        [round(t * 1000) for t in times],
        Fraction(1, 1000),
        Fraction(n, 2),
        media.DEFAULT_CODEC,
        "yuv420p",
        12,
        mux_options={"max_delay": "700000"},
    )
    return {
        # starts near 1.4 s, as ffmpeg writes TS; one keyframe, as libx264 by default
        "ts": media.make_ts_video(d / "cam.ts"),
        # a keyframe every 12 frames: every seek must land on the right GOP
        "ts_gop": media.make_ts_video(d / "gop.ts", gop=12),
        "ts0": media.make_ts_video(d / "nodelay.ts", gop=12, mux_delay_s=0.0),
        "vfr": vfr,
    }


def _stream_start_s(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.start_time is not None and s.time_base is not None
        return float(s.start_time * s.time_base)


def test_ts_probe(ts_clips: dict[str, Path]) -> None:
    assert _stream_start_s(ts_clips["ts"]) > 1.0  # the case that broke seeking
    info = probe_video(str(ts_clips["ts"]))
    assert info.container == "mpegts" and info.codec in ("h264", "mpeg4")
    assert info.duration_s == pytest.approx(2.0, abs=0.05) and info.fps == pytest.approx(24)
    assert info.num_frames == 48 and not info.variable_frame_rate
    vfr = probe_video(str(ts_clips["vfr"]))
    assert vfr.variable_frame_rate and vfr.duration_s == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("name", ["ts", "ts_gop", "ts0"])
@pytest.mark.parametrize(
    ("start", "end", "sampling"),
    [
        (0.0, None, FrameSampling(num_frames=8)),
        (0.0, None, FrameSampling()),  # every frame
        (0.3, 1.9, FrameSampling(fps=3)),
        (1.5, 2.0, FrameSampling(num_frames=4)),
    ],
)
def test_ts_frames_are_the_right_frames(
    ts_clips: dict[str, Path], name: str, start: float, end: float | None, sampling: FrameSampling
) -> None:
    path = ts_clips[name]
    info = probe_video(str(path))
    end = info.duration_s if end is None else end
    got = sample_frames(str(path), info, start, end, sampling)
    # decord lands a GOP late in MPEG-TS and returns wrong frames without an error: it is
    # skipped for the container and PyAV reads it.
    assert got.reader == "pyav"
    assert [media.read_stamp(f) for f in got.frames] == got.indices
    assert got.timestamps_s == [round(i / 24, 6) for i in got.indices]
    assert all(start - 1e-3 <= t < end for t in got.timestamps_s)


def test_ts_vfr_picks_the_frames_nearest_the_targets(ts_clips: dict[str, Path]) -> None:
    path = ts_clips["vfr"]
    info = probe_video(str(path))
    times = media.vfr_timestamps(2.0)
    got = sample_frames(str(path), info, 0.3, 1.9, FrameSampling(fps=5), readers=("pyav",))
    assert [media.read_stamp(f) for f in got.frames] == got.indices
    assert got.timestamps_s == [round(times[i], 6) for i in got.indices]
    targets = video.target_times(0.3, 1.9, FrameSampling(fps=5))
    for t, i in zip(targets, got.indices, strict=True):
        assert all(abs(times[i] - t) <= abs(u - t) + 1e-9 for u in times if 0.3 <= u < 1.9)


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed here")
def test_decord_refuses_ts_instead_of_returning_wrong_frames(ts_clips: dict[str, Path]) -> None:
    info = probe_video(str(ts_clips["ts"]))
    with pytest.raises(ReaderUnavailable, match="mpegts"):
        video.DecordReader().read(str(ts_clips["ts"]), info, 0.0, 1.0, FrameSampling(num_frames=4))
    with pytest.raises(DecodeError, match="decord: skipped"):
        sample_frames(
            str(ts_clips["ts"]), info, 0.0, 1.0, FrameSampling(num_frames=4), readers=("decord",)
        )


def test_pyav_seek_targets_fall_back_to_the_keyframe_dts(ts_clips: dict[str, Path]) -> None:
    with av.open(str(ts_clips["ts_gop"])) as container:
        stream = container.streams.video[0]
        index = video._FrameIndex.build(container, stream)
        assert len(index.key_dts) == len(index.key_pts) == 4
        second = index.key_pts[1]
        targets = index.seek_targets(second + 100)
        # key pts (indexed containers), its dts (MPEG-TS), the previous key's dts, the start
        assert targets == [second, index.key_dts[1], index.key_dts[0]]
        assert targets == sorted(targets, reverse=True)


def test_ts_build_produces_a_record(tmp_path: Path) -> None:
    from any2capins.workflows.cli import app

    src = tmp_path / "src"
    src.mkdir()
    media.make_ts_video(src / "broadcast.ts")
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            *("build", "demo", "--input", str(src), "--out", str(out)),
            *("--executor", "local", "--no-progress"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    show = runner.invoke(app, ["runs", "show", str(out), "--json"], catch_exceptions=False)
    report = json.loads(show.stdout)
    assert report["failures"] == [] and report["records_ok"] == 1
    recs = runner.invoke(app, ["runs", "records", str(out), "--json"], catch_exceptions=False)
    (rec,) = [json.loads(line) for line in recs.stdout.splitlines() if line.strip()]
    assert rec["clip"]["codec"] in ("h264", "mpeg4")
    assert rec["clip"]["end_s"] == pytest.approx(2.0, abs=0.05)
    assert rec["stats"]["frames_sampled"] == 16
    # the record says which reader decoded the frames: PyAV, since decord cannot seek TS
    readers = {s["stage"]: s["details"]["reader"] for s in rec["provenance"]["stages"]}
    assert readers["clip_stats"] == "pyav"


# --------------------------------------------------------------------------- AV1


@pytest.mark.skipif(not AV1_ENCODERS, reason="this PyAV cannot encode AV1")
def test_av1_record_names_the_codec_not_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "av1.mp4"
    n = 12
    media._encode(
        path,
        [media.frame_image(i, n, 320, 240) for i in range(n)],
        list(range(n)),
        Fraction(1, 24),
        Fraction(24),
        AV1_ENCODERS[0],
        "yuv420p",
        12,
    )
    info = probe_video(str(path))
    assert info.codec == "av1"
    got = sample_frames(str(path), info, 0.0, info.duration_s, FrameSampling(num_frames=4))
    assert [media.read_stamp(f) for f in got.frames] == got.indices


def test_codec_name_is_the_canonical_one() -> None:
    for decoder, name in [("libdav1d", "av1"), ("h264", "h264"), ("libvpx-vp9", "vp9")]:
        if decoder not in av.codecs_available:
            continue
        ctx = av.CodecContext.create(decoder, "r")
        assert video._codec_name(ctx) == name
