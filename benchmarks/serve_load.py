"""Load test of `nnspec serve` on loopback: a fixed number of requests from a fixed number of
concurrent clients, first with batching off (--max-batch 1), then on; requests/s, p50/p99
latency, lost requests (must be 0); then a burst of malformed requests, after which the server
must still answer correctly. Bounded: it sends exactly --requests per mode, then stops.

    python benchmarks/serve_load.py [--model RUN_DIR|MODEL] [--requests 2000] [--clients 32]
        [--quick] [--json out.json] [--markdown benchmarks/results/serve_load.md]

Without --model it trains the quickstart for 2 epochs into a temporary folder (the serving
cost does not depend on how well the model learned). Exit 1 when a request is lost, a
malformed request is not refused with a 4xx, or the server answers wrongly afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLES, machine, table, write_json  # noqa: E402
from _serving import call, serving  # noqa: E402

MALFORMED = [b"{not json", b"[1, 2]", b'{"inputs": {}}', b'{"inputs": {"NAME": [[1, 2]]}}',
             b'{"inputs": {"NAME": [["a"]]}}', b'{"inputs": {"NAME": [[1], [2, 3]]}}',
             b'{"inputs": {"NAME": [[[300]]]}}', b""]


def _clients(url: str, bodies: list[bytes], clients: int) -> dict[str, Any]:
    """Send every body once, `clients` at a time (one keep-alive connection each); latency
    and outcome per request."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", bodies[i],
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and b'"outputs"' in payload
                error = None if ok else f"{response.status}: {payload[:100]!r}"
            except (OSError, http.client.HTTPException) as err:
                error = f"{type(err).__name__}: {err}"
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            with lock:
                if error:
                    failures.append(error)
                else:
                    latencies.append(time.perf_counter() - start)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(bodies), "answered": len(latencies),
            "lost": len(bodies) - len(latencies), "failures": failures[:5],
            "seconds": seconds, "requests_per_second": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None}


def _after_burst(url: str, name: str, x: np.ndarray, output: str, want: np.ndarray,
                 count: int) -> dict[str, Any]:
    """A burst of malformed requests, then a good one: is the answer still right?"""
    bad = [b.replace(b"NAME", name.encode()) for b in MALFORMED]
    statuses = [call(url + "/predict", bad[i % len(bad)])[0] for i in range(count)]
    status, body = call(url + "/predict", json.dumps({"inputs": {name: x.tolist()}}).encode())
    right = status == 200 and np.array_equal(
        np.asarray(body["outputs"][output], want.dtype), want)
    return {"malformed": count, "refused_4xx": sum(400 <= s < 500 for s in statuses),
            "statuses": sorted(set(statuses)), "serving_after": right}


def _model(arg: str | None, folder: str) -> str:
    if arg:
        return arg
    out = os.path.join(folder, "quickstart")
    subprocess.run([sys.executable, "-m", "nnspec", "train", str(EXAMPLES / "quickstart.yaml"),
                    "--out", out, "-q", "--set", "train.epochs=2"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run directory or .onnx (default: a quickstart, "
                        "trained for 2 epochs)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode (2000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--max-batch", type=int, default=32, help="batching on: max batch")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="batching on: wait")
    parser.add_argument("--malformed", type=int, default=200, help="malformed burst (200)")
    parser.add_argument("--quick", action="store_true", help="64 requests, 8 clients, 16 bad")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the results table (markdown) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.clients, args.malformed = 64, 8, 16

    from nnspec.runtime import load
    from nnspec.runtime.inputs import random_inputs

    with tempfile.TemporaryDirectory() as folder:
        model_arg = _model(args.model, folder)
        model = load(model_arg)
        if len(model.inputs) != 1:
            parser.error(f"--model: expected a model with one input, got "
                         f"{[i.name for i in model.inputs]}")
        name, output = model.inputs[0].name, model.outputs[0].name
        x = random_inputs(model, args.requests, 0)[name]
        bodies = [json.dumps({"inputs": {name: [s.tolist()]}}).encode() for s in x]
        want = model.predict(x[:4])[output]
        modes = {"batch 1": ["--max-batch", "1"],
                 "batching": ["--max-batch", str(args.max_batch), "--batch-wait-ms",
                              str(args.batch_wait_ms)]}
        results: dict[str, Any] = {}
        for mode, flags in modes.items():
            with serving(model_arg, *flags) as url:
                _clients(url, bodies[: min(50, len(bodies))], args.clients)  # warm-up
                before = call(url + "/health")[1]["stats"]
                load_result = _clients(url, bodies, args.clients)
                after = call(url + "/health")[1]["stats"]
                load_result["onnxruntime_runs"] = after["runs"] - before["runs"]
                load_result["burst"] = _after_burst(url, name, x[:4], output, want,
                                                    args.malformed)
                results[mode] = load_result
    ratio = results["batching"]["requests_per_second"] / results["batch 1"]["requests_per_second"]
    rows = [[mode, r["requests"], args.clients, f"{r['requests_per_second']:,.0f}",
             f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["lost"], r["onnxruntime_runs"],
             f"{r['burst']['refused_4xx']}/{r['burst']['malformed']}",
             "yes" if r["burst"]["serving_after"] else "NO"] for mode, r in results.items()]
    text = table(["mode", "requests", "clients", "requests/s", "p50 ms", "p99 ms", "lost",
                  "onnxruntime calls", "malformed refused (4xx)", "right answer after"], rows)
    text += f"\n\nbatching / batch 1 throughput: {ratio:.2f}x\n"
    print(text)
    doc = {"machine": machine(), "args": vars(args), "results": results, "ratio": ratio}
    write_json(args.json, doc)
    if args.markdown:
        info = doc["machine"]
        Path(args.markdown).write_text(
            f"# nnspec serve under load\n\n`python benchmarks/serve_load.py "
            f"--requests {args.requests} --clients {args.clients}` on {info['cpu']} "
            f"({info['cpus']} CPUs), {info['date']}, onnxruntime "
            f"{info['versions']['onnxruntime']}; model: {model.metadata.get('spec_name')} "
            f"({os.path.getsize(model.path):,} bytes), one random sample per request; clients "
            f"(Python threads, one keep-alive connection each) and server on the same machine "
            f"over loopback.\n\n{text}")
    bad = [m for m, r in results.items() if r["lost"] or not r["burst"]["serving_after"]
           or r["burst"]["refused_4xx"] != r["burst"]["malformed"]]
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
