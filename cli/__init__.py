"""nnspec: a YAML spec in; a Flax model trained under XLA and an ONNX file cross-checked out.

    import nnspec
    spec = nnspec.load("examples/quickstart.yaml", overrides={"train.epochs": 3})
    run = nnspec.train(spec, out="runs/quickstart")
    run.metrics["test"]["accuracy"], run.predict(images)

The names below load on first use, so `import nnspec` (and `nnspec.runtime` on a device with
only numpy and onnxruntime) stays light: nothing imports JAX until training needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load": "nnspec.compiler.api.spec", "Spec": "nnspec.compiler.api.spec",
    "train": "nnspec.compiler.api.run", "open_run": "nnspec.compiler.api.run",
    "Run": "nnspec.compiler.api.run", "Summary": "nnspec.compiler.api.summary",
    "Callback": "nnspec.compiler.api.callbacks", "ProgressBar": "nnspec.compiler.api.callbacks",
    "EpochLines": "nnspec.compiler.api.callbacks", "evaluate": "nnspec.compiler.api.tools",
    "quantize": "nnspec.compiler.api.tools", "export_ort": "nnspec.compiler.api.tools",
    "schema": "nnspec.compiler.api.tools", "join_processes": "nnspec.compiler.api.tools",
    "SpecError": "nnspec.spec.errors", "DataError": "nnspec.spec.errors",
    "UsageError": "nnspec.spec.errors",
}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from nnspec.compiler.api import (  # noqa: F401
        Callback,
        EpochLines,
        ProgressBar,
        Run,
        Spec,
        Summary,
        evaluate,
        export_ort,
        join_processes,
        load,
        open_run,
        quantize,
        schema,
        train,
    )
    from nnspec.spec.errors import DataError, SpecError, UsageError  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nnspec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
