"""Losses by spec name, as per-sample values: the trainer weighs and averages them.

Each takes the output, the logits (None for the clipped probability form), the targets and
the loss spec. From logits, cross-entropies are exact and stable. Which logits a head's loss
reads is `heads.loss_form`'s decision; `logits_of` applies it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from nnspec.compiler.train.heads import CLASSIFICATION, LOGITS, SIGMOID_LOGITS, SOFTMAX_LOGITS
from nnspec.spec.schema import LossSpec

_EPS = 1e-7  # Keras' clip for cross-entropy on probabilities

LossFn = Callable[[jax.Array, jax.Array | None, jax.Array, LossSpec], jax.Array]


def _per_sample(values: jax.Array, n: int) -> jax.Array:
    return values.reshape(n, -1).mean(-1)


def _one_hot(y: jax.Array, k: int, smoothing: float) -> jax.Array:
    target = jax.nn.one_hot(y, k) if jnp.issubdtype(y.dtype, jnp.integer) else y
    return optax.smooth_labels(target, smoothing) if smoothing else target


def categorical_crossentropy(out: jax.Array, logits: jax.Array | None, y: jax.Array,
                             spec: LossSpec) -> jax.Array:
    """Cross-entropy against one-hot targets; integer labels are one-hot encoded."""
    target = _one_hot(y, out.shape[-1], spec.label_smoothing)
    if logits is not None:
        per = optax.softmax_cross_entropy(logits, target)
    else:
        per = -jnp.sum(target * jnp.log(jnp.clip(out, _EPS, 1.0)), axis=-1)
    return _per_sample(per, len(y))


def sparse_categorical_crossentropy(out: jax.Array, logits: jax.Array | None, y: jax.Array,
                                    spec: LossSpec) -> jax.Array:
    """Cross-entropy against integer class labels (or soft targets, as mixup makes them)."""
    if not jnp.issubdtype(y.dtype, jnp.integer):
        return categorical_crossentropy(out, logits, y, spec)
    return categorical_crossentropy(out, logits, y.astype(jnp.int32), spec)


def binary_crossentropy(out: jax.Array, logits: jax.Array | None, y: jax.Array,
                        spec: LossSpec) -> jax.Array:
    """Cross-entropy of independent yes/no outputs (0/1 targets of the output's shape)."""
    target = y.astype(out.dtype).reshape(out.shape)
    if spec.label_smoothing:
        target = target * (1 - spec.label_smoothing) + 0.5 * spec.label_smoothing
    if logits is not None:
        per = optax.sigmoid_binary_cross_entropy(logits, target)
    else:
        p = jnp.clip(out, _EPS, 1 - _EPS)
        per = -(target * jnp.log(p) + (1 - target) * jnp.log(1 - p))
    return _per_sample(per, len(y))


def _regression_target(out: jax.Array, y: jax.Array) -> jax.Array:
    # Integer labels against a vector output: the classic one-hot regression target.
    if y.ndim < out.ndim and out.shape[-1] > 1 and jnp.issubdtype(y.dtype, jnp.integer):
        return jax.nn.one_hot(y, out.shape[-1])
    return y.astype(out.dtype).reshape(out.shape)


def mse(out: jax.Array, logits: jax.Array | None, y: jax.Array, spec: LossSpec) -> jax.Array:
    """Mean squared error."""
    return _per_sample(jnp.square(out - _regression_target(out, y)), len(y))


def mae(out: jax.Array, logits: jax.Array | None, y: jax.Array, spec: LossSpec) -> jax.Array:
    """Mean absolute error."""
    return _per_sample(jnp.abs(out - _regression_target(out, y)), len(y))


def huber(out: jax.Array, logits: jax.Array | None, y: jax.Array, spec: LossSpec) -> jax.Array:
    """Huber loss: squared below `delta`, linear above (Keras' definition)."""
    # `delta` is keyword-only in optax: passed by position, every huber spec failed to train.
    per = optax.huber_loss(out, _regression_target(out, y), delta=spec.delta)
    return _per_sample(per, len(y))


LOSSES: dict[str, LossFn] = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mse,
    "mae": mae,
    "huber": huber,
}


__all__ = ["CLASSIFICATION", "LOSSES", "logits_of", "scores_of"]


def logits_of(form: str, out: jax.Array, captured: jax.Array | None) -> jax.Array | None:
    """The logits a cross-entropy of this form reads: those captured before the output's
    softmax/sigmoid, the output itself, or None (probabilities, values)."""
    if form in (SOFTMAX_LOGITS, SIGMOID_LOGITS):
        return captured
    return out if form == LOGITS else None


def scores_of(form: str, loss: str, out: jax.Array) -> jax.Array:
    """What metrics read: probabilities. An output that is the logits goes through the softmax
    (or, for binary cross-entropy, the sigmoid) its loss implies; others pass as they are."""
    if form != LOGITS:
        return out
    return jax.nn.sigmoid(out) if loss == "binary_crossentropy" else jax.nn.softmax(out, -1)
