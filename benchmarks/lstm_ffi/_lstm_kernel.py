"""Builds, caches and registers the fused LSTM recurrence kernel (`_lstm_kernel.cc`).

The kernel is compiled on first use with the machine's C++ compiler against the XLA FFI
headers shipped in jaxlib (`jax.ffi.include_dir()`), and calls the OpenBLAS that numpy
bundles (found in numpy.libs, bound by name at load time), so nothing is needed at install
time. The shared library is cached under `$NNSPEC_KERNEL_CACHE` (default
`~/.cache/nnspec/kernels`), keyed by the source, the compiler flags, jaxlib's version and the
CPU's feature flags (it is built with -march=native); it is written to a temporary name and
renamed, so concurrent builders never see half a file.

`available()` is False, and the LSTM layer runs its plain XLA formulation, when there is no
compiler, no bundled ILP64 OpenBLAS, the build or the load fails, the platform is not Linux,
or `NNSPEC_LSTM_KERNEL=0` is set.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("_lstm_kernel.cc")
FORWARD, BACKWARD = "nnspec_lstm_forward", "nnspec_lstm_backward"
SGEMM, LOCAL_THREADS = "scipy_cblas_sgemm64_", "openblas_set_num_threads_local"
COMPILE = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c++17"]
# Linked without -ffast-math: GCC < 13 would link crtfastmath.o, which turns on flush-to-zero
# for the whole process when the library loads.
LINK = ["-shared", "-pthread"]
OPT_OUT = "NNSPEC_LSTM_KERNEL"

_STATE: dict[str, Any] = {}


def openblas() -> str | None:
    """numpy's bundled ILP64 OpenBLAS (scipy-openblas64), or None."""
    import numpy as np

    folder = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(glob.glob(str(folder / "libscipy_openblas64_*.so")))
    return found[0] if found else None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _key(compiler: str) -> str:
    import jaxlib

    h = hashlib.sha256(SOURCE.read_bytes())
    for part in (compiler, *COMPILE, *LINK, jaxlib.__version__, platform.machine(), _cpu_flags()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("NNSPEC_KERNEL_CACHE")
                or Path.home() / ".cache" / "nnspec" / "kernels")


def build() -> Path:
    """The compiled kernel library, built into the cache if missing; raises RuntimeError with
    the compiler's message when it cannot be built."""
    import jax

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler (g++ or c++ on PATH, or $CXX)")
    target = cache_dir() / f"lstm-{_key(compiler)}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "lstm.o", Path(tmp) / "lstm.so"
        for cmd in ([compiler, *COMPILE, "-I", jax.ffi.include_dir(), "-c", str(SOURCE),
                     "-o", str(obj)], [compiler, *LINK, str(obj), "-o", str(lib), "-ldl"]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"building {SOURCE.name} failed: {' '.join(cmd)}\n"
                                   f"{proc.stderr[-2000:]}")
        os.replace(lib, target)
    return target


def available() -> bool:
    """Whether the fused kernel is built, bound to a BLAS and registered with XLA (tried once
    per process; the reason it is not is in `reason()`)."""
    if "ok" not in _STATE:
        try:
            _STATE["ok"] = _load()
        except Exception as e:  # noqa: BLE001 - any failure means: use the XLA formulation
            _STATE["ok"], _STATE["reason"] = False, f"{type(e).__name__}: {e}"
    return _STATE["ok"]


def reason() -> str | None:
    """Why the kernel is not available (None when it is, or before `available()`)."""
    return _STATE.get("reason")


def _load() -> bool:
    if os.environ.get(OPT_OUT, "1") == "0":
        _STATE["reason"] = f"{OPT_OUT}=0"
        return False
    if not sys.platform.startswith("linux"):
        _STATE["reason"] = f"platform {sys.platform}: the kernel is built for Linux only"
        return False
    blas = openblas()
    if blas is None:
        _STATE["reason"] = "numpy has no bundled ILP64 OpenBLAS (numpy.libs)"
        return False
    import jax

    lib = ctypes.CDLL(str(build()))
    lib.nnspec_lstm_bind.restype = ctypes.c_int
    if lib.nnspec_lstm_bind(blas.encode(), SGEMM.encode(), LOCAL_THREADS.encode()):
        _STATE["reason"] = f"{blas} lacks {SGEMM} or {LOCAL_THREADS}"
        return False
    _STATE["lib"] = lib  # keep it loaded
    jax.ffi.register_ffi_target(FORWARD, jax.ffi.pycapsule(lib.NnspecLstmForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(BACKWARD, jax.ffi.pycapsule(lib.NnspecLstmBackward),
                                platform="cpu")
    return True


def threads(batch: int) -> int:
    """Row blocks per call: one per usable core, at least 32 rows each, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, batch // 32, 8))
