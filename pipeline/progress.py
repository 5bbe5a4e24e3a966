"""Live build progress: per-stage counts, rates and ETAs.

Stage actors (and the probe tasks) report their counts after each batch; the driver folds
them into a :class:`ProgressTracker`, whose :meth:`ProgressTracker.view` gives every
stage's done / total, clips per second, failures and ETA. On Ray the reports go to a small
counter actor (``num_cpus=0``) that a driver thread polls; the local executor adds to the
tracker directly. Reporting is best-effort everywhere: a lost report never fails a clip and
a dead counter never blocks the build, the figures just stop moving.

Counts per stage (a plain ``dict[str, int]`` so they travel cheaply):

- ``done``: clips the stage handled (run, resumed from its marker, failed or dropped there)
- ``failed``: clips that failed in the stage
- ``skipped``: clips resumed from the stage's marker
- ``filtered``: clips a curation rule (or the near-duplicate step after the stage) dropped

The probe reports as stage ``probe``: ``done`` sources probed, ``rows`` rows out (a clip
per span, or one failure row per bad source) and ``failed`` failure rows. A later stage's
total is the run's clips less those that failed or were dropped before it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PROBE = "probe"
RATE_WINDOW_S = 60.0  # clips/s over this much recent time (ETA follows the current pace)

Counts = dict[str, int]
Reporter = Callable[[str, Mapping[str, int]], None]


def add_counts(into: dict[str, Counts], stage: str, counts: Mapping[str, int]) -> None:
    target = into.setdefault(stage, {})
    for key, n in counts.items():
        target[key] = target.get(key, 0) + int(n)


@dataclass(frozen=True)
class StageView:
    """One line of the display: a stage, or the whole run (``name == "overall"``)."""

    name: str
    done: int
    total: int | None  # None until the sources are probed
    failed: int = 0
    skipped: int = 0
    filtered: int = 0
    rate: float = 0.0  # clips per second
    eta_s: float | None = None  # None while the total or the rate is unknown

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


@dataclass(frozen=True)
class ProgressView:
    elapsed_s: float
    sources_probed: int
    sources_total: int
    clips_total: int | None
    probe_failed: int
    stages: list[StageView]
    overall: StageView
    finished: bool = False


class _Rate:
    """Clips per second over the last ``window`` seconds, counted from when the stage had
    work (its upstream's first clips: Ray's start-up is not the stage's slowness); once
    ``done`` reaches the total, the average over the stage's active time."""

    def __init__(self, t0: float, window: float) -> None:
        self.t0 = t0
        self.window = window
        self.samples: deque[tuple[float, int]] = deque([(t0, 0)])
        self.last_change = t0
        self.started: float | None = None

    def start(self, now: float) -> None:
        if self.started is None:
            self.started = now
            self.samples = deque([(now, 0)])

    def update(self, now: float, done: int) -> None:
        if self.started is None:
            self.start(now)
        if done != self.samples[-1][1]:
            self.samples.append((now, done))
            self.last_change = now
        # keep the newest sample at or before the window's start as the reference point
        while len(self.samples) >= 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self, now: float, done: int, finished: bool) -> float:
        if done <= 0:
            return 0.0
        if finished:
            span = self.last_change - (self.started if self.started is not None else self.t0)
            if span <= 0:  # everything landed in one report: the whole run is the span
                span = self.last_change - self.t0
            return done / span if span > 0 else 0.0
        t_ref, done_ref = self.samples[0]
        span = now - t_ref
        return (done - done_ref) / span if span > 0 else 0.0


def eta(remaining: int | None, rate: float) -> float | None:
    if remaining is None:
        return None
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate > 0 else None


class ProgressTracker:
    """The driver's picture of a build; thread-safe (the Ray poller writes, a display reads)."""

    def __init__(
        self,
        stages: list[str],
        sources_total: int,
        limit: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.stage_names = list(stages)
        self.sources_total = sources_total
        self.limit = limit
        self.clock = clock
        self.t0 = clock()
        self._lock = threading.Lock()
        self._counts: dict[str, Counts] = {}
        self._rows: Counts = {}  # rows out of the pipeline: done, failed, filtered
        self._rates = {name: _Rate(self.t0, window_s) for name in [*self.stage_names, "overall"]}
        self._final_clips: int | None = None

    # -- writers ------------------------------------------------------------------------

    def add(self, stage: str, counts: Mapping[str, int]) -> None:
        """Add one batch's counts (the local executor's reporter)."""
        with self._lock:
            add_counts(self._counts, stage, counts)
            self._sample()

    def set_counts(self, snapshot: Mapping[str, Mapping[str, int]]) -> None:
        """Replace every stage's counts with the counter actor's totals (the Ray poller)."""
        with self._lock:
            self._counts = {stage: dict(c) for stage, c in snapshot.items()}
            self._sample()

    def row_out(self, failed: bool = False, filtered: bool = False) -> None:
        """A row left the pipeline (the driver saw it)."""
        with self._lock:
            for key, n in (("done", 1), ("failed", int(failed)), ("filtered", int(filtered))):
                self._rows[key] = self._rows.get(key, 0) + n
            self._sample()

    def finish(self) -> None:
        """The run is over: the clips that came out are the total, whatever was estimated."""
        with self._lock:
            self._final_clips = self._rows.get("done", 0)
            self._sample()

    # -- arithmetic ---------------------------------------------------------------------

    def _get(self, stage: str, key: str) -> int:
        return self._counts.get(stage, {}).get(key, 0)

    def _clips_total(self) -> int | None:
        if self._final_clips is not None:
            return self._final_clips
        rows = self._get(PROBE, "rows")
        if self.limit is not None and rows >= self.limit:
            return self.limit
        if self._get(PROBE, "done") >= self.sources_total:
            return rows if self.limit is None else min(rows, self.limit)
        return None

    def _stage_totals(self) -> list[int | None]:
        clips = self._clips_total()
        if clips is None:
            return [None] * len(self.stage_names)
        left = clips - self._get(PROBE, "failed")
        totals: list[int | None] = []
        for name in self.stage_names:
            totals.append(max(left, self._get(name, "done")))
            left -= self._get(name, "failed") + self._get(name, "filtered")
        return totals

    def _sample(self) -> None:
        now = self.clock()
        upstream = self._get(PROBE, "rows")
        for name in self.stage_names:
            rate = self._rates[name]
            done = self._get(name, "done")
            if upstream > 0 or done > 0:
                rate.update(now, done)
            upstream = done
        if self._get(PROBE, "rows") > 0 or self._rows.get("done", 0) > 0:
            self._rates["overall"].update(now, self._rows.get("done", 0))

    def complete(self) -> bool:
        """Every stage has reported every clip of its total (the final poll's test)."""
        view = self.view()
        return all(s.finished for s in view.stages)

    def view(self, finished: bool = False) -> ProgressView:
        with self._lock:
            now = self.clock()
            self._sample()
            stages = []
            for name, total in zip(self.stage_names, self._stage_totals(), strict=True):
                done = self._get(name, "done")
                is_done = total is not None and done >= total
                rate = self._rates[name].rate(now, done, is_done)
                stages.append(
                    StageView(
                        name=name,
                        done=done,
                        total=total,
                        failed=self._get(name, "failed"),
                        skipped=self._get(name, "skipped"),
                        filtered=self._get(name, "filtered"),
                        rate=rate,
                        eta_s=eta(None if total is None else total - done, rate),
                    )
                )
            clips = self._clips_total()
            done = self._rows.get("done", 0)
            is_done = clips is not None and done >= clips
            rate = self._rates["overall"].rate(now, done, is_done)
            overall = StageView(
                name="overall",
                done=done,
                total=clips,
                failed=self._rows.get("failed", 0),
                filtered=self._rows.get("filtered", 0),
                rate=rate,
                eta_s=eta(None if clips is None else clips - done, rate),
            )
            return ProgressView(
                elapsed_s=now - self.t0,
                sources_probed=self._get(PROBE, "done"),
                sources_total=self.sources_total,
                clips_total=clips,
                probe_failed=self._get(PROBE, "failed"),
                stages=stages,
                overall=overall,
                finished=finished,
            )


# -- text ------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def stage_figures(s: StageView) -> str:
    """``12/40 0.85 clips/s ETA 0:00:33 failed 1`` (+ resumed, dropped when non-zero)."""
    total = "?" if s.total is None else str(s.total)
    text = f"{s.done}/{total} {s.rate:.2f} clips/s ETA {format_duration(s.eta_s)} failed {s.failed}"
    if s.skipped:
        text += f" resumed {s.skipped}"
    if s.filtered:
        text += f" dropped {s.filtered}"
    return text


def probe_figures(view: ProgressView) -> str:
    text = f"sources {view.sources_probed}/{view.sources_total}"
    if view.clips_total is not None:
        text += f", clips {view.clips_total}"
    if view.probe_failed:
        text += f", failed {view.probe_failed}"
    return text


def format_line(view: ProgressView) -> str:
    """The plain one-line form for logs: elapsed, probe, each stage, overall."""
    head = "progress done" if view.finished else "progress"
    parts = [f"{head} {format_duration(view.elapsed_s)}", f"probe {probe_figures(view)}"]
    parts += [f"{s.name} {stage_figures(s)}" for s in view.stages]
    parts.append(f"overall {stage_figures(view.overall)}")
    return " | ".join(parts)


# -- Ray: the counter actor and the driver's poller ----------------------------------------


class ProgressCounter:
    """Sums the reports of every stage actor; the driver reads the totals."""

    def __init__(self) -> None:
        self.counts: dict[str, Counts] = {}

    def add(self, stage: str, counts: Mapping[str, int]) -> None:
        add_counts(self.counts, stage, counts)

    def snapshot(self) -> dict[str, Counts]:
        return self.counts


class RayReporter:
    """Picklable reporter for stage actors and probe tasks: one fire-and-forget actor call
    per batch; any error (a dead counter, a shutting-down worker) is swallowed."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def __call__(self, stage: str, counts: Mapping[str, int]) -> None:
        with contextlib.suppress(Exception):  # progress is never worth a clip
            self.counter.add.remote(stage, dict(counts))


def safe_report(reporter: Reporter | None, stage: str, counts: Mapping[str, int]) -> None:
    if reporter is None:
        return
    try:
        reporter(stage, counts)
    except Exception:
        log.debug("progress report failed", exc_info=True)


class RayProgress:
    """The counter actor plus a driver thread that copies its totals into ``tracker``."""

    def __init__(self, tracker: ProgressTracker, interval_s: float = 0.5) -> None:
        import ray

        self.tracker = tracker
        self.interval_s = interval_s
        actor_cls: Any = ray.remote(num_cpus=0, max_restarts=0)(ProgressCounter)
        self.counter: Any = actor_cls.remote()
        self.reporter = RayReporter(self.counter)
        self._stop = threading.Event()
        self._dead = False
        self._thread = threading.Thread(target=self._loop, name="any2cap-progress", daemon=True)
        self._thread.start()

    def poll(self, timeout_s: float = 5.0) -> bool:
        """Copy the counter's totals; False once the counter is gone (then never again)."""
        if self._dead:
            return False
        import ray

        try:
            snapshot = ray.get(self.counter.snapshot.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            return True  # busy or still starting: try again next time
        except Exception:
            log.debug("progress counter lost", exc_info=True)
            self._dead = True
            return False
        self.tracker.set_counts(snapshot)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.poll():
                return

    def close(self, settle_s: float = 2.0) -> None:
        """Stop the thread, take the last totals (reports still in flight get ``settle_s``
        to land) and kill the counter."""
        import ray

        self._stop.set()
        self._thread.join(timeout=10)
        deadline = time.monotonic() + settle_s
        while settle_s > 0 and self.poll(timeout_s=settle_s) and not self.tracker.complete():
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            ray.kill(self.counter)


class Ticker:
    """Calls ``fn(tracker.view())`` every ``interval_s`` from a thread until stopped; a
    display error is logged once and never reaches the build."""

    def __init__(
        self, tracker: ProgressTracker, fn: Callable[[ProgressView], None], interval_s: float
    ) -> None:
        self.tracker = tracker
        self.fn = fn
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="any2cap-ticker", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn(self.tracker.view())
            except Exception:
                log.warning("progress display failed; the build goes on", exc_info=True)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
