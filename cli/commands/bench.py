"""`nnspec bench MODEL`: the runtime's bench (nnspec.runtime.bench), with the JAX side that
only the full package has: the same model in JAX, from the run directory beside the model."""

from __future__ import annotations

import argparse
from typing import Any

from nnspec.runtime.bench import add_parser as _add_parser
from nnspec.runtime.bench import cmd_bench, measure, summarize  # noqa: F401 - re-exported


def add_parser(verbs: Any, overrides: dict) -> None:
    _add_parser(verbs, overrides, jax_bench=_bench_jax)


def _bench_jax(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from nnspec.compiler.api.bench import bench_jax

    return bench_jax(model, args.batch, args.seed, args.runs, args.warmup, args.max_seconds)
