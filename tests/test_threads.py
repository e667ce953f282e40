"""The default thread count: the cores other work leaves free (threads.py). No timings here."""

from __future__ import annotations

import pytest

from llama_cli import threads


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fake clock, process CPU time and /proc/stat: set `state` to what the next reading sees."""
    state = {"wall": 100.0, "ours": 5.0, "busy": 0, "total": 0, "proc": True, "load": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: state["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: state["ours"])
    monkeypatch.setattr(threads, "_proc_stat", lambda: (state["busy"], state["total"]) if state["proc"] else None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    threads.take_snapshot()
    return state


def advance(state: dict, *, seconds: float, others_busy: float, ours_busy: float, cores: int = 2) -> None:  # type: ignore[type-arg]
    jiffies = 100 * seconds * cores  # 100 jiffies per second per core
    state["wall"] += seconds
    state["ours"] += ours_busy * seconds
    state["total"] += jiffies
    state["busy"] += (others_busy + ours_busy) / cores * jiffies


@pytest.mark.parametrize(("others", "expected"), [(0.0, 2), (0.3, 2), (1.0, 1), (1.9, 1), (6.0, 1)])
def test_threads_leave_busy_cores_alone(machine, others: float, expected: int) -> None:  # type: ignore[no-untyped-def]
    advance(machine, seconds=2.0, others_busy=min(others, 2.0), ours_busy=0.0 if others >= 2 else min(1.0, 2.0 - others))
    assert threads.default_threads(2) == expected
    assert ("busy with other work" in threads.threads_note()) == (expected < 2)


def test_our_own_start_up_work_does_not_count(machine) -> None:  # type: ignore[no-untyped-def]
    advance(machine, seconds=1.5, others_busy=0.0, ours_busy=1.0)  # importing torch keeps one core busy
    assert threads.default_threads(2) == 2


def test_load_average_stands_in_without_proc_stat_or_time(machine) -> None:  # type: ignore[no-untyped-def]
    machine["proc"] = False
    machine["load"] = 3.0
    assert threads.default_threads(4) == 1
    machine["proc"], machine["load"] = True, 0.2
    advance(machine, seconds=0.05, others_busy=2.0, ours_busy=0.0)  # too short an interval to trust
    assert threads.default_threads(4) == 4


def test_the_user_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llama_cli.api import set_threads

    monkeypatch.setattr(threads, "default_threads", lambda cores: pytest.fail("the default was consulted"))
    set_threads(1)
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("LLAMA_THREADS", "2")
    set_threads(None)
    assert torch.get_num_threads() == 2
