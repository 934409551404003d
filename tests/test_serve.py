"""`nnspec serve` on loopback: a real uvicorn process answering /health, /metadata and /predict
like the runtime's predict, refusing bad requests with a 4xx while it keeps serving, and
merging concurrent requests into one onnxruntime call."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT, run_cli

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
sys.path.insert(0, str(ROOT / "benchmarks"))
from _serving import call, serving  # noqa: E402

from nnspec.runtime import load  # noqa: E402


@pytest.fixture(scope="module")
def served(small_run):
    """(base URL, run directory, reference inputs) of `nnspec serve RUN_DIR`, with a batch
    window wide enough that concurrent requests meet."""
    run, _ = small_run
    with np.load(run / "reference_io.npz") as bundle:
        x = bundle["input:pixels"]
    with serving(str(run), "--max-batch", "64", "--batch-wait-ms", "30") as url:
        yield url, run, x


def predict(url: str, inputs: dict) -> tuple[int, dict]:
    return call(url + "/predict", json.dumps({"inputs": inputs}).encode())


def test_health_and_metadata(served):
    url, run, _ = served
    status, health = call(url + "/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = call(url + "/metadata")
    assert status == 200
    model = load(run)
    assert meta["spec_name"] == "small"
    assert meta["spec_sha256"] == model.metadata["spec_sha256"]
    assert meta["model_sha256"] == hashlib.sha256((run / "model.onnx").read_bytes()).hexdigest()
    assert meta["inputs"] == [{"name": "pixels", "shape": [None, 8, 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "output", "shape": [None, 10], "dtype": "float32"}]
    assert meta["batching"] == {"max_batch": 64, "max_wait_ms": 30.0}


def test_predict_equals_the_runtime(served):
    url, run, x = served
    status, body = predict(url, {"pixels": x.tolist()})
    assert status == 200, body
    want = load(run).predict(x)["output"]
    got = np.asarray(body["outputs"]["output"], np.float32)
    np.testing.assert_array_equal(got, want)  # JSON floats round-trip float32 exactly
    status, one = predict(url, {"pixels": x[0].tolist()})  # one sample, no batch axis
    assert status == 200 and np.asarray(one["outputs"]["output"], np.float32).shape == (1, 10)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the body is not valid JSON"),
    (b"[1, 2]", 400, 'expected a JSON object {"inputs": {NAME: nested lists}}; got list'),
    (b'{"pixels": []}', 400, "got keys ['pixels']"),
    (b'{"inputs": {}}', 422, "missing ['pixels']"),
    (b'{"inputs": {"pixels": [[1, 2, 3]]}, "x": 1}', 422,
     "input 'pixels' expects shape (batch, 8, 8), got (1, 3)"),
    (b'{"inputs": {"pixels": [["a", "b"]]}}', 422, "expects numbers (float32); got str"),
    (b'{"inputs": {"pixels": [[1, 2], [3]]}}', 422, "ragged nested list"),
    (b'{"inputs": {"pixels": [], "extra": [1]}}', 422, "unknown ['extra']"),
])
def test_bad_requests_get_4xx_and_the_server_goes_on(served, body, status, message):
    url, _, x = served
    got, answer = call(url + "/predict", body)
    assert got == status and message in answer["error"], answer
    assert predict(url, {"pixels": x[:2].tolist()})[0] == 200


def test_wrong_method_and_route(served):
    url, _, _ = served
    status, answer = call(url + "/predict")
    assert status == 405 and "POST /predict" in answer["error"]
    status, answer = call(url + "/nowhere")
    assert status == 404 and "routes: GET /health" in answer["error"]


def test_concurrent_requests_are_batched(served):
    url, run, x = served
    before = call(url + "/health")[1]["stats"]
    samples = np.concatenate([x] * 2)  # 32 requests of one sample each, all at once
    with ThreadPoolExecutor(len(samples)) as pool:
        answers = list(pool.map(lambda s: predict(url, {"pixels": [s.tolist()]}), samples))
    assert all(status == 200 for status, _ in answers)
    got = np.concatenate([np.asarray(a["outputs"]["output"], np.float32) for _, a in answers])
    np.testing.assert_allclose(got, load(run).predict(samples)["output"], atol=1e-6)
    after = call(url + "/health")[1]["stats"]
    requests = after["requests"] - before["requests"]
    runs = after["runs"] - before["runs"]
    assert requests == len(samples)
    assert runs < requests and after["merged_requests"] > before["merged_requests"], after
    assert after["largest_run"] > 1


def test_load_benchmark_runs_quick(small_run, tmp_path):
    """benchmarks/serve_load.py end to end at a tiny size (no timing asserted)."""
    run, _ = small_run
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"),
                             "--quick", "--model", str(run), "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    for mode in ("batch 1", "batching"):
        r = doc["results"][mode]
        assert r["lost"] == 0 and r["answered"] == 64 and r["burst"]["serving_after"]
        assert r["burst"]["refused_4xx"] == r["burst"]["malformed"] == 16
    assert doc["results"]["batch 1"]["onnxruntime_runs"] == 64


def test_port_in_use_is_a_clear_error(served, small_run):
    url, run, _ = served
    port = url.rsplit(":", 1)[1]
    result = run_cli("serve", str(run), "--port", port, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
