"""Which parameters train, and the weight penalties: masks and L1/L2 over the parameter tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnspec.compiler.graph.ir import Graph

_WEIGHT_NAMES = ("kernel", "embedding")


def _map_leaves(tree: Any, fn: Callable[[tuple, Any], Any], path: tuple = ()) -> Any:
    if isinstance(tree, dict):
        return {k: _map_leaves(v, fn, (*path, k)) for k, v in tree.items()}
    return fn(path, tree)


def trainable_mask(params: dict, graph: Graph, frozen: bool = True) -> dict:
    """1.0 for the leaves of trainable layers, 0.0 for `trainable: false` ones (when
    `frozen`): gradients and updates are multiplied by it, so frozen weights stay bit-identical
    and can be unfrozen later without rebuilding the optimizer."""
    fixed = {n.name for n in graph.nodes if not n.trainable} if frozen else set()
    return _map_leaves(params, lambda p, a: jnp.float32(0.0 if p[0] in fixed else 1.0))


def penalty(params: dict, l2: float, l1: float, layers: list[str] | None) -> jax.Array:
    """l2 * sum(w**2) + l1 * sum(|w|) over kernels and embeddings (not biases or scales)."""
    total = jnp.zeros((), jnp.float32)
    if not (l2 or l1):
        return total
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", None) for k in path]
        if keys[-1] in _WEIGHT_NAMES and (layers is None or keys[0] in layers):
            total = total + l2 * jnp.sum(jnp.square(leaf)) + l1 * jnp.sum(jnp.abs(leaf))
    return total
