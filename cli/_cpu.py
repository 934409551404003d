"""CPU defaults set before JAX starts, from measured causes of slow CPU training
(`shared/reference/perf-cpu.md`, and docs/training.md "Speed on the CPU").

- XLA:CPU's default library for dots and convolutions (YNNPACK) runs small training shapes
  slowly: `--xla_cpu_experimental_ynn_fusion_type=` (no YNN fusions) trained the Fashion-MNIST
  CNN 1.9x faster here, and no model slower. The flag is only added when the installed jaxlib
  knows it: XLA aborts the process on an unknown flag.
- glibc serves each step's large temporaries with mmap/munmap, so every step page-faults its
  buffers again; raising malloc's thresholds keeps them in the heap (1.16x on the same CNN,
  2.1x with the flag). glibc reads them only at process start, so `nnspec train` restarts
  itself once with them.

Either is skipped when the user already set it; `NNSPEC_CPU_DEFAULTS=0` turns both off.
"""

from __future__ import annotations

import glob
import importlib.util
import mmap
import os
import platform
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:"
                   "glibc.malloc.top_pad=268435456")
OPT_OUT = "NNSPEC_CPU_DEFAULTS"
_RESTARTED = "_NNSPEC_RESTARTED"


def enabled() -> bool:
    return os.environ.get(OPT_OUT, "1") != "0"


def jaxlib_knows(flag: str) -> bool:
    """Whether a shared library of the installed jaxlib contains the flag's name (XLA's flags
    are registered by name there; reading it maps the file, about 20 ms)."""
    found = importlib.util.find_spec("jaxlib")
    if found is None or not found.origin:
        return False
    name = flag.lstrip("-").split("=")[0].encode()
    folder = os.path.dirname(found.origin)
    for path in sorted(glob.glob(os.path.join(folder, "*.so")), key=os.path.getsize,
                       reverse=True)[:3]:
        try:
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def xla_flags(current: str) -> str | None:
    """XLA_FLAGS with the YNN flag added, or None to leave them as they are."""
    if not enabled() or "ynn_fusion_type" in current or not jaxlib_knows(YNN_FLAG):
        return None
    return f"{current} {YNN_FLAG}".strip()


def apply_xla_flags() -> None:
    """Add the CPU flag to XLA_FLAGS, unless JAX has started (then it is too late)."""
    if "jax" in sys.modules:
        return
    flags = xla_flags(os.environ.get("XLA_FLAGS", ""))
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags


def restart_with_malloc_tunables() -> None:
    """Replace this process by the same command line with glibc's malloc tunables set, once;
    returns when they are set already, off, or not applicable (not glibc)."""
    if (not enabled() or "GLIBC_TUNABLES" in os.environ or os.environ.get(_RESTARTED)
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES, _RESTARTED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The interpreter's own command line: the console script or `python -m nnspec`, with
        # any interpreter options, exactly as the user ran it.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # carry on without them
