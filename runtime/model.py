"""Run an exported model with numpy and onnxruntime only: what an edge device installs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}


class InputError(ValueError):
    """Input that does not fit the model: named, with the shape or dtype it expected."""


class UsageError(InputError):
    """Bad command-line input to a runtime command (exit code 2, as for bad input data)."""


MODEL_FILE = "model.onnx"


def model_path(path: str | os.PathLike) -> str:
    """The ONNX file a command was given: the file itself, or `model.onnx` inside a run
    directory (`nnspec bench runs/quickstart`). Raises FileNotFoundError naming both."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(inside):
            raise FileNotFoundError(f"no {MODEL_FILE} in the directory {path!r} (give a run "
                                    "directory written by `nnspec train`, or an .onnx file)")
        return inside
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    return path


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, per-sample shape (None for free) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


def _info(arg: Any) -> TensorInfo:
    dims = tuple(d if isinstance(d, int) else None for d in arg.shape[1:])
    return TensorInfo(arg.name, dims, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


class Model:
    """An ONNX model loaded into an onnxruntime session on the CPU."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = model_path(path)
        from nnspec.runtime.safety import check_model_file

        check_model_file(self.path)  # external data outside the folder; onnx.checker
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.inputs = [_info(a) for a in self.session.get_inputs()]
        self.outputs = [_info(a) for a in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_ranges: dict[str, list[int]] = json.loads(
            self.metadata.get("input_ranges", "{}"))

    @property
    def labels(self) -> dict[str, list[str]]:
        """Class names per output, when the spec gave them."""
        return json.loads(self.metadata.get("labels", "{}"))

    def _prepare(self, info: TensorInfo, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.shape == tuple(d for d in info.shape) and None not in info.shape:
            x = x[None]  # one sample without its batch axis
        want = info.shape
        size = int(np.prod(want)) if None not in want else None
        if size and x.ndim >= 1 and x.shape[1:] != tuple(want) and x.size and (
                int(np.prod(x.shape[1:])) == size):
            x = x.reshape((len(x), *want))  # as training does: same elements, row-major
        if x.ndim != len(want) + 1 or any(w is not None and w != g
                                          for w, g in zip(want, x.shape[1:])):
            raise InputError(f"input {info.name!r} expects shape (batch, "
                             f"{', '.join('?' if d is None else str(d) for d in want)}), "
                             f"got {x.shape}")
        if x.dtype != info.dtype:
            if np.issubdtype(info.dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
                if not np.array_equal(x, np.round(x)):
                    raise InputError(f"input {info.name!r} expects {info.dtype.name} values, "
                                     f"got non-integer {x.dtype.name} data")
            if np.issubdtype(info.dtype, np.integer) and x.size:
                lo, hi = np.iinfo(info.dtype).min, np.iinfo(info.dtype).max
                if x.min() < lo or x.max() > hi:
                    raise InputError(f"input {info.name!r} expects {info.dtype.name} values in "
                                     f"[{lo}, {hi}], got [{x.min()}, {x.max()}]")
            x = x.astype(info.dtype)
        bounds = self.input_ranges.get(info.name)
        if bounds and x.size and (x.min() < bounds[0] or x.max() >= bounds[1]):
            raise InputError(f"input {info.name!r} holds ids outside [{bounds[0]}, {bounds[1]}) "
                             f"(the embedding's table): got [{x.min()}, {x.max()}]")
        return np.ascontiguousarray(x)

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for a batch (or a single sample) of inputs."""
        if not isinstance(x, Mapping):
            if len(self.inputs) != 1:
                raise InputError(f"the model has {len(self.inputs)} inputs "
                                 f"({', '.join(i.name for i in self.inputs)}); pass a mapping")
            x = {self.inputs[0].name: x}
        missing = [i.name for i in self.inputs if i.name not in x]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes "
                             f"{[i.name for i in self.inputs]}")
        feeds = {i.name: self._prepare(i, x[i.name]) for i in self.inputs}
        values = self.session.run(None, feeds)
        return {o.name: v for o, v in zip(self.outputs, values)}


def load(path: str | os.PathLike, threads: int | None = None) -> Model:
    """Load an exported model (an .onnx file, or a run directory holding model.onnx) for
    inference."""
    return Model(path, threads)
