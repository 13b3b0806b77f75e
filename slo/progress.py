"""Progress of long commands: a live bar on a terminal, and where output is not a terminal (CI,
logs, notebooks) a line at the start, one every ``every_s`` seconds and one at the end."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

#: Seconds between two progress lines when output is not a terminal.
LINE_EVERY_S = 10.0


class ProgressReport:
    """Reports the progress of one long piece of work on stderr.

    Parameters
    ----------
    description:
        What is being done ("benchmark runs", "simulating").
    total:
        Units of work in all (``None``: not known yet; :meth:`update` may give it later).
    unit:
        Name of a unit in the lines ("s" for simulated seconds; empty for a count).
    stream:
        Where to write (default: stderr); a bar is drawn only when it is a terminal.
    every_s:
        Seconds between two lines when the stream is not a terminal.
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        every_s: float = LINE_EVERY_S,
    ) -> None:
        from rich.console import Console

        self.description = description
        self.total = total
        self.done = 0.0
        self.unit = unit
        self.every_s = every_s
        self._console = Console(file=stream or sys.stderr)
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._bar = None
        self._task = None
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> ProgressReport:
        self._start = time.monotonic()
        if self._console.is_terminal:
            self._start_bar()
        else:
            self._line("started")
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
            return
        if self._ticker is not None:
            self._ticker.join()
        self._line("done" if kind is None else "stopped")

    def update(
        self, done: float, total: float | None = None, description: str | None = None
    ) -> None:
        """Record ``done`` units of work done (of ``total``, when it becomes known), of the
        work ``description`` names when it changes (e.g. from tuning to the runs)."""
        self.done = done
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(
                self._task, completed=done, total=self.total, description=self.description
            )

    def _start_bar(self) -> None:
        from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

        columns = [*Progress.get_default_columns()[:-1], TimeRemainingColumn()]
        if not self.unit:  # a count of items: show "done/total"
            columns.insert(-1, MofNCompleteColumn())
        self._bar = Progress(*columns, console=self._console, transient=True)
        self._task = self._bar.add_task(self.description, total=self.total)
        self._bar.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self._line()

    def _line(self, state: str = "") -> None:
        """``started``; ``3/60 (5%), 35 s elapsed``; ``done: 60/60 (100%) in 90 s``."""
        if state == "started":
            text = "started"
        else:
            unit = f" {self.unit}" if self.unit else ""
            amount = f"{self.done:g}{unit}"
            if self.total:
                amount = f"{self.done:g}/{self.total:g}{unit} ({100 * self.done / self.total:.0f}%)"
            elapsed = time.monotonic() - self._start
            text = f"{amount}, {elapsed:.0f} s elapsed"
            if state:
                text = f"{state}: {amount} in {elapsed:.0f} s"
        self._console.print(f"{self.description}: {text}", highlight=False, soft_wrap=True)
