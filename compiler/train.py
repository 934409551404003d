"""The training engine: a jitted Optax step over device-resident data, seeded end to end."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnspec.compiler.data.dataset import Dataset, Split
from nnspec.compiler.flax_backend import TrainingModule
from nnspec.compiler.graph import Graph
from nnspec.compiler.losses import CLASSIFICATION, LOSSES
from nnspec.compiler.metrics import METRICS
from nnspec.compiler.optimizers import make_optimizer
from nnspec.spec.errors import DataError, Problem, SpecError
from nnspec.spec.schema import LossSpec, TrainSpec
from nnspec.spec.validate import LoadedSpec

EVAL_BATCH = 1024


@dataclass
class TrainResult:
    """What a training run produced."""

    variables: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, dict[str, float]]
    samples_per_second: float
    compile_seconds: float
    train_seconds: float
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Head:
    """One trained output: its loss, loss weight and metrics."""

    output: str
    loss: LossSpec
    weight: float
    metrics: tuple[str, ...]


def resolve_heads(loaded: LoadedSpec, graph: Graph) -> list[Head]:
    """The loss and metrics of every output: its own, else the `train` section's."""
    spec = loaded.spec
    heads, problems = [], []
    for out in graph.outputs:
        own = (spec.outputs or {}).get(out)
        loss = own.loss if own and own.loss else spec.train.loss
        if loss is None:
            where = ("outputs", out) if own else ("train",)
            problems.append(Problem(loaded.doc.source.locate(where, key=True),
                                    f"output {out!r} has no loss: set train.loss, or "
                                    f"outputs.{out}.loss"))
            continue
        metrics = own.metrics if own and own.metrics is not None else spec.train.metrics
        heads.append(Head(out, loss, own.loss_weight if own else 1.0, tuple(metrics)))
    if problems:
        raise SpecError(problems)
    return heads


def _check_targets(graph: Graph, head: Head, y: np.ndarray) -> None:
    shape = graph.output_node(head.output).shape
    name, out = head.loss.name, head.output
    if name in CLASSIFICATION or (name in ("mse", "mae", "huber") and y.ndim == 1
                                  and np.issubdtype(y.dtype, np.integer) and shape[-1] > 1):
        if name == "categorical_crossentropy" and y.shape[1:] == shape:
            return  # one-hot targets
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"output {out!r}: loss {name!r} needs integer class labels, one "
                            f"per sample; the targets have shape {y.shape[1:]} and dtype "
                            f"{y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= shape[-1]):
            raise DataError(f"class labels range over [{y.min()}, {y.max()}] but output {out!r} "
                            f"has {shape[-1]} classes (shape {shape})")
        weights = head.loss.class_weights
        if weights is not None and len(weights) != shape[-1]:
            raise DataError(f"output {out!r}: class_weights has {len(weights)} entries for "
                            f"{shape[-1]} classes")
    elif int(np.prod(y.shape[1:])) != int(np.prod(shape)):
        raise DataError(f"loss {name!r} compares output {out!r} of shape {shape} with targets "
                        f"of shape {y.shape[1:]}")


def _padded_batches(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 in batches of `size`, the last one padded with weight-0 repeats, so that
    every step has one shape and compiles once."""
    count = max(1, math.ceil(n / size))
    idx = np.arange(count * size) % max(n, 1)
    weight = (np.arange(count * size) < n).astype(np.float32)
    return idx.reshape(count, size).astype(np.int32), weight.reshape(count, size)


class Trainer:
    """Builds the jitted train and eval steps of one graph, its heads and its train spec."""

    def __init__(self, graph: Graph, train: TrainSpec, heads: list[Head]):
        self.graph, self.spec, self.heads = graph, train, heads
        self.module = TrainingModule(graph)
        self.tx = make_optimizer(train.optimizer)
        key = jax.random.key(train.seed)
        self.init_key, self.dropout_key = jax.random.split(key)
        self.single = len(heads) == 1

    def init(self, x: dict[str, np.ndarray]) -> dict[str, Any]:
        """Initial variables from the seed (only the sample shapes of `x` matter)."""
        return self.module.init({"params": self.init_key, "dropout": self.dropout_key},
                                {k: jnp.asarray(v[:1]) for k, v in x.items()}, train=False)

    def _key(self, head: Head, metric: str) -> str:
        return metric if self.single else f"{head.output}_{metric}"

    def _objective(self, outs: dict, logits: dict, y: dict, mask: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The weighted total loss, and per-batch sums of every loss and metric."""
        count = jnp.maximum(jnp.sum(mask), 1.0)
        total = jnp.zeros((), jnp.float32)
        sums = {"count": jnp.sum(mask)}
        for head in self.heads:
            out, target = outs[head.output], y[head.output]
            per = LOSSES[head.loss.name](out, logits.get(head.output), target, head.loss)
            weight = mask
            if head.loss.class_weights is not None:
                weight = weight * jnp.asarray(head.loss.class_weights)[target.astype(jnp.int32)]
            loss = jnp.sum(per * weight) / count
            total = total + head.weight * loss
            if not self.single:
                sums[self._key(head, "loss")] = loss * jnp.sum(mask)
            for metric in head.metrics:
                value = METRICS[metric](jax.lax.stop_gradient(out), target, mask)
                sums[self._key(head, metric)] = value
        sums["loss"] = total * jnp.sum(mask)
        return total, sums

    def train_step(self) -> Callable[..., Any]:
        def step(params, state, opt_state, sums, idx, mask, step_no, x_all, y_all):
            x = {k: v[idx] for k, v in x_all.items()}
            y = {k: v[idx] for k, v in y_all.items()}
            rng = jax.random.fold_in(self.dropout_key, step_no)

            def objective(p):
                (outs, logits), new_state = self.module.apply(
                    {"params": p, **state}, x, train=True, rngs={"dropout": rng},
                    mutable=list(state))
                total, batch = self._objective(outs, logits, y, mask)
                return total, (batch, new_state)

            (_, (batch, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            sums = jax.tree.map(jnp.add, sums, batch)
            return params, {**state, **new_state}, opt_state, sums

        return jax.jit(step, donate_argnums=(0, 1, 2, 3))

    def eval_step(self) -> Callable[..., Any]:
        def step(variables, x, y, mask):
            outs, logits = self.module.apply(variables, x, train=False)
            return self._objective(outs, logits, y, mask)[1]

        return jax.jit(step)

    def evaluate(self, variables: dict, split: Split, step: Callable | None = None
                 ) -> dict[str, float]:
        """Loss and metrics of `variables` on a whole split (inference mode)."""
        step = step or self.eval_step()
        idx, mask = _padded_batches(len(split), min(EVAL_BATCH, len(split)))
        total: dict[str, Any] | None = None
        for b in range(len(idx)):
            part = split.take(idx[b])
            sums = step(variables, part.x, part.y, mask[b])
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        host = jax.device_get(total)
        count = float(host.pop("count"))
        return {k: float(v) / count for k, v in host.items()}

    def fit(self, data: Dataset, log: Callable[[str], None] = lambda s: None) -> TrainResult:
        """Train for `epochs` epochs; return the final variables, history and metrics."""
        for head in self.heads:
            _check_targets(self.graph, head, data.train.y[head.output])
        spec = self.spec
        variables = self.init(data.train.x)
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}
        opt_state = self.tx.init(params)
        x_all = {k: jnp.asarray(v) for k, v in data.train.x.items()}
        y_all = {k: jnp.asarray(v) for k, v in data.train.y.items()}
        n, size = len(data.train), min(spec.batch_size, len(data.train))
        # The per-epoch sums have the structure of _objective's; fresh zeros each epoch, since
        # the step donates (consumes) them.
        layout = jax.eval_shape(lambda: self._objective(*self.module.apply(
            {"params": params, **state}, {k: v[:size] for k, v in x_all.items()}),
            {k: v[:size] for k, v in y_all.items()}, jnp.ones(size))[1])

        def zeros() -> dict[str, jax.Array]:
            return jax.tree.map(lambda a: jnp.zeros((), jnp.float32), layout)

        idx0, w0 = _padded_batches(n, size)

        started = time.perf_counter()
        step = self.train_step().lower(params, state, opt_state, zeros(), idx0[0], w0[0],
                                       np.int32(0), x_all, y_all).compile()
        evaluate = self.eval_step()
        compile_seconds = time.perf_counter() - started

        history: list[dict[str, float]] = []
        train_seconds, steps = 0.0, 0
        for epoch in range(1, spec.epochs + 1):
            order = np.random.default_rng([spec.seed, epoch]).permutation(n).astype(np.int32)
            idx, w = _padded_batches(n, size)
            idx = order[idx]
            sums = zeros()
            t0 = time.perf_counter()
            for b in range(len(idx)):
                params, state, opt_state, sums = step(params, state, opt_state, sums, idx[b],
                                                      w[b], np.int32(steps), x_all, y_all)
                steps += 1
            host = jax.device_get(sums)
            elapsed = time.perf_counter() - t0
            train_seconds += elapsed
            count = float(host.pop("count"))
            row = {"epoch": epoch, **{k: float(v) / count for k, v in host.items()}}
            if len(data.validation):
                val = self.evaluate({"params": params, **state}, data.validation, evaluate)
                row.update({f"val_{k}": v for k, v in val.items()})
            row["seconds"] = elapsed
            history.append(row)
            log(_epoch_line(row, spec.epochs, n / elapsed if elapsed else 0.0))

        variables = {"params": params, **state}
        metrics = {name: self.evaluate(variables, split, evaluate)
                   for name, split in data.splits().items()}
        return TrainResult(
            variables=jax.device_get(variables), history=history, metrics=metrics,
            samples_per_second=n * spec.epochs / train_seconds if train_seconds else 0.0,
            compile_seconds=compile_seconds, train_seconds=train_seconds, steps=steps)


def _epoch_line(row: dict[str, float], epochs: int, rate: float) -> str:
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds")]
    parts.append(f"{rate:,.0f} samples/s")
    return "  ".join(parts)
