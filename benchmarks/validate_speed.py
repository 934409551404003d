"""`nnspec validate` latency: every example spec, in a fresh process, as a user runs it.

Each repetition runs, interleaved, in new subprocesses:
- `python -c pass` (the bare interpreter start),
- `python -c "import nnspec.spec.validate"` (the spec package: YAML loader and pydantic schema)
  and `python -c "import nnspec.compiler.graph.ir"` (what `validate` imports to build the graph),
- `nnspec validate SPEC` for every spec in examples/ (the console script installed beside this
  interpreter, else `python -m nnspec`).

After one untimed warm-up of each, the median of `--repeat` wall times is reported, with ratios
against the interpreter start and the spec package import measured in the same run. One extra
run per spec with `-X importtime` (PYTHONPROFILEIMPORTTIME) checks that validate never imports
JAX and lists the slowest imports. Exits 1 when a spec fails to validate, imports JAX, or takes
longer than `--max-seconds` (default 1.0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import EXAMPLES, ROOT, machine, median, table, write_json

HEAVY = ("jax", "jaxlib", "flax", "optax", "onnx", "onnxruntime", "matplotlib", "orbax")


def nnspec_command() -> list[str]:
    script = Path(sys.executable).parent / "nnspec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nnspec"]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - started, proc


def import_profile(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Which heavy packages a command imports, and its slowest top-level imports."""
    _, proc = timed(cmd, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
    packages: set[str] = set()
    outermost: dict[str, int] = {}  # imports at nesting level 0, by cumulative microseconds
    for line in proc.stderr.splitlines():
        parts = line.split(":", 1)[1].split("|") if line.startswith("import time:") else []
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        packages.add(name.strip().split(".")[0])
        if len(name) - len(name.lstrip()) == 1:
            outermost[name.strip()] = int(parts[1])
    heavy = sorted(packages & set(HEAVY))
    slowest = sorted(outermost.items(), key=lambda kv: -kv[1])[:6]
    return {"heavy_imports": heavy,
            "slowest_imports_ms": {k: round(v / 1000, 1) for k, v in slowest}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", help="spec files (default: examples/*.yaml)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each command")
    parser.add_argument("--max-seconds", type=float, default=1.0,
                        help="fail when a spec's median exceeds this")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true",
                        help="1 timed run, no warm-up, no import profile (the smoke test)")
    args = parser.parse_args(argv)
    specs = [Path(p).resolve() for p in args.specs] or sorted(EXAMPLES.glob("*.yaml"))
    repeat = 1 if args.quick else args.repeat
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)

    py = sys.executable
    baselines = {
        "python -c pass": [py, "-c", "pass"],
        "import nnspec.spec.validate": [py, "-c", "import nnspec.spec.validate"],
        "import nnspec.compiler.graph.ir": [py, "-c", "import nnspec.compiler.graph.ir"],
    }
    nnspec = nnspec_command()
    commands = {**baselines, **{str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p):
                               [*nnspec, "validate", str(p)] for p in specs}}
    times: dict[str, list[float]] = {k: [] for k in commands}
    failures: dict[str, str] = {}
    for rep in range(repeat + (0 if args.quick else 1)):
        for name, cmd in commands.items():
            seconds, proc = timed(cmd, env)
            if proc.returncode != 0:
                failures[name] = (proc.stderr or proc.stdout).strip()[-500:]
            if args.quick or rep > 0:  # the first pass warms the file cache
                times[name].append(seconds)

    med = {k: median(v) for k, v in times.items()}
    start, spec_import = med["python -c pass"], med["import nnspec.spec.validate"]
    results = []
    for name in commands:
        if name in baselines:
            continue
        record = {"spec": name, "command": commands[name], "median_seconds": med[name],
                  "seconds": times[name], "vs_python_start": med[name] / start,
                  "vs_spec_import": med[name] / spec_import,
                  "over_python_start_seconds": med[name] - start,
                  "exit_code_ok": name not in failures}
        if not args.quick:
            record.update(import_profile(commands[name], env))
        record["passed"] = (record["exit_code_ok"] and med[name] <= args.max_seconds
                            and not record.get("heavy_imports"))
        results.append(record)

    rows = [[k, f"{med[k]:.3f}", f"{med[k] / start:.2f}", f"{med[k] / spec_import:.2f}", "", ""]
            for k in baselines]
    rows += [[r["spec"], f"{r['median_seconds']:.3f}", f"{r['vs_python_start']:.2f}",
              f"{r['vs_spec_import']:.2f}", ",".join(r.get("heavy_imports", [])) or
              ("-" if args.quick else "none"), "ok" if r["passed"] else "FAIL"]
             for r in results]
    print(table(["command", "median s", "x python start", "x spec import", "heavy imports",
                 f"<= {args.max_seconds} s"], rows))
    for name, err in failures.items():
        print(f"{name} failed:\n{err}", file=sys.stderr)
    passed = all(r["passed"] for r in results) and not failures
    write_json(args.json, {"benchmark": "validate_speed", "quick": args.quick,
                           "repeat": repeat, "max_seconds": args.max_seconds,
                           "nnspec_command": nnspec, "machine": machine(),
                           "baselines": {k: {"median_seconds": med[k], "seconds": times[k]}
                                         for k in baselines},
                           "results": results, "passed": passed})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
