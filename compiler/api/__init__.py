"""The public Python API: a few verbs a notebook or a pipeline can guess.

    spec = nnspec.load("model.yaml", overrides={"train.epochs": 3})
    spec.validate()                      # every problem at once, located, as one SpecError
    spec.summary()                       # a table (rich / notebook repr, .to_dict())
    run = nnspec.train(spec, out="runs/x")
    run.metrics, run.history, run.parity, run.path
    run.evaluate("test"), run.predict(x)
    nnspec.open_run("runs/x")

The `nnspec` command is a thin shell over these functions.
"""

from nnspec.compiler.api.callbacks import Callback, EpochLines, ProgressBar
from nnspec.compiler.api.run import Run, open_run, train
from nnspec.compiler.api.spec import Spec, load
from nnspec.compiler.api.summary import Summary
from nnspec.compiler.api.tools import evaluate, export_ort, join_processes, quantize, schema

__all__ = ["Callback", "EpochLines", "ProgressBar", "Run", "Spec", "Summary", "evaluate",
           "export_ort", "join_processes", "load", "open_run", "quantize", "schema", "train"]
