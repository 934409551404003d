"""Optax optimizers and learning-rate schedules by spec name."""

from __future__ import annotations

import math

import optax

from nnspec.spec.schema import OptimizerSpec, ScheduleSpec


def make_schedule(spec: ScheduleSpec, learning_rate: float, steps_per_epoch: int,
                  epochs: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer step. `reduce_on_plateau` is constant
    here: the trainer scales updates after epochs without improvement."""
    per_epoch = max(steps_per_epoch, 1)
    total = max(per_epoch * epochs, 1)
    if spec.name in ("constant", "reduce_on_plateau"):
        return optax.constant_schedule(learning_rate)
    if spec.name == "step":
        return optax.exponential_decay(learning_rate, max(1, round(spec.decay_epochs * per_epoch)),
                                       spec.decay_rate, staircase=True)
    if spec.name == "exponential":
        return optax.exponential_decay(learning_rate, max(1, round(spec.decay_epochs * per_epoch)),
                                       spec.decay_rate)
    if spec.name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total, spec.alpha)
    warmup = min(round(spec.warmup_epochs * per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, total,
                                              learning_rate * spec.alpha)


def make_optimizer(spec: OptimizerSpec, steps_per_epoch: int = 1, epochs: int = 1
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The Optax transformation a spec's `train.optimizer` describes, and its schedule.

    With `accumulate: k`, steps_per_epoch counts batches and the schedule advances once per
    update (every k batches)."""
    updates_per_epoch = math.ceil(steps_per_epoch / spec.accumulate)
    lr = make_schedule(spec.schedule, spec.learning_rate, updates_per_epoch, epochs)
    if spec.name == "adam":
        base = optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps)
    elif spec.name == "adamw":
        base = optax.adamw(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps,
                           weight_decay=spec.weight_decay)
    elif spec.name == "sgd":
        base = optax.sgd(lr, momentum=spec.momentum, nesterov=spec.nesterov)
    elif spec.name == "rmsprop":
        base = optax.rmsprop(lr, decay=spec.decay, eps=spec.eps, momentum=spec.momentum)
    elif spec.name == "adagrad":
        base = optax.adagrad(lr, eps=spec.eps)
    else:
        raise ValueError(f"unknown optimizer {spec.name!r}")
    if spec.clip_norm is not None:
        base = optax.chain(optax.clip_by_global_norm(spec.clip_norm), base)
    if spec.accumulate > 1:
        base = optax.MultiSteps(base, every_k_schedule=spec.accumulate).gradient_transformation()
    return base, lr
