"""An exported model in onnxruntime's mobile format (`.ort`), checked against the `.onnx` one.

Writes `NAME.ort` and `NAME.required_operators.config` (the operators a reduced onnxruntime
build must include), then loads the `.ort` file in onnxruntime and checks it gives the ONNX
model's outputs (on the run's golden bundle `reference_io.npz` when there is one, else on seeded
synthetic inputs). The ORT format has no forward compatibility: convert with an onnxruntime no
newer than the one on the device.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from typing import Any

ATOL = RTOL = 1e-5


def _check_inputs(model_path: str, session: Any) -> tuple[dict[str, Any], str]:
    from nnspec.compiler.export.bundle import BUNDLE, read_reference_bundle, synthetic_inputs

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
