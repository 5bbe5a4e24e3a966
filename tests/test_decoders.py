"""The frame readers beyond decord 0.6.0 and PyAV: decord2 (decord's maintained fork, which
installs the same ``decord`` module) and torchcodec. A reader asked for by name that is not
installed, or cannot load, fails with a clear ReaderUnavailable, never a fallback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from any2capins.annotators.base import FrameSampling
from any2capins.pipeline import video
from any2capins.pipeline.video import ReaderUnavailable, probe_video, sample_frames
from tests import media


def _loads(name: str) -> bool:
    try:
        video._torchcodec() if name == "torchcodec" else video._decord()
    except ReaderUnavailable:
        return False
    return True


HAS_DECORD = importlib.util.find_spec("decord") is not None
HAS_TORCHCODEC = _loads("torchcodec")
DECORD_BUILD = video.decord_build() if HAS_DECORD else None


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("decoders")
    return {
        "cfr": media.make_video(d / "cfr.mp4"),
        "rot90": media.make_rotated_video(d / "rot90.mp4", 90),
        "ts": media.make_ts_video(d / "gop.ts", gop=12),
    }


def test_readers_are_registered() -> None:
    assert {"decord", "decord2", "torchcodec", "pyav"} <= set(video.READERS)
    # chosen by measurement (docs/benchmarks.md): the one reader right on every odd input
    assert video.DEFAULT_READERS[0] == "pyav"


@pytest.fixture
def no_torchcodec(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torchcodec as where it is not installed (its import fails), even where it is."""
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    monkeypatch.setattr(video, "_TORCHCODEC", [])
    yield


@pytest.mark.usefixtures("no_torchcodec")
def test_torchcodec_chosen_alone_and_unavailable_says_why(clips: dict[str, Path]) -> None:
    info = probe_video(str(clips["cfr"]))
    with pytest.raises(ReaderUnavailable, match=r"torchcodec is not installed") as e:
        sample_frames(str(clips["cfr"]), info, 0, 1, FrameSampling(num_frames=4), ("torchcodec",))
    assert "any2capins[torchcodec]" in str(e.value)
    assert "pyav" not in str(e.value), "no fallback to a reader that was not asked for"
    # In a list, a reader that cannot load is skipped and the next one reads.
    got = sample_frames(
        str(clips["cfr"]), info, 0, 1, FrameSampling(num_frames=4), ("torchcodec", "pyav")
    )
    assert got.reader == "pyav"


def test_torchcodec_without_ffmpeg_libraries_is_unavailable(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchcodec imports without FFmpeg's shared libraries and fails when a decoder is made
    (as on a machine without them): that is ReaderUnavailable naming the cause, not a
    per-clip decode failure."""

    class VideoDecoder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Could not load libtorchcodec. Likely causes: FFmpeg ...")

    fake = types.ModuleType("torchcodec.decoders")
    fake.VideoDecoder = VideoDecoder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", fake)
    monkeypatch.setattr(video, "_TORCHCODEC", [])
    info = probe_video(str(clips["cfr"]))
    with pytest.raises(ReaderUnavailable, match=r"FFmpeg's shared libraries.*Could not load"):
        sample_frames(str(clips["cfr"]), info, 0, 1, FrameSampling(num_frames=4), ("torchcodec",))


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec (or FFmpeg's shared libs) not here")
@pytest.mark.parametrize("name", ["cfr", "rot90"])
def test_torchcodec_reads_the_right_frames(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    info = probe_video(str(path))
    got = sample_frames(
        str(path), info, 0, info.duration_s, FrameSampling(num_frames=6), ("torchcodec",)
    )
    assert got.reader == "torchcodec"
    k = info.rotation // 90
    assert [media.read_stamp(np.rot90(f, k=k)) for f in got.frames] == got.indices
    assert got.frames.shape[1:3] == (info.height, info.width)


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec (or FFmpeg's shared libs) not here")
def test_torchcodec_refuses_ts_and_its_wrong_frames_would_fail(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchcodec seeks MPEG-TS a GOP late: it refuses the container, the default order reads
    the file with PyAV, and without the refusal the pts check turns the wrong frames into an
    error instead of passing them on."""
    path = clips["ts"]
    info = probe_video(str(path))
    sampling = FrameSampling(num_frames=8)
    with pytest.raises(ReaderUnavailable, match="mpegts"):
        video.READERS["torchcodec"].read(str(path), info, 0, info.duration_s, sampling)
    got = sample_frames(str(path), info, 0, info.duration_s, sampling, ("torchcodec", "pyav"))
    assert got.reader == "pyav"
    assert [media.read_stamp(f) for f in got.frames] == got.indices
    monkeypatch.setattr(video, "TORCHCODEC_UNSEEKABLE", frozenset())
    try:
        got = video.READERS["torchcodec"].read(str(path), info, 0, info.duration_s, sampling)
    except video.DecodeError as e:
        assert "other frames than asked for" in str(e)
    else:  # a torchcodec that seeks TS right: then the frames must be right
        assert [media.read_stamp(f) for f in got.frames] == got.indices


@pytest.mark.skipif(not HAS_DECORD, reason="no decord module here")
def test_decord_reader_records_which_package_read(clips: dict[str, Path]) -> None:
    info = probe_video(str(clips["cfr"]))
    got = sample_frames(str(clips["cfr"]), info, 0, 2, FrameSampling(num_frames=4), ("decord",))
    assert got.reader == DECORD_BUILD
    assert [media.read_stamp(f) for f in got.frames] == got.indices


@pytest.mark.skipif(DECORD_BUILD != "decord", reason="decord 0.6 is not the decord module here")
def test_decord2_chosen_with_decord_06_installed_refuses(clips: dict[str, Path]) -> None:
    info = probe_video(str(clips["cfr"]))
    with pytest.raises(ReaderUnavailable, match="decord2 is not installed"):
        sample_frames(str(clips["cfr"]), info, 0, 2, FrameSampling(num_frames=4), ("decord2",))


@pytest.mark.skipif(DECORD_BUILD != "decord2", reason="decord2 is not installed here")
def test_decord2_reads_the_right_frames(clips: dict[str, Path]) -> None:
    info = probe_video(str(clips["cfr"]))
    got = sample_frames(str(clips["cfr"]), info, 0, 2, FrameSampling(num_frames=4), ("decord2",))
    assert got.reader == "decord2"
    assert [media.read_stamp(f) for f in got.frames] == got.indices


def test_missing_extra_message_names_the_extra() -> None:
    from any2capins.workflows.cli import missing_extra_message

    e = ModuleNotFoundError("No module named 'ray'", name="ray")
    assert "install any2capins[build]" in missing_extra_message("build", e)
    e = ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")
    assert "install any2capins[review]" in missing_extra_message("review", e)
    e = ModuleNotFoundError("No module named 'openai'", name="openai")
    assert "install any2capins[captions]" in missing_extra_message("captions", e)


def _loaded_after(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


HEAVY = {"ray", "fastapi", "openai", "transformers", "torch", "decord", "cv2", "av"}


def test_package_inits_import_nothing_heavy() -> None:
    """The __init__ files load their stages and writers lazily."""
    assert (
        not _loaded_after(
            "import any2capins.annotators, any2capins.schemas, any2capins.pipeline, any2capins.workflows"
        )
        & HEAVY
    )
    assert not _loaded_after("import any2capins.workflows.export") & (HEAVY | {"sqlalchemy"})
    assert not _loaded_after("import any2capins.annotators.conditions") & HEAVY


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec (or FFmpeg's shared libs) not here")
def test_torchcodec_and_pyav_agree(clips: dict[str, Path]) -> None:
    path = clips["cfr"]
    info = probe_video(str(path))
    sampling = FrameSampling(num_frames=12, max_side=160)
    a = sample_frames(str(path), info, 0, info.duration_s, sampling, ("torchcodec",))
    b = sample_frames(str(path), info, 0, info.duration_s, sampling, ("pyav",))
    assert a.indices == b.indices and a.timestamps_s == b.timestamps_s
    assert np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean() < 3.0
