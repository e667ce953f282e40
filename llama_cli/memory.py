"""Checking that an allocation fits before making it: a request for more memory than the machine
has is a usage error with the number that fits, not an OOM kill of the whole machine.

Torch-free: the device is passed as its type ("cpu", "cuda") and index.
"""

from __future__ import annotations

from .errors import UsageError

HEADROOM = 0.9  # share of the available memory one allocation may take (the rest: activations, the OS)


class MemoryLimitError(UsageError):
    """An allocation that cannot fit in the memory available."""


def available_bytes(device_type: str = "cpu", index: int | None = None) -> int | None:
    """Memory free for a new allocation on the device (None when unknown: the check is skipped)."""
    if device_type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())[0])
    return None


def gigabytes(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def check_fits(
    what: str, needed: int, *, per_unit: int = 0, unit: str = "", base: int = 0, device_type: str = "cpu", index: int | None = None
) -> None:
    """Raise MemoryLimitError when `needed` bytes for `what` exceed what is available; with
    `per_unit` (the bytes of one `unit`, e.g. one sequence, beyond `base` bytes), say how many units fit."""
    free = available_bytes(device_type, index)
    if free is None or needed <= free * HEADROOM:
        return
    message = f"{what} needs {gigabytes(needed)}, and {gigabytes(free)} is available"
    if per_unit and free * HEADROOM > base:
        message += f": at most {int((free * HEADROOM - base) // per_unit):,} {unit} fit"
    raise MemoryLimitError(message)
