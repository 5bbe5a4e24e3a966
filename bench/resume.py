"""Resume at scale: how long a re-run takes to find out that nothing is left to do.

Two measurements:

- ``noop``: N small generated clips (``tests/media.py``) through a cheap recipe (clip
  statistics, two small keyframes, the offline grounded caption writer); the build, then the
  same build again (every clip done), on Ray Data with Ray started beforehand (its start is
  reported apart). Also the run directory's files per clip, artifacts apart.
- ``synthetic``: a run directory of N finished clips written by this script, not by a build
  (a build of 100K clips takes hours here): N/``per_source`` source files (placeholder bytes:
  their probe is in the probe cache, so they are never decoded), the probe cache, the done
  index and each stage's compacted marker log as a finished build leaves them, and one
  ``records/<clip_id>.json`` per clip. Then ``run_build`` over those sources: the time for
  the resume plan to settle every clip (the engine never starts).

``python -m bench.resume [--clips 1000] [--synthetic 100000]``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.cheap_recipe import cheap_recipe

REPO = Path(__file__).resolve().parents[1]

RECIPE = cheap_recipe("bench-resume")


def _resolved(work: Path) -> Any:
    from any2capins.workflows.recipes import load_recipe

    path = work / "recipe.json"
    path.write_text(json.dumps(RECIPE))
    return load_recipe(str(path))


def file_counts(run: Path, clips: int) -> dict[str, Any]:
    """Files in the run directory by top folder, and per clip (artifacts counted apart)."""
    by_top: Counter[str] = Counter()
    for path in run.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            by_top[path.relative_to(run).parts[0]] += 1
    state = sum(n for top, n in by_top.items() if top != "artifacts")
    return {
        "by_folder": dict(sorted(by_top.items())),
        "run_state_files": state,
        "run_state_files_per_clip": round(state / clips, 3) if clips else 0.0,
        "artifact_files_per_clip": round(by_top["artifacts"] / clips, 3) if clips else 0.0,
    }


def noop(clips: int = 1000, executor: str = "ray", work: Path | None = None) -> dict[str, Any]:
    from any2capins.pipeline.build import run_build
    from any2capins.pipeline.sources import list_sources

    if str(REPO) not in sys.path:  # the clip generator lives in tests/
        sys.path.insert(0, str(REPO))
    from tests import media

    own = work is None
    work = Path(tempfile.mkdtemp(prefix="bench-resume-")) if work is None else work
    try:
        src = work / "clips"
        src.mkdir(parents=True, exist_ok=True)
        for i in range(clips):
            path = src / f"c{i:06d}.mp4"
            if not path.exists():
                media.make_video(path, 0.75 + 0.05 * (i % 6), fps=12, width=96, height=64, gop=6)
        resolved = _resolved(work)
        sources = list_sources(str(src))
        ray_start = 0.0
        if executor == "ray":
            from any2capins.pipeline.engine import ensure_ray

            t = time.perf_counter()
            ensure_ray()
            ray_start = time.perf_counter() - t
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        t = time.perf_counter()
        first = run_build(resolved, sources, str(run), executor=executor)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        again = run_build(resolved, sources, str(run), executor=executor)
        rerun_s = time.perf_counter() - t
        assert again.records_ok == first.records_ok == clips, (first.failures, again.failures)
        assert again.records_resumed == clips
        first_record = next((run / "records").glob("*.json")).read_text()
        return {
            "clips": clips,
            "executor": executor,
            "ray_init_seconds": round(ray_start, 2),
            "build_s": round(build_s, 2),
            "noop_rerun_s": round(rerun_s, 3),
            "files": file_counts(run, clips),
            "conversion_per_stage": conversion(first_record),
        }
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _old_stage_pass(raw: str, output: dict[str, Any], prov: Any) -> str:
    """What a stage did to a record before (the baseline): validate the row's JSON, dump it
    to a dict, set the output, validate again, dump JSON for the next row."""
    from any2capins.pipeline.stage import _set_path
    from any2capins.schemas import Record

    record = Record.model_validate_json(raw)
    data = record.model_dump(mode="json")
    for key, value in output.items():
        _set_path(data, key, value)
    stages = [s for s in data["provenance"]["stages"] if s["stage"] != prov.stage]
    data["provenance"]["stages"] = [*stages, prov.model_dump(mode="json")]
    return Record.model_validate(data).model_dump_json()


def conversion(raw: str, repeats: int = 300) -> dict[str, float]:
    """Per clip per stage, ms: the record's conversions before and now, on one real record
    of the build (a stage writing ``stats``, as clip_stats does)."""
    from any2capins.pipeline.stage import apply_output, dump_record, load_record
    from any2capins.schemas import Record

    record = Record.model_validate_json(raw)
    assert record.stats is not None and record.provenance.stages
    output = {"stats": record.stats.model_dump(mode="json")}
    prov = record.provenance.stages[0]
    t = time.perf_counter()
    for _ in range(repeats):
        _old_stage_pass(raw, output, prov)
    before = (time.perf_counter() - t) / repeats
    row = dump_record(record)
    t = time.perf_counter()
    for _ in range(repeats):
        dump_record(apply_output(load_record(row), output, prov))
    now = (time.perf_counter() - t) / repeats
    # the form tried and left: the record pickled between operators
    pickled = pickle.dumps(record)
    t = time.perf_counter()
    for _ in range(repeats):
        pickle.dumps(apply_output(pickle.loads(pickled), output, prov))
    as_pickle = (time.perf_counter() - t) / repeats
    return {
        "before_ms": round(before * 1000, 3),
        "now_ms": round(now * 1000, 3),
        "pickled_ms": round(as_pickle * 1000, 3),
        "record_json_bytes": len(raw),
    }


def write_synthetic(work: Path, clips: int, per_source: int, records: bool = True) -> list[Any]:
    """A finished run directory of ``clips`` clips in ``work/run`` (module docstring);
    returns the source items of its sources."""
    from any2capins.pipeline.partlog import PartLog
    from any2capins.pipeline.resume import build_signature, source_key, stat_source
    from any2capins.pipeline.rundir import RunDir
    from any2capins.pipeline.sources import list_sources
    from any2capins.schemas import ClipRef, Provenance, Record, make_clip_id

    resolved = _resolved(work)
    src = work / "sources"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(max(1, clips // per_source)):
        (src / f"s{i:06d}.mp4").write_bytes(b"placeholder %d" % i)
    sources = list_sources(str(src))
    run = RunDir(str(work / "run"))
    spans_cfg = resolved.recipe.spans.model_dump(mode="json")
    signature = build_signature(resolved)
    stages = [s.name for s in resolved.stages]
    probes: dict[str, str] = {}
    done: dict[str, str] = {}
    markers: dict[str, dict[str, str]] = {s: {} for s in stages}
    info = {
        "uri": "",
        "duration_s": float(per_source),
        "fps": 12.0,
        "width": 96,
        "height": 64,
        "num_frames": 12 * per_source,
    }
    summary = json.dumps({"instances": None, "unsuitable": {}, "flags": [], "scores": {}})
    for item in sources:
        row = item.to_row()
        stat = stat_source(item.uri)
        assert stat is not None
        spans = [[float(k), float(k + 1)] for k in range(per_source)]
        probes[source_key(row, spans_cfg, stat)] = json.dumps({"info": info, "spans": spans})
        for start, end in spans:
            clip_id = make_clip_id(item.uri, start, end)
            done[clip_id] = json.dumps(
                {
                    "sig": signature,
                    "source_uri": item.uri,
                    "stages": stages,
                    "dataset": summary,
                    "warnings": "[]",
                    "filtered": "",
                }
            )
            for spec in resolved.stages:
                markers[spec.name][clip_id] = json.dumps(
                    {
                        "stage": spec.name,
                        "clip_id": clip_id,
                        "config_hash": spec.config_hash,
                        "output": {"placeholder": "x" * 400},
                        "provenance": {"stage": spec.name, "config_hash": spec.config_hash},
                    }
                )
            if records:
                record = Record(
                    clip=ClipRef(
                        clip_id=clip_id,
                        source_uri=item.uri,
                        start_s=start,
                        end_s=end,
                        fps=12.0,
                        width=96,
                        height=64,
                        num_frames=12,
                    ),
                    provenance=Provenance(
                        recipe=resolved.recipe.name, recipe_hash=resolved.recipe_hash, run_id="x"
                    ),
                )
                path = Path(run.root) / "records" / f"{clip_id}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(record.model_dump_json(indent=1))  # no fsync: a fixture
    run.probe_log().append(probes)
    run.done_log().append(done)
    for stage, entries in markers.items():
        PartLog(run.storage, f"stages/{stage}").append(entries)
    return sources


def synthetic(clips: int = 100_000, per_source: int = 100, records: bool = True) -> dict[str, Any]:
    from any2capins.pipeline.build import run_build

    work = Path(tempfile.mkdtemp(prefix="bench-resume-synth-"))
    try:
        t = time.perf_counter()
        sources = write_synthetic(work, clips, per_source, records)
        made_s = time.perf_counter() - t
        resolved = _resolved(work)
        t = time.perf_counter()
        report = run_build(resolved, sources, str(work / "run"), executor="local")
        resume_s = time.perf_counter() - t
        assert report.records_ok == clips and report.records_resumed == clips, report.failed
        return {
            "clips": clips,
            "sources": len(sources),
            "write_fixture_s": round(made_s, 1),
            "resume_s": round(resume_s, 2),
            "files": file_counts(work / "run", clips),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(clips: int = 1000, synthetic_clips: int = 100_000) -> dict[str, Any]:
    return {"noop": noop(clips), "synthetic": synthetic(synthetic_clips)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--executor", default="ray", choices=("ray", "local"))
    parser.add_argument("--work", default=None, help="keep the generated clips here")
    parser.add_argument("--only", choices=("noop", "synthetic"), default=None)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    if args.only in (None, "noop"):
        work = Path(args.work) if args.work else None
        out["noop"] = noop(args.clips, args.executor, work)
    if args.only in (None, "synthetic"):
        out["synthetic"] = synthetic(args.synthetic)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
