"""Losses by spec name. Each takes the model's outputs, the logits feeding a final softmax
(when there is one), integer or float targets and per-sample weights, and returns a scalar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

_EPS = 1e-7  # Keras' clip for cross-entropy on probabilities


def _weighted_mean(per_sample: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _as_one_hot(y: jax.Array, k: int) -> jax.Array:
    return jax.nn.one_hot(y, k) if jnp.issubdtype(y.dtype, jnp.integer) else y


def categorical_crossentropy(out: jax.Array, logits: jax.Array | None, y: jax.Array,
                             weight: jax.Array) -> jax.Array:
    """Cross-entropy against one-hot targets (integer labels are one-hot encoded). From the
    logits when the output is a softmax, which is exact and stable; else from probabilities."""
    target = _as_one_hot(y, out.shape[-1])
    if logits is not None:
        per = optax.softmax_cross_entropy(logits, target)
    else:
        per = -jnp.sum(target * jnp.log(jnp.clip(out, _EPS, 1.0)), axis=-1)
    return _weighted_mean(per.reshape(len(y), -1).mean(-1), weight)


def sparse_categorical_crossentropy(out: jax.Array, logits: jax.Array | None, y: jax.Array,
                                    weight: jax.Array) -> jax.Array:
    """Cross-entropy against integer class labels."""
    return categorical_crossentropy(out, logits, y.astype(jnp.int32), weight)


def mse(out: jax.Array, logits: jax.Array | None, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean squared error; integer labels against a vector output are one-hot encoded first."""
    target = _as_one_hot(y, out.shape[-1]) if y.ndim < out.ndim else y.astype(out.dtype)
    per = jnp.square(out - target.reshape(out.shape)).reshape(len(y), -1).mean(-1)
    return _weighted_mean(per, weight)


LOSSES: dict[str, Callable[..., Any]] = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "mse": mse,
}
