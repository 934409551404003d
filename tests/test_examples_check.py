"""Every example trains (briefly) and its exported model passes `nnspec check` on
onnxruntime, tract and the ONNX reference evaluator. Slow: `pytest -m slow`."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, run_cli

OFFLINE = sorted(p for p in EXAMPLES.glob("*.yaml") if p.stem != "mnist_mlp")


@pytest.mark.slow
@pytest.mark.parametrize("spec", OFFLINE, ids=lambda p: p.stem)
def test_example_passes_check_on_every_runtime(tmp_path, spec):
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "-q",
                     "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    check = run_cli("check", str(tmp_path / "run" / "model.onnx"), "--runtimes",
                    "onnxruntime,tract,reference", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert [r["name"] for r in report["runtimes"]] == ["onnxruntime", "tract", "reference"]
