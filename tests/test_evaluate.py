"""`nnspec evaluate`: the exported model's metrics on a split agree with training's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnspec.compiler.data.dataset import load_digits
from nnspec.main import main


def test_evaluate_reproduces_the_runs_test_metrics(small_run, capsys):
    run, _ = small_run
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = json.loads((run / "metrics.json").read_text())["test"]
    assert report["samples"] > 0
    assert report["output"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert report["output"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def test_evaluate_on_a_file_with_chosen_metrics(small_run, tmp_path, capsys):
    run, _ = small_run
    digits = load_digits()
    np.savez(tmp_path / "d.npz", x=digits["x"][:300], y=digits["y"][:300].astype(np.int64))
    assert main(["evaluate", str(run / "model.onnx"), "--data", str(tmp_path / "d.npz"),
                 "--metrics", "accuracy,f1,top_k_accuracy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["output"]
    assert set(report) == {"loss", "accuracy", "f1", "top_k_accuracy"}
    assert report["top_k_accuracy"] >= report["accuracy"] > 0.8


def test_evaluate_a_non_nnspec_model_is_bad_input(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "m.onnx"))
    assert main(["evaluate", str(tmp_path / "m.onnx")]) == 2
    assert "no resolved spec in its metadata" in capsys.readouterr().err
