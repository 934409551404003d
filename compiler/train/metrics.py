"""Metrics by spec name, as per-batch sums so that batches and devices add up exactly."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def accuracy_sum(out: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted count of samples whose argmax matches the label (or the one-hot target's);
    for a single sigmoid unit, whether the output rounds to the 0/1 target."""
    if out.shape[-1] == 1:
        hit = ((out > 0.5) == (y.reshape(out.shape) > 0.5)).astype(jnp.float32)
        return jnp.sum(hit.reshape(len(y), -1).mean(-1) * weight)
    target = y if jnp.issubdtype(y.dtype, jnp.integer) and y.ndim == out.ndim - 1 else (
        jnp.argmax(y, axis=-1))
    hit = (jnp.argmax(out, axis=-1) == target).astype(jnp.float32)
    return jnp.sum(hit.reshape(len(y), -1).mean(-1) * weight)


def binary_accuracy_sum(out: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted sum over samples of the fraction of their labels predicted right, each unit
    its own sigmoid (above 0.5 is 1): accuracy of a multi-label binary cross-entropy output,
    as Keras' `binary_accuracy`. For one unit it equals `accuracy_sum`."""
    hit = ((out > 0.5) == (y.reshape(out.shape) > 0.5)).astype(jnp.float32)
    return jnp.sum(hit.reshape(len(y), -1).mean(-1) * weight)


def metric_fn(metric: str, loss: str) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The device metric `metric` of an output trained with `loss`: a binary cross-entropy
    output's units are independent labels, so its accuracy is per label, not an argmax."""
    if metric == "accuracy" and loss == "binary_crossentropy":
        return binary_accuracy_sum
    return METRICS[metric]


METRICS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "accuracy": accuracy_sum,
}
