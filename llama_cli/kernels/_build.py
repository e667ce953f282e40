"""Compile the C kernels once per (source, compiler, CPU) and load them with ctypes.

The library is plain C (no torch headers), so a build takes a second or two with the system
compiler: `cc -O3 -march=native -fopenmp -shared -fPIC`. It is cached under
`cache_root()/kernels/<hash>/libllk.so`, the hash covering the sources, the compiler and its
version, the flags and the CPU's feature flags; a different machine sharing the cache folder gets
its own build. The file is written under a temporary name and renamed into place, so two
processes building at once both end up loading a complete library.

Where no compiler exists or the build fails, `load()` raises KernelBuildError with one line that
says why; the caller falls back to dequantized torch matmuls.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).parent / "csrc"
LIB_NAME = "libllk.so"
# -ffp-contract=off: dequantization must round like numpy (see dequant.c); the SIMD kernels use
# explicit fused multiply-adds where they want them.
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC", "-ffp-contract=off",
         *os.environ.get("LLAMA_KERNELS_CFLAGS", "").split()]  # extra flags, for experiments
OPENMP = ["-fopenmp"]


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
    try:
        from ..paths import cache_root
    except ImportError:  # the weights package mid-change must not cost us the kernels
        return Path(os.environ.get("LLAMA_CACHE") or Path.home() / ".cache" / "llama").expanduser() / "kernels" / key
    return cache_root() / "kernels" / key


def _compile(cc: str, target: Path) -> None:
    """Build into a temporary file beside `target`, then rename it into place."""
    sources = [str(p) for p in sorted(SOURCE_DIR.glob("*.c"))]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=target.parent)
    os.close(fd)
    errors = ""
    try:
        # Without OpenMP (a compiler lacking libgomp/libomp) the kernels still work, on one thread.
        for extra in (OPENMP, []):
            result = subprocess.run([cc, *FLAGS, *extra, "-o", tmp, *sources, "-lm"],
                                    capture_output=True, text=True, timeout=300, check=False)
            if result.returncode == 0:
                os.replace(tmp, target)
                return
            errors = result.stderr.strip().splitlines()
        first = next((line for line in errors if "error" in line), errors[0] if errors else "")
        raise KernelBuildError(f"the C kernels failed to compile: {first}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"the C kernels failed to compile: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL:
    """The compiled library, built first if this (source, compiler, CPU) has no cached build.

    torch must be imported first: the library then binds to torch's libgomp (same soname) and
    shares its thread pool instead of starting a second OpenMP runtime.
    """
    import torch  # noqa: F401  (see the docstring)

    cc = _compiler()
    key = _build_key(cc)
    target = _cache_dir(key) / LIB_NAME
    if not target.exists():
        try:
            _compile(cc, target)
        except OSError:  # unwritable cache: build into a private temporary folder
            target = Path(tempfile.mkdtemp(prefix="llama-kernels-")) / LIB_NAME
            _compile(cc, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {target}: {exc}") from exc
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.llk_linear.argtypes = [cint, ptr, i64, i64, ptr, i64, i64, ptr, cint, cint]
    lib.llk_linear.restype = cint
    lib.llk_dequant.argtypes = [cint, ptr, i64, i64, ptr, i64, ptr, cint]
    lib.llk_dequant.restype = cint
    lib.llk_dequant_bf16.argtypes = [cint, ptr, i64, i64, i64, i64, ptr, cint]
    lib.llk_dequant_bf16.restype = cint
    lib.llk_isa.argtypes = []
    lib.llk_isa.restype = ctypes.c_char_p
    lib.llk_has_simd.argtypes = [cint]
    lib.llk_has_simd.restype = cint
