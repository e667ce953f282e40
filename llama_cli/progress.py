"""Progress for long waits, on stderr: nothing for a short wait; once one has lasted `after`
seconds (~2 s), a bar on a terminal, one line otherwise.

A wait is a `with reporter.wait("prefill", total=3000, unit="tokens") as wait:` block that calls
`wait.advance(n)` as work completes. A timer thread shows the progress when the wait passes the
threshold, so a wait that is one long call (a single prefill pass, a compiler run) shows too;
otherwise the thread only sleeps, so a short wait costs one thread start and prints nothing.
Nothing goes to stdout. rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

AFTER = 2.0  # seconds a wait may last before it is shown
_BARS = threading.Semaphore(1)  # one bar on screen: a wait inside another (compiling while loading) leaves the outer's moving


class Wait:
    """One wait; use as a context manager (see the module docstring)."""

    def __init__(self, reporter: Reporter, what: str, total: int | None, unit: str) -> None:
        self.reporter, self.what, self.total, self.unit = reporter, what, total, unit
        self.done = 0
        self.started = 0.0  # time.monotonic() when the wait began
        self.shown = threading.Event()  # set once the wait is on screen
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._timer: threading.Thread | None = None
        self._bar: Any = None  # rich.progress.Progress, on a terminal once shown
        self._task: Any = None

    def __enter__(self) -> Wait:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        self.started = time.monotonic()
        if self.reporter.after <= 0:
            self._show()
        else:
            self._timer = threading.Thread(target=self._show_after, name="llama-progress", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._finished.set()
        if self._timer is not None:
            self._timer.join()
        with self._lock:
            if self._bar is not None:
                self._bar.stop()  # transient: the bar leaves no line behind
                self._bar = None
                _BARS.release()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)

    def _show_after(self) -> None:
        if not self._finished.wait(self.reporter.after):
            self._show()

    def _show(self) -> None:
        with self._lock:
            if self._finished.is_set():
                return
            self.shown.set()
            if self.reporter.terminal:
                if _BARS.acquire(blocking=False):
                    try:
                        self._start_bar()
                    except BaseException:
                        self._bar = None
                        _BARS.release()
                        raise
            else:
                print(f"llama: {self.describe()} ...", file=self.reporter.stream, flush=True)

    def describe(self) -> str:
        """`prefill: 3,000 tokens`, or the bare `what` when the wait has no count."""
        return self.what if self.total is None else f"{self.what}: {self.total:,} {self.unit}".rstrip()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        counted = self.total is not None
        count = (BarColumn(), MofNCompleteColumn(), TextColumn(self.unit)) if counted else (SpinnerColumn(),)
        columns = [TextColumn("llama: {task.description}"), *count]
        self._bar = Progress(
            *columns,
            TimeElapsedColumn(),
            console=Console(file=self.reporter.stream, force_terminal=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task(self.what if counted else self.describe(), total=self.total, completed=self.done)
        for task in self._bar.tasks:  # the elapsed time counts from the start of the wait, not from when the bar appears
            task.start_time = self.started
        self._bar.start()


class Reporter:
    """Where and when waits are shown: `stream` (default stderr), `terminal` (default: whether
    that stream is one; a bar if so, a line if not), `after` (seconds before a wait shows, default
    AFTER; 0 shows every wait at once)."""

    def __init__(self, *, after: float | None = None, stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.after = AFTER if after is None else after
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = terminal if terminal is not None else _isatty(self.stream)

    def wait(self, what: str, total: int | None = None, unit: str = "") -> Wait:
        return Wait(self, what, total, unit)


class _Silent:
    """A wait nobody watches (the library's default: the CLI passes a Reporter)."""

    def __enter__(self) -> _Silent:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: int) -> None:
        return None


SILENT = _Silent()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False
