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
    """Memory free for a new allocation on the device (None when unknown: the check is skipped).
    On the CPU, the lesser of the machine's available memory and what this process's address-space
    limit (`ulimit -v`, RLIMIT_AS) leaves: past that limit an allocation fails however much the
    machine has free."""
    if device_type == "cpu":
        known = [n for n in (_proc_kilobytes("/proc/meminfo", "MemAvailable:"), _address_space_left()) if n is not None]
        return min(known) if known else None
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())[0])
    return None


def _proc_kilobytes(path: str, field: str) -> int | None:
    """A `field: N kB` line of a /proc file, in bytes (None without /proc: macOS)."""
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_left() -> int | None:
    """Bytes of address space this process may still map under RLIMIT_AS (None when unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    mapped = _proc_kilobytes("/proc/self/status", "VmSize:")
    if limit == resource.RLIM_INFINITY or mapped is None:
        return None
    return max(0, limit - mapped)


def gigabytes(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def check_fits(
    what: str, needed: int, *, per_unit: int = 0, unit: str = "", base: int = 0, device_type: str = "cpu", index: int | None = None
) -> None:
    """Raise MemoryLimitError when `needed` bytes for `what` exceed what is available; with
    `per_unit` (the bytes of one `unit`, e.g. one sequence, beyond `base` bytes), say how many units fit.
    `what` may name settings by field (`{batch_size}`: errors.LlamaError.naming)."""
    free = available_bytes(device_type, index)
    if free is None or needed <= free * HEADROOM:
        return
    message = f"{what} needs {gigabytes(needed)}, and {gigabytes(free)} is available"
    if per_unit and free * HEADROOM > base:
        message += f": at most {int((free * HEADROOM - base) // per_unit):,} {unit} fit"
    raise MemoryLimitError.naming(message)
