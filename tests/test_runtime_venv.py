"""What a device installs: a clean virtual environment with only numpy, onnxruntime and nnspec
(`pip install --no-deps`, not editable) runs `nnspec predict`, `nnspec check` and `nnspec bench`
on a model exported by `nnspec train`, and refuses an unsafe one (without the onnx package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from nnspec.compiler.data.dataset import load_digits

NETWORK_TROUBLE = ("No matching distribution", "Could not find a version", "NewConnectionError",
                   "Failed to establish", "Temporary failure in name resolution",
                   "Network is unreachable", "ProxyError", "Max retries exceeded",
                   "Connection refused", "SSLError", "ReadTimeoutError")
# What the wheel is built from (pyproject.toml maps these folders).
SOURCES = ("pyproject.toml", "README.md", "cli", "spec", "compiler", "runtime")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", *args],
                            capture_output=True, text=True, env=_env(), timeout=900)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if any(marker in output for marker in NETWORK_TROUBLE):
            pytest.skip(f"pip cannot install packages here (no network?): {output[-300:]}")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{output}")


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding numpy, onnxruntime and nnspec, nothing else of ours."""
    base = tmp_path_factory.mktemp("device")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True,
                   env=_env(), timeout=300)
    bin_dir = base / "venv" / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _pip(python, "numpy", "onnxruntime")
    # Build from a copy, so the build writes nothing into the working tree.
    source = base / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    _pip(python, "--no-deps", str(source))
    absent = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                             "('jax', 'flax', 'optax', 'onnx', 'yaml', 'pydantic', 'rich', "
                             "'tract') if u.find_spec(m)])"],
                            capture_output=True, text=True, env=_env(), cwd=base)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    return bin_dir


def nnspec(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "nnspec"), *args], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=300)


def test_predict_check_and_bench_on_a_device(device, small_run, tmp_path):
    run, _ = small_run
    model = str(run / "model.onnx")
    digits = load_digits()
    x, y = digits["x"][:100].astype(np.float32), digits["y"][:100]
    np.save(tmp_path / "x.npy", x)

    result = nnspec(device, "predict", model, "--input", str(tmp_path / "x.npy"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["outputs"]["output"]
    assert out["shape"] == [100, 10] and np.mean(np.array(out["class"]) == y) > 0.85

    result = nnspec(device, "check", model, "--runtimes", "onnxruntime", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "onnxruntime" in result.stdout and "pass" in result.stdout
    assert "warning: the onnx package is not installed: skipped onnx.checker" in result.stderr
    assert "Traceback" not in result.stderr

    result = nnspec(device, "check", model, "--json", cwd=tmp_path)  # every runtime installed
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["runtimes"]] == ["onnxruntime"]
    assert report["file"]["checker"] == "skipped: onnx not installed"

    result = nnspec(device, "bench", model, "--runs", "20", "--warmup", "2", "--json",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["onnxruntime"]["latency_ms"]["runs"] == 20
    assert report["jax"] == {"skipped": "JAX/Flax not installed"}


def test_device_refuses_external_data_outside_the_folder(device, tmp_path):
    from onnx import TensorProto, helper

    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializer=[tensor])
    model = tmp_path / "evil.onnx"
    model.write_bytes(helper.make_model(graph).SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for args in (("predict", str(model), "--input", str(tmp_path / "x.npy")),
                 ("check", str(model))):
        result = nnspec(device, *args, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "refused: tensor 'w' (initializer of graph 'g')" in result.stderr
        assert "'../../etc/passwd', whose '..' escapes the model's folder" in result.stderr
        assert "Traceback" not in result.stderr and "ONNXRuntimeError" not in result.stderr
