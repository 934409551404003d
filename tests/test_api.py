"""The Python API's contract beyond the tutorial: overrides, errors, callbacks, reopening, and
what `import nnspec` costs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, SMALL

import nnspec
from nnspec.compiler.data.dataset import load_digits


def test_overrides_as_a_mapping_or_as_set_strings_give_the_same_spec():
    a = nnspec.load(EXAMPLES / "quickstart.yaml", {"train.epochs": 3, "layers.fc1.units": 16})
    b = nnspec.load(EXAMPLES / "quickstart.yaml", ["train.epochs=3", "layers.fc1.units=16"])
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["train"]["epochs"] == 3
    assert a.graph.node("fc1").shape == (16,)
    c = a.with_overrides({"train.optimizer.learning_rate": 0.01})
    assert c.to_dict()["train"]["optimizer"]["learning_rate"] == 0.01
    assert a.to_dict()["train"]["optimizer"]["learning_rate"] == 1e-3  # a is unchanged
    with pytest.raises(TypeError, match="mapping or a list"):
        nnspec.load(EXAMPLES / "quickstart.yaml", "train.epochs=3")


def test_errors_are_located_and_reported_together():
    spec = nnspec.load(EXAMPLES / "quickstart.yaml", {"layers.fc1.units": -1, "train.epochs": 0})
    with pytest.raises(nnspec.SpecError) as err:
        spec.validate()
    assert len(err.value.problems) == 2
    assert all(str(p).startswith("--set ") for p in err.value.problems)
    with pytest.raises(nnspec.SpecError, match=r"no-such\.yaml:1:1: cannot read spec"):
        nnspec.load("no-such.yaml")
    with pytest.raises(nnspec.UsageError, match="not a finished run directory"):
        nnspec.open_run(ROOT)


def test_summary_is_data_and_renders_in_a_notebook():
    summary = nnspec.load(EXAMPLES / "quickstart.yaml").summary()
    as_dict = summary.to_dict()
    assert as_dict["params"] == sum(r["params"] + r["non_trainable"] for r in as_dict["layers"])
    assert as_dict["params"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    html = summary._repr_html_()
    assert "<" in html and "fc1" in html and "17,226" in html
    assert "fc1" in str(summary)


def test_importing_nnspec_and_validating_load_no_jax():
    code = ("import sys, nnspec\n"
            f"nnspec.load({str(EXAMPLES / 'cnn.yaml')!r}).validate()\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class Recorder(nnspec.Callback):
    def __init__(self):
        self.calls: list[str] = []
        self.ended: object = "not called"

    def on_train_begin(self, info):
        self.calls.append(f"begin {info['epochs']}")

    def on_step(self, progress):
        self.calls.append("step")

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(f"epoch {epoch} {'loss' in metrics}")

    def on_train_end(self, run):
        self.ended = run


def test_train_on_arrays_with_callbacks_then_reopen(tmp_path):
    digits = load_digits()
    spec = nnspec.Spec.from_yaml(SMALL, overrides={"train.epochs": 2})
    recorder = Recorder()
    run = nnspec.train(spec, tmp_path / "run", data=(digits["x"][:300], digits["y"][:300]),
                       callbacks=[recorder])
    assert recorder.calls[0] == "begin 2"
    assert "step" in recorder.calls
    assert [c for c in recorder.calls if c.startswith("epoch")] == ["epoch 1 True",
                                                                     "epoch 2 True"]
    assert recorder.ended is not None and recorder.ended.path == run.path
    assert sorted(run.metrics) == ["test", "train", "training", "validation"]  # split as SMALL says
    assert run.metrics["test"]["accuracy"] > 0.2  # learnt something in 2 epochs (chance: 0.1)
    assert run.parity["passed"]
    again = nnspec.open_run(run.path)
    assert again.history == run.history and len(again.history) == 2
    probs = again.predict(digits["x"][1000:1010])["output"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    report = again.evaluate({"pixels": digits["x"][1000:1100], "output":
                             digits["y"][1000:1100]})
    assert report["samples"] == 100 and 0.0 <= report["output"]["accuracy"] <= 1.0


def test_a_failed_run_tells_its_callbacks_and_raises_a_data_error(tmp_path):
    digits = load_digits()
    recorder = Recorder()
    bad = digits["y"][:200] + 20  # labels past the 10 classes
    with pytest.raises(nnspec.DataError, match="class labels range over"):
        nnspec.train(nnspec.Spec.from_yaml(SMALL), tmp_path / "run",
                     data={"x": digits["x"][:200], "y": bad}, callbacks=[recorder])
    assert recorder.ended is None
