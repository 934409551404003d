"""One model, several runtimes: onnxruntime, tract and ONNX's reference evaluator.

Each runner takes a model (path or serialized bytes) and named numpy inputs and returns the
outputs by name, so a model can be proven on every runtime a device might use.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable, Mapping

import numpy as np

Model = str | os.PathLike | bytes
Feeds = Mapping[str, np.ndarray]


def run_onnxruntime(model: Model, feeds: Feeds) -> dict[str, np.ndarray]:
    """onnxruntime on the CPU."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else os.fspath(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def run_tract(model: Model, feeds: Feeds) -> dict[str, np.ndarray]:
    """tract (Sonos' Rust runtime, from the `tract` package), optimised as on a device."""
    import tract

    with _as_path(model) as path:
        typed = tract.onnx().load(path).into_model()
        names = [typed.input_name(i) for i in range(typed.input_count())]
        # tract folds the final Identity nodes away and renames outputs after their producers;
        # its outputs keep the model's order, so take the names from the model itself (read
        # before into_runnable(), which consumes the model).
        fallback = [typed.output_name(i) for i in range(typed.output_count())]
        values = typed.into_runnable().run([np.ascontiguousarray(feeds[n]) for n in names])
        outs = _output_names(path) or fallback
    return {n: v.to_numpy() for n, v in zip(outs, values)}


def _output_names(path: str) -> list[str] | None:
    try:
        import onnx
    except ImportError:
        return None
    return [o.name for o in onnx.load(path, load_external_data=False).graph.output]


def run_reference(model: Model, feeds: Feeds) -> dict[str, np.ndarray]:
    """ONNX's reference evaluator (`onnx.reference`): slow, but the specification in code."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(
        os.fspath(model))
    evaluator = ReferenceEvaluator(proto)
    names = [o.name for o in proto.graph.output]
    return dict(zip(names, evaluator.run(names, dict(feeds))))


RUNNERS: dict[str, Callable[[Model, Feeds], dict[str, np.ndarray]]] = {
    "onnxruntime": run_onnxruntime,
    "tract": run_tract,
    "reference": run_reference,
}
_MODULES = {"onnxruntime": "onnxruntime", "tract": "tract", "reference": "onnx"}


def available() -> list[str]:
    """The runtimes installed here."""
    return [name for name, module in _MODULES.items() if importlib.util.find_spec(module)]


class _as_path:
    """A path for a model given as bytes (tract reads files)."""

    def __init__(self, model: Model):
        self.model, self.tmp = model, None

    def __enter__(self) -> str:
        if not isinstance(self.model, bytes):
            return os.fspath(self.model)
        fd, self.tmp = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.model)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            os.unlink(self.tmp)
