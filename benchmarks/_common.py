"""Helpers shared by the benchmark scripts: paths, the machine and versions, JSON, tables.

Imports nothing heavy (no JAX): `validate_speed.py` uses it in the parent process too.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BENCHMARKS = ROOT / "benchmarks"

# perf-cpu.md, causes 2 and 3: the allocator setting and "no YNN fusions". A benchmark either
# applies them to every contender (they share the process, or get the same environment) or to
# none; `tuned_env()` is what `--tuned-env` puts in place before JAX is imported.
TUNED_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold="
                      "4294967296:glibc.malloc.top_pad=268435456",
    "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=",
}
ENV_KEYS = ("GLIBC_TUNABLES", "XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS")


def tuned_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with TUNED_ENV applied; XLA flags the user
    already set are kept."""
    env = dict(os.environ if base is None else base)
    env["GLIBC_TUNABLES"] = TUNED_ENV["GLIBC_TUNABLES"]
    flags = env.get("XLA_FLAGS", "")
    if "ynn_fusion_type" not in flags:
        env["XLA_FLAGS"] = f"{flags} {TUNED_ENV['XLA_FLAGS']}".strip()
    return env


def reexec_tuned(argv: Sequence[str]) -> None:
    """Restart this script with the tuned environment, unless it already has it (the allocator
    setting only takes effect when the process starts)."""
    if os.environ.get("NNSPEC_BENCH_TUNED") == "1":
        return
    env = tuned_env()
    env["NNSPEC_BENCH_TUNED"] = "1"
    os.execve(sys.executable, [sys.executable, *argv], env)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Date, machine and versions, for the JSON and the README's results table."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": len(cpus) if cpus else os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("nnspec", "jax", "jaxlib", "flax", "optax",
                                              "numpy", "onnx", "onnxruntime")},
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_json(path: str | os.PathLike | None, data: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
