"""`nnspec evaluate RUN_DIR|MODEL`: the metrics of an exported model on a split of its spec's
data, or on a file. Runs the ONNX model in onnxruntime, so what is measured is what ships;
no JAX needed."""

from __future__ import annotations

import argparse
import json
import os
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


def _numpy_loss(name: str, out: Any, y: Any) -> float | None:
    """The spec's loss computed from the exported model's outputs (probabilities)."""
    import numpy as np

    out = np.asarray(out, np.float64)
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        target = np.eye(out.shape[-1])[y.astype(int)] if y.ndim == out.ndim - 1 else y
        return float(np.mean(-np.sum(target * np.log(np.clip(out, 1e-7, 1.0)), axis=-1)))
    if name == "binary_crossentropy":
        p, t = np.clip(out, 1e-7, 1 - 1e-7), y.reshape(out.shape)
        return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    if name in ("mse", "mae", "huber"):
        t = np.eye(out.shape[-1])[y.astype(int)] if (
            y.ndim < out.ndim and out.shape[-1] > 1) else y.reshape(out.shape)
        err = out - t
        if name == "mse":
            return float(np.mean(err ** 2))
        if name == "mae":
            return float(np.mean(np.abs(err)))
        a = np.abs(err)
        return float(np.mean(np.where(a <= 1.0, 0.5 * err ** 2, a - 0.5)))
    return None


def run(args: argparse.Namespace) -> int:
    from nnspec.compiler.data.dataset import Split, _named, make_dataset
    from nnspec.compiler.train.evaluation import evaluate_predictions
    from nnspec.main import UsageError
    from nnspec.runtime import load
    from nnspec.spec.schema import Spec

    path = os.path.join(args.model, "model.onnx") if os.path.isdir(args.model) else args.model
    model = load(path)
    if "resolved_spec" not in model.metadata:
        raise UsageError(f"{path}: no resolved spec in its metadata (was it made by nnspec "
                         "train?)")
    spec = Spec.model_validate(json.loads(model.metadata["resolved_spec"]))
    outputs = list(spec.outputs or {"output": None})
    if args.data:
        import numpy as np

        with np.load(args.data, allow_pickle=False) as npz:
            whole, _ = _named({k: npz[k] for k in npz.files}, list(spec.inputs), outputs,
                              args.data)
        split, name = Split(whole.x, whole.y), os.path.basename(args.data)
    else:
        if spec.data is None:
            raise UsageError("the spec has no data section; pass --data FILE.npz")
        run_dir = os.path.dirname(os.path.abspath(path))
        folders = [args.data_folder] if args.data_folder else [
            os.path.dirname(run_dir), run_dir, os.getcwd()]
        data = None
        for folder in folders:
            if spec.data.source != "npz" or os.path.exists(
                    os.path.join(folder, spec.data.path or "")):
                data = make_dataset(spec.data, spec.inputs, outputs, folder)
                break
        if data is None:
            raise UsageError(f"cannot find the data file {spec.data.path!r}; pass "
                             "--data-folder DIR or --data FILE.npz")
        split, name = getattr(data, args.split), args.split
        if not len(split):
            raise UsageError(f"the {args.split} split is empty")
    predicted = model.predict(split.x)
    report: dict[str, Any] = {"model": path, "data": name, "samples": len(split)}
    for out in outputs:
        own = (spec.outputs or {}).get(out)
        loss = own.loss if own and own.loss else spec.train.loss if spec.train else None
        wanted = args.metrics.split(",") if args.metrics else list(
            own.metrics if own and own.metrics is not None else
             spec.train.metrics if spec.train else [])
        values = predicted[out]
        classifier = values.ndim >= 2 and values.shape[-1] > 1
        if not args.metrics and classifier and "accuracy" not in wanted:
            wanted.insert(0, "accuracy")
        result = evaluate_predictions(values, split.y[out], wanted,
                                      spec.train.top_k if spec.train else 5)
        if loss is not None:
            value = _numpy_loss(loss.name, values, split.y[out])
            if value is not None:
                result = {"loss": value, **result}
        report[out] = result
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{path} on {name} ({len(split)} samples)")
    for out in outputs:
        for metric, value in report[out].items():
            print(f"  {out:<12} {metric:<16} {value:.6g}")
    return 0
