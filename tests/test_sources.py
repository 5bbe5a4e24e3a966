"""Sources (folders, manifests, globs, remote URIs), spans, and the atomic storage layer."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from any2capins.pipeline.build import run_build
from any2capins.pipeline.recipe import SpanConfig
from any2capins.pipeline.sources import SourceError, SourceItem, list_sources
from any2capins.pipeline.spans import make_spans
from any2capins.pipeline.storage import ArtifactStore, Storage, read_payload
from any2capins.pipeline.video import ClipTooShort, probe_video
from any2capins.workflows.recipes import load_recipe
from tests import media


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    media.make_video(folder / "a.mp4", seconds=1.2)
    media.make_video(folder / "sub" / "b.mov", seconds=1.2)
    (folder / "notes.txt").write_text("not a video")
    (folder / ".hidden.mp4").write_bytes(b"")
    return folder


def test_folder_lists_videos_recursively_in_order(videos: Path) -> None:
    assert [Path(s.uri).name for s in list_sources(str(videos))] == ["a.mp4", "b.mov"]


def test_glob_and_single_file(videos: Path) -> None:
    assert [Path(s.uri).name for s in list_sources(f"{videos}/*.mp4")] == ["a.mp4"]
    assert list_sources(str(videos / "a.mp4")) == [SourceItem(str(videos / "a.mp4"))]
    # a missing single video is still a source: it becomes a failure row, not a crash
    assert list_sources(str(videos / "gone.mp4")) == [SourceItem(str(videos / "gone.mp4"))]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifests(videos: Path, kind: str) -> None:
    rows = [
        {"uri": "videos/a.mp4", "start": 0.0, "end": 1.0},
        {"uri": str(videos / "sub" / "b.mov"), "start": None, "end": None},
    ]
    path = videos.parent / f"m.{kind}"
    if kind == "csv":
        path.write_text("uri,start,end\nvideos/a.mp4,0,1\n" + f"{videos}/sub/b.mov,,\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = list_sources(str(path))
    assert items == [
        SourceItem(str(videos / "a.mp4"), 0.0, 1.0),
        SourceItem(str(videos / "sub" / "b.mov"), None, None),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("path,start\nx.mp4,0\n", "no 'uri' column"),
        ("uri,start,end\nx.mp4,2,1\n", "not after start"),
        ("uri,start,end\nx.mp4,abc,\n", "not a number"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(SourceError, match=needle):
        list_sources(str(path))


def test_input_that_is_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SourceError):
        list_sources(str(tmp_path / "f.txt"))


def test_spans_whole_fixed_and_min_max(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "v.mp4", seconds=5.0, fps=24)
    info = probe_video(str(path))
    assert make_spans(info, str(path), SpanConfig()) == [
        (0.0, pytest.approx(info.duration_s, abs=1e-3))
    ]
    fixed = make_spans(info, str(path), SpanConfig(mode="fixed", window_s=2.0, min_len_s=1.0))
    assert [(a, round(b, 1)) for a, b in fixed] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    capped = make_spans(info, str(path), SpanConfig(max_len_s=2.0, min_len_s=0.5))
    assert len(capped) == 3 and all(b - a <= 2.0 + 1e-6 for a, b in capped)
    with pytest.raises(ClipTooShort):
        make_spans(info, str(path), SpanConfig(min_len_s=6.0))
    with pytest.raises(ClipTooShort):
        make_spans(info, str(path), SpanConfig(), start_s=4.8, end_s=5.0)


def test_scene_spans_cut_at_the_hard_cut(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "cut.mp4", seconds=4.0, fps=24, pattern="scenes")
    info = probe_video(str(path))
    spans = make_spans(info, str(path), SpanConfig(mode="scenes", min_len_s=0.5))
    assert len(spans) == 2
    assert spans[0][1] == pytest.approx(spans[1][0]) and 1.0 < spans[0][1] < 3.0


def test_storage_atomic_writes_local_and_memory(tmp_path: Path) -> None:
    for root in (str(tmp_path / "store"), "memory://a2c-test-store"):
        storage = Storage(root)
        storage.write_atomic("a/b.json", b"{}")
        storage.write_atomic("a/b.json", b'{"x": 1}')
        assert storage.read("a/b.json") == b'{"x": 1}'
        assert list(storage.list("a", ".json")) == ["b.json"]
        storage.delete("a/b.json")
        assert not storage.exists("a/b.json")
    leftovers = [p for p in (tmp_path / "store").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_artifact_store_refs_verify(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "art"))
    ref = store.put("clip", "stage", "x.bin", b"payload", "application/octet-stream")
    assert ref.bytes == 7 and read_payload(ref) == b"payload"
    (tmp_path / "art" / "clip" / "stage" / "x.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        read_payload(ref)
    with pytest.raises(ValueError):
        store.put("clip", "stage", "../escape", b"", "x")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_build_from_http_and_memory_uris(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_server
    media.make_video(root / "remote.mp4", seconds=1.5)
    with fsspec.open("memory://a2c-src/mem.mp4", "wb") as f:
        f.write(media.make_video(tmp_path / "mem.mp4", seconds=1.5).read_bytes())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps({"uri": u})
            for u in (f"{base}/remote.mp4", f"{base}/missing.mp4", "memory://a2c-src/mem.mp4")
        )
        + "\n"
    )
    # memory:// lives in this process only, so the plain-loop executor runs this one
    report = run_build(
        load_recipe("demo"), list_sources(str(manifest)), str(tmp_path / "run"), executor="local"
    )
    assert report.records_ok == 2
    assert [(f.source_uri, f.error_type) for f in report.failures] == [
        (f"{base}/missing.mp4", "UnreadableSource")
    ]
