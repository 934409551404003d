"""Smaller models: int8 (dynamic or static QDQ) and float16 copies of an exported model, gated
on the accuracy they keep. onnx, onnxruntime and numpy only: no JAX here.

- `dynamic`: int8 weights; activations quantized at run time (DynamicQuantizeLinear). Only
  the operators onnxruntime's dynamic quantizer covers *except Conv* (MatMul, Gather, LSTM,
  Attention, ...): dynamic Conv becomes `ConvInteger`, which onnxruntime 1.20-1.23 cannot load
  ("Could not find an implementation for ConvInteger(10)"), so convolutions stay float32 here;
  use `static` for them. No pre-processing: it would fuse MatMul and Add into Gemm, which the
  dynamic quantizer does not cover.
- `static`: int8 weights (per channel) and activations in the QDQ format (QuantizeLinear /
  DequantizeLinear pairs, S8S8), with activation ranges calibrated (MinMax) on training
  samples; the model is pre-processed (`quant_pre_process`: shape inference and graph
  optimization) first. The recommended choice for convolutional networks.
- `float16`: weights and computation in float16, the inputs and outputs keeping their types
  (`onnxruntime.transformers.float16.convert_float_to_float16`, keep_io_types=True; it ships
  with onnxruntime, unlike `onnxconverter_common`, and clips constants at 65504, not 1e4).

Every copy keeps the source model's `metadata_props` and adds `quantization` (JSON: method and
settings). `quantize_and_gate` rebuilds the spec's data from the model's `resolved_spec`
metadata, quantizes, evaluates both models on the validation split and keeps the copy only when
its accuracy drops by at most `max_drop` (a fraction: 0.01 is one point); otherwise the copy is
kept as `NAME.rejected.onnx` for inspection, as `nnspec train` does with a failed cross-check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from nnspec._io import write_bytes, write_json
from nnspec.compiler.data.dataset import Dataset, Split, make_dataset
from nnspec.compiler.export.simplify import unfuse_gemm
from nnspec.spec.errors import DataError
from nnspec.spec.schema import DataSpec, InputSpec

METHODS = ("dynamic", "static", "float16")
REPORT = "quantization.json"
MODEL = "model.onnx"
CLASSIFICATION_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                         "binary_crossentropy")
_BATCH = 1024


class GateError(RuntimeError):
    """A quantized model lost more accuracy than allowed (for callers that raise on it)."""


def dynamic_op_types() -> list[str]:
    """Operators quantized by `dynamic`: all that onnxruntime's dynamic quantizer covers (MatMul,
    Gather, LSTM, Attention, ...) except Conv (see the module docstring)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return sorted(set(IntegerOpsRegistry) - {"Conv"})


class _Samples:
    """A `CalibrationDataReader` over in-memory samples, in batches."""

    def __init__(self, samples: Mapping[str, np.ndarray], batch: int = 32):
        self.samples = {k: np.ascontiguousarray(v) for k, v in samples.items()}
        self.batch = batch
        self.count = len(next(iter(self.samples.values())))
        self.iterator = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.count, self.batch):
            yield {k: v[start:start + self.batch] for k, v in self.samples.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)

    def rewind(self) -> None:
        self.iterator = self._batches()


def _reader(samples: Mapping[str, np.ndarray], batch: int = 32) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Samples, CalibrationDataReader):
        pass

    return Reader(samples, batch)


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence the root-logger warnings onnxruntime's tools print (e.g. "Please consider to run
    pre-processing before quantization", which does not apply to `dynamic`: pre-processing
    fuses MatMul and Add into Gemm, which dynamic quantization does not cover)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _has_sympy() -> bool:
    try:
        import sympy  # noqa: F401 - onnxruntime's symbolic shape inference needs it
    except ImportError:
        return False
    return True


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quantize_model(model_path: str | os.PathLike, out_path: str | os.PathLike, method: str,
                   calibration: Mapping[str, np.ndarray] | None = None,
                   per_channel: bool = True) -> None:
    """Write a `method` copy of the model at `out_path` (atomically). `calibration`, samples
    by input name, is required by `static` and ignored otherwise."""
    import onnx
    import onnxruntime
    from onnx import helper

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    model_path = os.fspath(model_path)
    source = onnx.load(model_path)
    settings: dict[str, Any] = {"method": method}
    with tempfile.TemporaryDirectory(prefix="nnspec-quantize-") as tmp, quiet_logging():
        result_path = os.path.join(tmp, "quantized.onnx")
        if method == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            ops = dynamic_op_types()
            # The dynamic quantizer skips Gemm: hand it the same function as MatMul + Add.
            unfused = os.path.join(tmp, "unfused.onnx")
            onnx.save(unfuse_gemm(source), unfused)
            quantize_dynamic(unfused, result_path, op_types_to_quantize=ops,
                             per_channel=per_channel, weight_type=QuantType.QInt8)
            settings.update(weights="int8", activations="uint8, quantized at run time",
                            per_channel=per_channel, op_types=ops)
        elif method == "static":
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process

            if not calibration or not len(next(iter(calibration.values()))):
                raise ValueError("static quantization needs calibration samples")
            prepared = os.path.join(tmp, "prepared.onnx")
            symbolic = _has_sympy()
            try:  # shape inference and graph optimization (e.g. MatMul + Add -> Gemm)
                quant_pre_process(model_path, prepared, skip_symbolic_shape=not symbolic)
                preprocessed = True
            except Exception:  # noqa: BLE001 - optional: quantize the model as it is
                prepared, preprocessed = model_path, False
            count = len(next(iter(calibration.values())))
            quantize_static(prepared, result_path, _reader(calibration),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            settings.update(weights="int8", activations="int8", format="QDQ",
                            per_channel=per_channel, calibrate_method="MinMax",
                            calibration_samples=count, preprocessed=preprocessed,
                            symbolic_shape_inference=symbolic and preprocessed)
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            converted = convert_float_to_float16(onnx.load(model_path), keep_io_types=True)
            onnx.save(converted, result_path)
            settings.update(weights="float16", activations="float16", keep_io_types=True)
        result = onnx.load(result_path)
    settings.update(onnxruntime=onnxruntime.__version__, source_sha256=_sha256_file(model_path))
    props = {p.key: p.value for p in source.metadata_props}
    props["quantization"] = json.dumps(settings, separators=(",", ":"))
    del result.metadata_props[:]
    helper.set_model_props(result, props)
    # Intermediate shapes the quantizer's shape inference left behind: the source has none and
    # runtimes infer them again; dropping them keeps the copy as lean as the source.
    del result.graph.value_info[:]
    result.doc_string = source.doc_string
    write_bytes(out_path, result.SerializeToString())


# ---------------------------------------------------------------- evaluation


def _metadata(model_path: str) -> dict[str, str]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def resolved_spec_of(model_path: str | os.PathLike) -> dict[str, Any]:
    """The `resolved_spec` an nnspec model carries in its metadata."""
    text = _metadata(os.fspath(model_path)).get("resolved_spec")
    if not text:
        raise DataError(f"{os.fspath(model_path)} carries no nnspec `resolved_spec` metadata: "
                        "its data cannot be rebuilt to check the quantized model")
    return json.loads(text)


def output_tasks(resolved: Mapping[str, Any]) -> dict[str, str]:
    """'classification' or 'regression' per output, from the losses of the resolved spec (an
    output's own loss, else the train section's; without a loss, `accuracy` among the
    metrics means classification)."""
    train = resolved.get("train") or {}
    default = (train.get("loss") or {}).get("name")
    tasks = {}
    for name, out in (resolved.get("outputs") or {}).items():
        loss = ((out or {}).get("loss") or {}).get("name") or default
        metrics = (out or {}).get("metrics") or train.get("metrics") or []
        classify = loss in CLASSIFICATION_LOSSES if loss else "accuracy" in metrics
        tasks[name] = "classification" if classify else "regression"
    return tasks


def predict(model_path: str | os.PathLike, x: Mapping[str, np.ndarray],
            batch: int = _BATCH) -> dict[str, np.ndarray]:
    """Outputs by name of the model on all samples of `x`, in batches, with onnxruntime, read
    as probabilities where the model says its loss took an output as logits (`loss_forms`
    metadata): a binary logit is a positive class above 0, not above 0.5."""
    import onnxruntime as ort

    from nnspec.compiler.train.heads import probabilities

    session = ort.InferenceSession(os.fspath(model_path), providers=["CPUExecutionProvider"])
    forms = json.loads(session.get_modelmeta().custom_metadata_map.get("loss_forms") or "{}")
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    count = len(x[inputs[0]])
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, count, batch):
        values = session.run(None, {n: x[n][start:start + batch] for n in inputs})
        for n, v in zip(names, values):
            parts[n].append(v)
    raw = {n: np.concatenate(v) for n, v in parts.items()}
    return {n: probabilities(v, **forms[n]) if n in forms else v for n, v in raw.items()}


def _classes(values: np.ndarray) -> np.ndarray:
    """Predicted classes: argmax over the last axis, or p > 0.5 for one sigmoid unit."""
    if values.ndim == 1 or values.shape[-1] == 1:
        return (values.reshape(len(values), -1) > 0.5).astype(np.int64).reshape(-1)
    return values.argmax(-1).reshape(-1)


def _score(values: np.ndarray, targets: np.ndarray, task: str) -> dict[str, float]:
    from nnspec.compiler.train.evaluation import accuracy, mae, rmse

    if task == "classification":
        return {"accuracy": accuracy(values, targets)}
    return {"mae": mae(values, targets), "rmse": rmse(values, targets)}


def _task_guess(values: np.ndarray, targets: np.ndarray) -> str:
    integer = np.issubdtype(targets.dtype, np.integer)
    return "classification" if values.ndim >= 2 and values.shape[-1] > 1 and integer else (
        "regression")


def evaluate_accuracy(model_path: str | os.PathLike, split: Split,
                      tasks: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Metrics of the model on a split, per output: `accuracy` (argmax against the labels) for
    classifiers, `mae` and `rmse` for regressors. `tasks` defaults to what the model's
    `resolved_spec` metadata says (else a guess from the shapes and label dtypes)."""
    if tasks is None:
        try:
            tasks = output_tasks(resolved_spec_of(model_path))
        except DataError:
            tasks = {}
    outputs = predict(model_path, split.x)
    return {name: _score(outputs[name], split.y[name],
                         tasks.get(name) or _task_guess(outputs[name], split.y[name]))
            for name in split.y if name in outputs}


# ---------------------------------------------------------------- the gate


def _data_path(data: DataSpec, folders: list[str]) -> str:
    """The folder against which a relative `data.path` resolves: the first that holds it."""
    if data.source != "npz" or os.path.isabs(data.path or ""):
        return folders[0]
    for folder in folders:
        if os.path.exists(os.path.join(folder, data.path or "")):
            return folder
    tried = ", ".join(repr(os.path.join(f, data.path or "")) for f in folders)
    raise DataError(f"data.path {data.path!r} is relative to the spec the model was trained "
                    f"from and is not at {tried}; pass the spec's folder with --data-folder")


def load_model_data(model_path: str | os.PathLike, data_folder: str | None = None,
                    resolved: Mapping[str, Any] | None = None) -> Dataset:
    """The splits the model was trained and evaluated on, rebuilt from its `resolved_spec`.
    A relative npz `data.path` resolves against `data_folder`, else the model's folder, else
    the current directory."""
    resolved = resolved if resolved is not None else resolved_spec_of(model_path)
    if not resolved.get("data"):
        raise DataError("the model's spec has no `data` section to evaluate it on")
    data = DataSpec.model_validate(resolved["data"])
    inputs = {k: InputSpec.model_validate(v) for k, v in resolved["inputs"].items()}
    folders = [data_folder] if data_folder else [
        os.path.dirname(os.path.abspath(os.fspath(model_path))), os.getcwd()]
    return make_dataset(data, inputs, list(resolved.get("outputs") or {}),
                        _data_path(data, folders))


def default_output(model_path: str | os.PathLike, method: str) -> str:
    """`model.onnx` -> `model.dynamic.onnx` (or `.static`, `.float16`), beside it."""
    stem = os.path.splitext(os.fspath(model_path))[0]
    return f"{stem}.{method}.onnx"


def rejected_path(out: str) -> str:
    """Where a copy that fails the gate is kept: `model.dynamic.onnx` ->
    `model.dynamic.rejected.onnx`."""
    return f"{os.path.splitext(out)[0]}.rejected.onnx"


def gate(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
         max_drop: float) -> tuple[float, bool]:
    """The worst drop over outputs and the verdict. A classifier's drop is its accuracy lost
    (a fraction: 0.01 is one point); a regressor's is the relative increase of its MAE."""
    if max_drop < 0:
        raise ValueError(f"max_drop must be at least 0, not {max_drop}")
    drops = []
    for name, metrics in before.items():
        if "accuracy" in metrics:
            drops.append(metrics["accuracy"] - after[name]["accuracy"])
        else:
            drops.append((after[name]["mae"] - metrics["mae"]) / max(metrics["mae"], 1e-12))
    worst = max(drops) if drops else 0.0
    return worst, bool(worst <= max_drop + 1e-12)


def _agreement(a: np.ndarray, b: np.ndarray, task: str) -> dict[str, float]:
    if task == "classification":
        return {"top1_agreement": float(np.mean(_classes(a) == _classes(b)))}
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs_diff": float(diff.max()) if diff.size else 0.0}


def _model_path(run_or_model: str | os.PathLike) -> str:
    path = os.fspath(run_or_model)
    if os.path.isdir(path):
        path = os.path.join(path, MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    return path


def _record(report_path: str, key: str, report: dict[str, Any]) -> None:
    """Add a report to `quantization.json` (one entry per file), keeping the others."""
    entries: dict[str, Any] = {}
    if os.path.isfile(report_path):
        try:
            with open(report_path, encoding="utf-8") as fh:
                loaded = json.load(fh)
            entries = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            entries = {}
    entries[key] = report
    write_json(report_path, entries)


def quantize_and_gate(run_or_model: str | os.PathLike, method: str, max_drop: float = 0.01,
                      out: str | os.PathLike | None = None, *, data_folder: str | None = None,
                      dataset: Dataset | None = None, calibration_samples: int = 256,
                      per_channel: bool = True) -> dict[str, Any]:
    """Quantize a run's `model.onnx` (or any nnspec model file), evaluate the float and the
    quantized model on the validation split (else test, else training) and keep the copy at
    `out` (default `MODEL.METHOD.onnx` beside it) when no output loses more than `max_drop`;
    otherwise keep it as `*.rejected.onnx`. Calibration uses the first `calibration_samples`
    training samples. `dataset` skips rebuilding the data (as `train_run` has it in hand).
    Writes the report into `quantization.json` beside the output and returns it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop is a fraction of accuracy in [0, 1], not {max_drop}")
    model_path = _model_path(run_or_model)
    resolved = resolved_spec_of(model_path)
    data = dataset or load_model_data(model_path, data_folder, resolved)
    split_name, split = next(((n, s) for n, s in (("validation", data.validation),
                                                  ("test", data.test),
                                                  ("train", data.train)) if len(s)))
    out = os.fspath(out) if out else default_output(model_path, method)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    candidate = os.path.join(folder, f".{os.path.basename(out)}.candidate")
    calibration = {k: v[:calibration_samples] for k, v in data.train.x.items()}
    try:
        quantize_model(model_path, candidate, method,
                       calibration if method == "static" else None, per_channel)
        tasks = output_tasks(resolved)
        float_out = predict(model_path, split.x)
        quant_out = predict(candidate, split.x)
        names = [n for n in split.y if n in float_out]
        tasks = {n: tasks.get(n) or _task_guess(float_out[n], split.y[n]) for n in names}
        before = {n: _score(float_out[n], split.y[n], tasks[n]) for n in names}
        after = {n: _score(quant_out[n], split.y[n], tasks[n]) for n in names}
        worst, passed = gate(before, after, max_drop)
        final = out if passed else rejected_path(out)
        os.replace(candidate, final)
    finally:
        if os.path.exists(candidate):
            os.unlink(candidate)
    if passed and os.path.exists(rejected_path(out)):
        os.unlink(rejected_path(out))
    size_before, size_after = os.path.getsize(model_path), os.path.getsize(final)
    outputs: dict[str, Any] = {}
    for n in names:
        entry: dict[str, Any] = {"task": tasks[n]}
        for metric in before[n]:
            entry[f"{metric}_before"] = before[n][metric]
            entry[f"{metric}_after"] = after[n][metric]
        if "accuracy" in before[n]:
            entry["change_points"] = 100.0 * (after[n]["accuracy"] - before[n]["accuracy"])
        entry.update(_agreement(float_out[n], quant_out[n], tasks[n]))
        outputs[n] = entry
    primary = next((outputs[n] for n in names if tasks[n] == "classification"), None)
    report: dict[str, Any] = {
        "model": model_path,
        "output": final,
        "method": method,
        "settings": json.loads(_metadata(final)["quantization"]),
        "split": split_name,
        "samples": len(split),
        "size": {"before_bytes": size_before, "after_bytes": size_after,
                 "ratio": size_after / size_before},
        **({k: primary[k] for k in ("accuracy_before", "accuracy_after", "change_points",
                                    "top1_agreement")} if primary else {}),
        "outputs": outputs,
        "drop": worst,
        "max_drop": max_drop,
        "passed": passed,
    }
    _record(os.path.join(folder, REPORT), os.path.basename(final), report)
    return report
