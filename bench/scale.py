"""Cost per clip as the number of clips grows: 200, 1,000 (and 5,000 when asked) clips.

For every size N, on N small synthetic clips the benchmark generates (``tests/media.py``,
the generator the other benchmarks use), through a cheap recipe (clip statistics, two small
keyframes, the offline grounded caption writer; no model, no network):

- ``build``: wall time of the build in the plain loop (``--executor local``) and on Ray Data
  (Ray started once beforehand; its start is reported apart);
- ``resume``: a re-run of each finished build over the same clips (a no-op: every record is
  done), whatever the engine does to find that out;
- ``ingest``: ``any2capins.workflows.review`` store ingest of the loop build's records into SQLite (a
  fresh ``review.db``);
- ``export``: ``export_shards`` of every record as accepted to Parquet (payloads embedded);
  the records are read from the run directory beforehand (not timed). The review decisions
  themselves are measured in ``bench/review.py``.

Every figure is also given per clip, and a least-squares line ``wall = a + b * N`` per step
projects the wall time to 337K (the Any2CapIns set) and 1M clips.

Sizes: ``--sizes 200,1000,5000`` (``python -m bench.scale``) or the environment variable
``ANY2CAP_BENCH_SCALE_SIZES``; the default (200 and 1,000) keeps ``make bench`` to a few
minutes on 2 cores. ``--plot PATH`` (or ``ANY2CAP_BENCH_SCALE_PLOT``) draws the cost
curve (with matplotlib when installed, else an SVG drawn here); ``make bench`` leaves
``docs/img`` alone and writes ``bench-results/scale.svg``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cheap_recipe import cheap_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (200, 1000)
SIZES_ENV = "ANY2CAP_BENCH_SCALE_SIZES"
PLOT_ENV = "ANY2CAP_BENCH_SCALE_PLOT"
PROJECT_TO = (337_000, 1_000_000)
STEPS = ("build_local", "build_ray", "resume_local", "resume_ray", "ingest", "export")
LABELS = {
    "build_local": "build, plain loop",
    "build_ray": "build, Ray Data",
    "resume_local": "no-op resume, plain loop",
    "resume_ray": "no-op resume, Ray Data",
    "ingest": "review ingest (SQLite)",
    "export": "export (Parquet)",
}

RECIPE = cheap_recipe("bench-scale")


class ScaleError(RuntimeError):
    pass


def parse_sizes(text: str) -> list[int]:
    """``"200,1000"`` -> ``[200, 1000]`` (sorted, distinct, each at least 2)."""
    try:
        sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ScaleError(f"sizes must be comma-separated whole numbers, not {text!r}") from None
    if not sizes or sizes[0] < 2:
        raise ScaleError(f"sizes must be at least 2 clips each, got {text!r}")
    return sizes


def sizes_from_env() -> list[int]:
    value = os.environ.get(SIZES_ENV, "").strip()
    return parse_sizes(value) if value else list(DEFAULT_SIZES)


def generate_clips(folder: Path, n: int, width: int, height: int) -> None:
    """N short clips, each different (pattern, length), named so that sorted order is
    generation order: the first N of a larger set are the N-clip set."""
    if str(REPO) not in sys.path:  # the clip generator lives in tests/
        sys.path.insert(0, str(REPO))
    from tests import media

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"c{i:06d}.mp4"
        if path.exists():
            continue
        pattern = ("moving", "scenes")[i % 2]
        media.make_video(
            path, 0.75 + 0.05 * (i % 6), fps=12, width=width, height=height, pattern=pattern, gop=6
        )


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b * x``: (a, b). One point: the line through the origin."""
    if len(xs) != len(ys) or not xs:
        raise ScaleError("fit_line needs as many y as x, at least one")
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _one_size(
    n: int, sources: list[Any], work: Path, executors: Sequence[str], notes: list[str]
) -> dict[str, float]:
    from any2capins.annotators import all_annotators
    from any2capins.pipeline.build import run_build
    from any2capins.pipeline.recipe import resolve_recipe
    from any2capins.pipeline.rundir import RunDir
    from any2capins.schemas import ReviewState
    from any2capins.workflows.export import Reviewed, export_shards
    from any2capins.workflows.review import open_store

    resolved = resolve_recipe(RECIPE, all_annotators())
    walls: dict[str, float] = {}
    quiet: Callable[[str], None] = notes.append
    for executor in executors:
        run = work / f"run-{executor}-{n}"

        def build(run: Path = run, executor: str = executor) -> Any:
            return run_build(resolved, sources, str(run), executor=executor, notify=quiet)

        wall, report = _timed(build)
        if report.failed or report.records_ok != n:
            raise ScaleError(
                f"{executor} build of {n} clips: {report.records_ok} ok, {report.failed} failed "
                f"{[f.message for f in report.failures[:3]]}"
            )
        walls[f"build_{executor}"] = wall
        wall, again = _timed(build)  # the same build again: every record is done
        if again.records_ok != n or again.failed:
            raise ScaleError(f"{executor} resume of {n} clips: {again.records_ok} ok")
        walls[f"resume_{executor}"] = wall
        walls[f"resumed_records_{executor}"] = float(again.records_resumed)

    run = work / f"run-{executors[0]}-{n}"

    def ingest() -> int:
        store = open_store(run_dir=str(run))
        try:
            report = store.ingest()
        finally:
            store.close()
        return int(report.added)

    walls["ingest"], added = _timed(ingest)
    if added != n:
        raise ScaleError(f"ingest of {n} records added {added}")

    records = list(RunDir(str(run)).records())
    items = [Reviewed(r, ReviewState(status="accepted", reviewer="bench")) for r in records]
    shards = work / f"shards-{n}"
    walls["export"], exported = _timed(lambda: export_shards(items, str(shards)))
    if exported.new_rows != n:
        raise ScaleError(f"export of {n} records wrote {exported.new_rows} rows")
    walls["export_bytes"] = float(exported.bytes_written)
    shutil.rmtree(shards, ignore_errors=True)
    for executor in executors:
        shutil.rmtree(work / f"run-{executor}-{n}", ignore_errors=True)
    return walls


def run(
    sizes: Sequence[int] | None = None,
    *,
    executors: Sequence[str] = ("local", "ray"),
    width: int = 96,
    height: int = 64,
    plot: str | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Every step at every size (one run each: a build is long enough to need no repeat);
    ``plot``: where to draw the cost curve (None: ``ANY2CAP_BENCH_SCALE_PLOT`` or nothing);
    ``checkpoint``: a JSON file that gets each size's raw walls as soon as it is measured
    (a long run killed half-way keeps its finished sizes)."""
    from any2capins.pipeline.sources import list_sources

    sizes = sorted(sizes) if sizes else sizes_from_env()
    if not executors:
        raise ScaleError("give at least one executor")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    notes: list[str] = []
    try:
        gen_s, _ = _timed(lambda: generate_clips(work / "src", sizes[-1], width, height))
        every = sorted(list_sources(str(work / "src")), key=lambda s: s.uri)
        if len(every) != sizes[-1]:
            raise ScaleError(f"generated {sizes[-1]} clips, the sources list {len(every)}")
        ray_init_s = None
        if "ray" in executors:
            from any2capins.pipeline.engine import ensure_ray

            ray_init_s, _ = _timed(ensure_ray)
        # a small untimed round first: imports, the review database's first migration and
        # Ray's first actors are paid here, not by the smallest size
        warm = min(8, sizes[0])
        _one_size(warm, every[:warm], work / "warm-up", executors, notes)
        points: dict[str, dict[str, float]] = {}
        for n in sizes:
            sys.stderr.write(f"bench scale: {n} clips ...\n")
            sys.stderr.flush()
            points[str(n)] = _one_size(n, every[:n], work, executors, notes)
            if checkpoint:
                Path(checkpoint).write_text(json.dumps({"points": points}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    steps = [s for s in STEPS if s in points[str(sizes[0])]]
    per_clip_ms = {
        step: {str(n): round(1000 * points[str(n)][step] / n, 3) for n in sizes} for step in steps
    }
    fits: dict[str, dict[str, Any]] = {}
    for step in steps:
        a, b = fit_line([float(n) for n in sizes], [points[str(n)][step] for n in sizes])
        fits[step] = {
            "fixed_s": round(a, 3),
            "per_clip_ms": round(1000 * b, 4),
            **{f"projected_{m}_h": round((a + b * m) / 3600, 2) for m in PROJECT_TO},
        }
    result: dict[str, Any] = {
        "sizes": list(sizes),
        "executors": list(executors),
        "clip": f"{width}x{height}, 12 fps, 0.75-1.0 s",
        "recipe": [s["annotator"] for s in RECIPE["stages"]],
        "generate_s": round(gen_s, 2),
        "ray_init_s": None if ray_init_s is None else round(ray_init_s, 2),
        "wall_s": {step: {str(n): round(points[str(n)][step], 3) for n in sizes} for step in steps},
        "resumed_records": {
            ex: {str(n): int(points[str(n)][f"resumed_records_{ex}"]) for n in sizes}
            for ex in executors
        },
        "export_bytes": {str(n): int(points[str(n)]["export_bytes"]) for n in sizes},
        "per_clip_ms": per_clip_ms,
        "fit": fits,
        "engine_notes": sorted(set(notes))[:5],
    }
    target = plot if plot is not None else os.environ.get(PLOT_ENV) or None
    if target:
        result["plot"] = write_plot(result, target)
    return result


# ---- the cost curve ----


def write_plot(result: dict[str, Any], path: str) -> str:
    """Per-clip wall time (ms, log scale) against clips (log scale), one line per step,
    drawn with matplotlib when it is installed (any suffix it knows: .svg, .png), else as an
    SVG drawn here (the suffix then becomes .svg). Returns the path written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out = out.with_suffix(".svg")
        out.write_text(svg_plot(result))
        return str(out)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for step, values in result["per_clip_ms"].items():
        ns = [int(n) for n in values]
        ax.plot(ns, list(values.values()), marker="o", label=LABELS.get(step, step))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(result["sizes"], [f"{n:,}" for n in result["sizes"]])
    ax.set_xlabel("clips")
    ax.set_ylabel("wall time per clip, ms")
    ax.set_title("Cost per clip (bench/scale.py)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    if out.suffix.lower() == ".svg":
        matplotlib.rcParams["svg.hashsalt"] = "bench-scale"  # stable ids: smaller diffs
    fig.savefig(out, metadata={"Date": None} if out.suffix.lower() == ".svg" else None)
    plt.close(fig)
    return str(out)


_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def svg_plot(result: dict[str, Any]) -> str:
    """The cost curve as a standalone SVG (no plotting package needed): log-log axes, ms
    per clip against clips, one line and marker set per step, a legend on the right."""
    import math

    series = {s: {int(n): v for n, v in vals.items()} for s, vals in result["per_clip_ms"].items()}
    ns = sorted({n for vals in series.values() for n in vals})
    ys = [v for vals in series.values() for v in vals.values() if v > 0]
    if not ns or not ys:
        raise ScaleError("nothing to plot")
    w, h, left, right, top, bottom = 820, 420, 70, 250, 30, 50
    x0, x1 = math.log10(ns[0]) - 0.1, math.log10(ns[-1]) + 0.1
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    if y1 == y0:
        y1 += 1

    def px(n: float) -> float:
        return left + (math.log10(n) - x0) / (x1 - x0) * (w - left - right)

    def py(v: float) -> float:
        return top + (y1 - math.log10(v)) / (y1 - y0) * (h - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">Wall time per clip (ms, log) against clips '
        "(log)</text>",
    ]
    for e in range(y0, y1 + 1):  # horizontal grid, one line a decade
        y = py(10.0**e)
        label = f"{10.0**e:g}"
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for n in ns:
        x = px(n)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{n:,}</text>'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
        'fill="none" stroke="#444"/>'
        f'<text x="{(left + w - right) / 2:.0f}" y="{h - 12}" text-anchor="middle">clips</text>'
        f'<text x="16" y="{(top + h - bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(top + h - bottom) / 2:.0f})">ms per clip</text>'
    )
    for i, (step, vals) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [(px(n), py(v)) for n, v in sorted(vals.items()) if v > 0]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in pts]
        ly = top + 10 + 20 * i
        parts.append(
            f'<line x1="{w - right + 15}" y1="{ly}" x2="{w - right + 40}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"/>'
            f'<text x="{w - right + 46}" y="{ly + 4}">{LABELS.get(step, step)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help=f"comma-separated clip counts (default: ${SIZES_ENV} or "
        f"{','.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument("--executors", default="local,ray", help="local,ray (default)")
    parser.add_argument("--plot", default=None, help="where to draw the cost curve (.svg/.png)")
    parser.add_argument(
        "--out",
        default=None,
        help="write the JSON here (Ray's workers may print to stdout too); OUT.partial "
        "gets each size as it is measured",
    )
    args = parser.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    partial = f"{args.out}.partial" if args.out else None
    result = run(args.sizes, executors=executors, plot=args.plot, checkpoint=partial)
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
