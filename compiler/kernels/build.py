"""Builds, caches and loads the native kernels of this folder (C++ sources called through
`jax.ffi`).

A kernel is compiled on first use with the machine's C++ compiler against the XLA FFI headers
that jaxlib ships (`jax.ffi.include_dir()`), and calls the OpenBLAS that numpy bundles (found
in numpy.libs and bound by name at load time), so nothing is needed at install time and no MKL.
The shared library is cached under `$NNSPEC_KERNEL_CACHE` (default
`$XDG_CACHE_HOME/nnspec/kernels`, else `~/.cache/nnspec/kernels`), keyed by the source, the
compiler (its path and `--version`), the flags, jaxlib's version and the CPU's feature flags (it
is built with -march=native). It is written under a temporary name and renamed, so concurrent
builders never see half a file.

The compiler is `$NNSPEC_CXX`, else `$CXX`, else `g++` or `c++` on PATH. `load()` raises
`KernelUnavailable` with the reason (no compiler, the build failed, no bundled OpenBLAS, not
Linux); callers then run their plain XLA formulation.
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

HERE = Path(__file__).resolve().parent
SGEMM, LOCAL_THREADS = "scipy_cblas_sgemm64_", "openblas_set_num_threads_local"
COMPILE = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c++17"]
# Linked without -ffast-math: GCC < 13 would link crtfastmath.o, which turns on flush-to-zero
# for the whole process when the library loads.
LINK = ["-shared", "-pthread"]

_LOADED: dict[str, Any] = {}


class KernelUnavailable(RuntimeError):
    """A native kernel cannot be used here; the message says why."""


def openblas() -> str | None:
    """numpy's bundled ILP64 OpenBLAS (scipy-openblas64), or None."""
    import numpy as np

    folder = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(glob.glob(str(folder / "libscipy_openblas64_*.so")))
    return found[0] if found else None


def compiler() -> str:
    """The C++ compiler to build with; raises KernelUnavailable when there is none."""
    named = os.environ.get("NNSPEC_CXX") or os.environ.get("CXX")
    found = shutil.which(named) if named else shutil.which("g++") or shutil.which("c++")
    if not found:
        raise KernelUnavailable(f"no C++ compiler: {named!r} (from $NNSPEC_CXX/$CXX) not found"
                                if named else "no C++ compiler (g++ or c++ on PATH)")
    return found


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _key(source: Path, cxx: str, ffi: bool = True) -> str:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"C++ compiler {cxx} does not run: {e}") from e
    h = hashlib.sha256(source.read_bytes())
    if ffi:  # built against jaxlib's FFI headers
        import jaxlib

        h.update(jaxlib.__version__.encode() + b"\0")
    for part in (cxx, *version, *COMPILE, *LINK, platform.machine(), _cpu_flags()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("NNSPEC_KERNEL_CACHE"):
        return Path(os.environ["NNSPEC_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnspec" / "kernels"


def build(name: str, ffi: bool = True) -> Path:
    """The compiled library of `<name>.cc`, built into the cache if it is not there yet
    (`ffi=False`: plain C, not against jaxlib's FFI headers, and JAX is not imported)."""
    source = HERE / f"{name}.cc"
    cxx = compiler()
    target = cache_dir() / f"{name}-{_key(source, cxx, ffi)}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
            include = []
            if ffi:
                import jax

                include = ["-I", jax.ffi.include_dir()]
            for cmd in ([cxx, *COMPILE, *include, "-c", str(source), "-o", str(obj)],
                        [cxx, *LINK, str(obj), "-o", str(lib), "-ldl"]):
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if proc.returncode:
                    raise KernelUnavailable(f"building {source.name} failed: {' '.join(cmd)}\n"
                                            f"{proc.stderr[-2000:]}")
            os.replace(lib, target)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"building {source.name} failed: {e}") from e
    return target


def load(name: str, plain: bool = False) -> ctypes.CDLL:
    """`<name>.cc` built, loaded and bound to numpy's OpenBLAS (once per process);
    `plain=True`: a plain C library, built without the FFI headers (JAX not imported) and
    bound to nothing."""
    if name in _LOADED:
        return _LOADED[name]
    if not sys.platform.startswith("linux"):
        raise KernelUnavailable(f"platform {sys.platform}: the kernels are built for Linux only")
    blas = None if plain else openblas()
    if blas is None and not plain:
        raise KernelUnavailable("numpy has no bundled ILP64 OpenBLAS (numpy.libs)")
    try:
        lib = ctypes.CDLL(str(build(name, ffi=not plain)))
    except OSError as e:  # a cached library this machine cannot load
        raise KernelUnavailable(f"loading {name} failed: {e}") from e
    if blas is not None:
        lib.nnspec_bind_blas.restype = ctypes.c_int
        if lib.nnspec_bind_blas(blas.encode(), SGEMM.encode(), LOCAL_THREADS.encode()):
            raise KernelUnavailable(f"{blas} lacks {SGEMM} or {LOCAL_THREADS}")
    _LOADED[name] = lib  # kept loaded for the process
    return lib


def threads(batch: int) -> int:
    """Row blocks per kernel call: one per usable core, at least 32 rows each, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, batch // 32, 8))
