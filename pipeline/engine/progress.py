"""Live progress for long stages: count, rate, ETA and the current loss where there is one.

    bar = progress.track("pretrain", total=300, unit="steps")
    bar.update(completed=40, loss=3.91)   # or bar.update(5) to advance by 5
    bar.close()                           # also as a context manager

Where it shows:
- on a terminal (stderr is a TTY): a rich bar, redrawn in place;
- elsewhere (CI, a Prefect worker, a log file): one line per interval, e.g.
  ``pretrain: 40/300 steps 13% | 2.10 steps/s | eta 2m04s | loss 3.9100``.
Either way every such line goes to the ``dapt`` logger at INFO (once per interval and once at
the end), so Prefect's run logs carry it; on a terminal those records carry
``dapt_progress=True`` so a console handler can leave them to the bar (``flows.cli`` does).

``DAPT_PROGRESS`` = ``bars`` | ``lines`` | ``off`` overrides the choice;
``DAPT_PROGRESS_INTERVAL_S`` sets the interval (default 10 s; 0: a line per update).
No Prefect import here: stages call this, and the flow's logging picks the lines up.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger("dapt")
DEFAULT_INTERVAL_S = 10.0
_lock = threading.Lock()
_shared: dict[str, Any] = {"progress": None, "open": 0}  # one rich display for all bars


def mode() -> str:
    chosen = os.environ.get("DAPT_PROGRESS", "").strip().lower()
    if chosen in ("bars", "lines", "off"):
        return chosen
    return "bars" if sys.stderr.isatty() else "lines"


def interval_s() -> float:
    try:
        return max(0.0, float(os.environ.get("DAPT_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _field(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{name} {value:.4f}" if abs(value) < 1000 else f"{name} {value:,.0f}"
    return f"{name} {value}"


class Bar:
    """One task's progress; thread-safe (ingest shards finish on several threads)."""

    def __init__(self, label: str, total: int | None, unit: str, *, shown: str | None = None,
                 every_s: float | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.completed, self.fields = 0, {}
        self.mode = shown or mode()
        self.every_s = interval_s() if every_s is None else every_s
        self.started = self.last_line = time.monotonic()
        self.first: int | None = None  # the count when the first update came (a resumed run)
        self.closed = False
        self._task = None
        if self.mode == "bars":
            self._task = _open_bar(label, total, unit)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        done = self.completed - (self.first or 0)
        return done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``label: done/total unit pct | rate | eta | fields``."""
        count = (f"{self.completed}/{self.total} {self.unit} "
                 f"{self.completed / self.total:.0%}" if self.total else
                 f"{self.completed} {self.unit}")
        rate = self.rate()
        shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.2f}"
        parts = [f"{self.label}: {count}"] + ([f"{shown} {self.unit}/s"] if rate else [])
        if self.total and not self.closed and rate > 0:  # the final line says what it took
            parts.append(f"eta {_duration((self.total - self.completed) / rate)}")
        elif self.closed:
            parts.append(f"took {_duration(time.monotonic() - self.started)}")
        parts += [_field(k, v) for k, v in self.fields.items()]
        return " | ".join(parts)

    def update(self, advance: int = 1, *, completed: int | None = None, **fields: Any) -> None:
        """Advance by ``advance`` (or jump to ``completed``); ``fields`` (loss=...) are shown
        with the latest value."""
        with _lock:
            if self.first is None:
                self.first = 0
                if completed is not None:  # counted elsewhere (a training log, a resumed run):
                    self.first, self.started = completed, time.monotonic()  # rate from here
            self.completed = completed if completed is not None else self.completed + advance
            self.fields.update(fields)
            if self._task is not None:
                _shared["progress"].update(
                    self._task, completed=self.completed,
                    rate=f"{self.rate():,.2f} {self.unit}/s",
                    info=" ".join(_field(k, v) for k, v in self.fields.items()))
            now = time.monotonic()
            finished = self.total is not None and self.completed >= self.total
            if self.mode != "off" and now - self.last_line >= self.every_s and not finished:
                self.last_line = now
                self._emit()

    def close(self) -> None:
        with _lock:
            if self.closed:
                return
            self.closed = True
            if self.mode != "off":
                self._emit()
            if self._task is not None:
                _close_bar(self._task)

    def _emit(self) -> None:
        log.info(self.line(), extra={"dapt_progress": self.mode == "bars"})


def _open_bar(label: str, total: int | None, unit: str) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if _shared["progress"] is None:
        _shared["progress"] = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(file=sys.stderr), transient=False, refresh_per_second=4)
        _shared["progress"].start()
    _shared["open"] += 1
    return _shared["progress"].add_task(label, total=total, unit=unit, info="", rate="")


def _close_bar(task: Any) -> None:
    progress = _shared["progress"]
    progress.update(task, completed=progress.tasks[task].completed)
    _shared["open"] -= 1
    if _shared["open"] == 0:
        progress.stop()
        _shared["progress"] = None


def track(label: str, total: int | None, unit: str = "items") -> Bar:
    """A progress bar for ``total`` ``unit`` (None: unknown total, no ETA)."""
    return Bar(label, total, unit)
