"""`make bench`: run every benchmark (or those chosen with --only / --skip), write
bench-results/latest.json and print one summary table per benchmark.

A benchmark that cannot run here (a package or service missing) is reported as skipped with
the reason; one that raises is recorded with its traceback and the others still run; the
exit code is 1 when any benchmark raised.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLIPS_DIR = REPO / "demo" / "clips"
OUT = REPO / "bench-results" / "latest.json"

Row = tuple[str, str, str, str]  # what, baseline, measured, ratio


class Skip(Exception):
    """The benchmark cannot run on this machine; the message says why."""


def _demo_clips() -> list[str]:
    clips = sorted(str(p) for p in CLIPS_DIR.glob("*.mp4"))
    if not clips:
        raise Skip(f"no demo clips in {CLIPS_DIR}")
    return clips


# Each benchmark's module is imported only when it runs: a broken or unrunnable one must not
# stop the others.
def _run_decode() -> dict[str, Any]:
    from bench import decode

    return decode.run(_demo_clips(), repeats=3)


def _run_pipeline() -> dict[str, Any]:
    from bench import pipeline

    _demo_clips()
    return pipeline.run(str(CLIPS_DIR), repeats=2, recipe=str(REPO / "bench" / "demo-windows.yaml"))


def _run_conditions() -> dict[str, Any]:
    from bench import conditions

    _demo_clips()
    return conditions.run(str(CLIPS_DIR))


def _run_captions() -> dict[str, Any]:
    from bench import captions

    _demo_clips()
    return captions.run(str(CLIPS_DIR))


def _run_camera() -> dict[str, Any]:
    from bench import camera

    return camera.run()


def _run_review() -> dict[str, Any]:
    from bench import review

    return review.run()


def _run_review_load() -> dict[str, Any]:
    from bench import review_load

    return review_load.run()


def _run_export() -> dict[str, Any]:
    from bench import export

    return export.run()


def _run_scale() -> dict[str, Any]:
    from bench import scale

    # sizes from ANY2CAP_BENCH_SCALE_SIZES (default 200 and 1,000 clips); the curve beside
    # the JSON, docs/img is written only when asked (python -m bench.scale --plot ...)
    return scale.run(plot=os.environ.get(scale.PLOT_ENV) or str(OUT.parent / "scale.svg"))


def _run_scores() -> dict[str, Any]:
    from bench import scores

    return scores.run()


def _run_dedup() -> dict[str, Any]:
    from bench import dedup

    return dedup.run()


def _run_resume() -> dict[str, Any]:
    from bench import resume

    # the no-op re-run on ANY2CAP_BENCH_RESUME_CLIPS generated clips (default 200: a few
    # minutes on 2 cores; docs/benchmarks.md quotes 1,000), the synthetic 100K-clip resume
    clips = int(os.environ.get("ANY2CAP_BENCH_RESUME_CLIPS", "200"))
    return resume.run(clips=clips, synthetic_clips=100_000)


def _resume_rows(r: dict[str, Any]) -> list[Row]:
    noop, synth = r["noop"], r["synthetic"]
    return [
        (
            # Against the first build of the same clips in the same run (the machines are
            # noisy): the share of a build that a re-run with nothing left to do costs.
            # Before the resume index it cost about as much as the build (28.9 s of 40.5 s).
            f"no-op re-run of a finished {noop['clips']}-clip build (Ray started), s",
            f"{noop['build_s']:.2f} (the first build)",
            f"{noop['noop_rerun_s']:.2f}",
            f"{noop['noop_rerun_s'] / max(noop['build_s'], 1e-9):.4f} of the build",
        ),
        (
            f"resume of a synthetic {synth['clips']}-clip run directory, s",
            "target < 30",
            f"{synth['resume_s']:.2f}",
            "",
        ),
        (
            "run-state files per clip (artifacts apart)",
            "4.0 (3 stages)",
            f"{noop['files']['run_state_files_per_clip']:.2f}",
            "",
        ),
    ]


def _run_gpu() -> dict[str, Any]:
    from bench import gpu

    try:
        return gpu.run()
    except gpu.Skip as e:  # bench.__main__.Skip: another class than this __main__'s under -m
        raise Skip(str(e)) from None


def _gpu_rows(g: dict[str, Any]) -> list[Row]:
    from bench import gpu

    return gpu.rows(g)


# ---- summaries: every row is a figure against its baseline from the same run ----


def _x(value: float | None, what: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x {what}" if value < 0.1 else f"{value:.2f}x {what}"


def _decode_rows(d: dict[str, Any]) -> list[Row]:
    pyav = f"PyAV {d['pyav_fps']:.1f}"
    what = f"16-frame sampling, frames/s (median of {d['repeats']})"
    rows: list[Row] = []
    # the decord row names the package that provides the module (decord or decord2)
    for key, label in (
        ("decord_fps", d.get("decord") or "decord"),
        ("torchcodec_fps", "torchcodec"),
    ):
        fps = d.get(key)
        measured = "not installed" if fps is None else f"{label} {fps:.1f}"
        ratio = fps / d["pyav_fps"] if fps and d["pyav_fps"] else None
        rows.append((what, pyav, measured, _x(ratio, f"{label}/PyAV")))
    robust = d.get("robustness") or {}
    if robust:
        ok = {
            r: sum(v.get(r) == "ok" for v in robust.values()) for r in next(iter(robust.values()))
        }
        rows.append(
            (
                f"odd inputs read right, of {len(robust)} (tests/media.py corpus)",
                f"PyAV {ok.get('pyav', 0)}",
                ", ".join(f"{r} {n}" for r, n in ok.items() if r != "pyav"),
                "-",
            )
        )
    return rows


def _pipeline_rows(p: dict[str, Any]) -> list[Row]:
    return [
        (
            f"demo-windows build wall time, s ({p['clips']} clips, best of {p['repeats']})",
            f"plain loop {p['local_wall_s']:.2f}",
            f"Ray Data {p['ray_wall_s']:.2f}",
            _x(p["overhead_ratio_ray_over_loop"], "Ray/loop"),
        )
    ]


def _conditions_rows(c: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for stage, s in c["stages"].items():
        loop = f"annotator loop {s['annotator_loop_clips_per_s']:.2f}"
        rows.append(
            (
                f"{stage}, clips/s ({s['clips']} clips), engine --executor local",
                loop,
                f"{s['local_clips_per_s']:.2f}",
                _x(s["ratio_local_over_annotator"], "wall local/loop"),
            )
        )
        rows.append(
            (
                f"{stage}, clips/s, engine on Ray",
                loop,
                f"{s['ray_clips_per_s']:.2f}",
                _x(s["ratio_ray_over_annotator"], "wall Ray/loop"),
            )
        )
    return rows


def _captions_rows(c: dict[str, Any]) -> list[Row]:
    t = c["throughput"]
    rows: list[Row] = [
        (
            f"clips/min, {t['latency_s'] * 1000:.0f} ms per request, "
            f"concurrency {t['concurrency']}",
            f"ideal {t['ideal_clips_per_min']:.1f}",
            f"{t['clips_per_min']:.1f}",
            _x(t["ratio_of_ideal"], "of ideal"),
        )
    ]
    for setting, p in c["prompt_tokens"].items():
        rows.append(
            (
                f"billed input tokens per clip, {setting.replace('_', ' ')}",
                f"instruction first {p['instruction_first']['billed_equivalent_per_clip']}",
                f"shared prefix {p['shared_prefix']['billed_equivalent_per_clip']}",
                _x(p["billed_ratio_shared_over_instruction_first"], "shared/instruction first"),
            )
        )
    return rows


def _camera_rows(c: dict[str, Any]) -> list[Row]:
    ate = c["ate_relative_mean"]
    return [
        (
            f"camera estimation, frames/s ({c['synthetic_frames']} synthetic frames)",
            f"KLT tracking alone {c['klt_only_fps']:.1f}",
            f"estimator {c['estimator_fps']:.1f}",
            _x(c["ratio_estimator_over_klt"], "estimator/KLT"),
        ),
        (
            "accuracy on the synthetic set",
            "-",
            f"rotation {c['rotation_mean_deg']:.2f} deg mean, ATE "
            f"{'-' if ate is None else f'{100 * ate:.1f}%'} of path, "
            f"labels {c['labels_correct']}/{c['labels_total']}",
            "-",
        ),
    ]


def _review_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for backend in ("sqlite", "postgresql"):
        b = r.get(backend)
        if b is None:
            continue
        if "skipped" in b:
            rows.append((backend, "-", f"skipped: {b['skipped']}", "-"))
            continue
        alone, loaded = b["alone_throughput_pairs_per_s"], b["throughput_pairs_per_s"]
        rows.append(
            (
                f"{backend}: claim+decision pairs/s, {b['clients']} clients "
                f"({b['duplicate_claims']} duplicate claims)",
                f"one client alone {alone}",
                f"{loaded}",
                _x(loaded / alone if alone and loaded else None, "loaded/alone"),
            )
        )
        rows.append(
            (
                f"{backend}: pair latency p50 / p95, ms",
                f"alone {b['alone_p50_ms']} / {b['alone_p95_ms']}",
                f"{b['pair_p50_ms']} / {b['pair_p95_ms']}",
                _x(b["pair_p50_ms"] / b["alone_p50_ms"] if b["alone_p50_ms"] else None, "p50"),
            )
        )
    if "ratio_pg_over_sqlite_throughput" in r:
        rows.append(
            (
                "PostgreSQL vs SQLite pairs/s under load",
                f"SQLite {r['sqlite']['throughput_pairs_per_s']}",
                f"PostgreSQL {r['postgresql']['throughput_pairs_per_s']}",
                _x(r["ratio_pg_over_sqlite_throughput"], "PG/SQLite"),
            )
        )
    return rows


def _review_load_rows(r: dict[str, Any]) -> list[Row]:
    def ms(o: dict[str, Any], what: str) -> str:
        return " / ".join(str(o[f"{what}_p{q}_ms"]) for q in (50, 95, 99))

    rows: list[Row] = []
    for backend in ("sqlite", "postgresql"):
        b = r.get(backend)
        if not b:
            continue
        if "skipped" in b:
            rows.append((backend, "-", f"skipped: {b['skipped']}", "-"))
            continue
        counts = sorted(b, key=lambda k: int(k.split("_")[0]))  # "1_workers", "2_workers"
        n1, n2 = counts[0], counts[-1]
        one, two = b[n1], b[n2]
        w1, w2 = (n.replace("1_workers", "1 worker").replace("_", " ") for n in (n1, n2))
        for load, o1 in one["offered"].items():
            o2 = two["offered"][load]
            for what in ("claim", "decide"):
                p95_1, p95_2 = o1[f"{what}_p95_ms"], o2[f"{what}_p95_ms"]
                rows.append(
                    (
                        f"{backend}, {load} offered ({o1['annotators']} annotators): "
                        f"{what} p50 / p95 / p99, ms",
                        f"{w1} {ms(o1, what)}",
                        f"{w2} {ms(o2, what)}",
                        _x(p95_2 / p95_1 if p95_1 and p95_2 else None, "p95"),
                    )
                )
        s1, s2 = one["saturation"], two["saturation"]
        rows.append(
            (
                f"{backend}: saturation, decisions/s ({s1['clients']} clients, closed loop; "
                f"duplicate claims {s1['duplicate_claims'] + s2['duplicate_claims']})",
                f"{w1} {s1['decisions_per_s']}",
                f"{w2} {s2['decisions_per_s']}",
                _x(
                    s2["decisions_per_s"] / s1["decisions_per_s"]
                    if s1["decisions_per_s"]
                    else None,
                    f"{w2}/{w1}",
                ),
            )
        )
    return rows


def _export_rows(e: dict[str, Any]) -> list[Row]:
    pyarrow = f"pyarrow to_pylist {e['pyarrow_read_rows_s']:.0f}"
    return [
        (
            f"export, MB/s ({e['rows']} rows, {e['shards']} shards, payloads embedded)",
            f"plain write_table {e['plain_write_mb_s']:.1f}",
            f"export_shards {e['export_mb_s']:.1f}",
            _x(e["ratio_export_over_plain"], "export/plain"),
        ),
        (
            "export, rows/s, payloads referenced",
            f"embedded {e['embedded_mode_rows_s']:.0f}",
            f"referenced {e['reference_mode_rows_s']:.0f}",
            _x(e["reference_mode_rows_s"] / e["embedded_mode_rows_s"], "referenced/embedded"),
        ),
        (
            "reader, samples/s, in-process (keyframes decoded)",
            pyarrow,
            f"ShardDataset {e['dataset_samples_s']:.0f}",
            _x(e["ratio_dataset_over_pyarrow"], "dataset/pyarrow"),
        ),
        (
            "reader, samples/s, text only (validated rows, no decoding)",
            pyarrow,
            f"ShardDataset {e['dataset_text_only_samples_s']:.0f}",
            _x(e["ratio_text_only_over_pyarrow"], "dataset/pyarrow"),
        ),
        (
            "reader, samples/s, validate=False text only (payload column not read)",
            pyarrow,
            f"ShardDataset {e['fast_text_only_samples_s']:.0f}",
            _x(e["ratio_fast_text_only_over_pyarrow"], "dataset/pyarrow"),
        ),
        (
            "reader, samples/s, validate=False (keyframes decoded)",
            pyarrow,
            f"ShardDataset {e['fast_decoded_samples_s']:.0f}",
            _x(e["ratio_fast_decoded_over_pyarrow"], "dataset/pyarrow"),
        ),
        (
            "reader, samples/s, shuffle=True (row groups permuted, 512-row buffer)",
            f"ShardDataset {e['dataset_samples_s']:.0f}",
            f"shuffled {e['dataset_shuffled_samples_s']:.0f}",
            _x(e["ratio_shuffled_over_dataset"], "shuffled/in order"),
        ),
        (
            "reader, samples/s, DataLoader num_workers=2",
            pyarrow,
            f"ShardDataset {e['dataloader_2_workers_samples_s']:.0f}",
            _x(e["ratio_dataloader_over_pyarrow"], "DataLoader/pyarrow"),
        ),
    ]


def _scale_rows(s: dict[str, Any]) -> list[Row]:
    from bench.scale import LABELS

    rows: list[Row] = []
    small, large = str(s["sizes"][0]), str(s["sizes"][-1])
    for step, per_clip in s["per_clip_ms"].items():
        fit = s["fit"][step]
        rows.append(
            (
                f"{LABELS.get(step, step)}, ms per clip ({small} -> {large} clips; fit "
                f"{fit['per_clip_ms']:.2f} ms/clip + {fit['fixed_s']:.1f} s, 337K clips "
                f"{fit['projected_337000_h']:.2f} h, 1M {fit['projected_1000000_h']:.2f} h)",
                f"{small} clips {per_clip[small]:.2f}",
                f"{large} clips {per_clip[large]:.2f}",
                _x(per_clip[large] / per_clip[small] if per_clip[small] else None, "per clip"),
            )
        )
    return rows


def _scores_rows(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name in ("quality", "motion", "cuts", "text_overlay", "aesthetics"):
        e = d.get(name)
        if e is None:
            continue
        note = " (full-size random ViT-L/14, CPU)" if name == "aesthetics" else ""
        rows.append(
            (
                f"{name}{note}, clips/s ({e['clips']} demo clips, {e['frames']} frames)",
                f"decode alone {e['decode_clips_s']:.2f}",
                f"decode + score {e['end_to_end_clips_s']:.2f}",
                _x(e["ratio_end_to_end_over_decode"], "of decoding alone"),
            )
        )
    return rows


def _dedup_rows(d: dict[str, Any]) -> list[Row]:
    check = d["check_2k"]
    rows: list[Row] = [
        (
            f"grouping == brute force, 2K clips ({check['pairs']} near-duplicate pairs)",
            "all pairs",
            f"pairs {check['pairs_equal_brute_force']}, groups {check['groups_equal_brute_force']}",
            "-",
        )
    ]
    for key in ("n10000", "n100000"):
        e = d.get(key)
        if e is None:
            continue
        measured = "measured" if "brute_force_seconds" in e else "estimated n^2"
        brute = e.get("brute_force_seconds", e["brute_force_seconds_estimated"])
        rows.append(
            (
                f"near-duplicate pairs, s ({e['clips']} clips x {d['hashes_per_clip']} hashes, "
                f"distance <= {d['max_distance']}; {e['duplicates']} dropped in "
                f"{e['groups']} groups; grouping {e['group_seconds']:.2f} s in all)",
                f"all pairs {brute:.1f} ({measured})",
                f"multi-index {e['pairs_seconds']:.2f}",
                _x(e["ratio_multi_index_over_brute"], "multi-index/all pairs"),
            )
        )
    return rows


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    about_s: int  # rough wall time on the 2-core development VM, for the progress line
    run: Callable[[], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[Row]]


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "decode",
            "Frame readers: speed, robustness (bench/decode.py)",
            90,
            _run_decode,
            _decode_rows,
        ),
        Benchmark(
            "pipeline", "Ray overhead (bench/pipeline.py)", 30, _run_pipeline, _pipeline_rows
        ),
        Benchmark(
            "conditions",
            "Condition stages, tiny models (bench/conditions.py)",
            360,
            _run_conditions,
            _conditions_rows,
        ),
        Benchmark(
            "captions", "Caption writer (bench/captions.py)", 20, _run_captions, _captions_rows
        ),
        Benchmark("camera", "Camera estimation (bench/camera.py)", 30, _run_camera, _camera_rows),
        Benchmark("review", "Review queue (bench/review.py)", 60, _run_review, _review_rows),
        Benchmark(
            "review_load",
            "Review queue at offered load, 1 vs 2 workers (bench/review_load.py)",
            720,
            _run_review_load,
            _review_load_rows,
        ),
        Benchmark(
            "export",
            "Export and training feed (bench/export.py)",
            60,
            _run_export,
            _export_rows,
        ),
        Benchmark(
            "scores", "Curation score stages (bench/scores.py)", 90, _run_scores, _scores_rows
        ),
        Benchmark(
            "scale",
            "Scale: cost per clip, 200 to 5,000 clips (bench/scale.py)",
            300,
            _run_scale,
            _scale_rows,
        ),
        Benchmark("dedup", "Near-duplicate grouping (bench/dedup.py)", 15, _run_dedup, _dedup_rows),
        Benchmark("resume", "Resume at scale (bench/resume.py)", 300, _run_resume, _resume_rows),
        Benchmark("gpu", "Depth and SAM 2 on a GPU (bench/gpu.py)", 420, _run_gpu, _gpu_rows),
    )
}


def _missing_package(error: ModuleNotFoundError) -> str | None:
    """The package an import needed that is not installed (None: a bug, not a missing package)."""
    top = (error.name or "").split(".")[0]
    if top and importlib.util.find_spec(top) is None:
        return top
    return None


def _run_one(bench: Benchmark) -> tuple[str, dict[str, Any]]:
    """(status, result) with status ok / skipped / error; never raises."""
    try:
        result = bench.run()
    except Skip as e:
        return "skipped", {"skipped": str(e)}
    except ModuleNotFoundError as e:
        package = _missing_package(e)
        if package is None:
            return "error", _error(e)
        return "skipped", {"skipped": f"needs the {package!r} package, which is not installed"}
    except Exception as e:  # noqa: BLE001 - one benchmark's failure must not stop the others
        return "error", _error(e)
    if set(result) == {"skipped"}:
        return "skipped", result
    return "ok", result


def _error(e: BaseException) -> dict[str, Any]:
    return {
        "error": f"{type(e).__name__}: {e}",
        "traceback": "".join(traceback.format_exception(e)),
    }


def _nested_skips(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Parts of a benchmark that reported themselves skipped (e.g. review's PostgreSQL)."""
    if isinstance(value, dict):
        if isinstance(value.get("skipped"), str):
            yield path, value["skipped"]
            return
        for key, item in value.items():
            yield from _nested_skips(item, f"{path}.{key}")


def _table(rows: list[Row]) -> str:
    lines = ["| benchmark | baseline | measured | ratio |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def _summary(results: dict[str, Any], selected: list[str]) -> str:
    out: list[str] = []
    for name in selected:
        bench, status = BENCHMARKS[name], results["status"][name]
        result = results[name]
        head = f"## {name}: {bench.title} ({status['seconds']:.0f} s)"
        if status["status"] == "skipped":
            out.append(f"{head}\n\nskipped: {result['skipped']}")
            continue
        if status["status"] == "error":
            out.append(f"{head}\n\nERROR: {result['error']}")
            continue
        try:
            text = _table(bench.rows(result))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            text = f"(no summary: {type(e).__name__}: {e}; the raw numbers are in the JSON)"
        parts = [f"{head}\n\n{text}"]
        parts += [
            f"skipped: {where}: {why}"
            for where, why in _nested_skips(result, name)
            if why not in text  # already a row of the table
        ]
        out.append("\n".join(parts))
    return "\n\n".join(out)


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks; every figure is a ratio against a baseline measured "
        f"in the same run. Benchmarks: {', '.join(BENCHMARKS)}.",
    )
    parser.add_argument("--only", type=_names, default=None, help="comma-separated names")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated names")
    args = parser.parse_args(argv)
    selected = [
        n for n in BENCHMARKS if (args.only is None or n in args.only) and n not in args.skip
    ]
    if not selected:
        parser.error("--only/--skip leave no benchmark to run")

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count() or 0,
            "platform": platform.platform(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "selected": selected,
        "status": {},
    }
    for name in selected:
        bench = BENCHMARKS[name]
        sys.stderr.write(f"bench: {name} (about {bench.about_s} s on 2 cores) ...\n")
        sys.stderr.flush()
        started = time.perf_counter()
        status, result = _run_one(bench)
        seconds = time.perf_counter() - started
        results[name] = result
        results["status"][name] = {"status": status, "seconds": round(seconds, 1)}
        if status == "error":
            sys.stderr.write(f"bench: {name} FAILED after {seconds:.0f} s\n{result['traceback']}")
        else:
            sys.stderr.write(f"bench: {name} {status} in {seconds:.0f} s\n")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    # default=str: a stray numpy scalar must not lose every other benchmark's numbers
    OUT.write_text(json.dumps(results, indent=1, default=str))
    # one file per benchmark as well, so an --only run does not lose the others' last numbers
    for name in selected:
        one = {k: results[k] for k in ("when", "machine")} | {
            "status": results["status"][name],
            name: results[name],
        }
        (OUT.parent / f"{name}.json").write_text(json.dumps(one, indent=1, default=str))
    sys.stdout.write(f"{_summary(results, selected)}\n\nraw: {OUT}\n")
    failed = [n for n in selected if results["status"][n]["status"] == "error"]
    if failed:
        sys.stdout.write(f"FAILED: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
