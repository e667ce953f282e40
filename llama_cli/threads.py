"""How many CPU threads to use when the user does not say: the cores other work leaves free.

Every matmul, attention call and norm splits across threads that meet at a barrier, so one
thread that the OS has parked behind another process holds up all the others. On a 2-core
machine with one busy neighbour, 2 threads decode 10-20x slower than 1 (measured: the default
model 3.6 vs 67 tok/s; our kernels ~20 ms per call whatever its size at load 12). So the
default is the number of cores that were idle while this process started: CPU time the whole
machine spent, minus our own, over the same interval (`/proc/stat`), counted from a snapshot
taken when the package was imported (no extra waiting: importing torch takes a second or two).
Where /proc/stat is missing (macOS) or the interval is too short, the 1-minute load average
stands in. `--threads` / `$LLAMA_THREADS` override it; `threads_note()` says what was chosen.

No torch here: the package's `__init__` takes the snapshot before anything heavy is imported.
"""

from __future__ import annotations

import os
import time

MIN_INTERVAL = 0.2  # seconds of observation below which /proc/stat says too little
_snapshot: tuple[float, float, int, int] | None = None  # (wall, our CPU seconds, busy jiffies, total jiffies)
_chosen: str = ""


def _proc_stat() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as file:
            fields = file.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def take_snapshot() -> None:
    """Remember the machine's and this process's CPU time now (called when the package is imported)."""
    global _snapshot
    stat = _proc_stat()
    if stat is not None:
        _snapshot = (time.monotonic(), time.process_time(), *stat)


def busy_elsewhere(cores: int) -> float | None:
    """Cores kept busy by other processes since the snapshot, or by the load average; None if unknown."""
    stat = _proc_stat()
    if _snapshot is not None and stat is not None and time.monotonic() - _snapshot[0] >= MIN_INTERVAL:
        wall0, ours0, busy0, total0 = _snapshot
        total = stat[1] - total0
        if total > 0:
            machine_busy = (stat[0] - busy0) / total * cores  # cores' worth of work, ours included
            ours = (time.process_time() - ours0) / (time.monotonic() - wall0)
            return max(0.0, machine_busy - ours)
    try:
        return max(0.0, os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def default_threads(cores: int) -> int:
    """The cores other work leaves free (at least 1, at most `cores`)."""
    global _chosen
    busy = busy_elsewhere(cores)
    threads = cores if busy is None else max(1, min(cores, round(cores - busy)))
    _chosen = f"{threads} thread{'s' if threads != 1 else ''}" + (
        f" ({busy:.1f} of {cores} cores busy with other work)" if busy is not None and threads < cores else ""
    )
    return threads


def threads_note() -> str:
    """What `default_threads` chose and why, for --stats and bench ("" when the user chose)."""
    return _chosen
