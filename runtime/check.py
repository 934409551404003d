"""`nnspec check MODEL` (and `nnspec-runtime check`): is this ONNX file safe to load, and
do the runtimes agree on it?

The file is checked first (external data confined to the model's folder, `onnx.checker` when
`onnx` is installed). Then every runtime runs the golden bundle `reference_io.npz` beside the
model (arrays `input:NAME` and `output:NAME`, written by `nnspec train`) and its outputs are
compared with the bundle's; without a bundle, random inputs shaped as the model's are run and
every runtime is compared with onnxruntime. Needs numpy and onnxruntime only; tract, onnx's
reference evaluator and rich are used when installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

BUNDLE = "reference_io.npz"
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tract": ("tract",),
             "reference": ("onnx",)}


def add_parser(verbs: Any, overrides: dict | None = None) -> None:
    """Add the `check` verb to an argparse subparsers object."""
    p = verbs.add_parser(
        "check", help="validate an ONNX file and check that the runtimes agree on it",
        description="Refuse unsafe files (external data outside the model's folder; "
        "onnx.checker when onnx is installed), then run the golden inputs of reference_io.npz "
        "beside the model (or random ones) on each runtime and compare the outputs. Exit 0 "
        "only when every runtime agrees within --atol.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file, or a run directory")
    p.add_argument("--runtimes", metavar="NAMES",
                   help="comma-separated, from onnxruntime,tract,reference (default: every "
                   "one installed)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest absolute difference allowed (default 1e-4)")
    p.add_argument("--bundle", metavar="FILE",
                   help=f"golden inputs and outputs (default: {BUNDLE} beside the model)")
    p.add_argument("--samples", type=int, default=16,
                   help="random samples when there is no bundle (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--json", action="store_true", help="print a JSON report instead")
    p.set_defaults(func=cmd_check)


def version(package_names: tuple[str, ...]) -> str | None:
    from importlib import metadata

    for name in package_names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _runtime_names(text: str | None) -> list[str]:
    from nnspec.runtime import runners
    from nnspec.runtime.model import UsageError

    if not text:
        return runners.available()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in runners.RUNNERS]
    if unknown or not names:
        raise UsageError(f"--runtimes: unknown runtime(s) {unknown or [text]}; choose from "
                         f"{','.join(runners.RUNNERS)}")
    return list(dict.fromkeys(names))


def _read_bundle(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np

    from nnspec.runtime.model import UsageError

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(f"cannot read the reference bundle {path!r}: {err}") from None
    feeds = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")}
    expected = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("output:")}
    if not feeds or not expected:
        raise UsageError(f"the reference bundle {path!r} holds {sorted(arrays)}; it needs "
                         "arrays named input:NAME and output:NAME")
    return feeds, expected


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _run(name: str, path: str, feeds: dict) -> tuple[dict | None, str | None, float]:
    """Outputs or the error message of one runtime; never raises."""
    from nnspec.runtime import runners

    start = time.perf_counter()
    try:
        outputs = runners.RUNNERS[name](path, feeds)
    except Exception as err:  # noqa: BLE001 - a failing runtime is a result, not a crash
        return None, _message(err), time.perf_counter() - start
    return outputs, None, time.perf_counter() - start


def compare(expected: dict, got: dict, atol: float) -> dict[str, Any]:
    """Per-output differences; `passed` when every expected output is there, of the same
    shape, and within `atol` (NaN or Inf only where expected has the same)."""
    import numpy as np

    if set(got) != set(expected) and len(got) == len(expected):
        # tract renames outputs after their producers (without onnx to read the names back),
        # but keeps the model's order.
        got = dict(zip(expected, got.values()))
    outputs: dict[str, Any] = {}
    problems = []
    for name, want in expected.items():
        if name not in got:
            problems.append(f"no output {name!r} (got {sorted(got)})")
            continue
        e = np.asarray(want, np.float64)
        g = np.asarray(got[name], np.float64)
        if e.shape != g.shape:
            problems.append(f"output {name!r} has shape {g.shape}, expected {e.shape}")
            outputs[name] = {"shape": list(g.shape), "max_abs_diff": None}
            continue
        with np.errstate(invalid="ignore"):
            diff = np.where((e == g) | (np.isnan(e) & np.isnan(g)), 0.0, np.abs(e - g))
        worst = float(diff.max()) if diff.size else 0.0
        outputs[name] = {"shape": list(g.shape), "max_abs_diff": worst}
        if not worst <= atol:  # NaN fails too
            problems.append(f"output {name!r} differs by {worst:.3g} > atol {atol:g}")
    diffs = [o["max_abs_diff"] for o in outputs.values() if o["max_abs_diff"] is not None]
    return {"passed": not problems, "max_abs_diff": max(diffs) if diffs else None,
            "outputs": outputs, "error": "; ".join(problems) or None}


def cmd_check(args: argparse.Namespace) -> int:
    """Run `check`; the exit code: 0 every runtime agrees, 1 one does not, 2 unsafe file."""
    from nnspec.runtime.model import UsageError, model_path
    from nnspec.runtime.safety import UnsafeModelError, check_model_file, external_tensors

    path = model_path(args.model)
    if args.samples < 1:
        raise UsageError(f"--samples: expected a positive count, got {args.samples}")
    names = _runtime_names(args.runtimes)
    doc: dict[str, Any] = {"model": path, "size_bytes": os.path.getsize(path), "atol": args.atol}
    try:
        check_model_file(path)
    except UnsafeModelError as err:
        if not args.json:
            raise
        print(json.dumps({**doc, "file": {"safe": False, "error": str(err)}, "runtimes": [],
                          "passed": False}, indent=2))
        return 2
    doc["file"] = {"safe": True, "external_data_tensors": len(external_tensors(path)),
                   "checker": "passed" if importable("onnx") else "skipped: onnx not installed"}

    bundle = args.bundle or os.path.join(os.path.dirname(path), BUNDLE)
    if args.bundle and not os.path.isfile(bundle):
        raise UsageError(f"--bundle: no such file {bundle!r}")
    results: dict[str, tuple[dict | None, str | None, float]] = {}
    feeds: dict | None = None
    expected: dict | None = None
    if os.path.isfile(bundle):
        feeds, expected = _read_bundle(bundle)
        doc["expected"] = {"source": bundle, "samples": len(next(iter(feeds.values()))),
                           "outputs": list(expected)}
    else:
        doc["expected"] = {"source": "onnxruntime", "random_seed": args.seed,
                           "samples": args.samples}
        try:
            from nnspec.runtime.inputs import random_inputs
            from nnspec.runtime.model import Model

            feeds = random_inputs(Model(path), args.samples, args.seed)
        except Exception as err:  # noqa: BLE001
            results["onnxruntime"] = (None, _message(err), 0.0)
        else:
            results["onnxruntime"] = _run("onnxruntime", path, feeds)
            expected = results["onnxruntime"][0]
        if expected is not None:
            doc["expected"]["outputs"] = list(expected)

    from nnspec.runtime import runners

    installed = runners.available()
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name, "version": version(_PACKAGES[name])}
        if name not in installed:
            row.update(passed=False, max_abs_diff=None, outputs={}, seconds=None,
                       error=f"not installed (pip install {_PACKAGES[name][0]})")
        elif expected is None and feeds is None:
            row.update(passed=False, max_abs_diff=None, outputs={}, seconds=None,
                       error=results.get(name, (None, None))[1] or "not run: no inputs "
                       "(onnxruntime cannot read the model and there is no reference bundle)")
        else:
            outputs, error, seconds = results.get(name) or _run(name, path, feeds)
            row["seconds"] = round(seconds, 4)
            if error is not None:
                row.update(passed=False, max_abs_diff=None, outputs={}, error=error)
            elif expected is None:
                row.update(passed=False, max_abs_diff=None, outputs={},
                           error="not compared: onnxruntime produced no expected outputs")
            else:
                row.update(compare(expected, outputs, args.atol))
        rows.append(row)
    doc["runtimes"] = rows
    doc["passed"] = bool(rows) and all(r["passed"] for r in rows)
    if args.json:
        print(json.dumps(_finite(doc), indent=2))
    else:
        _print_report(doc)
    return 0 if doc["passed"] else 1


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_table(title: str, header: list[str], rows: list[list[str]],
                left: tuple[int, ...] = (0,)) -> None:
    """A table on stdout: rich's when installed, else aligned plain text; columns not in
    `left` are right-aligned."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(title)
        for r in [header, *rows]:
            print("  ".join(c.ljust(w) if i in left else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i in left else "right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console(width=max(100, Console().width), highlight=False).print(table)


def _print_report(doc: dict[str, Any]) -> None:
    file = doc["file"]
    exp = doc["expected"]
    print(f"model: {doc['model']} ({_size(doc['size_bytes'])})")
    n = file["external_data_tensors"]
    where = f"{n} tensor(s) with external data, all inside the model's folder" if n else (
        "no external data")
    print(f"file: safe ({where}); onnx.checker {file['checker']}")
    if exp["source"] == "onnxruntime":
        print(f"expected: onnxruntime on {exp['samples']} random samples (seed "
              f"{exp['random_seed']}; no {BUNDLE} beside the model)")
    else:
        print(f"expected: {exp['source']} ({exp['samples']} samples)")
    rows = []
    for r in doc["runtimes"]:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
        rows.append([r["name"], r["version"] or "-", diff, "pass" if r["passed"] else "FAIL",
                     r["error"] or ""])
    print_table(f"runtimes vs expected outputs (atol {doc['atol']:g})",
                ["runtime", "version", "max abs diff", "result", "error"], rows,
                left=(0, 3, 4))
    failed = [r["name"] for r in doc["runtimes"] if not r["passed"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    else:
        print(f"ok: {len(doc['runtimes'])} runtime(s) agree within atol {doc['atol']:g}")
