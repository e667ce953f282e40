"""`llama ARGS` in a child process under an address-space and CPU-time limit (`resource.setrlimit`),
for the hostile-input cases that took the machine down before they were fixed: if one regresses,
the child is refused memory or killed, and the test fails instead of the machine.

Each case is a fork of one server process (this file run as a script, started on first use and
kept for the test session) that has imported the package and torch once: a case costs a fork and
the command's own work, not a fresh `python -m llama_cli` (which pays `import torch`, 2-4 s of CPU,
every time). The server never runs a torch operation, so no OpenMP thread pool exists when it
forks and the child can start its own. A wall-clock limit as well catches what waits without
using CPU (a FIFO opened for reading).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Run

# The address-space limit counts beyond what the server maps once the package and torch are imported
# (640 MB here; a CUDA build of torch maps more), so it means the same whatever torch's build. A
# run on the tiny model adds ~100 MB to that; 3 GB leaves room for a command's real work and
# refuses anything that would take the machine.
MEMORY_BYTES = 3 << 30
CPU_SECONDS = 60
WALL_SECONDS = 120

_server: subprocess.Popen[str] | None = None


def run_limited(
    *args: str | Path,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    memory_bytes: int = MEMORY_BYTES,
    cpu_seconds: int = CPU_SECONDS,
    wall_seconds: float = WALL_SECONDS,
) -> Run:
    """`llama ARGS` in a limited child with `input` on stdin and `env` over this process's
    environment, allowed `memory_bytes` of address space beyond the imported package's and
    `cpu_seconds` of CPU: its exit code (a negative signal number when killed: -SIGXCPU past the CPU
    limit, -SIGKILL past the wall-clock one) and what it wrote."""
    from conftest import Run

    server = _ensure_server()
    assert server.stdin is not None and server.stdout is not None
    with tempfile.TemporaryDirectory(prefix="llama-limited-") as tmp:
        folder = Path(tmp)
        stdin = folder / "stdin"
        stdin.write_bytes(input.encode() if isinstance(input, str) else (input or b""))
        request = {
            "argv": ["llama", *map(str, args)],
            # Two threads unless told: each thread adds its stack and a malloc arena (64 MB of address
            # space) to the process, so the limit holds alike on 2 cores and on 64. No GPU: the limits
            # are the host's, and CUDA reserves more address space when it starts than they allow.
            "env": {"LLAMA_THREADS": "2", **os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
            "cwd": os.getcwd(),
            "stdin": str(stdin),
            "stdout": str(folder / "stdout"),
            "stderr": str(folder / "stderr"),
            "memory": memory_bytes,
            "cpu": cpu_seconds,
        }
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        ready, _, _ = select.select([server.stdout], [], [], wall_seconds)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        status = int(server.stdout.readline())
        code = os.waitstatus_to_exitcode(status)
        return Run(
            code,
            (folder / "stdout").read_bytes().decode("utf-8", "replace"),
            (folder / "stderr").read_bytes().decode("utf-8", "replace"),
        )


def _ensure_server() -> subprocess.Popen[str]:
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
        )
    return _server


def _serve() -> None:
    """Read one request per line on stdin; for each, fork a limited child, answer its pid, then
    its wait status. Ends when stdin closes (the test session is over)."""
    import torch  # noqa: F401  (imported once here, so that each child only forks)

    import llama_cli.api  # what every command that loads a model imports
    import llama_cli.cli
    import llama_cli.progress

    llama_cli.progress.AFTER = 3600.0  # a load slowed past ~2 s by a busy machine would add a progress line to the one expected

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)


def _child(request: dict) -> None:  # type: ignore[type-arg]
    """In the forked child: limits, environment, files on fds 0-2, then `main()`; never returns."""
    code = 1
    try:
        limit = _mapped_bytes() + request["memory"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (request["cpu"], request["cpu"] + 5))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for fd, (path, flags) in enumerate(
            [(request["stdin"], os.O_RDONLY), (request["stdout"], os.O_WRONLY | os.O_CREAT), (request["stderr"], os.O_WRONLY | os.O_CREAT)]
        ):
            os.dup2(os.open(path, flags, 0o600), fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115  (the process's own streams)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.argv = request["argv"]
        from llama_cli import threads

        threads.take_snapshot()  # as a fresh process would at import: the cores busy from now on
        from llama_cli.cli import main

        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:  # noqa: BLE001  (whatever escaped main: shown as Python would, never lost)
        import traceback

        traceback.print_exc()  # as Python would print it: the test sees "Traceback"
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _mapped_bytes() -> int:
    """This process's address space now (VmSize)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


if __name__ == "__main__":
    _serve()
