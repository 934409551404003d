"""Inference of one model in its own process (run by suite.py):

    python benchmarks/_suite_infer.py MODEL --onnx NNSPEC_MODEL.onnx --json OUT [--rounds R]

Exports the same network with `torch.onnx` (the TorchScript exporter) and with jax2onnx, each
taking the same input as nnspec's export (uint8 samples, channels-last) and returning the
same softmax, then times every ONNX file in onnxruntime (batch 1 latency, batch 1024
throughput; the files interleaved in each round) and the framework itself (a jitted Flax
apply, PyTorch eager under `no_grad`). Node counts and operator types are read from each file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite_models import INPUT, SCALE, flax_module, synthetic, torch_module  # noqa: E402


def timed(fn: Callable[[Any], Any], arg: Any, repeat: int) -> float:
    """Median seconds of one call `fn(arg)` (after one warm-up call)."""
    fn(arg)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_export(model: str, path: Path) -> tuple[Any, Callable]:
    import torch

    net = torch_module(model).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            x = x.to(torch.float32) * SCALE
            if model == "cnn":
                x = x.permute(0, 3, 1, 2)
            return torch.softmax(self.net(x), -1)

    wrapped = Wrapped().eval()
    example = torch.from_numpy(synthetic(model, 2)[0])
    torch.onnx.export(wrapped, (example,), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["probabilities"], opset_version=17,
                      dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}})

    def run(x: np.ndarray) -> Any:
        with torch.no_grad():
            return wrapped(torch.from_numpy(x))

    return wrapped, run


def jax_export(model: str, path: Path) -> Callable:
    import jax

    net = flax_module(model)
    params = net.init(jax.random.key(0), synthetic(model, 1)[0])

    def fn(x: Any) -> Any:
        return jax.nn.softmax(net.apply(params, x))

    fast = jax.jit(fn)
    from jax2onnx import to_onnx

    shape = jax.export.symbolic_shape(", ".join(["B", *map(str, INPUT[model])]))
    proto = to_onnx(fn, [jax.ShapeDtypeStruct(shape, np.uint8)],
                    model_name=f"bench_{model}")
    path.write_bytes(proto.SerializeToString())
    return lambda x: jax.block_until_ready(fast(x))


def describe(path: Path) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    return {"nodes": len(graph.node), "ops": dict(sorted(ops.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("mlp", "cnn", "lstm"))
    parser.add_argument("--onnx", required=True, help="nnspec's model.onnx of this model")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=200, help="batch-1 calls per timing")
    parser.add_argument("--big", type=int, default=1024)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    import onnxruntime as ort

    x1, xb = synthetic(args.model, 1)[0], synthetic(args.model, args.big, seed=1)[0]
    result: dict[str, Any] = {"model": args.model, "batch": args.big, "onnx": {},
                              "native": {}, "errors": {}}
    natives: dict[str, Callable] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"nnspec": Path(args.onnx)}
        # An A/A control: the same file in a second session, timed like the others. Its ratio
        # to the first is this machine's noise floor for "as fast as" in the same run.
        files["nnspec, again"] = Path(tmp) / "nnspec_again.onnx"
        shutil.copyfile(args.onnx, files["nnspec, again"])
        try:
            _, natives["pytorch"] = torch_export(args.model, Path(tmp) / "torch.onnx")
            files["torch.onnx"] = Path(tmp) / "torch.onnx"
        except Exception as e:  # report, keep the others
            result["errors"]["torch.onnx"] = f"{type(e).__name__}: {e}"[:400]
        try:
            natives["jax"] = jax_export(args.model, Path(tmp) / "jax2onnx.onnx")
            files["jax2onnx"] = Path(tmp) / "jax2onnx.onnx"
        except Exception as e:
            result["errors"]["jax2onnx"] = f"{type(e).__name__}: {e}"[:400]
        sessions = {}
        for name, path in files.items():
            try:
                s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                feed = s.get_inputs()[0].name
                s.run(None, {feed: xb})  # dynamic batch, or an error
                sessions[name] = (s, feed)
                result["onnx"][name] = {**describe(path), "latency_ms": [], "per_s": []}
            except Exception as e:
                result["errors"][name] = f"{type(e).__name__}: {e}"[:400]
        for r in range(args.rounds):
            names = list(sessions)
            for name in names[r % len(names):] + names[: r % len(names)]:
                s, feed = sessions[name]
                entry = result["onnx"][name]
                def call(x: np.ndarray, s: Any = s, feed: str = feed) -> Any:
                    return s.run(None, {feed: x})

                entry["latency_ms"].append(1e3 * timed(call, x1, args.repeat))
                entry["per_s"].append(args.big / timed(call, xb, 10))
        for name, run in natives.items():
            result["native"][name] = {
                "latency_ms": [1e3 * timed(run, x1, args.repeat)],
                "per_s": [args.big / timed(run, xb, 10)]}
    Path(args.json).write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
