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
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from nnspec.main import EXIT_FAILURE, EXIT_OK, UsageError

ATOL = RTOL = 1e-5


def _check_inputs(model_path: str, session: Any) -> tuple[dict[str, Any], str]:
    from nnspec.compiler.export.model_card import BUNDLE, read_reference_bundle, synthetic_inputs

    bundle = os.path.join(os.path.dirname(os.path.abspath(model_path)), BUNDLE)
    names = {i.name for i in session.get_inputs()}
    if os.path.isfile(bundle):
        inputs = read_reference_bundle(bundle)[0]
        if names <= set(inputs):
            return {k: inputs[k] for k in names}, BUNDLE
    return synthetic_inputs(session, batch=4), "synthetic inputs"


def export_ort(model_path: str, out_dir: str, target_platform: str | None = None
               ) -> dict[str, Any]:
    """Convert `model_path` to ORT format into `out_dir`; returns the report (paths, size,
    operators and the check of the `.ort` file against the `.onnx` one)."""
    import pathlib

    import numpy as np
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    stem = os.path.splitext(os.path.basename(model_path))[0]
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ort-", dir=out_dir)
    log = io.StringIO()
    try:
        from nnspec.compiler.export.quantize import quiet_logging

        with contextlib.redirect_stdout(log), quiet_logging():
            convert_onnx_models_to_ort(pathlib.Path(model_path), pathlib.Path(tmp),
                                       [OptimizationStyle.Fixed],
                                       target_platform=target_platform)
        files = {}
        for kind, name in (("ort", f"{stem}.ort"),
                           ("config", f"{stem}.required_operators.config")):
            if not os.path.isfile(os.path.join(tmp, name)):
                raise RuntimeError(f"the converter wrote no {name}: {log.getvalue().strip()}")
            files[kind] = os.path.join(out_dir, name)
            if kind == "config":  # its comment names the models, here in the temporary folder
                with open(os.path.join(tmp, name), encoding="utf-8") as fh:
                    text = fh.read().replace(os.path.realpath(tmp), os.path.realpath(out_dir))
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
                    fh.write(text)
            os.replace(os.path.join(tmp, name), files[kind])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    providers = ["CPUExecutionProvider"]
    reference = ort.InferenceSession(model_path, providers=providers)
    converted = ort.InferenceSession(files["ort"], providers=providers)
    feeds, source = _check_inputs(model_path, reference)
    expected = reference.run(None, feeds)
    got = converted.run(None, feeds)
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                for a, b in zip(expected, got) if a.size), default=0.0)
    passed = all(a.shape == b.shape and np.allclose(b, a, atol=ATOL, rtol=RTOL)
                 for a, b in zip(expected, got))
    with open(files["config"], encoding="utf-8") as fh:
        operators = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    return {
        "model": model_path,
        "format": "ort",
        "ort": files["ort"],
        "size_bytes": os.path.getsize(files["ort"]),
        "required_operators": files["config"],
        "operators": operators,
        "target_platform": target_platform or "any",
        "onnxruntime": ort.__version__,
        "check": {"inputs": source, "samples": int(len(next(iter(feeds.values())))),
                  "max_abs_diff": diff, "atol": ATOL, "rtol": RTOL, "passed": passed},
        "note": "ORT format files load only in onnxruntime of this version or newer "
                "(no forward compatibility): convert with a version no newer than the device's",
    }


def cmd_export(args: argparse.Namespace) -> int:
    model = args.model
    if os.path.isdir(model):
        model = os.path.join(model, "model.onnx")
    if not os.path.isfile(model):
        raise UsageError(f"MODEL: no model file at {model!r}")
    if not model.endswith(".onnx"):
        raise UsageError(f"MODEL: expected an .onnx file or a run directory, not {model!r}")
    out = args.out or os.path.dirname(os.path.abspath(model))
    report = export_ort(model, out, args.target_platform)
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
