"""`nnspec.train` and `Run`: a training run started from Python, and a finished one reopened."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from nnspec.compiler.api.callbacks import Callbacks
from nnspec.compiler.api.spec import Overrides, Spec, load
from nnspec.spec.errors import DataError, UsageError

Arrays = Mapping[str, Any] | tuple[Any, Any]
"""In-memory data: `{"pixels": x, "digit": y}` (named after the inputs and outputs, with
optional `NAME_test` arrays), `{"x": x, "y": y}`, or `(x, y)`."""


class Run:
    """A run directory written by `nnspec train`: its records, its model and what it can do.

    `metrics`, `history` and `parity` are read from the directory when first asked for, so a
    `Run` can be reopened any time later with `nnspec.open_run(path)`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(os.path.join(self.path, "metrics.json")):
            raise UsageError(f"{self.path!r} is not a finished run directory (no metrics.json); "
                             "give the --out folder of a finished `nnspec train`")
        self._model: Any = None

    def _json(self, name: str) -> Any:
        with open(os.path.join(self.path, name)) as fh:
            return json.load(fh)

    @property
    def metrics(self) -> dict[str, Any]:
        """Loss and metrics per split (`train`, `validation`, `test`) and `training` (speed,
        compile time, epochs, route, devices)."""
        return self._json("metrics.json")

    @property
    def history(self) -> list[dict[str, float]]:
        """One record per epoch (`pandas.DataFrame(run.history)` gives the table)."""
        return self._json("history.json")

    @property
    def parity(self) -> dict[str, Any]:
        """The cross-check of the export against JAX: max differences, tolerance, `passed`."""
        return self._json("parity.json")

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, "model.onnx")

    @property
    def model(self) -> Any:
        """The exported model in onnxruntime (`nnspec.runtime.Model`)."""
        if self._model is None:
            from nnspec.runtime import load as load_model

            self._model = load_model(self.model_path)
        return self._model

    @property
    def spec(self) -> Spec:
        """The spec as it ran (overrides applied, defaults filled, layers named)."""
        return load(os.path.join(self.path, "resolved_spec.yaml"))

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        """The exported model's outputs (with `NAME_class` for argmax outputs) for a batch:
        an array for a single-input model, or a mapping by input name."""
        return self.model.predict(x)

    def evaluate(self, data: str | Arrays = "test",
                 metrics: Iterable[str] | None = None) -> dict[str, Any]:
        """Loss and metrics of the exported model: on a split of the spec's data (`"train"`,
        `"validation"`, `"test"`), an .npz path, or arrays (see `Arrays`)."""
        from nnspec.compiler.export.evaluate import evaluate_model

        wanted = list(metrics) if metrics else None
        if isinstance(data, str) and data in ("train", "validation", "test"):
            return evaluate_model(self.model, data, None, None, wanted)
        given = data if isinstance(data, str) else _as_mapping(data)  # an .npz path or arrays
        return evaluate_model(self.model, "test", given, None, wanted)

    def __repr__(self) -> str:
        return f"Run({self.path!r})"


def open_run(path: str | os.PathLike) -> Run:
    """Reopen a finished run directory."""
    return Run(path)


def _as_mapping(data: Arrays) -> dict[str, Any]:
    if isinstance(data, tuple):
        if len(data) != 2:
            raise UsageError(f"data: expected (x, y), got a tuple of {len(data)}")
        return {"x": data[0], "y": data[1]}
    if isinstance(data, Mapping):
        return dict(data)
    raise UsageError(f"data: expected a mapping of arrays or (x, y); got "
                     f"{type(data).__name__}")


def _dataset(spec: Spec, data: Arrays) -> Any:
    from nnspec.compiler.data.dataset import split_arrays
    from nnspec.spec.schema import DataSpec

    arrays = {}
    for name, value in _as_mapping(data).items():
        try:
            arrays[name] = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise DataError(f"data[{name!r}]: cannot be read as an array: {err}") from None
    loaded = spec.loaded
    how = loaded.spec.data or DataSpec(source="npz", path="<arrays>")
    return split_arrays(arrays, how, loaded.spec.inputs, list(spec.graph.outputs), "data")


def train(spec: Spec | str | os.PathLike | Mapping[str, Any], out: str | os.PathLike | None = None,
          data: Arrays | None = None, callbacks: Iterable[Any] = (), resume: bool = False,
          overrides: Overrides = None) -> Run | None:
    """Train a spec, export it to ONNX, cross-check the export and write the run directory
    (default `runs/NAME`); return the finished `Run` (None in the processes of a multi-host
    run other than process 0, which alone writes the run directory).

    `spec` is a `Spec`, a path or a dict. `data` replaces the spec's data source with
    in-memory arrays (split as the spec's `data` section says). `callbacks` see each epoch
    and may stop the run (see `nnspec.compiler.api.callbacks`). Raises `SpecError` and
    `DataError` for bad input, `ParityError` when the export fails its cross-check,
    `NonFiniteError` when the loss diverges, `Interrupted` after SIGINT/SIGTERM.
    """
    if not isinstance(spec, Spec):
        spec = Spec.from_dict(spec) if isinstance(spec, Mapping) else load(spec)
    if overrides:
        spec = spec.with_overrides(overrides)
    loaded = spec.loaded
    out = os.fspath(out) if out is not None else os.path.join("runs", loaded.spec.name)
    dataset = _dataset(spec, data) if data is not None else None
    hooks = Callbacks(callbacks)
    from nnspec.compiler.run import train_run

    train_spec = loaded.spec.train
    hooks.on_train_begin({"spec": loaded.spec.name, "out": out, "resume": resume,
                          "epochs": train_spec.epochs if train_spec else 0})
    run = None
    try:
        train_run(loaded, out, hooks.on_log, resume=resume,
                  progress=hooks.on_step if hooks.wants_steps else None,
                  on_epoch=lambda row: hooks.on_epoch_end(int(row["epoch"]), row),
                  data=dataset, source=spec.text if isinstance(spec.text, bytes)
                  else spec.text.encode())
        run = Run(out) if os.path.isfile(os.path.join(out, "metrics.json")) else None
        return run
    finally:
        hooks.on_train_end(run)
