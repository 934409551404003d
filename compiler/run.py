"""One training run end to end: spec to graph, train, export, cross-check, run directory."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from nnspec import __version__
from nnspec._io import write_bytes, write_json, write_text
from nnspec.compiler.data.dataset import Dataset, make_dataset
from nnspec.compiler.graph.ir import Graph, build_graph
from nnspec.spec.errors import SpecError
from nnspec.spec.validate import LoadedSpec

MODEL = "model.onnx"
REJECTED = "model.rejected.onnx"


class ParityError(RuntimeError):
    """The exported model does not reproduce the trained one within tolerance."""


@dataclass
class RunResult:
    """Paths and numbers of a finished run."""

    out_dir: str
    metrics: dict[str, Any]
    parity: dict[str, Any]


def resolved_spec(loaded: LoadedSpec, graph: Graph) -> dict[str, Any]:
    """The spec as it ran: overrides applied, defaults filled in, every layer named."""
    data = loaded.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    origin = {n.name: n.origin for n in graph.nodes if n.origin}
    data["layers"] = [
        {"type": n.type, "name": n.name, "inputs": [origin.get(i, i) for i in n.inputs],
         **n.layer.model_dump(mode="json")}
        for n in graph.nodes if not n.origin]
    data["outputs"] = {k: {**data.get("outputs", {}).get(k, {}), "from": origin.get(v, v)}
                       for k, v in graph.outputs.items()}
    return data


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lstm_status() -> str | None:
    from nnspec.compiler.kernels.lstm import status

    return status()


def parity_inputs(graph: Graph, data: Dataset, samples: int) -> dict[str, Any]:
    """Held-out samples for the cross-check: test first, then validation, then training."""
    split = data.test if len(data.test) else data.validation if len(data.validation) else (
        data.train)
    # asarray: a lazy column (source array_record) reads the rows it gives.
    return {name: np.asarray(split.x[name][:samples]) for name in graph.inputs}


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after every chunk of steps
    (about half a second), so the run saves a checkpoint and exits cleanly instead of dying
    mid-write."""

    def __init__(self) -> None:
        self.raised = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.raised


def _ignore(*args: Any) -> None:
    return None


def _both(record: Callable[[dict], Any], caller: Callable[[dict], bool | None] | None
          ) -> Callable[[dict], bool]:
    """Record an epoch, then ask the caller whether to stop (True stops after it)."""
    def on_epoch(row: dict) -> bool:
        record(row)
        return bool(caller(dict(row))) if caller else False

    return on_epoch


def _prepare(loaded: LoadedSpec, data: Dataset | None = None) -> tuple[Graph, Any, Dataset]:
    spec = loaded.spec
    for section in ("data", "train"):
        if getattr(spec, section) is None and not (section == "data" and data is not None):
            raise SpecError.at(loaded.doc.source.locate(()), f"`{section}` section is required "
                               "to train")
    graph = build_graph(loaded)
    from nnspec.compiler.train.heads import resolve_heads

    heads = resolve_heads(loaded, graph)
    if data is None:
        data = make_dataset(spec.data, spec.inputs, list(graph.outputs), loaded.folder,
                            labels={k: o.labels for k, o in (spec.outputs or {}).items()
                                    if o.labels}, stream=spec.train.pipeline)
    return graph, heads, data


def _plots(out_dir: str, graph: Graph, loaded: LoadedSpec, result: Any, heads: list,
           found: dict[str, list[str]] | None = None) -> None:
    """curves.png and a confusion matrix per classifier head, its classes named by the spec's
    labels or else the ones the data gave (`found`: a table's label column, image folders)."""
    from nnspec.compiler.train.evaluation import confusion_matrix
    from nnspec.compiler.train.losses import CLASSIFICATION
    from nnspec.compiler.train.plots import plot_confusion, plot_curves

    plot_curves(result.history, os.path.join(out_dir, "curves.png"))
    split = "test" if "test" in result.predictions else "validation"
    for head in heads:
        if head.loss.name not in CLASSIFICATION or split not in result.predictions:
            continue
        classes = graph.output_node(head.output).shape[-1]
        labels = ((loaded.spec.outputs or {}).get(head.output) or None)
        matrix = confusion_matrix(result.predictions[split][head.output],
                                  result.targets[split][head.output], classes)
        names = labels.labels if labels and labels.labels else (found or {}).get(head.output)
        if names is not None and len(names) != len(matrix) and not (labels and labels.labels):
            names = None  # the data's names do not fit this head's matrix: indices
        suffix = "" if len(heads) == 1 else f"_{head.output}"
        plot_confusion(matrix, names, os.path.join(out_dir, f"confusion{suffix}.png"),
                       title=f"{loaded.spec.name}: {head.output} ({split})")


# A failed write to the run directory: the disk is full, the folder read-only or missing.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EFBIG, errno.ENOTDIR, errno.EEXIST}


def _output_errors(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Turn a failed write into one clear OutputError (the CLI prints it, no traceback),
    leaving no candidate model behind; the checkpoints saved before stay usable."""
    @functools.wraps(fn)
    def wrapper(loaded: LoadedSpec, out_dir: str, *args: Any, **kwargs: Any) -> RunResult:
        from nnspec.compiler.train.checkpoint import OutputError

        try:
            return fn(loaded, out_dir, *args, **kwargs)
        except (OSError, OutputError) as err:
            if isinstance(err, OSError) and err.errno not in _WRITE_ERRNOS:
                raise
            candidate = os.path.join(out_dir, f".{MODEL}.candidate")
            if os.path.exists(candidate):
                os.unlink(candidate)
            if isinstance(err, OutputError):
                raise
            where = f" ({err.filename})" if err.filename else ""
            folder = os.path.join(out_dir, "checkpoints")
            saved = os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))
            kept = (f"the checkpoints saved before stay in {folder} (--resume continues from "
                    "them)" if saved else "no checkpoint had been saved")
            raise OutputError(f"cannot write the run directory {out_dir}: {err.strerror}"
                              f"{where}; no model was written, and {kept}") from None

    return wrapper


def _data_name(spec: Any) -> str:
    data = spec.data
    if data is None:
        return "the given data"
    path = getattr(data, "path", None)
    return f"the data file {path}" if path else f"the data ({data.source})"


@_output_errors
def train_run(loaded: LoadedSpec, out_dir: str, log: Callable[[str], None] = lambda s: None,
              resume: bool = False, progress: Callable[[dict], None] | None = None,
              on_epoch: Callable[[dict], bool | None] | None = None,
              data: Dataset | None = None, source: bytes | None = None) -> RunResult:
    """Train the spec's model, export it to ONNX, cross-check the export and write the run
    directory. `on_epoch` sees each epoch's record and returns True to stop after it; `data`
    replaces the spec's source; `source` is the spec's text when it is not a file. Raises
    `SpecError`/`DataError` for bad input, `ParityError` when the export
    does not reproduce the trained model, `NonFiniteError` when the loss diverges and
    `Interrupted` after SIGINT/SIGTERM (with a checkpoint saved)."""
    spec = loaded.spec
    graph, heads, data = _prepare(loaded, data)
    log(f"data: {len(data.train)} train, {len(data.validation)} validation, "
        f"{len(data.test)} test samples")
    if data.skipped:  # data.on_error: skip
        log(f"data: skipped {len(data.skipped)} bad samples: " + "; ".join(data.skipped[:10])
            + (f"; ... and {len(data.skipped) - 10} more" if len(data.skipped) > 10 else ""))

    import jax

    from nnspec.compiler.export.onnx_graph import check_shapes, to_onnx
    from nnspec.compiler.export.parity import cross_check
    from nnspec.compiler.train.checkpoint import Checkpoints
    from nnspec.compiler.train.distributed import barrier, is_primary
    from nnspec.compiler.train.engine import Trainer
    from nnspec.compiler.train.records import EpochRecords
    from nnspec.compiler.train.transfer import WEIGHTS, load_initial, save_weights

    primary = is_primary()  # with several processes, process 0 alone writes the run directory
    os.makedirs(out_dir, exist_ok=True)
    if source is None:
        with open(loaded.file, "rb") as fh:
            source = fh.read()
    resolved = resolved_spec(loaded, graph)
    if primary:
        write_bytes(os.path.join(out_dir, "spec.yaml"), source)
        write_text(os.path.join(out_dir, "resolved_spec.yaml"),
                   yaml.safe_dump(resolved, sort_keys=False))
    trainer = Trainer(graph, spec.train, heads, len(data.train))
    trainer.data_name = _data_name(spec)
    trainer.workers = spec.data.workers
    initial = None
    if spec.train.init_from:
        origin = spec.train.init_from
        origin = origin if os.path.isabs(origin) else os.path.join(loaded.folder, origin)
        initial = load_initial(origin, trainer.init(data.train.x), log)
    folder = os.path.join(out_dir, "checkpoints")
    if primary and not resume and os.path.isdir(folder):
        # A fresh run into an old run directory: the old checkpoints belong to another run.
        import shutil

        shutil.rmtree(folder)
    barrier("nnspec-checkpoints")  # no process opens them before process 0 has cleared them
    checkpoints = Checkpoints(folder, spec.train.checkpoint.keep)
    records = EpochRecords(out_dir) if primary else None
    try:
        with _StopFlag() as stop:
            result = trainer.fit(data, log, on_epoch=_both(records.add if records else _ignore,
                                                           on_epoch),
                                 checkpoints=checkpoints, resume=resume, stop=stop,
                                 initial=initial, on_resume=records.reset if records else
                                 _ignore, progress=progress)
    finally:
        checkpoints.close()
    result.targets = {name: split.y for name, split in data.splits().items()}
    metrics = {**result.metrics, "training": {
        "samples_per_second": result.samples_per_second,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "steps": result.steps,
        "epochs": len(result.history),
        "stopped_early_at_epoch": result.stopped_early,
        "best_epoch": result.best_epoch,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "loop": trainer.loop,
        "pipeline": trainer.pipeline,
        # Which path an LSTM took ("fused CPU kernel" or "XLA (why)"); absent without one.
        **({"lstm": lstm_path} if (lstm_path := _lstm_status()) else {}),
        "input_wait_seconds": result.input_wait_seconds,
        # The environment that shapes CPU speed and numerics (nnspec/_cpu.py sets both).
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "processes": jax.process_count(),
    }}
    if not primary:
        return RunResult(out_dir, metrics, {})
    save_weights(os.path.join(out_dir, WEIGHTS), result.variables)
    _plots(out_dir, graph, loaded, result, heads, data.labels)
    write_json(os.path.join(out_dir, "metrics.json"), metrics)

    # Class names the data gave (a table's label column, image folder names), unless the
    # spec names them.
    labels = {**data.labels, **{k: o.labels for k, o in (spec.outputs or {}).items()
                                if o.labels}}
    metadata = {
        "nnspec_version": __version__,
        "spec_name": spec.name,
        "spec_sha256": _sha256(source),
        "resolved_spec": json.dumps(resolved, separators=(",", ":")),
        "labels": json.dumps(labels),
        # A table's preprocessing (columns, vocabularies, fill values), applied by the runtime
        # to raw rows (nnspec.runtime.tables).
        **({"table": json.dumps(data.table, separators=(",", ":"))} if data.table else {}),
        # How each output's loss read it: "logits" outputs are raw scores (softmax or sigmoid
        # of them are the probabilities); see nnspec.compiler.train.heads.loss_form.
        "loss_forms": json.dumps({h.output: {"loss": h.loss.name, "form": h.form}
                                  for h in heads}),
        # Integer ids outside an embedding's table give NaN in JAX and an error in
        # onnxruntime: the runtime rejects them at its boundary with a clear message.
        "input_ranges": json.dumps({r: [0, n.layer.input_dim] for n in graph.nodes
                                    if n.type == "embedding" for r in n.inputs
                                    if r in graph.inputs}),
        "jax_version": jax.__version__,
        "flax_version": _version_of("flax"),
        "optax_version": _version_of("optax"),
        "onnx_version": _version_of("onnx"),
        "onnxruntime_version": _version_of("onnxruntime"),
        "opset": str(spec.export.opset),
        "inputs": json.dumps({k: {"shape": v.shape, "dtype": v.dtype}
                              for k, v in spec.inputs.items()}),
        "outputs": json.dumps({k: {"from": v, "shape": list(graph.node(v).shape)}
                               for k, v in graph.outputs.items()}),
        "python": platform.python_version(),
    }
    argmax = [k for k, o in (spec.outputs or {}).items() if o.argmax]
    model = to_onnx(graph, result.variables, spec.export.opset, metadata,
                    doc=spec.description or spec.name, argmax=argmax)
    check_shapes(model, graph)
    candidate = os.path.join(out_dir, f".{MODEL}.candidate")
    write_bytes(candidate, model.SerializeToString())
    parity = cross_check(graph, result.variables, candidate,
                         parity_inputs(graph, data, spec.export.parity.samples),
                         spec.export.parity.atol, spec.export.parity.rtol)
    write_json(os.path.join(out_dir, "parity.json"), parity)
    if not parity["passed"]:
        os.replace(candidate, os.path.join(out_dir, REJECTED))
        raise ParityError(f"the exported model differs from the trained one: max abs diff "
                          f"{parity['max_abs_diff']:.3g} > atol {parity['atol']:g} (see "
                          f"{os.path.join(out_dir, 'parity.json')}); kept as {REJECTED}")
    from onnx import helper

    # The verdicts travel inside the model, so a device can tell what it runs.
    props = {**metadata, "metrics": json.dumps({k: v for k, v in metrics.items()
                                                 if k != "training"}),
             "parity": json.dumps({k: parity[k] for k in ("passed", "max_abs_diff",
                                                          "max_rel_diff", "atol", "rtol")})}
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    write_bytes(os.path.join(out_dir, MODEL), model.SerializeToString())
    os.unlink(candidate)
    if os.path.exists(os.path.join(out_dir, REJECTED)):
        os.unlink(os.path.join(out_dir, REJECTED))
    _deliverables(out_dir, graph, data, resolved, metrics, parity, spec, log)
    return RunResult(out_dir, metrics, parity)


def _deliverables(out_dir: str, graph: Graph, data: Dataset, resolved: dict[str, Any],
                  metrics: dict[str, Any], parity: dict[str, Any], spec: Any,
                  log: Callable[[str], None]) -> None:
    """What ships beside the model: the quantized copy the spec asks for (export.quantize),
    the golden bundle, the model card and SHA256SUMS (written last, over all of them)."""
    from nnspec.compiler.export.bundle import write_manifest, write_reference_bundle
    from nnspec.compiler.export.model_card import write_model_card
    from nnspec.compiler.graph.summary import summarize

    report = None
    quantize = spec.export.quantize
    if quantize is not None:
        from nnspec.compiler.export.quantize import quantize_and_gate

        report = quantize_and_gate(os.path.join(out_dir, MODEL), quantize.method,
                                   quantize.max_drop, dataset=data,
                                   calibration_samples=quantize.calibration_samples,
                                   per_channel=quantize.per_channel)
        log(f"{quantize.method}: {report['size']['ratio']:.2f}x the size, "
            f"{report.get('change_points', 0.0):+.2f} points, "
            f"{'kept' if report['passed'] else 'rejected'}: {report['output']}")
    golden = parity_inputs(graph, data, 16)
    write_reference_bundle(out_dir, golden)  # expected outputs: model.onnx in onnxruntime
    write_model_card(out_dir, resolved, metrics, parity, summary_rows=summarize(graph),
                     sample_inputs=golden)
    write_manifest(out_dir)
    if report is not None and not report["passed"]:
        from nnspec.compiler.export.quantize import GateError

        raise GateError(f"the {quantize.method} model loses {100 * report['drop']:.2f} points, "
                        f"more than export.quantize.max_drop {quantize.max_drop:g} allows; kept "
                        f"as {report['output']} (see quantization.json)")
