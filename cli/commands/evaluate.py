"""`nnspec evaluate RUN_DIR|MODEL`: the metrics of an exported model on a split of its spec's
data, or on a file. Runs the ONNX model in onnxruntime, so what is measured is what ships;
no JAX needed."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(verbs: Any, overrides: dict[str, Any]) -> None:
    p = verbs.add_parser("evaluate", help="metrics of a trained model on a split or a file",
                         description="Evaluate an exported model (a run directory or a .onnx "
                         "file made by nnspec train) on a split of its spec's data, or on an "
                         ".npz file whose arrays are named after the inputs and outputs (or "
                         "x/y).")
    p.add_argument("model", metavar="RUN_DIR|MODEL")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--data", metavar="FILE.npz", help="evaluate on this file instead")
    p.add_argument("--data-folder", metavar="DIR",
                   help="folder that relative data paths of the spec are read from "
                   "(default: the run directory's parent, then the current directory)")
    p.add_argument("--metrics", help="comma-separated metrics (default: the spec's, plus "
                   "accuracy for classifiers)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import nnspec

    report = nnspec.evaluate(args.model, args.split, args.data, args.data_folder,
                             args.metrics.split(",") if args.metrics else None)
    path, name = report["model"], report["data"]
    outputs = [k for k in report if k not in ("model", "data", "samples")]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{path} on {name} ({report['samples']} samples)")
    for out in outputs:
        for metric, value in report[out].items():
            print(f"  {out:<12} {metric:<16} {value:.6g}")
    return 0
