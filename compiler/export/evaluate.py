"""The metrics of an exported model on a split of its spec's data, or on given arrays.

Runs the ONNX model in onnxruntime, so what is measured is what ships; no JAX needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnspec.compiler.train.heads import probabilities
from nnspec.spec.errors import UsageError


def numpy_loss(name: str, out: Any, y: Any) -> float | None:
    """The spec's loss computed from the exported model's outputs (probabilities)."""
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


def model_spec(model: Any) -> Any:
    """The resolved spec a model made by `nnspec train` carries in its metadata."""
    from nnspec.spec.schema import Spec

    if "resolved_spec" not in model.metadata:
        raise UsageError(f"{model.path}: no resolved spec in its metadata (was it made by "
                         "nnspec train?)")
    return Spec.model_validate(json.loads(model.metadata["resolved_spec"]))


def _split_of(model: Any, spec: Any, outputs: list[str], split: str,
              data: str | os.PathLike | Mapping[str, np.ndarray] | None,
              data_folder: str | None) -> tuple[Any, str]:
    from nnspec.compiler.data.dataset import Split, _named, make_dataset

    if isinstance(data, Mapping):
        whole, _ = _named({k: np.asarray(v) for k, v in data.items()}, list(spec.inputs),
                          outputs, "data")
        return Split(whole.x, whole.y), "arrays"
    if data is not None:
        data = os.fspath(data)
        with np.load(data, allow_pickle=False) as npz:
            whole, _ = _named({k: npz[k] for k in npz.files}, list(spec.inputs), outputs, data)
        return Split(whole.x, whole.y), os.path.basename(data)
    if spec.data is None:
        raise UsageError("the spec has no data section; pass --data FILE.npz")
    run_dir = os.path.dirname(os.path.abspath(model.path))
    folders = [data_folder] if data_folder else [os.path.dirname(run_dir), run_dir, os.getcwd()]
    for folder in folders:
        if spec.data.path is None or os.path.exists(os.path.join(folder, spec.data.path)):
            dataset = make_dataset(spec.data, spec.inputs, outputs, folder)
            found = getattr(dataset, split)
            if not len(found):
                raise UsageError(f"the {split} split is empty")
            if dataset.table is not None and "table" in model.metadata:
                found = _shipped_encoding(model, spec, dataset, split, found, folder)
            return found, split
    raise UsageError(f"cannot find the data file {spec.data.path!r}; pass --data-folder DIR "
                     "or --data FILE.npz")


def _shipped_encoding(model: Any, spec: Any, dataset: Any, split: str, found: Any,
                      folder: str) -> Any:
    """A table split's inputs encoded by the preprocessing the model ships (its vocabularies
    and fill values, as `nnspec predict` applies them), not the one re-learned from the file
    now; the class names the file gives must still be the model's."""
    from nnspec.compiler.data import tables
    from nnspec.compiler.data.dataset import Split, fit_input
    from nnspec.compiler.data.sources import _subset, resolve
    from nnspec.runtime import tables as rt

    shipped = json.loads(model.metadata["table"])
    for out, meta in shipped.get("outputs", {}).items():
        if "labels" in meta and dataset.labels.get(out, meta["labels"]) != meta["labels"]:
            raise UsageError(f"output {out!r}: the data's classes are now "
                             f"{dataset.labels[out]}, the model was trained on "
                             f"{meta['labels']}")
    path = resolve(spec.data.path or "", folder)
    needed = rt.columns_needed(shipped["inputs"])
    table = (tables.read_csv(path, needed)[0] if spec.data.source == "csv"
             else tables.read_parquet(path, needed))
    rows = np.asarray(dataset.sources[split], np.int64)
    cells = {c: _subset(table.cells[c], rows) for c in needed}
    x = rt.encode(shipped["inputs"], cells, lambda i: table.where(int(rows[i])))
    return Split({n: fit_input(x[n], spec.inputs[n], n) for n in spec.inputs}, found.y)


def evaluate_model(model: Any, split: str = "test",
                   data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
                   data_folder: str | None = None, metrics: Sequence[str] | None = None
                   ) -> dict[str, Any]:
    """Loss and metrics of an exported model (a `nnspec.runtime.Model`) per output, on a split
    of its spec's data, an .npz file or arrays named after its inputs and outputs (or x/y).
    Without `metrics`: the spec's, plus accuracy for classifiers."""
    from nnspec.compiler.train.evaluation import evaluate_predictions

    spec = model_spec(model)
    outputs = list(spec.outputs or {"output": None})
    samples, name = _split_of(model, spec, outputs, split, data, data_folder)
    predicted = model.predict(samples.x)
    # Outputs trained as logits are read as the probabilities their loss implied.
    forms = json.loads(model.metadata.get("loss_forms", "{}"))
    report: dict[str, Any] = {"model": model.path, "data": name, "samples": len(samples)}
    for out in outputs:
        own = (spec.outputs or {}).get(out)
        loss = own.loss if own and own.loss else spec.train.loss if spec.train else None
        wanted = list(metrics) if metrics else list(
            own.metrics if own and own.metrics is not None else
            spec.train.metrics if spec.train else [])
        values = probabilities(predicted[out], **forms[out]) if out in forms else predicted[out]
        classifier = values.ndim >= 2 and values.shape[-1] > 1
        if not metrics and classifier and "accuracy" not in wanted:
            wanted.insert(0, "accuracy")
        result = evaluate_predictions(values, samples.y[out], wanted,
                                      spec.train.top_k if spec.train else 5,
                                      multi_label=loss is not None
                                      and loss.name == "binary_crossentropy")
        if loss is not None:
            value = numpy_loss(loss.name, values, samples.y[out])
            if value is not None:
                result = {"loss": value, **result}
        report[out] = result
    return report
