"""Bad manifest rows become failure rows (named by row, as a person counts) while the good
rows are built; a span end past the video is clamped with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from any2capins.pipeline.engine import probe_source
from any2capins.pipeline.recipe import SpanConfig
from any2capins.pipeline.sources import SourceError, list_sources
from any2capins.pipeline.spans import clamp_warning, make_spans
from any2capins.pipeline.video import probe_video
from tests import media

SPANS = SpanConfig().model_dump()
BAD_CSV_ROWS = {  # data row text -> what the problem must say
    "v.mp4,2,1": "end 1 is not after start 2",
    "v.mp4,-1,": "start=-1 is negative",
    "v.mp4,abc,": "start=abc is not a number",
    "v.mp4,nan,": "start=nan is not a finite number",
    "v.mp4,0,inf": "end=inf is not a finite number",
    ",0,1": "empty uri",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    media.make_video(tmp_path / "v.mp4", seconds=2.0)
    return tmp_path


def _csv(folder: Path) -> tuple[Path, dict[int, str]]:
    """good, bad..., good: the header is line 1, so data rows are numbered from 2."""
    lines = ["uri,start,end", "v.mp4,0,1.5", *BAD_CSV_ROWS, "v.mp4,,"]
    path = folder / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    expected = {n: needle for n, needle in enumerate(BAD_CSV_ROWS.values(), start=3)}
    return path, expected


def test_bad_csv_rows_are_items_carrying_their_problem(folder: Path) -> None:
    path, expected = _csv(folder)
    items = list_sources(str(path))
    assert len(items) == 2 + len(BAD_CSV_ROWS)
    good = [i for i in items if i.problem is None]
    assert [(Path(i.uri).name, i.start_s, i.end_s) for i in good] == [
        ("v.mp4", 0.0, 1.5),
        ("v.mp4", None, None),
    ]
    bad = {int(i.uri.rpartition("#row=")[2]): i for i in items if i.problem is not None}
    assert sorted(bad) == sorted(expected)
    for number, needle in expected.items():
        item = bad[number]
        assert item.uri == f"{path}#row={number}"
        assert item.problem is not None
        assert item.problem.startswith(f"{path} row {number}: ") and needle in item.problem
        assert item.to_row()["problem"] == item.problem
        # the engine's probe makes the row's problem its failure, touching no file
        (row,) = probe_source(item.to_row(), SPANS, str(folder / "run"), "r", "h", "run-1")
        failure = json.loads(row["failure"])
        assert failure["error_type"] == "BadManifestRow" and failure["stage"] == "probe"
        assert failure["message"] == item.problem and failure["source_uri"] == item.uri
    assert good[0].to_row()["problem"] == ""


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_jsonl_and_parquet_rows_count_from_one(folder: Path, kind: str) -> None:
    rows = [
        {"uri": "v.mp4", "start": 0.0, "end": 1.0},
        {"uri": "v.mp4", "start": 1.0, "end": 0.5},
        {"uri": "v.mp4", "start": float("nan"), "end": None},
    ]
    path = folder / f"m.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n[1, 2]\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = list_sources(str(path))
    assert items[0].problem is None
    assert items[1].uri == f"{path}#row=2" and "row 2: end 0.5 is not after start 1" in str(
        items[1].problem
    )
    assert items[2].uri == f"{path}#row=3" and "not a finite number" in str(items[2].problem)
    if kind == "jsonl":  # rows are lines: the blank line 4 is skipped but counted
        assert len(items) == 4
        assert items[3].uri == f"{path}#row=5" and "not a JSON object" in str(items[3].problem)
    else:
        assert len(items) == 3


def test_a_manifest_without_one_usable_row_is_refused_naming_every_row(folder: Path) -> None:
    path = folder / "m.csv"
    path.write_text("uri,start,end\nv.mp4,2,1\n,0,1\n")
    with pytest.raises(SourceError) as e:
        list_sources(str(path))
    assert "row 2: end 2" not in str(e.value)  # the message is about the row, numbered well
    assert "row 2: end 1 is not after start 2" in str(e.value)
    assert "row 3: empty uri" in str(e.value)


def test_build_fails_bad_rows_and_builds_good_ones(folder: Path) -> None:
    from any2capins.workflows.cli import app

    path, expected = _csv(folder)
    out = folder / "run"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            *("build", "demo", "--input", str(path), "--out", str(out)),
            *("--executor", "local", "--no-progress"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    show = runner.invoke(app, ["runs", "show", str(out), "--json"], catch_exceptions=False)
    report = json.loads(show.stdout)
    assert report["records_ok"] == 2
    failures = {f["source_uri"]: f for f in report["failures"]}
    assert set(failures) == {f"{path}#row={n}" for n in expected}
    for number, needle in expected.items():
        f = failures[f"{path}#row={number}"]
        assert f["error_type"] == "BadManifestRow" and f["stage"] == "probe"
        assert f"row {number}: " in f["message"] and needle in f["message"]

    # no usable row at all: refused before any work, every problem named
    path.write_text("uri,start,end\n" + "\n".join(BAD_CSV_ROWS) + "\n")
    result = runner.invoke(
        app,
        [
            *("build", "demo", "--input", str(path), "--out", str(folder / "run2")),
            *("--executor", "local", "--no-progress"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    for number, needle in enumerate(BAD_CSV_ROWS.values(), start=2):
        assert f"row {number}: {needle}" in output


def test_span_end_past_the_video_is_clamped_with_a_warning(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = probe_video(str(folder / "v.mp4"))
    assert clamp_warning(info, 1.5) is None
    assert clamp_warning(info, info.duration_s + 0.01) is None  # rounding, not a mistake
    warning = clamp_warning(info, 9.0)
    assert warning is not None and "9.000s is past the end" in warning and "clamped" in warning
    with caplog.at_level(logging.WARNING, logger="any2capins.pipeline.spans"):
        spans = make_spans(info, str(folder / "v.mp4"), SpanConfig(), 0.5, 9.0)
    assert spans == [(0.5, round(info.duration_s, 3))]
    assert warning in caplog.text
    with pytest.raises(ValueError, match="not a finite"):
        make_spans(info, str(folder / "v.mp4"), SpanConfig(), float("nan"), None)


def test_a_clamped_span_end_is_a_warning_in_the_report(folder: Path) -> None:
    from any2capins.workflows.cli import app

    path = folder / "m.csv"
    path.write_text("uri,start,end\nv.mp4,0,9\n")
    out = folder / "run"
    result = CliRunner().invoke(
        app,
        [
            *("build", "demo", "--input", str(path), "--out", str(out)),
            *("--executor", "local", "--no-progress"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["records_ok"] == 1
    (warning,) = report["warnings"]
    assert "span end 9.000s is past the end" in warning and "clamped" in warning
    assert "warning: " in result.output and "clamped" in " ".join(result.output.split())
