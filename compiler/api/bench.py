"""The JAX side of `nnspec bench`: the trained model of a run in JAX, timed as the runtime
times its ONNX export (only the full package has it; the runtime-only install has not)."""

from __future__ import annotations

import os
import time
from typing import Any


def bench_jax(model: Any, batch: int = 1024, seed: int = 0, runs: int = 100, warmup: int = 10,
              max_seconds: float = 10.0) -> dict[str, Any]:
    """Latency at batch 1 and throughput at `batch` of the run beside `model` (a
    `nnspec.runtime.Model` of a run's model.onnx), in JAX on its default backend."""
    import jax
    from flax import serialization

    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.train.module import GraphModule
    from nnspec.runtime.bench import measure, summarize
    from nnspec.runtime.inputs import random_inputs

    run_dir = os.path.dirname(os.path.abspath(model.path))
    _, graph = check_spec(os.path.join(run_dir, "resolved_spec.yaml"))
    with open(os.path.join(run_dir, "weights.msgpack"), "rb") as fh:
        variables = serialization.msgpack_restore(fh.read())
    module = GraphModule(graph)
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    variables = jax.device_put(variables)
    one = jax.device_put(random_inputs(model, 1, seed))
    many = jax.device_put(random_inputs(model, batch, seed))
    with jax.default_matmul_precision("highest"):  # as the export's cross-check runs it
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, one))
        jax.block_until_ready(forward(variables, many))
        compile_seconds = time.perf_counter() - start
        latency = measure(lambda: jax.block_until_ready(forward(variables, one)), runs,
                          warmup, max_seconds)
        throughput = measure(lambda: jax.block_until_ready(forward(variables, many)),
                             runs, warmup, max_seconds)
    result = summarize(latency, throughput, batch)
    result.update(version=jax.__version__, backend=jax.default_backend(),
                  compile_seconds=compile_seconds)
    return result
