"""Compile the C kernels once per (source, compiler, CPU) and load them with ctypes.

Two kinds of library, cached under `cache_root()/kernels/<hash>/`, the hash covering the sources,
the compiler and its version, the flags and the CPU's feature flags (a different machine sharing
the cache folder gets its own builds):
- `libllk.so`, the core: every file but simd.c (the matmul driver, dequantization, the bfloat16
  tiles, the layer kernels), each file compiled in its own process, then linked;
- `libllk-<TYPE>.so`, one per tensor type: simd.c's int8 kernel for that type alone (-DLLK_TYPE).
  A model builds only the types it holds: the 1B Q4_K_M file needs Q4_K and Q6_K, 2 of the 14.
`build()` compiles everything missing in parallel, one compiler process per file, then links the
core. Plain C (no torch headers), `cc -O3 -march=native -fopenmp`. Each library is written under a
temporary name and renamed into place, so two processes building at once both end up loading
complete libraries.

Where no compiler exists or the build fails, `load()` raises KernelBuildError with one line that
says why; the caller falls back to dequantized torch matmuls.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..progress import Reporter

SOURCE_DIR = Path(__file__).parent / "csrc"
LIB_NAME = "libllk.so"
PER_TYPE_SOURCE = "simd.c"  # built once per tensor type, into libllk-<TYPE>.so
# -ffp-contract=off: dequantization must round like numpy (see dequant.c); the SIMD kernels use
# explicit fused multiply-adds where they want them.
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-ffp-contract=off", *os.environ.get("LLAMA_KERNELS_CFLAGS", "").split()]
OPENMP = ["-fopenmp"]
TIMEOUT = 300  # seconds for any one compiler process


class KernelBuildError(RuntimeError):
    """The C kernels cannot be built or loaded on this machine."""


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate) or candidate
    raise KernelBuildError("no C compiler found (set CC, or install gcc)")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_key(cc: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        if path.suffix in (".c", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"cannot run the C compiler {cc}: {exc}") from exc
    for part in (cc, version, " ".join(FLAGS + OPENMP), _cpu_flags()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _cache_dir(key: str) -> Path:
    from ..paths import cache_root

    return cache_root() / "kernels" / key


def type_lib_name(qtype: str) -> str:
    return f"libllk-{qtype}.so"


class _Builder:
    """The missing libraries of one build folder, compiled by parallel compiler processes."""

    def __init__(self, cc: str, folder: Path) -> None:
        self.cc, self.folder = cc, folder

    def build(self, core: bool, types: dict[str, int]) -> None:
        """Build the core library (if `core`) and the per-type libraries of `types` (name -> ggml id).

        The core is compiled with OpenMP, and again without it (one thread) if that fails: a
        compiler without libgomp/libomp. simd.c has no parallel loops: llk_linear shares out the rows."""
        self.folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder))
        try:
            try:
                self._build_in(scratch, core, types, OPENMP)
            except KernelBuildError:
                if not core:
                    raise
                self._build_in(scratch, core, types, [])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _build_in(self, scratch: Path, core: bool, types: dict[str, int], openmp: list[str]) -> None:
        commands, objects = [], []
        if core:
            for source in sorted(SOURCE_DIR.glob("*.c")):
                if source.name != PER_TYPE_SOURCE:
                    objects.append(scratch / (source.stem + ".o"))
                    commands.append([self.cc, *FLAGS, *openmp, "-c", str(source), "-o", str(objects[-1])])
        for qtype, tid in types.items():
            source = str(SOURCE_DIR / PER_TYPE_SOURCE)
            commands.append([self.cc, *FLAGS, "-shared", f"-DLLK_TYPE={tid}", source, "-o", str(scratch / type_lib_name(qtype)), "-lm"])
        self._run_all(commands)
        if core:
            self._run_all([[self.cc, *FLAGS, *openmp, "-shared", *map(str, objects), "-o", str(scratch / LIB_NAME), "-lm"]])
            os.replace(scratch / LIB_NAME, self.folder / LIB_NAME)
        for qtype in types:
            os.replace(scratch / type_lib_name(qtype), self.folder / type_lib_name(qtype))

    @staticmethod
    def _run_all(commands: list[list[str]]) -> None:
        """Run every command at once; raise KernelBuildError with the first error line of the first failure."""
        try:
            running = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
        except OSError as exc:
            raise KernelBuildError(f"the C kernels failed to compile: {exc}") from exc
        failure = ""
        for process in running:
            try:
                _, errors = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                errors, process.returncode = "the compiler timed out", 1
            if process.returncode and not failure:
                lines = errors.strip().splitlines()
                failure = next((line for line in lines if "error" in line), lines[0] if lines else "exit status " + str(process.returncode))
        if failure:
            raise KernelBuildError(f"the C kernels failed to compile: {failure}")


def _describe(types: list[str], core: bool) -> str:
    """What a build compiles, for the progress shown when it lasts more than a couple of seconds."""
    what = ", ".join((["the core"] if core else []) + types)
    return f"compiling the C kernels for this CPU ({what}); once per machine"


def load(types: dict[str, int] | None = None) -> tuple[ctypes.CDLL, dict[str, ctypes.CDLL]]:
    """The core library and the per-type libraries of `types` (name -> ggml id), building what is missing.

    torch must be imported first: the core then binds to torch's libgomp (same soname) and shares
    its thread pool instead of starting a second OpenMP runtime.
    """
    import torch  # noqa: F401  (see the docstring)

    types = types or {}
    cc = _compiler()
    folder = _cache_dir(_build_key(cc))
    absent = [name for name in (LIB_NAME, *map(type_lib_name, types)) if not (folder / name).exists()]
    with _one_builder(folder, absent):  # processes starting together (test workers, scripts) build each library once
        core_missing = not (folder / LIB_NAME).exists()
        missing = {name: tid for name, tid in types.items() if not (folder / type_lib_name(name)).exists()}
        if core_missing or missing:
            with Reporter().wait(_describe(sorted(missing), core_missing)):
                try:
                    _Builder(cc, folder).build(core_missing, missing)
                except OSError:  # unwritable cache: build everything into a private temporary folder
                    folder = Path(tempfile.mkdtemp(prefix="llama-kernels-"))
                    _Builder(cc, folder).build(True, types)
    core = _open(folder / LIB_NAME)
    _declare(core)
    per_type = {}
    for name in types:
        lib = _open(folder / type_lib_name(name))
        lib.llk_simd_kernel.argtypes = [ctypes.c_int]
        lib.llk_simd_kernel.restype = ctypes.c_void_p
        per_type[name] = lib
    return core, per_type


@contextlib.contextmanager
def _one_builder(folder: Path, libraries: list[str]) -> Iterator[None]:
    """Hold the lock file of each library in `libraries` (those found missing) while checking for
    them again and building what is still missing: a process that wants a library another is
    building waits for it; processes that want different ones build at once. Where the locks
    cannot be made (an unwritable cache, no fcntl), go on without them."""
    with contextlib.ExitStack() as held:  # closing each lock file releases its lock
        try:
            _lock_all(held, folder, sorted(libraries))  # one order for every process: no deadlock
        except (ImportError, OSError):
            held.close()
        yield


def _lock_all(held: contextlib.ExitStack, folder: Path, names: list[str]) -> None:
    import fcntl

    if names:
        folder.mkdir(parents=True, exist_ok=True)
    files = [held.enter_context(open(folder / f".{name}.lock", "a")) for name in names]  # noqa: SIM115 (held closes them)
    with contextlib.ExitStack() as waiting:  # the message lasts while this process waits, not while it builds
        told = False
        for file in files:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    waiting.enter_context(Reporter().wait("waiting for another llama process compiling the C kernels"))
                    told = True
                fcntl.flock(file, fcntl.LOCK_EX)


def _open(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {path}: {exc}") from exc


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.llk_linear.argtypes = [cint, ptr, i64, i64, ptr, i64, i64, ptr, cint, ptr]
    lib.llk_linear.restype = cint
    lib.llk_dequant.argtypes = [cint, ptr, i64, i64, ptr, i64, ptr, cint]
    lib.llk_dequant.restype = cint
    lib.llk_dequant_bf16.argtypes = [cint, ptr, i64, i64, i64, i64, ptr, cint]
    lib.llk_dequant_bf16.restype = cint
    lib.llk_isa.argtypes = []
    lib.llk_isa.restype = ctypes.c_char_p
    # attention.c, rows.c: the rest of a short pass's layer (layer_ops.py)
    lib.llk_attend.argtypes = [
        i64,
        i64,
        cint,
        cint,
        cint,
        ptr,
        i64,
        i64,
        ptr,
        ptr,
        i64,
        i64,
        ptr,
        ptr,
        ptr,
        ptr,
        i64,
        i64,
        i64,
        ptr,
        ptr,
        ptr,
        cint,
    ]
    lib.llk_attend.restype = cint
    lib.llk_rmsnorm.argtypes = [ptr, i64, i64, i64, ptr, ctypes.c_float, ptr, cint]
    lib.llk_rmsnorm.restype = None
    lib.llk_swiglu.argtypes = [ptr, ptr, i64, i64, i64, ptr, cint]
    lib.llk_swiglu.restype = None
