"""`nnspec data SPEC [--out SHEET.png] [--json]`: what the spec's `data` section resolves to
before any training (files, samples per split, class balance, columns, input shapes, first
samples) and every problem at once; exit 2 when there is a problem. Never imports JAX; the
logic is in nnspec.compiler.data.profile."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nnspec.main import EXIT_BAD_INPUT, EXIT_OK


def _text(report: dict[str, Any]) -> str:
    lines = [f"source: {report['source']}" + (f" ({report['path']}, {report.get('files', 0)} "
                                              "file(s))" if report.get("path") else "")]
    if "samples" in report:
        lines.append("samples: " + ", ".join(f"{k} {n}" for k, n in report["samples"].items()))
    for out, splits in report.get("class_balance", {}).items():
        for split, counts in splits.items():
            lines.append(f"classes of {out} ({split}): "
                         + ", ".join(f"{c} {n}" for c, n in counts.items()))
    for name, info in report.get("inputs", {}).items():
        lines.append(f"input {name}: shape {tuple(info['shape'])} {info['dtype']}")
    for col in report.get("columns", []):
        if col["type"] == "numeric":
            detail = (f"[{col['min']:g}, {col['max']:g}] mean {col['mean']:.4g}"
                      if col["min"] is not None else "no values")
            if col.get("fill") is not None:
                detail += f", fill {col['fill']:.4g}"
        else:
            detail = f"{col['distinct']} distinct"
            if "vocabulary_size" in col:
                detail += f", vocabulary {col['vocabulary_size']} (+ out-of-vocabulary id 0)"
        lines.append(f"column {col['column']}: {col['type']} {detail}, {col['missing']} missing")
    for i, sample in enumerate(report.get("first_samples", [])):
        lines.append(f"sample {i}: {json.dumps(sample)}")
    problems = report["problems"]
    lines.append(f"{len(problems)} problem(s)" + (":" if problems else ""))
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def cmd_data(args: argparse.Namespace) -> int:
    import nnspec

    spec = nnspec.load(args.spec, args.set).validate()  # every spec error first, located
    report = spec.data(args.out)
    print(json.dumps(report, indent=2) if args.json else _text(report))
    if report["problems"] and spec.loaded.spec.data.on_error == "fail":
        print(f"error: {len(report['problems'])} problem(s) in the data (listed above; "
              "data.on_error: skip trains without the bad samples)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def add_parser(verbs: Any, overrides: dict) -> None:
    p = verbs.add_parser("data", help="what the data section resolves to, and its problems",
                         description="Read the spec's data as training would, without "
                         "training: files, samples per split, class balance, per-column type, "
                         "range, missing values and vocabulary size, input shapes, the first "
                         "samples, and every problem at once (exit 2 if any).")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--set", **overrides)
    p.add_argument("--out", metavar="SHEET.png", help="images: a contact sheet of the first "
                   "training images with their labels")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_data)
