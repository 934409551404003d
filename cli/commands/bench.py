"""`nnspec bench MODEL`: the runtime's bench (nnspec.runtime.bench), with the JAX side that
only the full package has: the same model in JAX, from the run directory beside the model."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from nnspec.runtime.bench import add_parser as _add_parser
from nnspec.runtime.bench import cmd_bench, measure, summarize  # noqa: F401 - re-exported


def add_parser(verbs: Any, overrides: dict) -> None:
    _add_parser(verbs, overrides, jax_bench=_bench_jax)


def _bench_jax(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    import jax
    from flax import serialization

    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.train.module import GraphModule
    from nnspec.runtime.inputs import random_inputs

    run_dir = os.path.dirname(os.path.abspath(args.model))
    _, graph = check_spec(os.path.join(run_dir, "resolved_spec.yaml"))
    with open(os.path.join(run_dir, "weights.msgpack"), "rb") as fh:
        variables = serialization.msgpack_restore(fh.read())
    module = GraphModule(graph)
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    variables = jax.device_put(variables)
    one = jax.device_put(random_inputs(model, 1, args.seed))
    many = jax.device_put(random_inputs(model, args.batch, args.seed))
    with jax.default_matmul_precision("highest"):  # as the export's cross-check runs it
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, one))
        jax.block_until_ready(forward(variables, many))
        compile_seconds = time.perf_counter() - start
        latency = measure(lambda: jax.block_until_ready(forward(variables, one)), args.runs,
                          args.warmup, args.max_seconds)
        throughput = measure(lambda: jax.block_until_ready(forward(variables, many)),
                             args.runs, args.warmup, args.max_seconds)
    result = summarize(latency, throughput, args.batch)
    result.update(version=jax.__version__, backend=jax.default_backend(),
                  compile_seconds=compile_seconds)
    return result
