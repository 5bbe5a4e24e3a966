"""How ``any2cap build`` shows its progress: rich bars on a terminal, plain lines in a log.

Both take the :class:`any2capins.pipeline.progress.ProgressView` that ``run_build`` hands its progress
callback about twice a second (and once at the end).
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from any2capins.pipeline.progress import ProgressView, format_line, probe_figures, stage_figures

INTERVAL_ENV = "ANY2CAP_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 60.0


def interval_from_env() -> float:
    """Seconds between plain progress lines (ANY2CAP_PROGRESS_INTERVAL_S, default 60)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


class Display:
    """The callback's interface; the base class shows nothing (``--no-progress``)."""

    def update(self, view: ProgressView) -> None:
        del view

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class PlainLines(Display):
    """One line every ``interval_s`` seconds and a last one at the end (not on a TTY)."""

    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None) -> None:
        self.stream = stream
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        self._last = time.monotonic()

    def update(self, view: ProgressView) -> None:
        now = time.monotonic()
        if not view.finished and now - self._last < self.interval_s:
            return
        self._last = now
        stream = self.stream or sys.stderr
        stream.write(format_line(view) + "\n")
        stream.flush()


class Bars(Display):
    """Rich bars on a terminal: the probe, one per stage and the whole run."""

    def __init__(self, console: Console, stages: list[str]) -> None:
        self.progress = Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.probe = self.progress.add_task("probe", total=None, figures="starting")
        self.stages: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=None, figures="") for name in stages
        }
        self.overall = self.progress.add_task("overall", total=None, figures="")

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def update(self, view: ProgressView) -> None:
        self.progress.update(
            self.probe,
            total=view.sources_total,
            completed=view.sources_probed,
            figures=probe_figures(view),
        )
        for stage in [*view.stages, view.overall]:
            task = self.overall if stage is view.overall else self.stages.get(stage.name)
            if task is None:
                continue
            self.progress.update(
                task,
                total=stage.total,
                completed=stage.done if stage.total is None else min(stage.done, stage.total),
                figures=stage_figures(stage),
            )


def make_display(enabled: bool, console: Console, stages: list[str]) -> Display:
    if not enabled:
        return Display()
    if console.is_terminal:
        return Bars(console, stages)
    return PlainLines()
