"""The benchmark scripts run end to end in their tiny `--quick` mode and write their JSON.

No timing is asserted here: speed targets live in benchmarks/ as ratios against baselines
measured in the same run (see benchmarks/README.md). The three scripts run concurrently, each
in its own process, to keep this test short.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks"


def test_benchmark_scripts_run_quick(tmp_path):
    runs = {
        "train_throughput": ["--quick", "--models", "mlp", "--min-ratio", "0"],
        "validate_speed": ["--quick", "--max-seconds", "1000",
                           str(ROOT / "examples" / "quickstart.yaml")],
        "fashion_mnist": ["--quick", "--models", "mlp", "--no-install",
                          "--out", str(tmp_path / "fashion")],
    }
    procs = {name: subprocess.Popen(
        [sys.executable, str(BENCH / f"{name}.py"), *args, "--json",
         str(tmp_path / f"{name}.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for name, args in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out}\n{err}"
        assert "|" in out, f"{name} printed no table:\n{out}"

    result = json.loads((tmp_path / "train_throughput.json").read_text())
    assert result["quick"] and result["passed"]
    (mlp,) = result["results"]
    assert mlp["model"] == "mlp"
    assert set(mlp["median_samples_per_second"]) == {"nnspec", "hand", "naive"}
    assert all(v > 0 for v in mlp["median_samples_per_second"].values())
    assert mlp["ratio_vs_hand"] > 0

    result = json.loads((tmp_path / "validate_speed.json").read_text())
    assert result["passed"]
    assert {"python -c pass", "import nnspec.spec.validate"} <= set(result["baselines"])
    (spec,) = result["results"]
    assert spec["spec"] == "examples/quickstart.yaml" and spec["exit_code_ok"]
    assert spec["median_seconds"] > 0

    result = json.loads((tmp_path / "fashion_mnist.json").read_text())
    assert result["quick"] and result["passed"]
    (run,) = result["results"]
    assert run["exit_code"] == 0 and run["parity_passed"] and run["onnx_written"]
    assert 0 <= run["test_accuracy"] <= 1
    assert len(run["seconds_per_epoch"]) == run["epochs"] == 1


@pytest.mark.slow
def test_suite_runs_quick(tmp_path):
    """benchmarks/suite.py end to end on tiny sizes (its contenders are the `bench` extra)."""
    for name in ("torch", "keras", "jax2onnx", "matplotlib"):
        pytest.importorskip(name)
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--quick", "--models", "mlp", "--sections",
         "train,infer", "--out", str(out), "--json", str(tmp_path / "suite.json"), "--plots",
         str(tmp_path)], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "suite.json").read_text())
    runs = result["train"]["mlp"]["runs"]
    assert set(runs) == {"nnspec", "flax_step", "flax_fused", "keras", "torch", "torch_default"}
    assert all(r[0].get("samples_per_second", 0) > 0 for r in runs.values()), runs
    assert runs["torch"][0]["env"]["GLIBC_TUNABLES"] and not runs["torch_default"][0]["env"][
        "GLIBC_TUNABLES"]
    onnx = result["infer"]["mlp"]["onnx"]
    assert {"nnspec", "nnspec, again", "torch.onnx", "jax2onnx"} <= set(onnx)
    assert all(e["nodes"] > 0 and e["per_s"][0] > 0 for e in onnx.values())
    text = out.read_text()
    assert "## Training throughput" in text and "## Inference" in text
    assert "nnspec / it, batch 1024" in text
    assert (tmp_path / "suite_train.png").stat().st_size > 0
