"""The cross-check: the exported ONNX file in onnxruntime against the trained model in JAX."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from nnspec.compiler.graph.ir import Graph
from nnspec.compiler.train.module import GraphModule


def compare(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
            ) -> dict[str, Any]:
    """Differences of one output. The relative difference is taken over elements whose
    reference magnitude is at least `atol`, where it means something."""
    ref = np.asarray(reference, np.float64)
    got = np.asarray(candidate, np.float64)
    diff = np.abs(ref - got)
    big = np.abs(ref) >= atol
    result: dict[str, Any] = {
        "shape": list(ref.shape),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff[big] / np.abs(ref[big])).max()) if big.any() else 0.0,
        "within_tolerance": bool(np.all(diff <= atol + rtol * np.abs(ref))),
        "finite": bool(np.isfinite(got).all() and np.isfinite(ref).all()),
    }
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        result["argmax_agreement"] = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    return result


def flax_predict(graph: Graph, variables: Any, inputs: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """The trained model's inference outputs, with float32 matmuls at full precision (GPUs
    default to TF32, which would differ from onnxruntime on the CPU by ~1e-3)."""
    module = GraphModule(graph)
    with jax.default_matmul_precision("highest"):
        outs = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, inputs)
    return {k: np.asarray(v) for k, v in outs.items()}


def cross_check(graph: Graph, variables: Any, model_path: str | os.PathLike,
                inputs: dict[str, np.ndarray], atol: float, rtol: float) -> dict[str, Any]:
    """Run both on the same samples and report; `passed` is the verdict."""
    import onnxruntime

    from nnspec.runtime import load

    expected = flax_predict(graph, variables, inputs)
    got = load(model_path).predict(inputs)
    outputs = {name: compare(expected[name], got[name], atol, rtol) for name in expected}
    agreement = [o["argmax_agreement"] for o in outputs.values() if "argmax_agreement" in o]
    return {
        "passed": all(o["within_tolerance"] and o["finite"] for o in outputs.values()),
        "samples": int(len(next(iter(inputs.values())))),
        "atol": atol,
        "rtol": rtol,
        "max_abs_diff": max(o["max_abs_diff"] for o in outputs.values()),
        "max_rel_diff": max(o["max_rel_diff"] for o in outputs.values()),
        "argmax_agreement": min(agreement) if agreement else None,
        "outputs": outputs,
        "reference": f"jax {jax.__version__} ({jax.default_backend()})",
        "runtime": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)",
    }
