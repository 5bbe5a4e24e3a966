"""any2capins.pipeline.video: probing, frame sampling with decord and PyAV, bad inputs, fetching."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import fsspec
import numpy as np
import pytest

from any2capins.annotators.base import FrameSampling
from any2capins.pipeline import video
from any2capins.pipeline.video import (
    ClipTooShort,
    DecodeError,
    EmptyFile,
    NotAVideo,
    NoVideoStream,
    ReaderUnavailable,
    SampledFrames,
    UnreadableSource,
    VideoError,
    VideoInfo,
    local_video,
    output_size,
    pick_indices,
    probe_video,
    sample_frames,
    target_times,
)
from tests import media

HAS_DECORD = importlib.util.find_spec("decord") is not None
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed here")


def _torchcodec_loads() -> bool:
    try:
        video._torchcodec()
    except ReaderUnavailable:
        return False
    return True


needs_torchcodec = pytest.mark.skipif(
    not _torchcodec_loads(), reason="torchcodec (or the FFmpeg libraries it loads) is not here"
)
READERS = [
    pytest.param("decord", marks=needs_decord),
    pytest.param("torchcodec", marks=needs_torchcodec),
    "pyav",
]


def _label(reader: str) -> str:
    """The name a read records: the decord reader names the package (decord or decord2)."""
    return video.decord_build() if reader == "decord" else reader


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every generated clip, made once per session (about a second in all)."""
    d = tmp_path_factory.mktemp("clips")
    good = media.make_video(d / "good.mp4")
    out = {
        "good": good,
        "audio_video": media.make_video(d / "with_audio.mp4", seconds=1.0, audio=True),
        "odd": media.make_odd_size_video(d / "odd.mp4"),
        "rot90": media.make_rotated_video(d / "rot90.mp4", 90),
        "rot180": media.make_rotated_video(d / "rot180.mp4", 180),
        "rot270": media.make_rotated_video(d / "rot270.mp4", 270),
        "vfr": media.make_vfr_video(d / "vfr.mp4"),
        "short": media.make_short_video(d / "short.mp4"),
        "zero": media.make_zero_byte(d / "zero.mp4"),
        "text": media.make_text_as_mp4(d / "text.mp4"),
        "garbage": media.make_garbage(d / "garbage.mp4"),
        "truncated": media.make_truncated(good, d / "truncated.mp4"),
        "audio_only": media.make_audio_only(d / "audio.mp4"),
        "corrupt": media.make_corrupt_midstream(good, d / "corrupt.mp4"),
    }
    patched = media.make_video(d / "patched90.mp4", seconds=1.0)
    out["patched90"] = media.patch_mp4_rotation(patched, 90)
    return out


def probe(path: Path) -> VideoInfo:
    return probe_video(str(path))


def sample(
    path: Path, reader: str, start: float = 0.0, end: float | None = None, **kw: float | int
) -> SampledFrames:
    info = probe(path)
    sampling = FrameSampling.model_validate(kw)
    end = info.duration_s if end is None else end
    return sample_frames(str(path), info, start, end, sampling, readers=(reader,))


def coded_view(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Undo a clockwise display rotation, giving the frame as it was encoded."""
    return np.rot90(frame, k=rotation // 90)


# --------------------------------------------------------------------------- probing


def test_probe_fields_of_a_generated_clip(clips: dict[str, Path]) -> None:
    info = probe(clips["good"])
    assert info.uri == str(clips["good"])
    assert info.duration_s == pytest.approx(2.0, abs=1e-6)
    assert info.fps == pytest.approx(24.0)
    assert (info.width, info.height) == (320, 240)
    assert (info.coded_width, info.coded_height) == (320, 240)
    assert info.rotation == 0
    assert info.codec == ("h264" if media.DEFAULT_CODEC == "libx264" else "mpeg4")
    assert info.num_frames == 48
    assert not info.variable_frame_rate
    assert not info.has_audio
    assert probe(clips["audio_video"]).has_audio
    # the engine stores VideoInfo as JSON and rebuilds it with VideoInfo(**fields)
    assert VideoInfo(**dataclasses.asdict(info)) == info


def test_probe_uri_overrides_the_local_path(clips: dict[str, Path]) -> None:
    assert probe_video(str(clips["good"]), "s3://bucket/good.mp4").uri == "s3://bucket/good.mp4"


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_rotation_gives_display_size(clips: dict[str, Path], rotation: int) -> None:
    info = probe(clips[f"rot{rotation}"])
    assert info.rotation == rotation
    assert (info.coded_width, info.coded_height) == (320, 240)
    portrait = rotation in (90, 270)
    assert (info.width, info.height) == ((240, 320) if portrait else (320, 240))


def test_probe_reads_a_patched_track_header(clips: dict[str, Path]) -> None:
    info = probe(clips["patched90"])
    assert (info.rotation, info.width, info.height) == (90, 240, 320)


def test_probe_odd_size_and_vfr_and_short(clips: dict[str, Path]) -> None:
    if media.DEFAULT_CODEC == "libx264":
        odd = probe(clips["odd"])
        assert (odd.width, odd.height) == (317, 239)
    vfr = probe(clips["vfr"])
    assert vfr.variable_frame_rate
    assert vfr.num_frames == len(media.vfr_timestamps())
    short = probe(clips["short"])
    assert short.num_frames == 7
    assert short.duration_s == pytest.approx(7 / 24)


def test_probe_real_clips(shared_videos: Path) -> None:
    paths = sorted(shared_videos.glob("*.mp4"))
    for path in paths:
        info = probe(path)
        assert info.codec == "h264", path
        assert 1.0 < info.duration_s < 600, path
        assert 10 < info.fps < 121, path
        assert info.rotation in (0, 90, 180, 270)
        assert min(info.width, info.height) >= 16
        assert abs(info.num_frames - info.duration_s * info.fps) <= 2, path
        assert not info.variable_frame_rate, path


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("zero", EmptyFile),
        ("text", NotAVideo),
        ("garbage", NotAVideo),
        ("truncated", NotAVideo),
        ("audio_only", NoVideoStream),
    ],
)
def test_bad_inputs_raise_the_right_error(
    clips: dict[str, Path], name: str, error: type[VideoError]
) -> None:
    with pytest.raises(error) as caught:
        probe(clips[name])
    assert type(caught.value) is error
    assert caught.value.error_type == error.__name__
    assert str(clips[name]) in str(caught.value)


def test_truncated_message_says_so(clips: dict[str, Path]) -> None:
    with pytest.raises(NotAVideo, match="truncated or not a video container"):
        probe(clips["truncated"])


def test_truncated_file_with_index_first_is_caught_by_the_probe(tmp_path: Path) -> None:
    # With the moov box first the header parses; the index then points past the end.
    src = media.make_video(tmp_path / "faststart.mp4", seconds=1.0, faststart=True)
    with pytest.raises(NotAVideo, match="truncated"):
        probe(media.make_truncated(src, tmp_path / "cut.mp4", 0.6))


def test_missing_path_and_directory_are_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableSource):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(UnreadableSource):
        probe(tmp_path)


def test_error_types_name_their_class() -> None:
    for cls in (EmptyFile, UnreadableSource, NotAVideo, NoVideoStream, DecodeError, ClipTooShort):
        assert issubclass(cls, VideoError)
        assert cls.error_type == cls.__name__
    assert VideoError.error_type == "VideoError"


def test_corrupt_midstream(clips: dict[str, Path]) -> None:
    path = clips["corrupt"]
    info = probe(path)  # the container is intact
    # Frames before the damage decode with either reader.
    early = sample_frames(str(path), info, 0.0, 0.5, FrameSampling(num_frames=4))
    assert [media.read_stamp(f) for f in early.frames] == early.indices
    # Over the whole clip the damaged frames cannot be produced: a DecodeError that names
    # each reader's failure (never a crash, never a raw decoder exception).
    try:
        whole = sample_frames(
            str(path), info, 0.0, info.duration_s, FrameSampling(num_frames=48), ("decord", "pyav")
        )
    except DecodeError as e:
        assert "pyav" in str(e)
        if HAS_DECORD:
            assert "decord" in str(e)
    else:  # a decoder that conceals the damage may still produce every frame
        assert len(whole.indices) == 48


def test_pyav_skips_bad_packets_and_names_missing_frames(clips: dict[str, Path]) -> None:
    if media.DEFAULT_CODEC != "libx264":
        pytest.skip("the damage pattern is calibrated on H.264 (garbage NAL sizes)")
    with pytest.raises(DecodeError, match=r"could not decode \d+ wanted frame"):
        sample(clips["corrupt"], "pyav", num_frames=48)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("reader", READERS)
def test_sampled_frames_are_the_right_frames(clips: dict[str, Path], reader: str) -> None:
    got = sample(clips["good"], reader, num_frames=16)
    assert got.reader == _label(reader)
    assert got.frames.shape == (16, 240, 320, 3)
    assert got.frames.dtype == np.uint8
    # uniform: the frame nearest the centre of each of 16 equal parts (ties -> earlier)
    assert got.indices == [1 + 3 * k for k in range(16)]
    assert got.timestamps_s == pytest.approx([i / 24 for i in got.indices], abs=1e-5)
    assert [media.read_stamp(f) for f in got.frames] == got.indices


def test_pyav_seeks_land_on_the_wanted_keyframe(clips: dict[str, Path]) -> None:
    # Seeking a whole GOP too early still gives the right frames, only twice as slowly;
    # guard the seek target (keyframe pts, not dts) against FFmpeg behaviour changes.
    import av

    with av.open(str(clips["good"])) as container:
        stream = container.streams.video[0]
        index = video._FrameIndex.build(container, stream)
        tb = stream.time_base
        assert tb is not None
        assert [round(k * tb * 24) for k in index.key_pts] == [0, 12, 24, 36]  # GOP of 12
        for key in index.key_pts:
            container.seek(index.seek_target(key + 5), stream=stream, backward=True)
            first = next(f for p in container.demux(stream) for f in p.decode())
            assert first.pts == key


@pytest.mark.parametrize("reader", READERS)
def test_span_and_fps_sampling(clips: dict[str, Path], reader: str) -> None:
    got = sample(clips["good"], reader, start=0.5, end=1.5, fps=4.0, max_side=160)
    assert got.indices == [12, 18, 24, 30]
    assert got.timestamps_s == pytest.approx([0.5, 0.75, 1.0, 1.25], abs=1e-5)
    assert got.frames.shape == (4, 120, 160, 3)
    assert [media.read_stamp(f) for f in got.frames] == got.indices


@needs_decord
@pytest.mark.parametrize("name", ["good", "vfr", "odd"])
def test_decord_and_pyav_agree(clips: dict[str, Path], name: str) -> None:
    for max_side in (512, 160):
        a = sample(clips[name], "decord", num_frames=12, max_side=max_side)
        b = sample(clips[name], "pyav", num_frames=12, max_side=max_side)
        assert a.indices == b.indices
        assert a.timestamps_s == pytest.approx(b.timestamps_s, abs=1e-4)
        assert a.frames.shape == b.frames.shape
        # Same decoder output; only the resize filters differ (swscale vs cv2 INTER_AREA).
        diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean()
        assert diff < (0.5 if max_side == 512 else 3.0), (name, max_side, diff)


@needs_decord
def test_decord_and_pyav_agree_on_a_real_clip(shared_videos: Path) -> None:
    path = min(shared_videos.glob("*.mp4"), key=lambda p: p.stat().st_size)
    a = sample(path, "decord", num_frames=8)
    b = sample(path, "pyav", num_frames=8)
    assert a.indices == b.indices
    assert a.timestamps_s == pytest.approx(b.timestamps_s, abs=1e-4)
    assert max(a.frames.shape[1:3]) == 512
    assert np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean() < 3.0


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("rotation", "corner"),
    [(90, "top_right"), (180, "bottom_right"), (270, "bottom_left")],
)
def test_rotation_is_applied(
    clips: dict[str, Path], reader: str, rotation: int, corner: str
) -> None:
    got = sample(clips[f"rot{rotation}"], reader, num_frames=4, max_side=160)
    h, w = got.frames.shape[1:3]
    assert (h > w) == (rotation in (90, 270))
    assert (w, h) == ((120, 160) if rotation in (90, 270) else (160, 120))
    frame = got.frames[0].astype(np.float32)
    # The white marker is top-left in the coded picture; a player turns it clockwise.
    ch, cw = h // 8, w // 8
    corners = {
        "top_left": frame[:ch, :cw],
        "top_right": frame[:ch, -cw:],
        "bottom_left": frame[-ch:, :cw],
        "bottom_right": frame[-ch:, -cw:],
    }
    assert corners[corner].mean() > 240, {k: float(v.mean()) for k, v in corners.items()}
    # Turning back counter-clockwise restores the coded picture: the stamp (bottom edge when
    # coded) reads back, which a turn the wrong way would scramble.
    assert [media.read_stamp(coded_view(f, rotation)) for f in got.frames] == got.indices


@pytest.mark.parametrize("reader", READERS)
def test_patched_rotation_gives_portrait(clips: dict[str, Path], reader: str) -> None:
    got = sample(clips["patched90"], reader, num_frames=2)
    assert got.frames.shape[1:3] == (320, 240)


@pytest.mark.parametrize("reader", READERS)
def test_vfr_picks_the_frames_nearest_the_targets(clips: dict[str, Path], reader: str) -> None:
    truth = np.array(media.vfr_timestamps())
    info = probe(clips["vfr"])
    sampling = FrameSampling(num_frames=10)
    got = sample_frames(str(clips["vfr"]), info, 0.0, 2.0, sampling, readers=(reader,))
    targets = (np.arange(10) + 0.5) * 0.2
    expected = []
    for t in targets:
        d = np.abs(truth - t)
        expected.append(int(np.flatnonzero(d <= d.min() + 1e-4)[0]))  # ties -> earlier
    assert got.indices == expected
    assert got.timestamps_s == pytest.approx(truth[expected].tolist(), abs=1e-4)
    assert [media.read_stamp(f) for f in got.frames] == got.indices
    # a constant-rate guess (index = t * average fps) would pick other frames
    assert [round(t * info.fps - 0.5) for t in targets] != expected


@pytest.mark.parametrize("reader", READERS)
def test_indices_stay_below_the_real_frame_count(clips: dict[str, Path], reader: str) -> None:
    path = clips["short"]
    info = probe(path)
    # The container's count may be over-reported: sampling must not trust it.
    inflated = dataclasses.replace(info, num_frames=1000, duration_s=40.0)
    got = sample_frames(str(path), inflated, 0.0, 40.0, FrameSampling(fps=2.0), readers=(reader,))
    assert max(got.indices) <= 6
    # more frames asked than exist: each distinct frame once, in order, none invented
    got = sample(path, reader, num_frames=16)
    assert got.indices == list(range(7))
    assert [media.read_stamp(f) for f in got.frames] == got.indices
    got = sample(path, reader, fps=100.0)
    assert got.indices == list(range(7))


@pytest.mark.parametrize("reader", READERS)
def test_odd_size_gives_even_frames(clips: dict[str, Path], reader: str) -> None:
    info = probe(clips["odd"])
    got = sample(clips["odd"], reader, num_frames=3)
    w, h = output_size(info, 512)
    assert got.frames.shape == (3, h, w, 3)
    assert h % 2 == 0 and w % 2 == 0


def test_short_spans_and_spans_past_the_end(clips: dict[str, Path]) -> None:
    path = clips["good"]
    info = probe(path)
    tiny = sample_frames(str(path), info, 1.01, 1.02, FrameSampling(num_frames=4))
    assert tiny.indices == [24]  # the frame on screen at 1.01 s
    with pytest.raises(ClipTooShort):
        sample_frames(str(path), info, 5.0, 6.0, FrameSampling())
    with pytest.raises(ValueError, match="not after"):
        sample_frames(str(path), info, 1.0, 1.0, FrameSampling())
    with pytest.raises(ValueError, match="unknown frame reader"):
        sample_frames(str(path), info, 0.0, 1.0, FrameSampling(), readers=("opencv",))


def test_span_bounds_rounded_to_ms_do_not_leak_a_neighbouring_frame() -> None:
    times = np.arange(48) / 24  # frame 25 starts at 1.041666... s
    assert pick_indices(times, 1.042, 2.0, FrameSampling(num_frames=100))[0] == 25
    assert pick_indices(times, 0.0, 1.042, FrameSampling(num_frames=100))[-1] == 24


def test_target_times() -> None:
    assert target_times(0.0, 2.0, FrameSampling(num_frames=4)).tolist() == [0.25, 0.75, 1.25, 1.75]
    assert target_times(1.0, 2.0, FrameSampling(fps=4.0)).tolist() == [1.0, 1.25, 1.5, 1.75]
    # a rate that would exceed max_frames spreads max_frames over the whole span instead
    capped = target_times(0.0, 100.0, FrameSampling(fps=10.0, max_frames=4))
    assert capped.tolist() == [12.5, 37.5, 62.5, 87.5]
    assert len(target_times(0.0, 1.0, FrameSampling(num_frames=None, max_frames=5))) == 5


def test_output_size_keeps_aspect_and_even_sides() -> None:
    def info(w: int, h: int) -> VideoInfo:
        return VideoInfo("x", 1.0, 24.0, w, h, w, h, 0, "h264", 24, False, False)

    assert output_size(info(1920, 1080), 512) == (512, 288)
    assert output_size(info(1080, 1920), 512) == (288, 512)
    assert output_size(info(317, 239), 512) == (316, 238)
    assert output_size(info(333, 333), 101) == (100, 100)


# --------------------------------------------------------------------------- fallback


class _Broken:
    name = "decord"

    def read(self, *args: object) -> SampledFrames:
        raise RuntimeError("decoder exploded")


def test_falls_back_to_pyav_when_decord_fails(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(video.READERS, "decord", _Broken())
    info = probe(clips["good"])
    got = sample_frames(
        str(clips["good"]), info, 0.0, 2.0, FrameSampling(num_frames=4), ("decord", "pyav")
    )
    assert got.reader == "pyav"
    assert [media.read_stamp(f) for f in got.frames] == got.indices


def test_all_readers_failing_is_a_decode_error_naming_each(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(video.READERS, "decord", _Broken())
    monkeypatch.setitem(video.READERS, "pyav", _Broken())
    info = probe(clips["good"])
    with pytest.raises(DecodeError) as caught:
        sample_frames(str(clips["good"]), info, 0.0, 2.0, FrameSampling(), ("decord", "pyav"))
    assert "decord: RuntimeError: decoder exploded" in str(caught.value)
    assert "pyav: RuntimeError: decoder exploded" in str(caught.value)


def test_missing_decord_is_skipped(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> None:
        raise ReaderUnavailable("decord is not installed: test")

    monkeypatch.setattr(video, "_decord", unavailable)
    info = probe(clips["good"])
    got = sample_frames(
        str(clips["good"]), info, 0.0, 2.0, FrameSampling(num_frames=2), ("decord", "pyav")
    )
    assert got.reader == "pyav"
    with pytest.raises(DecodeError, match="skipped"):
        sample_frames(str(clips["good"]), info, 0.0, 2.0, FrameSampling(), readers=("decord",))


@needs_decord
def test_decord_build_without_rotation_support_is_turned_with_numpy(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate such a build: a file without a display matrix, described as rotated 90.
    monkeypatch.setattr(video, "_decord_rotates", lambda: False)
    path = clips["good"]
    plain = probe(path)
    turned = dataclasses.replace(plain, rotation=90, width=240, height=320)
    for reader in ("decord", "pyav"):
        got = sample_frames(str(path), turned, 0, 2, FrameSampling(num_frames=3), readers=(reader,))
        assert got.frames.shape == (3, 320, 240, 3)
        assert got.frames[0, :20, -20:].mean() > 240  # marker now top-right
        assert [media.read_stamp(coded_view(f, 90)) for f in got.frames] == got.indices


@needs_decord
def test_this_decord_turns_frames_itself() -> None:
    # decord 0.6.0 applies the display rotation; the reader adapts if a build does not.
    assert video._decord_rotates() is True


# --------------------------------------------------------------------------- fetching


def test_local_video_fetches_fsspec_uris(clips: dict[str, Path]) -> None:
    data = clips["good"].read_bytes()
    uri = "memory://any2cap-tests/clip.mp4"
    with fsspec.open(uri, "wb") as f:
        f.write(data)
    try:
        with local_video(uri) as path:
            assert Path(path).suffix == ".mp4"
            assert Path(path).read_bytes() == data
            assert probe_video(path, uri).uri == uri
        assert not Path(path).exists()
    finally:
        fsspec.filesystem("memory").rm("/any2cap-tests", recursive=True)


def test_local_video_cleans_up_when_the_block_fails(clips: dict[str, Path], tmp_path: Path) -> None:
    uri = "memory://any2cap-tests2/clip.mp4"
    with fsspec.open(uri, "wb") as f:
        f.write(clips["short"].read_bytes())
    cache = tmp_path / "cache"
    try:
        with pytest.raises(KeyError), local_video(uri, cache_dir=str(cache)):
            raise KeyError("the caller's own error passes through")
        assert list(cache.iterdir()) == []
    finally:
        fsspec.filesystem("memory").rm("/any2cap-tests2", recursive=True)


def test_local_video_local_paths(clips: dict[str, Path], tmp_path: Path) -> None:
    with local_video(str(clips["good"])) as path:
        assert path == str(clips["good"])
    with local_video(clips["good"].as_uri()) as path:
        assert path == str(clips["good"])
    with pytest.raises(UnreadableSource), local_video(str(tmp_path / "missing.mp4")):
        pass
    with pytest.raises(UnreadableSource), local_video("memory://nowhere/missing.mp4"):
        pass
