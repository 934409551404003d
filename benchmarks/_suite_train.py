"""One training contender in its own process (run by suite.py):

    python benchmarks/_suite_train.py CONTENDER MODEL --n N --epochs E --json OUT [--data NPZ]

Contenders: `nnspec` (the `nnspec train` command on an .npz, metrics.json read back),
`flax_step` (hand-written jitted, donated step gathering from device-resident data),
`flax_fused` (the same step as one `lax.scan` over the epoch), `keras` (Keras 3 on JAX,
`model.fit`), `torch` (PyTorch eager). The first epoch is dropped from the timing (compile,
warm-up); `first_step_s` is the time from the start of training to the end of its first step.
With `--data` the contender trains on that .npz (x_train, y_train, x_test, y_test) instead of
synthetic data and reports the test accuracy too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite_models import INPUT, spec_yaml, synthetic  # noqa: E402

BATCH = 128


def load(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    if args.data:
        d = np.load(args.data)
        x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
        shape = INPUT[args.model]
        return (x.reshape(-1, *shape), y.astype(np.int32), xt.reshape(-1, *shape),
                yt.astype(np.int32))
    x, y = synthetic(args.model, args.n)
    return x, y, x[:0], y[:0]


def orders(n: int, epochs: int) -> list[np.ndarray]:
    """Each epoch's shuffled full batches (the remainder dropped: one shape for everyone)."""
    steps = n // BATCH
    return [np.random.default_rng([0, e]).permutation(n)[: steps * BATCH].reshape(steps, BATCH)
            for e in range(epochs)]


def rate(n_per_epoch: int, seconds: list[float]) -> float:
    timed = seconds[1:] or seconds
    return n_per_epoch * len(timed) / sum(timed)


def run_nnspec(args: argparse.Namespace) -> dict[str, Any]:
    x, y, xt, yt = load(args)
    with tempfile.TemporaryDirectory(prefix="nnspec-suite-") as tmp:
        data = Path(tmp) / "data.npz"
        arrays = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt} if args.data else {
            "x": x, "y": y}
        np.savez(data, **arrays)
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(spec_yaml(args.model, "data.npz", args.epochs))
        out = Path(args.keep) if args.keep else Path(tmp) / "run"
        exe = Path(sys.executable).with_name("nnspec")
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else
               ["-m", "nnspec"]), "train", str(spec), "--out", str(out),
               *(f"--set={o}" for o in args.set)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"nnspec train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
    t = metrics["training"]
    seconds = [row["seconds"] for row in (history if isinstance(history, list) else
                                          history.get("epochs", []))]
    n = len(x) // BATCH * BATCH
    result = {"samples_per_second": rate(len(x), seconds) if seconds else
              t["samples_per_second"], "reported_samples_per_second": t["samples_per_second"],
              "first_step_s": t["compile_seconds"], "wall_s": wall, "route":
              f"{t['loop']}/{t['pipeline']}", "epoch_seconds": seconds, "samples": n}
    if args.data:
        result["test_accuracy"] = metrics.get("test", {}).get("accuracy")
    return result


def run_flax(args: argparse.Namespace, fused: bool) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax
    from _suite_models import flax_module

    x, y, xt, yt = load(args)
    net, tx = flax_module(args.model), optax.adam(1e-3)
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def step(carry: Any, idx: Any) -> Any:
        params, opt_state, loss_sum = carry

        def loss_fn(p: Any) -> Any:
            logits = net.apply({"params": p}, xd[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yd[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, loss_sum + loss), None

    one = jax.jit(lambda c, i: step(c, i)[0], donate_argnums=(0,))
    epoch = jax.jit(lambda c, idx: jax.lax.scan(step, c, idx)[0], donate_argnums=(0,))
    t0 = time.perf_counter()
    params = net.init(jax.random.key(0), x[:1])["params"]
    carry = (params, tx.init(params), jnp.zeros((), jnp.float32))
    batches = orders(len(x), args.epochs)
    seconds = []
    carry = jax.block_until_ready(one(carry, batches[0][0]))  # first step (compiles)
    first = time.perf_counter() - t0
    for idx in batches:
        t = time.perf_counter()
        if fused:
            carry = epoch(carry, idx)
        else:
            for b in idx:
                carry = one(carry, b)
        jax.block_until_ready(carry[2])
        seconds.append(time.perf_counter() - t)
    result = {"samples_per_second": rate(batches[0].size, seconds), "first_step_s": first,
              "epoch_seconds": seconds}
    if args.data:
        logits = jax.jit(lambda p, v: net.apply({"params": p}, v))(carry[0], xt)
        result["test_accuracy"] = float(np.mean(np.argmax(np.asarray(logits), -1) == yt))
    return result


def run_keras(args: argparse.Namespace) -> dict[str, Any]:
    import keras
    from _suite_models import keras_model

    x, y, xt, yt = load(args)
    keras.utils.set_random_seed(0)
    model = keras_model(args.model)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    marks: dict[str, Any] = {"epochs": []}

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            marks["t"] = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            marks.setdefault("first", time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks["epochs"].append(time.perf_counter() - marks["t"])

    n = len(x) // BATCH * BATCH
    t0 = time.perf_counter()
    model.fit(x[:n], y[:n], batch_size=BATCH, epochs=args.epochs, shuffle=True, verbose=0,
              callbacks=[Clock()])
    result = {"samples_per_second": rate(n, marks["epochs"]),
              "first_step_s": marks["first"] - t0, "epoch_seconds": marks["epochs"]}
    if args.data:
        result["test_accuracy"] = float(model.evaluate(xt, yt, verbose=0, batch_size=1024)[1])
    return result


def run_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from _suite_models import torch_input, torch_module

    torch.manual_seed(0)
    x, y, xt, yt = load(args)
    xs, ys = torch_input(args.model, x), torch.from_numpy(y.astype(np.int64))
    net = torch_module(args.model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds, first, t0 = [], None, time.perf_counter()
    for idx in orders(len(x), args.epochs):
        t = time.perf_counter()
        for b in torch.from_numpy(idx):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xs[b]), ys[b])
            loss.backward()
            opt.step()
            if first is None:
                first = time.perf_counter() - t0
        seconds.append(time.perf_counter() - t)
    result = {"samples_per_second": rate(len(x) // BATCH * BATCH, seconds),
              "first_step_s": first, "epoch_seconds": seconds,
              "threads": torch.get_num_threads()}
    if args.data:
        with torch.no_grad():
            pred = net(torch_input(args.model, xt)).argmax(-1).numpy()
        result["test_accuracy"] = float(np.mean(pred == yt))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contender", choices=("nnspec", "flax_step", "flax_fused", "keras",
                                              "torch"))
    parser.add_argument("model", choices=("mlp", "cnn", "lstm"))
    parser.add_argument("--n", type=int, default=8192, help="synthetic training samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", help="an .npz with x_train, y_train, x_test, y_test")
    parser.add_argument("--keep", help="nnspec: keep the run directory here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="nnspec: a spec override passed to `nnspec train`")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    run = {"nnspec": run_nnspec, "keras": run_keras, "torch": run_torch,
           "flax_step": lambda a: run_flax(a, False), "flax_fused": lambda a: run_flax(a, True)}
    result = run[args.contender](args)
    result.update(contender=args.contender, model=args.model,
                  env={k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "XLA_FLAGS")})
    Path(args.json).write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
