"""`nnspec quantize MODEL --method dynamic|static|float16`: a smaller copy of an exported model,
kept only when it loses at most `--max-drop` accuracy on the spec's validation split.

Exit 0 when the copy passes (written to `--out`, default `MODEL.METHOD.onnx` beside the model);
1 when it loses more (kept as `*.rejected.onnx` for inspection, nothing written at `--out`);
2 for bad input (arguments, a model without nnspec metadata, data that cannot be found).
The report is printed as JSON on stdout and recorded in `quantization.json` beside the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nnspec.main import EXIT_FAILURE, EXIT_OK


def _summary(report: dict[str, Any]) -> str:
    size = report["size"]
    lines = [f"{report['model']} -> {report['output']} ({report['method']})",
             f"  size      {size['before_bytes']:,} B -> {size['after_bytes']:,} B "
             f"({size['ratio']:.3f}x)"]
    for name, out in report["outputs"].items():
        if "accuracy_before" in out:
            lines.append(f"  {name:<9} accuracy {out['accuracy_before']:.4f} -> "
                         f"{out['accuracy_after']:.4f} ({out['change_points']:+.2f} points), "
                         f"top-1 agreement {out['top1_agreement']:.4f}")
        else:
            lines.append(f"  {name:<9} mae {out['mae_before']:.4g} -> {out['mae_after']:.4g}, "
                         f"max abs diff {out['max_abs_diff']:.3g}")
    lines.append(f"  on {report['samples']} {report['split']} samples; gate "
                 f"{'passed' if report['passed'] else 'FAILED'} (drop {100 * report['drop']:.2f}"
                 f" points, limit {100 * report['max_drop']:.2f})")
    return "\n".join(lines)


def cmd_quantize(args: argparse.Namespace) -> int:
    import nnspec

    report = nnspec.quantize(args.model, args.method, args.max_drop, args.out,
                             data_folder=args.data_folder,
                             calibration_samples=args.calibration_samples,
                             per_channel=not args.per_tensor)
    print(json.dumps(report, indent=2))
    if not args.quiet:
        print(_summary(report), file=sys.stderr)
    if not report["passed"]:
        print(f"error: the {args.method} model loses {100 * report['drop']:.2f} points, more "
              f"than --max-drop {args.max_drop:g} ({100 * args.max_drop:.2f} points) allows; "
              f"kept as {report['output']}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_parser(verbs: Any, overrides: dict) -> None:
    p = verbs.add_parser(
        "quantize", help="int8 or float16 copy of a model, gated on accuracy",
        description="Quantize an exported model (int8 dynamic, int8 static QDQ with "
        "per-channel weights, or float16), evaluate it against the float model on the spec's "
        "validation split and keep it only if it loses at most --max-drop accuracy. Exit 1 "
        "(copy kept as *.rejected.onnx) when it loses more.")
    p.add_argument("model", metavar="MODEL", help="a run directory or an nnspec .onnx file")
    p.add_argument("--method", required=True, choices=["dynamic", "static", "float16"],
                   help="dynamic: int8 weights, activations quantized at run time (MatMul, "
                   "Gather, LSTM; convolutions stay float); static: int8 QDQ calibrated on "
                   "training samples (best for CNNs); float16: half-size weights")
    p.add_argument("--out", metavar="PATH", help="output file (default MODEL.METHOD.onnx)")
    p.add_argument("--max-drop", type=float, default=0.01, metavar="FRACTION",
                   help="largest accuracy loss allowed, as a fraction (default 0.01: one "
                   "point); for regressors, the relative increase of the MAE")
    p.add_argument("--data-folder", metavar="DIR",
                   help="folder of the spec the model was trained from, against which a "
                   "relative npz data.path resolves (default: the model's folder, then the "
                   "current directory)")
    p.add_argument("--calibration-samples", type=int, default=256, metavar="N",
                   help="training samples that calibrate static quantization (default 256)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of one per output channel")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(func=cmd_quantize)
