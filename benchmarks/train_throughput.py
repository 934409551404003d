"""Training-step throughput: nnspec's Trainer against the same network written by hand.

For the quickstart MLP (examples/quickstart.yaml) and the two-convolution CNN
(examples/cnn.yaml), on their own data (the UCI digits' training split), this times:

- `nnspec`: `Trainer.fit` as `nnspec train` runs it (spec checked with `check_spec`, heads
  from `resolve_heads`, data from `make_dataset`); samples/s from the `seconds` of each epoch in
  its history, which exclude compilation and the per-epoch validation pass (the benchmark gives
  it no validation split anyway).
- `hand`: the same network written directly in flax.linen (same initializers, pooling
  formulation, dropout), same optimizer and learning rate, same batch size, same number of
  steps per epoch, and the same device-resident data gathered by index inside one jitted,
  donated step that also sums the loss and the correct predictions: the fair baseline.
- `naive`: that hand-written step fed numpy batches gathered on the host each step (the
  common tutorial loop); reported for reference, not asserted.

Every contender runs in this process, so they share one environment (`--tuned-env` restarts
the script with perf-cpu.md's allocator and XLA settings: for all of them or none). Rounds
alternate the contenders (rotating who goes first); the first `--warmup` epochs of each run are
dropped; medians over rounds are reported, and the ratio is the median of the per-round ratios
nnspec/hand. Exits 1 when a model's ratio is below `--min-ratio` (default 0.95).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from _common import EXAMPLES, machine, median, reexec_tuned, table, write_json

MODELS = {"mlp": EXAMPLES / "quickstart.yaml", "cnn": EXAMPLES / "cnn.yaml"}
CONTENDERS = ("nnspec", "hand", "naive")


@dataclass
class Setup:
    """One model's spec, data and hand-written twin."""

    name: str
    loaded: Any
    graph: Any
    heads: Any
    data: Any  # nnspec Dataset with empty validation and test splits
    hand: Any  # the flax.linen module
    x: Any  # numpy training inputs
    y: Any  # numpy integer labels
    batch: int
    steps: int  # per epoch
    x_dev: Any = None  # the same, on the device
    y_dev: Any = None


def hand_module(name: str, scale: float, pool: str) -> Any:
    """The example's network written directly in flax.linen."""
    import flax.linen as nn
    import jax.numpy as jnp

    glorot = nn.initializers.glorot_uniform()  # Keras' and nnspec's default for kernels

    def max_pool(x: Any) -> Any:
        if pool == "reduce_window":
            return nn.max_pool(x, (2, 2), (2, 2))
        b, h, w, c = x.shape  # 2x2 stride 2 as a reshape (nnspec's lowering, perf-cpu.md #1)
        x = x[:, : h // 2 * 2, : w // 2 * 2]
        return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any, train: bool = False) -> Any:
            x = x.reshape((x.shape[0], -1)).astype(jnp.float32) * scale
            x = nn.relu(nn.Dense(128, kernel_init=glorot)(x))
            x = nn.relu(nn.Dense(64, kernel_init=glorot)(x))
            return nn.Dense(10, kernel_init=glorot)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x: Any, train: bool = False) -> Any:
            x = x.astype(jnp.float32) * scale
            x = max_pool(nn.relu(nn.Conv(32, (3, 3), padding="SAME", kernel_init=glorot)(x)))
            x = max_pool(nn.relu(nn.Conv(64, (3, 3), padding="SAME", kernel_init=glorot)(x)))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(128, kernel_init=glorot)(x))
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(10, kernel_init=glorot)(x)

    return {"mlp": MLP, "cnn": CNN}[name]()


def setup(name: str, epochs: int, pool: str) -> Setup:
    from nnspec.compiler.data.dataset import Dataset, make_dataset
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.train.heads import resolve_heads

    loaded, graph = check_spec(MODELS[name], [f"train.epochs={epochs}"])
    heads = resolve_heads(loaded, graph)
    spec = loaded.spec
    full = make_dataset(spec.data, spec.inputs, list(graph.outputs), loaded.folder)
    train = full.train
    empty = train.take(slice(0, 0))
    data = Dataset(train, empty, empty)
    (x,), (y,) = train.x.values(), train.y.values()
    scale = next(n.layer.scale for n in graph.nodes if n.type == "rescale")
    batch = min(spec.train.batch_size, len(train))
    import jax.numpy as jnp
    import numpy as np

    y = y.astype(np.int32)
    return Setup(name, loaded, graph, heads, data, hand_module(name, scale, pool), x, y,
                 batch, math.ceil(len(train) / batch), jnp.asarray(x), jnp.asarray(y))


def check_same_network(s: Setup) -> dict[str, int]:
    """Both networks have the same parameter shapes (names differ), so the same model."""
    import jax
    import numpy as np

    from nnspec.compiler.train.engine import Trainer

    trainer = Trainer(s.graph, s.loaded.spec.train, s.heads, len(s.data.train))
    ours = trainer.init(s.data.train.x)["params"]
    theirs = s.hand.init(jax.random.key(0), s.x[:1], train=False)["params"]

    def shapes(tree: Any) -> list[tuple[int, ...]]:
        return sorted(tuple(a.shape) for a in jax.tree.leaves(tree))

    if shapes(ours) != shapes(theirs):
        raise SystemExit(f"{s.name}: the hand-written network differs from the spec's: "
                         f"{shapes(ours)} != {shapes(theirs)}")
    return {"parameters": int(sum(np.prod(a.shape) for a in jax.tree.leaves(ours)))}


def epoch_order(n: int, batch: int, seed: int, epoch: int) -> Any:
    """The epoch's shuffled indices in `steps` batches of `batch`, the last one padded with
    repeats (nnspec's `_padded_batches` layout: one shape, compiled once)."""
    import numpy as np

    order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
    count = math.ceil(n / batch)
    return order[np.arange(count * batch) % n].reshape(count, batch)


def hand_step(s: Setup, gather: bool) -> Any:
    """The jitted, donated train step of the hand-written loop."""
    import jax
    import jax.numpy as jnp
    import optax

    opt = s.loaded.spec.train.optimizer
    tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    dropout_key = jax.random.key(1)

    def step(carry: Any, x: Any, y: Any) -> Any:
        params, opt_state, loss_sum, correct, step_no = carry
        rng = jax.random.fold_in(dropout_key, step_no)

        def loss_fn(p: Any) -> Any:
            logits = s.hand.apply({"params": p}, x, train=True, rngs={"dropout": rng})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
        return params, opt_state, loss_sum + loss, correct, step_no + 1

    def gathered(carry: Any, x_all: Any, y_all: Any, idx: Any) -> Any:
        return step(carry, x_all[idx], y_all[idx])  # data passed each step, as nnspec does

    return jax.jit(gathered if gather else step, donate_argnums=(0,)), tx


def run_hand(s: Setup, epochs: int, warmup: int, gather: bool, cache: dict) -> list[float]:
    """Seconds of each timed epoch of the hand-written loop (compile excluded)."""
    import jax
    import jax.numpy as jnp

    def fresh() -> Any:
        params = s.hand.init(jax.random.key(0), s.x[:1], train=False)["params"]
        return (params, tx.init(params), jnp.zeros((), jnp.float32),
                jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    key = "gather" if gather else "naive"
    if key not in cache:
        cache[key] = step, tx = hand_step(s, gather)
        first = epoch_order(len(s.x), s.batch, 0, 0)[0]  # compile outside the timed epochs
        args = (s.x_dev, s.y_dev, first) if gather else (s.x[first], s.y[first])
        jax.block_until_ready(step(fresh(), *args))
    step, tx = cache[key]
    carry = fresh()
    n, seconds = len(s.x), []
    for epoch in range(1, epochs + 1):
        idx = epoch_order(n, s.batch, 0, epoch)
        t0 = time.perf_counter()
        if gather:
            for b in range(len(idx)):
                carry = step(carry, s.x_dev, s.y_dev, idx[b])
        else:
            for b in range(len(idx)):
                carry = step(carry, s.x[idx[b]], s.y[idx[b]])
        jax.device_get(carry[2:4])  # the epoch's loss and accuracy, as nnspec reads its sums
        seconds.append(time.perf_counter() - t0)
    return seconds[warmup:]


def run_nnspec(s: Setup, warmup: int) -> tuple[list[float], float, str]:
    """Seconds of each timed epoch of `Trainer.fit` (its history), its compile time and the
    route it took (train.loop/train.pipeline)."""
    from nnspec.compiler.train.engine import Trainer

    trainer = Trainer(s.graph, s.loaded.spec.train, s.heads, len(s.data.train))
    assert trainer.batch == s.batch and trainer.steps_per_epoch == s.steps, (
        trainer.batch, s.batch, trainer.steps_per_epoch, s.steps)
    result = trainer.fit(s.data)
    return ([row["seconds"] for row in result.history][warmup:], result.compile_seconds,
            f"{trainer.loop}/{trainer.pipeline}")


def measure(name: str, rounds: int, epochs: int, warmup: int, pool: str) -> dict[str, Any]:
    s = setup(name, epochs, pool)
    info = check_same_network(s)
    n = len(s.x)
    rate: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    ratios, naive_ratios, compile_s, route = [], [], [], ""
    cache: dict = {}
    for r in range(rounds):
        order = CONTENDERS[r % 3:] + CONTENDERS[: r % 3]
        got = {}
        for c in order:
            if c == "nnspec":
                seconds, comp, route = run_nnspec(s, warmup)
                compile_s.append(comp)
            else:
                seconds = run_hand(s, epochs, warmup, c == "hand", cache)
            got[c] = n * len(seconds) / sum(seconds)
            rate[c].append(got[c])
        ratios.append(got["nnspec"] / got["hand"])
        naive_ratios.append(got["nnspec"] / got["naive"])
        print(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
            f"{c} {got[c]:,.0f}" for c in CONTENDERS) + f" samples/s; nnspec/hand "
            f"{ratios[-1]:.3f}", file=sys.stderr, flush=True)
    return {
        "model": name, "spec": str(MODELS[name].relative_to(EXAMPLES.parent)),
        "train_samples": n, "batch_size": s.batch, "steps_per_epoch": s.steps,
        "epochs_per_run": epochs, "timed_epochs_per_run": epochs - warmup, "rounds": rounds,
        "hand_pool": pool if name == "cnn" else None, **info,
        "samples_per_second": {c: rate[c] for c in CONTENDERS},
        "median_samples_per_second": {c: median(rate[c]) for c in CONTENDERS},
        "median_step_ms": {c: 1e3 * n / (median(rate[c]) * s.steps) for c in CONTENDERS},
        "ratio_vs_hand": median(ratios), "ratios_vs_hand": ratios,
        "ratio_vs_naive": median(naive_ratios), "ratios_vs_naive": naive_ratios,
        "nnspec_compile_seconds": median(compile_s), "nnspec_route": route,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run, warmup included (default: enough for about "
                             "--steps timed steps)")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="epochs dropped from each run")
    parser.add_argument("--min-ratio", type=float, default=0.95,
                        help="fail when nnspec/hand is below this for any model")
    parser.add_argument("--hand-pool", choices=("reshape", "reduce_window"), default="reshape",
                        help="the hand-written CNN's max pool: nnspec's formulation (default) "
                             "or flax's nn.max_pool")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 epochs (1 timed): the smoke test")
    parser.add_argument("--tuned-env", action="store_true",
                        help="restart with perf-cpu.md's allocator and XLA settings")
    args = parser.parse_args(argv)
    if args.tuned_env:
        reexec_tuned([__file__, *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.rounds, args.epochs, args.warmup = 1, 2, 1
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")

    import jax

    results = []
    for name in names:
        epochs = args.epochs
        if epochs is None:
            loaded_steps = _steps_per_epoch(name)
            epochs = args.warmup + max(1, math.ceil(args.steps / loaded_steps))
        results.append(measure(name, args.rounds, epochs, args.warmup, args.hand_pool))

    rows = []
    for r in results:
        med = r["median_samples_per_second"]
        rows.append([r["model"], r["nnspec_route"], r["train_samples"], r["batch_size"],
                     f"{r['steps_per_epoch']} x {r['timed_epochs_per_run']}", r["rounds"],
                     f"{med['nnspec']:,.0f}", f"{med['hand']:,.0f}", f"{med['naive']:,.0f}",
                     f"{r['ratio_vs_hand']:.3f}", f"{r['ratio_vs_naive']:.3f}",
                     "ok" if r["ratio_vs_hand"] >= args.min_ratio else "BELOW"])
    print(table(["model", "nnspec route", "samples", "batch", "steps x epochs", "rounds",
                 "nnspec /s", "hand /s", "naive /s", "nnspec/hand", "nnspec/naive",
                 f">= {args.min_ratio}"], rows))
    passed = all(r["ratio_vs_hand"] >= args.min_ratio for r in results)
    write_json(args.json, {"benchmark": "train_throughput", "quick": args.quick,
                           "min_ratio": args.min_ratio, "backend": jax.default_backend(),
                           "devices": [str(d) for d in jax.devices()],
                           "tuned_env": args.tuned_env, "machine": machine(),
                           "results": results, "passed": passed})
    if not passed:
        low = [f"{r['model']} {r['ratio_vs_hand']:.3f}" for r in results
               if r["ratio_vs_hand"] < args.min_ratio]
        print(f"nnspec/hand below {args.min_ratio}: {', '.join(low)}", file=sys.stderr)
    return 0 if passed else 1


def _steps_per_epoch(name: str) -> int:
    from nnspec.compiler.data.dataset import make_dataset
    from nnspec.compiler.graph.ir import check_spec

    loaded, graph = check_spec(MODELS[name])
    spec = loaded.spec
    n = len(make_dataset(spec.data, spec.inputs, list(graph.outputs), loaded.folder).train)
    return math.ceil(n / min(spec.train.batch_size, n))


if __name__ == "__main__":
    sys.exit(main())
