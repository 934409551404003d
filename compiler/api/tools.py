"""The API's verbs on exported models and on the language itself: evaluate, quantize, convert
to ORT, the JSON Schema, and joining the processes of a multi-host run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from nnspec.spec.errors import UsageError


def _model_file(model: str | os.PathLike) -> str:
    """An .onnx file, or the model.onnx of a run directory."""
    path = os.fspath(model)
    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    if not os.path.isfile(path):
        raise UsageError(f"MODEL: no model file at {path!r}")
    if not path.endswith(".onnx"):
        raise UsageError(f"MODEL: expected an .onnx file or a run directory, not {path!r}")
    return path


def evaluate(model: str | os.PathLike, split: str = "test",
             data: str | os.PathLike | Mapping[str, Any] | None = None,
             data_folder: str | None = None, metrics: Sequence[str] | None = None
             ) -> dict[str, Any]:
    """Loss and metrics of an exported model (a run directory or an .onnx file made by
    `nnspec train`) on a split of its spec's data, an .npz file, or arrays, in onnxruntime."""
    from nnspec.compiler.export.evaluate import evaluate_model
    from nnspec.runtime import load as load_model

    return evaluate_model(load_model(_model_file(model)), split, data, data_folder, metrics)


def quantize(model: str | os.PathLike, method: str, max_drop: float = 0.01,
             out: str | None = None, data_folder: str | None = None,
             calibration_samples: int = 256, per_channel: bool = True) -> dict[str, Any]:
    """A smaller copy of an exported model (`dynamic`, `static` or `float16`), evaluated against
    the float model and kept only if it loses at most `max_drop` accuracy; the report says."""
    if not 0 <= max_drop <= 1:
        raise UsageError(f"--max-drop: a fraction of accuracy in [0, 1] (0.01 is one point), "
                         f"not {max_drop}")
    if calibration_samples < 1:
        raise UsageError(f"--calibration-samples: at least 1, not {calibration_samples}")
    from nnspec.compiler.export.quantize import quantize_and_gate

    return quantize_and_gate(os.fspath(model), method, max_drop, out, data_folder=data_folder,
                             calibration_samples=calibration_samples, per_channel=per_channel)


def export_ort(model: str | os.PathLike, out: str | None = None,
               target_platform: str | None = None) -> dict[str, Any]:
    """Convert an exported model to onnxruntime's ORT format into `out` (default: beside it)
    and check the converted file against the original; returns the report."""
    from nnspec.compiler.export.ort import export_ort as convert

    path = _model_file(model)
    return convert(path, out or os.path.dirname(os.path.abspath(path)), target_platform)


def schema() -> dict[str, Any]:
    """The spec language as a JSON Schema (draft-07), for editors."""
    from nnspec.compiler.graph.schema import spec_schema

    return spec_schema()


def join_processes(coordinator: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None, distributed: bool = False) -> bool | None:
    """Join the other processes of a multi-host run before training: None for a run of one
    process (nothing given), else whether this is the process that reports (process 0).
    `distributed=True` reads the cluster's environment (SLURM, Open MPI, Kubernetes, TPU)."""
    explicit = (coordinator, num_processes, process_id)
    if not distributed and all(v is None for v in explicit):
        return None
    if not distributed and any(v is None for v in explicit):
        raise UsageError("--coordinator, --num-processes and --process-id go together (or use "
                         f"--distributed); received: coordinator={coordinator}, "
                         f"num_processes={num_processes}, process_id={process_id}")
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise UsageError(f"--process-id must be in [0, {num_processes}). Received: "
                         f"process_id={process_id}")
    from nnspec.compiler.train.distributed import initialize, is_primary

    try:
        initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as err:
        hint = (" (--distributed reads the address from a SLURM, Open MPI, Kubernetes or Cloud "
                "TPU environment; elsewhere give --coordinator, --num-processes and "
                "--process-id)") if distributed else ""
        raise UsageError(f"could not join the other processes: {err}{hint}") from None
    return is_primary()
