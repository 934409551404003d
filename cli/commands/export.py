"""`nnspec export MODEL --format ort`: convert an exported model to onnxruntime's mobile format.

Writes `NAME.ort` and `NAME.required_operators.config` (the operators a reduced onnxruntime
build must include) into `--out` (default: beside the model), then loads the `.ort` file in
onnxruntime and checks it gives the ONNX model's outputs (on the run's golden bundle
`reference_io.npz` when there is one, else on seeded synthetic inputs). The ORT format has no
forward compatibility: convert with an onnxruntime no newer than the one on the device.
Exit 0 on success, 1 when the converted model's outputs differ, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nnspec.main import EXIT_FAILURE, EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from nnspec import export_ort

    report = export_ort(args.model, args.out, args.target_platform)
    model = report["model"]
    print(json.dumps(report, indent=2))
    if not report["check"]["passed"]:
        print(f"error: {report['ort']} differs from {model} by up to "
              f"{report['check']['max_abs_diff']:.3g}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_parser(verbs: Any, overrides: dict) -> None:
    p = verbs.add_parser(
        "export", help="convert a model to onnxruntime's mobile format (.ort)",
        description="Convert an exported model to onnxruntime's ORT format for mobile and "
        "reduced builds: writes NAME.ort and NAME.required_operators.config, then checks the "
        ".ort file against the .onnx one in onnxruntime.")
    p.add_argument("model", metavar="MODEL", help="a run directory or an .onnx file")
    p.add_argument("--format", default="ort", choices=["ort"],
                   help="ort: onnxruntime's flatbuffer format (default)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: beside the model)")
    p.add_argument("--target-platform", choices=["arm", "amd64"],
                   help="platform-specific optimizations (default: none, portable)")
    p.set_defaults(func=cmd_export)
