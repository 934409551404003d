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
from nnspec.compiler.losses import LOSSES
from nnspec.compiler.metrics import METRICS
from nnspec.compiler.optimizers import make_optimizer
from nnspec.spec.errors import DataError
from nnspec.spec.schema import TrainSpec

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


def _check_targets(graph: Graph, train: TrainSpec, split: Split) -> None:
    (out,) = graph.outputs
    shape = graph.output_node(out).shape
    y = split.y
    if train.loss != "mse" or y.ndim == 1:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            if train.loss == "categorical_crossentropy" and y.shape[1:] == shape:
                return
            raise DataError(f"loss {train.loss!r} needs integer class labels, one per sample; "
                            f"the targets have shape {y.shape[1:]} and dtype {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= shape[-1]):
            raise DataError(f"class labels range over [{y.min()}, {y.max()}] but output {out!r} "
                            f"has {shape[-1]} classes (shape {shape})")
    elif y.shape[1:] != shape:
        raise DataError(f"loss 'mse' compares output {out!r} of shape {shape} with targets of "
                        f"shape {y.shape[1:]}")


def _padded_batches(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 in batches of `size`, the last one padded with weight-0 repeats, so that
    every step has one shape and compiles once."""
    count = max(1, math.ceil(n / size))
    idx = np.arange(count * size) % max(n, 1)
    weight = (np.arange(count * size) < n).astype(np.float32)
    return idx.reshape(count, size).astype(np.int32), weight.reshape(count, size)


class Trainer:
    """Builds the jitted train and eval steps of one graph under one train spec."""

    def __init__(self, graph: Graph, train: TrainSpec):
        if len(graph.outputs) != 1 or len(graph.inputs) != 1:
            raise DataError("training needs one input and one output for now; the model has "
                            f"inputs {list(graph.inputs)} and outputs {list(graph.outputs)}")
        self.graph, self.spec = graph, train
        self.module = TrainingModule(graph)
        (self.input,) = graph.inputs
        (self.output,) = graph.outputs
        self.tx = make_optimizer(train.optimizer)
        self.loss = LOSSES[train.loss]
        self.metrics = {m: METRICS[m] for m in train.metrics}
        key = jax.random.key(train.seed)
        self.init_key, self.dropout_key = jax.random.split(key)

    def init(self, x: np.ndarray) -> dict[str, Any]:
        """Initial variables from the seed (only the sample shape of `x` matters)."""
        return self.module.init({"params": self.init_key, "dropout": self.dropout_key},
                                {self.input: jnp.asarray(x[:1])}, train=False)

    def _sums(self, out: jax.Array, logits: jax.Array | None, y: jax.Array, w: jax.Array,
              loss: jax.Array | None = None) -> dict[str, jax.Array]:
        if loss is None:
            loss = self.loss(out, logits, y, w)
        sums = {"loss": loss * jnp.sum(w), "count": jnp.sum(w)}
        for name, fn in self.metrics.items():
            sums[name] = fn(out, y, w)
        return sums

    def train_step(self) -> Callable[..., Any]:
        def step(params, state, opt_state, sums, idx, w, step_no, x_all, y_all):
            x, y = x_all[idx], y_all[idx]
            rng = jax.random.fold_in(self.dropout_key, step_no)

            def objective(p):
                (outs, logits), new_state = self.module.apply(
                    {"params": p, **state}, {self.input: x}, train=True, rngs={"dropout": rng},
                    mutable=list(state))
                out = outs[self.output]
                return self.loss(out, logits.get(self.output), y, w), (out, new_state)

            (loss, (out, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            batch = self._sums(jax.lax.stop_gradient(out), None, y, w, loss)
            sums = jax.tree.map(jnp.add, sums, batch)
            return params, {**state, **new_state}, opt_state, sums

        return jax.jit(step, donate_argnums=(0, 1, 2, 3))

    def eval_step(self) -> Callable[..., Any]:
        def step(variables, x, y, w):
            outs, logits = self.module.apply(variables, {self.input: x}, train=False)
            return self._sums(outs[self.output], logits.get(self.output), y, w)

        return jax.jit(step)

    def evaluate(self, variables: dict, split: Split, step: Callable | None = None
                 ) -> dict[str, float]:
        """Loss and metrics of `variables` on a whole split (inference mode)."""
        step = step or self.eval_step()
        size = min(EVAL_BATCH, len(split))
        idx, w = _padded_batches(len(split), size)
        total: dict[str, Any] | None = None
        for b in range(len(idx)):
            sums = step(variables, split.x[idx[b]], split.y[idx[b]], w[b])
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        host = jax.device_get(total)
        count = float(host.pop("count"))
        return {k: float(v) / count for k, v in host.items()}

    def fit(self, data: Dataset, log: Callable[[str], None] = lambda s: None) -> TrainResult:
        """Train for `epochs` epochs; return the final variables, history and metrics."""
        _check_targets(self.graph, self.spec, data.train)
        spec = self.spec
        variables = self.init(data.train.x)
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}
        opt_state = self.tx.init(params)
        x_all, y_all = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
        n, size = len(data.train), min(spec.batch_size, len(data.train))
        zero = {k: jnp.zeros((), jnp.float32) for k in ("loss", "count", *self.metrics)}
        idx0, w0 = _padded_batches(n, size)

        started = time.perf_counter()
        step = self.train_step().lower(params, state, opt_state, zero, idx0[0], w0[0],
                                       np.int32(0), x_all, y_all).compile()
        evaluate = self.eval_step()
        compile_seconds = time.perf_counter() - started

        history: list[dict[str, float]] = []
        train_seconds, steps = 0.0, 0
        for epoch in range(1, spec.epochs + 1):
            order = np.random.default_rng([spec.seed, epoch]).permutation(n).astype(np.int32)
            idx, w = _padded_batches(n, size)
            idx = order[idx]
            sums = jax.tree.map(jnp.zeros_like, zero)
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
