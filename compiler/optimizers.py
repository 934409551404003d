"""Optax optimizers by spec name."""

from __future__ import annotations

import optax

from nnspec.spec.schema import OptimizerSpec


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """The Optax transformation a spec's `train.optimizer` section describes."""
    if spec.name == "adam":
        return optax.adam(spec.learning_rate, b1=spec.b1, b2=spec.b2, eps=spec.eps)
    if spec.name == "sgd":
        return optax.sgd(spec.learning_rate, momentum=spec.momentum, nesterov=spec.nesterov)
    raise ValueError(f"unknown optimizer {spec.name!r}")
