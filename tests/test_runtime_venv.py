"""What a device installs: the runtime-only distribution (`pip install ./runtime`, the wheel
`nnspec-runtime`) in a clean virtual environment, which pulls numpy and onnxruntime and nothing
else of ours (no JAX, Flax, onnx...), runs `nnspec-runtime predict`, `check` and `bench` on a
model exported by `nnspec train` (or its run directory), and refuses an unsafe one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from nnspec.compiler.data.dataset import load_digits

NETWORK_TROUBLE = ("No matching distribution", "Could not find a version", "NewConnectionError",
                   "Failed to establish", "Temporary failure in name resolution",
                   "Network is unreachable", "ProxyError", "Max retries exceeded",
                   "Connection refused", "SSLError", "ReadTimeoutError")
WHEEL_LIMIT = 200 * 1024  # bytes: the runtime is a few modules and the page's assets
ABSENT = ("jax", "flax", "optax", "orbax", "onnx", "yaml", "pydantic", "rich", "tract",
          "starlette", "nnspec.compiler", "nnspec.spec", "nnspec.commands")


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
def runtime_wheel(tmp_path_factory) -> Path:
    """The nnspec-runtime wheel, built from a copy of runtime/ (the build writes nothing into
    the working tree)."""
    base = tmp_path_factory.mktemp("runtime-wheel")
    source = base / "runtime"
    shutil.copytree(ROOT / "runtime", source, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "build", "*.egg-info", "node_modules"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(base / "dist"),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (base / "dist").glob("nnspec_runtime-*.whl")
    return wheel


def test_runtime_wheel_holds_the_runtime_only(runtime_wheel, record_property):
    size = runtime_wheel.stat().st_size
    record_property("runtime_wheel_bytes", size)
    print(f"\n{runtime_wheel.name}: {size} bytes ({size / 1024:.1f} KB)")
    names = zipfile.ZipFile(runtime_wheel).namelist()
    ours = [n for n in names if ".dist-info/" not in n]
    assert ours and all(n.startswith("nnspec/runtime/") for n in ours), ours
    modules = {Path(n).name for n in ours}
    assert {"model.py", "cli.py", "serve.py", "app.mjs", "package-lock.json"} <= modules
    assert size < WHEEL_LIMIT, f"{runtime_wheel.name} is {size} bytes"
    meta = next(n for n in names if n.endswith("METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in
                zipfile.ZipFile(runtime_wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(r.split(">")[0] for r in requires) == ["numpy", "onnxruntime"], requires
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nnspec-runtime = nnspec.runtime.cli:run" in zipfile.ZipFile(runtime_wheel).read(
        entry).decode()


@pytest.fixture(scope="module")
def device(tmp_path_factory, runtime_wheel) -> Path:
    """bin/ of a fresh venv holding the runtime wheel and what it pulls: numpy, onnxruntime."""
    base = tmp_path_factory.mktemp("device")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True,
                   env=_env(), timeout=300)
    bin_dir = base / "venv" / ("Scripts" if os.name == "nt" else "bin")
    _pip(bin_dir / "python", str(runtime_wheel))
    absent = subprocess.run([str(bin_dir / "python"), "-c",
                             "import importlib.util as u\n"
                             "def found(m):\n"
                             "    try:\n        return u.find_spec(m) is not None\n"
                             "    except ImportError:\n        return False\n"
                             f"print([m for m in {ABSENT!r} if found(m)])"],
                            capture_output=True, text=True, env=_env(), cwd=base)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    return bin_dir


def nnspec(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "nnspec-runtime"), *args], capture_output=True,
                          text=True, env=_env(), cwd=cwd, timeout=300)


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
    by_dir = nnspec(device, "predict", str(run), "--input", str(tmp_path / "x.npy"),
                    cwd=tmp_path)  # the run directory stands for its model.onnx
    assert by_dir.returncode == 0 and json.loads(by_dir.stdout)["outputs"] == json.loads(
        result.stdout)["outputs"], by_dir.stderr

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
