"""The training engine: a jitted Optax step over device-resident data, seeded end to end.

Everything a run does is a function of the spec and the seed: the initial weights, each epoch's
data order (from the seed and the epoch number), dropout and augmentation keys (from the step
number). So a run resumed from a checkpoint ends with the same parameters, bit for bit on the
CPU, as one that was never interrupted.
"""

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
from nnspec.compiler.graph.ir import Graph
from nnspec.compiler.train.distributed import agree, replicate, same
from nnspec.compiler.train.heads import Head, check_targets, loss_form
from nnspec.compiler.train.losses import LOSSES, logits_of, scores_of
from nnspec.compiler.train.metrics import metric_fn
from nnspec.compiler.train.module import TrainingModule
from nnspec.compiler.train.optimizers import make_optimizer
from nnspec.compiler.train.pipeline import (
    STREAM_CHUNK_BYTES,
    Route,
    abstract_rows,
    choose_loop,
    choose_pipeline,
    nbytes,
    stream_chunk,
)
from nnspec.compiler.train.regularization import penalty, trainable_mask
from nnspec.compiler.train.watch import Watch, monitor_mode
from nnspec.spec.errors import DataError
from nnspec.spec.schema import TrainSpec

EVAL_BATCH = 1024
FIRST_SPAN = 4
"""Steps in the first chunk of a run; later chunks are sized to take about CHUNK_SECONDS."""
CHUNK_SECONDS = 0.5
"""How long one chunk of steps runs between looks at the host: progress, signals, the NaN
guard. Chunking never changes the numbers (the loop body is the same compiled code)."""
_NO_STEP = np.iinfo(np.int32).max


class NonFiniteError(RuntimeError):
    """The loss became NaN or infinite; training stopped (exit code 3)."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved (exit code 130)."""


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
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """By split and output, the final model's outputs on the validation and test splits (the
    training split's are not kept: `{}`)."""
    targets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stopped_early: int | None = None
    best_epoch: int | None = None
    input_wait_seconds: float = 0.0
    """Time the step waited for streamed batches (0 with the data on the device)."""


def _canonical(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays in the dtypes JAX will hold them in (float64 -> float32 without x64), so the
    host copy streamed in batches equals the one put on the device."""
    # asanyarray: a memory-mapped set (nnspec.compiler.data.mapped) keeps its own row reads;
    # a lazy column (nnspec.compiler.data.arrayrecord, in the input's own dtype) stays lazy.
    return {k: v if not isinstance(v, np.ndarray) and hasattr(v, "take") else np.asanyarray(
        v, jax.dtypes.canonicalize_dtype(np.asarray(v).dtype)) for k, v in arrays.items()}


def _padded_batches(n: int, size: int, width: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 in batches of `size`, each row `width` wide (default `size`): the extra
    columns, and the rest of the last batch, are weight-0 repeats. So every step has one shape
    and compiles once, and a batch padded to split evenly over devices holds the same samples
    as on one device."""
    width = width or size
    count = max(1, math.ceil(n / size))
    real = np.arange(count)[:, None] * size + np.arange(width)[None, :]
    weight = ((np.arange(width)[None, :] < size) & (real < n)).astype(np.float32)
    return (real % max(n, 1)).astype(np.int32), weight

def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, tree)


class Trainer:
    """Builds the jitted train and eval steps of one graph, its heads and its train spec."""

    def __init__(self, graph: Graph, train: TrainSpec, heads: list[Head], n_train: int):
        self.graph, self.spec, self.heads = graph, train, heads
        # The form of each head's loss (from which logits, or on probabilities): one rule,
        # `heads.loss_form`, shared with `validate` and `summary`.
        self.forms = {h.output: h.form or loss_form(graph, h.output, h.loss.name)
                      for h in heads}
        self.module = TrainingModule(graph)
        self.devices = jax.devices()
        n_dev = len(self.devices)
        size = min(train.batch_size, max(n_train, 1))
        self.size = size  # samples a step
        self.batch = math.ceil(size / n_dev) * n_dev  # its width, padded to split evenly
        self.steps_per_epoch = max(1, math.ceil(n_train / size))
        self.tx, self.schedule = make_optimizer(train.optimizer, self.steps_per_epoch,
                                                train.epochs)
        key = jax.random.key(train.seed)
        self.init_key, self.dropout_key, self.augment_key = jax.random.split(key, 3)
        self.single = len(heads) == 1
        self.compute_dtype = jnp.bfloat16 if train.precision == "bfloat16" else jnp.float32
        self.mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.loop = choose_loop(graph, train.loop)
        self.pipeline = train.pipeline  # 'auto' is settled by `fit`, which sees the data
        self.workers: int | str = "auto"
        """Grain worker processes of the streamed route (`data.workers`; set by `train_run`)."""
        self.data_name = "the training data"
        """How errors name the data (`train_run` sets the spec's data file)."""

    def init(self, x: dict[str, np.ndarray]) -> dict[str, Any]:
        """Initial variables from the seed (only the sample shapes of `x` matter)."""
        # Jitted: eager initialisation runs op by op, seconds for a small model.
        init = jax.jit(self.module.init, static_argnames="train")
        return init({"params": self.init_key, "dropout": self.dropout_key},
                    {k: jnp.asarray(v[:1]) for k, v in x.items()}, train=False)

    def adapt(self, variables: dict[str, Any], train: Split) -> dict[str, Any]:
        """Statistics of `normalize` layers without given ones, from the training inputs."""
        stats = dict(variables.get("stats", {}))
        for node in self.graph.nodes:
            if node.type == "normalize" and node.layer.adapt:
                source = node.inputs[0]
                if source not in train.x:
                    raise DataError(f"layer {node.name!r} (normalize) adapts its statistics "
                                    f"from the training data, so it must read a model input; "
                                    f"it reads {source!r}. Give `mean` and `std`, or move it "
                                    "to the input")
                found = node.layer.statistics(train.x[source])
                stats[node.name] = {k: jnp.asarray(v) for k, v in found.items()}
        return {**variables, "stats": stats} if stats else variables

    def _key(self, head: Head, metric: str) -> str:
        return metric if self.single else f"{head.output}_{metric}"

    def _objective(self, outs: dict, logits: dict, y: dict, mask: jax.Array,
                   on_device: tuple[str, ...] = ("accuracy",)) -> tuple[jax.Array, dict]:
        """The weighted total loss, and per-batch sums of every loss (and of the metrics
        cheap enough to add up on the device)."""
        count = jnp.maximum(jnp.sum(mask), 1.0)
        total = jnp.zeros((), jnp.float32)
        sums = {"count": jnp.sum(mask)}
        for head in self.heads:
            out = outs[head.output].astype(jnp.float32)
            target = y[head.output]
            lg = logits_of(self.forms[head.output], out, logits.get(head.output))
            per = LOSSES[head.loss.name](out, None if lg is None else lg.astype(jnp.float32),
                                         target, head.loss)
            scores = scores_of(self.forms[head.output], head.loss.name, out)
            weight = mask
            if head.loss.class_weights is not None and target.ndim == 1:
                weight = weight * jnp.asarray(head.loss.class_weights)[target.astype(jnp.int32)]
            loss = jnp.sum(per * weight) / count
            total = total + head.weight * loss
            if not self.single:
                sums[self._key(head, "loss")] = loss * jnp.sum(mask)
            for metric in head.metrics:
                if metric in on_device and target.ndim <= out.ndim:
                    sums[self._key(head, metric)] = metric_fn(metric, head.loss.name)(
                        jax.lax.stop_gradient(scores), target, mask)
        sums["loss"] = total * jnp.sum(mask)
        return total, sums

    def _body(self) -> Callable[..., Any]:
        """One optimisation step on a gathered batch: (carry, x, y, mask) -> carry."""
        reg = self.spec.regularization
        augments = self.spec.augment
        image_inputs = [n for n, s in self.graph.inputs.items() if len(s.shape) == 3]
        classes = {h.output: self.graph.output_node(h.output).shape[-1] for h in self.heads}
        # Multiplying by masks of ones and a scale of one changes no bit but costs a kernel per
        # parameter on small models: skip them when nothing is frozen or rescaled.
        masked = any(not n.trainable for n in self.graph.nodes)
        scaled = self.spec.optimizer.schedule.name == "reduce_on_plateau"

        def body(carry, x, y, mask):
            params, state, opt_state, sums, bad, lr_scale, frozen, step_no = carry
            if augments:
                from nnspec.compiler.train.augment import augment

                x, y = augment(augments, jax.random.fold_in(self.augment_key, step_no), x, y,
                               image_inputs, classes)
            rng = jax.random.fold_in(self.dropout_key, step_no)

            def objective(p):
                (outs, logits), new_state = self.module.apply(
                    {"params": _cast(p, self.compute_dtype), **state},
                    _cast(x, self.compute_dtype), train=True, rngs={"dropout": rng},
                    mutable=list(state))
                total, batch = self._objective(outs, logits, y, mask)
                total = total + penalty(p, reg.l2, reg.l1, reg.layers)
                batch["loss"] = total * batch["count"]
                return total, (batch, _cast(new_state, jnp.float32))

            (total, (batch, new_state)), grads = jax.value_and_grad(
                objective, has_aux=True)(params)
            if masked:
                grads = jax.tree.map(jnp.multiply, grads, frozen)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            if masked or scaled:
                updates = jax.tree.map(lambda u, f: u * f * lr_scale, updates, frozen)
            params = optax.apply_updates(params, updates)
            # One vector of sums, not a dict: one small kernel per step instead of one per
            # metric (a 2x difference on small models; benchmarks/README.md).
            sums = sums + jnp.stack([batch[k] for k in sorted(batch)])
            bad = jnp.where(jnp.isfinite(total), bad, jnp.minimum(bad, step_no))
            return (params, {**state, **new_state}, opt_state, sums, bad, lr_scale, frozen,
                    step_no + 1)

        return body

    def train_step(self, loop: str = "step", stream: bool = False) -> Callable[..., Any]:
        """The jitted train call, with the carry donated.

        `loop='step'`: `(carry, b, idx, mask, xs, ys)` runs step `b`; `loop='fused'`:
        `(carry, first, last, idx, mask, xs, ys)` runs steps first..last-1 in a loop on the
        device. Row `b` of `mask` weighs step b's samples. With the data on the device, `xs` and
        `ys` are the whole training set and row `b` of `idx` the step's sample indices; when
        streamed, `xs` and `ys` hold a chunk of batches, (steps, batch, ...), and idx is None.
        """
        body = self._body()

        def take(arrays: dict, b: Any, idx: Any) -> dict:
            if stream:
                return {k: v[b] for k, v in arrays.items()}
            return {k: v[idx[b]] for k, v in arrays.items()}

        def one(carry, b, idx, mask, xs, ys):
            return body(carry, take(xs, b, idx), take(ys, b, idx), mask[b])

        if loop == "step":
            return jax.jit(one, donate_argnums=(0,))

        def run(carry, first, last, idx, mask, xs, ys):
            return jax.lax.fori_loop(first, last, lambda b, c: one(c, b, idx, mask, xs, ys),
                                     carry)

        return jax.jit(run, donate_argnums=(0,))

    def eval_step(self) -> Callable[..., Any]:
        def step(variables, x, y, mask):
            outs, logits = self.module.apply(variables, x, train=False)
            return self._objective(outs, logits, y, mask, on_device=())[1], outs

        return jax.jit(step)

    def evaluate(self, variables: dict, split: Split, step: Callable | None = None,
                 keep: bool = False) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Loss and every metric of `variables` on a whole split (inference mode); metrics
        are computed over the whole split at once (exact macro F1, AUC...)."""
        from nnspec.compiler.train import feed
        from nnspec.compiler.train.split_metrics import SplitMetrics

        step = step or self.eval_step()
        idx, mask = _padded_batches(len(split), min(EVAL_BATCH, len(split)))
        total: dict[str, Any] | None = None
        # Only what `keep` asks for stays in memory: a streamed split's outputs can be larger
        # than memory, so the metrics are accumulated batch by batch (`SplitMetrics`).
        outputs: dict[str, list[np.ndarray]] = {h.output: [] for h in self.heads} if keep else {}
        tallies = [(h, SplitMetrics(h.metrics, self.spec.top_k,
                                    multi_label=h.loss.name == "binary_crossentropy"))
                   for h in self.heads if h.metrics]
        # A split read from disk (Parquet row groups, image files, records) is read a chunk of
        # batches at a time, ahead of the step; in memory, each batch is indexed.
        batches = (feed.eval_batches(split.x, split.y, idx, STREAM_CHUNK_BYTES)
                   if feed.is_lazy(split.x) else
                   ((p.x, p.y) for p in (split.take(idx[b]) for b in range(len(idx)))))
        for b, (xs, ys) in enumerate(batches):
            sums, outs = step(variables, xs, ys, mask[b])
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            real = mask[b] > 0
            for name in outputs:
                outputs[name].append(np.asarray(outs[name])[real])
            for head, tally in tallies:
                scores = scores_of(self.forms[head.output], head.loss.name, outs[head.output])
                tally.update(np.asarray(scores)[real], np.asarray(ys[head.output])[real])
        host = jax.device_get(total)
        count = float(host.pop("count"))
        result = {k: float(v) / count for k, v in host.items()}
        for head, tally in tallies:
            result.update({self._key(head, k): v for k, v in tally.result().items()})
        return result, {k: np.concatenate(v) for k, v in outputs.items()}

    def _route(self, fused: bool, stream: bool, mask: np.ndarray, host_x: dict, host_y: dict,
               x_all: Any, y_all: Any, idx0: np.ndarray | None = None) -> Route:
        """The run's route, before its train call is compiled; `mask` is (steps, width), and
        `idx0` the batch layout of the epoch permutation (streamed: read through Grain)."""
        steps, width = mask.shape
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, "data"))
        if not stream:
            return Route(fused, False, steps, steps, mask, x_all, y_all, sharding)
        sample = sum(v[:1].nbytes for v in (*host_x.values(), *host_y.values()))
        chunk = stream_chunk(steps, width, sample)
        padded = np.zeros((steps + chunk, width), np.float32)  # the last chunk's spare rows: 0
        padded[:steps] = mask
        route = Route(fused, True, steps, chunk, padded, host_x, host_y, sharding)
        if idx0 is not None:
            from nnspec.compiler.train import feed

            columns = feed.local_columns(sharding, (chunk, width))
            element = feed.ChunkAt(host_x, host_y, self.spec.seed, len(
                next(iter(host_y.values()))), idx0, chunk, columns)
            workers = feed.auto_workers(self.workers, decodes=any(
                getattr(v, "decodes", False) for v in host_x.values()))
            route.loader = lambda epoch, start: feed.GrainLoader(
                element, element.position(epoch, start), element.position(
                    self.spec.epochs, steps - 1) + 1, workers)
        return route

    @staticmethod
    def _interrupted(epoch: int, step: int, checkpoints: Any) -> Interrupted:
        where = checkpoints.folder if checkpoints else "nowhere (no checkpoints)"
        return Interrupted(f"interrupted at epoch {epoch}, step {step}; checkpoint saved "
                           f"{where}")

    def fit(self, data: Dataset, log: Callable[[str], None] = lambda s: None,
            on_epoch: Callable[[dict], bool | None] = lambda row: None, checkpoints: Any = None,
            resume: bool = False, stop: Callable[[], bool] = lambda: False,
            initial: dict[str, Any] | None = None,
            on_resume: Callable[[list], None] = lambda history: None,
            progress: Callable[[dict], None] | None = None) -> TrainResult:
        """Train; return the final (or best) variables, history, metrics and predictions.

        `log` receives a line per epoch; `progress`, when given, a dict after each chunk of
        steps (epoch, epochs, step, steps, samples_per_second, and `metrics`: the epoch's
        running loss and on-device metrics); `stop` is polled between chunks.
        """
        for head in self.heads:
            check_targets(self.graph, head, data.train.y[head.output])
        spec = self.spec
        variables = self.init(data.train.x)
        if initial:
            variables = initial  # statistics too come from the source, where names match
        else:
            variables = self.adapt(variables, data.train)
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}
        n, size = len(data.train), self.batch
        host_x, host_y = _canonical(data.train.x), _canonical(data.train.y)
        loop = self.loop
        stream = choose_pipeline(spec.pipeline, nbytes(host_x) + nbytes(host_y)) == "stream"
        self.pipeline = "stream" if stream else "device"
        x_all = y_all = None
        if not stream:
            x_all = jax.device_put(host_x, self.replicated)
            y_all = jax.device_put(host_y, self.replicated)
        layout = jax.eval_shape(lambda x, y: self._objective(*self.module.apply(
            {"params": params, **state}, x), y, jnp.ones(size))[1],
            abstract_rows(host_x, (size,)), abstract_rows(host_y, (size,)))
        keys = sorted(layout)  # the order of the sums in the carry's vector

        def zeros() -> jax.Array:
            return jnp.zeros(len(keys), jnp.float32)

        unfreeze = spec.unfreeze_after
        carry = (params, state, self.tx.init(params), zeros(), jnp.int32(_NO_STEP),
                 jnp.float32(1.0), trainable_mask(params, self.graph), jnp.int32(0))
        early = spec.early_stopping
        watch = Watch(monitor_mode(early.monitor, early.mode), early.min_delta) if early else None
        plateau_spec = spec.optimizer.schedule
        plateau_monitor = early.monitor if early else (
            "val_loss" if len(data.validation) else "loss")
        plateau = Watch(monitor_mode(plateau_monitor, "auto")) if (
            plateau_spec.name == "reduce_on_plateau") else None
        best_vars = None
        history: list[dict[str, float]] = []
        start_epoch, start_batch, partial, stopped = 1, 0, None, None
        fingerprint = None
        if checkpoints is not None:  # resuming on other data would mix two datasets
            from nnspec.compiler.train.checkpoint import data_sha256

            fingerprint = data_sha256(data.splits())
        if resume and checkpoints is not None:
            template = {"carry": carry, "best": {"params": params, **state}}
            found = checkpoints.latest(template)
            if found is not None:
                restored, record = found
                if record.get("data_sha256", fingerprint) != fingerprint:
                    raise DataError(
                        f"--resume: {self.data_name} changed since the checkpoint in "
                        f"{checkpoints.folder} was saved (its samples hash to sha256 "
                        f"{fingerprint[:16]}..., the run's to {record['data_sha256'][:16]}...)"
                        "; resume with the data the run started with, or train again "
                        "without --resume")
                carry = jax.tree.map(jnp.asarray, restored["carry"])
                best_vars = restored["best"] if record.get("has_best") else None
                history = record["history"]
                start_epoch, start_batch = record["epoch"], record["batch"]
                partial = record.get("partial")
                stopped = record.get("stopped")
                if stopped:  # early stopping had ended the run: nothing is left to train
                    start_epoch = spec.epochs + 1
                if watch and record.get("watch"):
                    watch = Watch(watch.mode, watch.min_delta, **record["watch"])
                if plateau and record.get("plateau"):
                    plateau = Watch(plateau.mode, 0.0, **record["plateau"])
                on_resume(history)
                log(f"resumed from {checkpoints.folder} at epoch {start_epoch}, batch "
                    f"{start_batch}")
        carry = replicate(carry, self.replicated)

        def save(epoch: int, batch: int, sums: Any = None) -> None:
            if checkpoints is None:
                return
            partial_sums = None if sums is None else dict(
                zip(keys, jax.device_get(sums).tolist()))
            record = {"epoch": epoch, "batch": batch, "history": history,
                      "has_best": best_vars is not None, "partial": partial_sums,
                      "stopped": stopped,
                      "watch": watch.record() if watch else None,
                      "plateau": plateau.record() if plateau else None,
                      "data_sha256": fingerprint,
                      "loader": {**(route.loader_state() or {}), "epoch": epoch,
                                 "step": batch, "seed": spec.seed}}
            tree = {"carry": carry, "best": best_vars if best_vars is not None else
                    {"params": carry[0], **carry[1]}}
            checkpoints.save(int(carry[7]), tree, record)

        idx0, w0 = _padded_batches(n, self.size, size)
        route = self._route(loop == "fused", stream, w0, host_x, host_y, x_all, y_all, idx0)
        started = time.perf_counter()
        route.fn = self.train_step(loop, stream).lower(*route.example_args(carry)).compile()
        evaluate = self.eval_step()
        compile_seconds = time.perf_counter() - started

        every = spec.checkpoint.every_steps
        step_no = int(carry[7])  # the global step, mirrored on the host
        steps = route.steps
        span = min(steps, FIRST_SPAN)
        train_seconds, trained_steps = 0.0, 0
        for epoch in range(start_epoch, spec.epochs + 1):
            if unfreeze is not None and epoch > unfreeze:
                carry = (*carry[:6], replicate(trainable_mask(carry[0], self.graph, frozen=False),
                                               self.replicated), carry[7])
            order = np.random.default_rng([spec.seed, epoch]).permutation(n).astype(np.int32)
            rows = order[idx0]  # (steps, batch): the epoch's sample indices
            first = start_batch if epoch == start_epoch else 0
            sums = zeros() if not (partial and epoch == start_epoch) else jnp.asarray(
                [partial[k] for k in keys], jnp.float32)
            carry = (*carry[:3], replicate(sums, self.replicated), *carry[4:])
            due = interrupted = False
            t0 = time.perf_counter()
            with route.epoch(rows, first, epoch) as feed:
                b = first
                while b < steps:
                    base, *args = feed(b)
                    end = min(steps, b + span, base + route.chunk)
                    if every:
                        end = min(end, b + every - step_no % every)
                    tick = time.perf_counter()
                    carry = route.run(carry, b, end, base, *args)
                    running, bad = jax.device_get((carry[3], carry[4]))  # waits for the chunk
                    took = time.perf_counter() - tick
                    # Every process must run the same chunks: each is one collective program.
                    span = same(max(1, min(steps, round((end - b) * CHUNK_SECONDS
                                                        / max(took, 1e-6)))))
                    step_no += end - b
                    trained_steps += end - b
                    b = end
                    if int(bad) != _NO_STEP:
                        raise NonFiniteError(
                            f"the loss became non-finite at step {int(bad)} (epoch {epoch}); "
                            f"training stopped; the last good checkpoint is kept"
                            + (f" in {checkpoints.folder}" if checkpoints else ""))
                    if progress is not None:
                        run = dict(zip(keys, running.tolist()))
                        seen = max(run.pop("count"), 1.0)
                        progress({"epoch": epoch, "epochs": spec.epochs, "step": b,
                                  "steps": steps, "samples_per_second": (b - first) * size / max(
                                      time.perf_counter() - t0, 1e-9),
                                  "metrics": {k: v / seen for k, v in run.items()}})
                    if agree(stop()):  # every process stops at the same step, or none
                        interrupted = True
                        if b == steps:
                            break  # the epoch is whole: record it, then save and stop
                        save(epoch, b, carry[3])
                        raise self._interrupted(epoch, step_no, checkpoints)
                    if every and step_no % every == 0:
                        if b < steps:
                            save(epoch, b, carry[3])
                        else:
                            due = True  # saved below, once the epoch is recorded
            host = dict(zip(keys, jax.device_get(carry[3]).tolist()))
            elapsed = time.perf_counter() - t0
            train_seconds += elapsed
            count = float(host.pop("count"))
            row = {"epoch": epoch, **{k: float(v) / count for k, v in host.items()}}
            current = {"params": carry[0], **carry[1]}
            if len(data.validation):
                val, _ = self.evaluate(current, data.validation, evaluate)
                row.update({f"val_{k}": v for k, v in val.items()})
            lr_now = float(self.schedule(max(step_no - 1, 0))) * float(carry[5])
            row["learning_rate"] = lr_now
            row["seconds"] = elapsed
            if watch or plateau:
                for w_, name in ((watch, early.monitor if early else None),
                                 (plateau, plateau_monitor)):
                    if w_ is not None and name not in row:
                        raise DataError(f"train: monitored metric {name!r} is not computed; "
                                        f"available: {sorted(k for k in row if k != 'epoch')}")
            if watch and watch.update(row[early.monitor], epoch) and early.restore_best:
                best_vars = jax.device_get(current)
            if plateau and not plateau.update(row[plateau_monitor], epoch) and (
                    plateau.wait > plateau_spec.patience):
                floor = plateau_spec.min_learning_rate / spec.optimizer.learning_rate
                scale = max(float(carry[5]) * plateau_spec.factor, floor)
                carry = (*carry[:5], replicate(np.float32(scale), self.replicated), *carry[6:])
                plateau.wait = 0
                log(f"reduce_on_plateau: learning rate x{scale:g}")
            history.append(row)
            asked = on_epoch(row)
            log(_epoch_line(row, spec.epochs, n / elapsed if elapsed else 0.0))
            if asked and not stopped:  # a callback asked to stop: end as early stopping does
                stopped = epoch
                log(f"stopped at epoch {epoch}: a callback asked to stop")
            if watch and watch.wait > early.patience:
                stopped = epoch
                log(f"early stopping at epoch {epoch}: {early.monitor} last improved at "
                    f"epoch {watch.best_epoch}")
            if (epoch % spec.checkpoint.every_epochs == 0 or epoch == spec.epochs or stopped
                    or due or interrupted):
                save(epoch + 1, 0)
            if interrupted and not stopped and epoch < spec.epochs:
                raise self._interrupted(epoch, step_no, checkpoints)
            if stopped:
                break

        route.close()
        final = {"params": carry[0], **carry[1]}
        if best_vars is not None and early and early.restore_best:
            final = jax.tree.map(jnp.asarray, best_vars)
        metrics, predictions = {}, {}
        for name, split in data.splits().items():
            # The training split's outputs are never read back, and streamed it may not fit.
            metrics[name], predictions[name] = self.evaluate(final, split, evaluate,
                                                             keep=name != "train")
        return TrainResult(
            variables=jax.device_get(final), history=history, metrics=metrics,
            samples_per_second=(n * trained_steps / steps / train_seconds
                                if train_seconds else 0.0),
            compile_seconds=compile_seconds, train_seconds=train_seconds,
            steps=int(carry[7]), predictions=predictions, stopped_early=stopped,
            best_epoch=watch.best_epoch if watch else None, input_wait_seconds=route.waited)


def _epoch_line(row: dict[str, float], epochs: int, rate: float) -> str:
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds")]
    parts.append(f"{rate:,.0f} samples/s")
    return "  ".join(parts)
