"""One training run end to end: spec to graph, train, export, cross-check, run directory."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from nnspec import __version__
from nnspec._io import write_bytes, write_json, write_text
from nnspec.compiler.data.dataset import Dataset, make_dataset
from nnspec.compiler.graph import Graph, build_graph
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parity_inputs(graph: Graph, data: Dataset, samples: int) -> dict[str, Any]:
    """Held-out samples for the cross-check: test first, then validation, then training."""
    split = data.test if len(data.test) else data.validation if len(data.validation) else (
        data.train)
    return {name: split.x[name][:samples] for name in graph.inputs}


def train_run(loaded: LoadedSpec, out_dir: str, log: Callable[[str], None] = lambda s: None
              ) -> RunResult:
    """Train the spec's model, export it to ONNX, cross-check the export and write the run
    directory. Raises `SpecError`/`DataError` for bad input and `ParityError` when the export
    does not reproduce the trained model."""
    spec = loaded.spec
    for section in ("data", "train"):
        if getattr(spec, section) is None:
            raise SpecError.at(loaded.doc.source.locate(()), f"`{section}` section is required "
                               "to train")
    graph = build_graph(loaded)
    from nnspec.compiler.train import Trainer, resolve_heads

    heads = resolve_heads(loaded, graph)
    data = make_dataset(spec.data, spec.inputs, list(graph.outputs), loaded.folder)
    log(f"data: {len(data.train)} train, {len(data.validation)} validation, "
        f"{len(data.test)} test samples")

    from nnspec.compiler.onnx_export import check_shapes, to_onnx
    from nnspec.compiler.parity import cross_check
    trainer = Trainer(graph, spec.train, heads)
    result = trainer.fit(data, log)

    os.makedirs(out_dir, exist_ok=True)
    with open(loaded.file, "rb") as fh:
        source = fh.read()
    resolved = resolved_spec(loaded, graph)
    resolved_text = yaml.safe_dump(resolved, sort_keys=False)
    write_bytes(os.path.join(out_dir, "spec.yaml"), source)
    write_text(os.path.join(out_dir, "resolved_spec.yaml"), resolved_text)
    write_json(os.path.join(out_dir, "history.json"), result.history)

    import jax

    metrics = {**result.metrics, "training": {
        "samples_per_second": result.samples_per_second,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "steps": result.steps,
        "epochs": spec.train.epochs,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)

    labels = {k: o.labels for k, o in (spec.outputs or {}).items() if o.labels}
    metadata = {
        "nnspec_version": __version__,
        "spec_name": spec.name,
        "spec_sha256": _sha256(source),
        "resolved_spec": json.dumps(resolved, separators=(",", ":")),
        "labels": json.dumps(labels),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
    model = to_onnx(graph, result.variables, spec.export.opset, metadata,
                    doc=spec.description or spec.name)
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
    for stale in (REJECTED,):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.unlink(os.path.join(out_dir, stale))
    return RunResult(out_dir, metrics, parity)
