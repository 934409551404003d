"""Where nnspec's training step loses time against the hand-written loop, measured by variant.

Each variant is compiler/train.py with a few exact text replacements (a candidate fix),
loaded as a separate module; its `Trainer.fit` is timed exactly as train_throughput.py times
the real one, against the same hand-written Flax loop, alternating rounds in one process. The
unified diff of every variant is printed with `--diff`, so a measured fix can be applied as is.
Nothing in compiler/ is modified.

    python benchmarks/profile_trainer.py --models mlp,cnn --rounds 5 [--diff] [--json PATH]
"""

from __future__ import annotations

import argparse
import difflib
import sys
import types
from typing import Any

import train_throughput as tt
from _common import ROOT, machine, median, reexec_tuned, table, write_json

TRAIN_PY = ROOT / "compiler" / "train.py"

# The per-step host work: two `jax.device_put(..., NamedSharding)` calls cost far more than the
# step's own dispatch; the compiled executable places numpy arguments itself (on its input
# shardings, so a multi-device run still splits the batch).
NUMPY_BATCHES = [(
    """                carry = step(carry, jax.device_put(idx[b], self.sharded),
                             jax.device_put(w[b], self.sharded), x_all, y_all)""",
    """                carry = step(carry, idx[b], w[b], x_all, y_all)""")]

# The step's optional arithmetic: the frozen-layer mask (two tree-wide multiplies) only when a
# layer is frozen or unfreezes later, the plateau scale only with reduce_on_plateau.
LEAN_STEP = [(
    """        classes = {h.output: self.graph.output_node(h.output).shape[-1] for h in self.heads}
""",
    """        classes = {h.output: self.graph.output_node(h.output).shape[-1] for h in self.heads}
        freezes = (self.spec.unfreeze_after is not None
                   or any(not n.trainable for n in self.graph.nodes))
        plateau = self.spec.optimizer.schedule.name == "reduce_on_plateau"
"""), (
    """            grads = jax.tree.map(jnp.multiply, grads, frozen)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u, f: u * f * lr_scale, updates, frozen)""",
    """            if freezes:
                grads = jax.tree.map(jnp.multiply, grads, frozen)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            if freezes:
                updates = jax.tree.map(jnp.multiply, updates, frozen)
            if plateau:
                updates = jax.tree.map(lambda u: u * lr_scale, updates)""")]

# The per-epoch sums (count, loss, each on-device metric) as one float32 vector in the carry
# instead of a dict of scalars: one fused add and one buffer per step instead of one small
# kernel and one buffer per sum (each costs microseconds of XLA:CPU dispatch on a tiny model).
PACKED_SUMS = [(
    """            sums = jax.tree.map(jnp.add, sums, batch)""",
    """            sums = sums + jnp.stack([batch[k] for k in sorted(batch)])"""), (
    """        def zeros() -> dict[str, jax.Array]:
            return jax.tree.map(lambda a: jnp.zeros((), jnp.float32), layout)""",
    """        keys = sorted(layout)  # the order of the sums in the carry's vector

        def zeros() -> jax.Array:
            return jnp.zeros(len(keys), jnp.float32)"""), (
    """            partial_sums = None if sums is None else {
                k: float(v) for k, v in jax.device_get(sums).items()}""",
    """            partial_sums = None if sums is None else dict(
                zip(keys, jax.device_get(sums).tolist()))"""), (
    """            sums = zeros() if not (partial and epoch == start_epoch) else {
                k: jnp.float32(v) for k, v in partial.items()}""",
    """            sums = zeros() if not (partial and epoch == start_epoch) else jnp.asarray(
                [partial[k] for k in keys], jnp.float32)"""), (
    """            host = jax.device_get(carry[3])""",
    """            host = dict(zip(keys, jax.device_get(carry[3]).tolist()))""")]

# Ablations, for attribution only (each drops a feature): the accuracy sum, the per-step
# non-finite check, the accumulation of the sums.
ABLATE_ACCURACY = [("""on_device: tuple[str, ...] = ("accuracy",)""",
                    """on_device: tuple[str, ...] = ()""")]
ABLATE_NONFINITE = [("bad = jnp.where(jnp.isfinite(total), bad, jnp.minimum(bad, step_no))",
                     "bad = bad")]
ABLATE_SUMS = [("sums = jax.tree.map(jnp.add, sums, batch)", "sums = batch")]  # last batch only

VARIANTS: dict[str, list[tuple[str, str]]] = {
    "as_is": [],
    "numpy_batches": NUMPY_BATCHES,
    "lean_step": LEAN_STEP,
    "numpy_batches+lean_step": NUMPY_BATCHES + LEAN_STEP,
    "packed_sums": PACKED_SUMS,
    "numpy_batches+packed_sums": NUMPY_BATCHES + PACKED_SUMS,
    "numpy_batches-accuracy": NUMPY_BATCHES + ABLATE_ACCURACY,
    "numpy_batches-nonfinite": NUMPY_BATCHES + ABLATE_NONFINITE,
    "numpy_batches-sums": NUMPY_BATCHES + ABLATE_SUMS,
    "numpy_batches+packed_sums-nonfinite": NUMPY_BATCHES + PACKED_SUMS + ABLATE_NONFINITE,
}
DEFAULT_VARIANTS = "as_is,numpy_batches,numpy_batches+packed_sums"


def patched_source(name: str) -> str:
    source = TRAIN_PY.read_text()
    for old, new in VARIANTS[name]:
        if source.count(old) != 1:
            raise SystemExit(f"variant {name}: compiler/train.py no longer contains exactly one "
                             f"copy of:\n{old}")
        source = source.replace(old, new)
    return source


def load_variant(name: str) -> types.ModuleType:
    module_name = "nnspec_bench_train_" + "".join(c if c.isalnum() else "_" for c in name)
    module = types.ModuleType(module_name)
    module.__file__ = str(TRAIN_PY)
    sys.modules[module_name] = module  # dataclasses look their module up
    exec(compile(patched_source(name), f"<compiler/train.py: {name}>", "exec"), module.__dict__)
    return module


def diff(name: str) -> str:
    return "".join(difflib.unified_diff(
        TRAIN_PY.read_text().splitlines(keepends=True),
        patched_source(name).splitlines(keepends=True), "a/compiler/train.py",
        "b/compiler/train.py", n=2))


def run_variant(module: types.ModuleType, s: tt.Setup, warmup: int) -> list[float]:
    trainer = module.Trainer(s.graph, s.loaded.spec.train, s.heads, len(s.data.train))
    result = trainer.fit(s.data)
    return [row["seconds"] for row in result.history][warmup:]


def profile(name: str, variants: list[str], rounds: int, epochs: int, warmup: int
            ) -> dict[str, Any]:
    s = tt.setup(name, epochs, "reshape")
    modules = {v: load_variant(v) for v in variants}
    n, cache = len(s.x), {}
    rate: dict[str, list[float]] = {v: [] for v in [*variants, "hand"]}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    contenders = [*variants, "hand"]
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        got = {}
        for c in order:
            seconds = (tt.run_hand(s, epochs, warmup, True, cache) if c == "hand"
                       else run_variant(modules[c], s, warmup))
            got[c] = n * len(seconds) / sum(seconds)
            rate[c].append(got[c])
        for v in variants:
            ratios[v].append(got[v] / got["hand"])
        print(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
            f"{c} {got[c]:,.0f}" for c in contenders), file=sys.stderr, flush=True)
    return {"model": name, "train_samples": n, "batch_size": s.batch,
            "steps_per_epoch": s.steps, "epochs_per_run": epochs, "rounds": rounds,
            "median_samples_per_second": {c: median(v) for c, v in rate.items()},
            "median_step_us": {c: 1e6 * n / (median(v) * s.steps) for c, v in rate.items()},
            "ratio_vs_hand": {v: median(x) for v, x in ratios.items()},
            "ratios_vs_hand": ratios, "samples_per_second": rate}


def pieces(name: str, calls: int = 300, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Microseconds per call of each piece of nnspec's per-step host work and of the steps."""
    import time

    import jax
    import jax.numpy as jnp

    from nnspec.compiler.train import _NO_STEP, Trainer, _padded_batches, trainable_mask

    s = tt.setup(name, 2, "reshape")
    tr = Trainer(s.graph, s.loaded.spec.train, s.heads, len(s.x))
    idx, w = _padded_batches(len(s.x), tr.batch)
    x_all = jax.device_put({k: jnp.asarray(v) for k, v in s.data.train.x.items()},
                           tr.replicated)
    y_all = jax.device_put({k: jnp.asarray(v) for k, v in s.data.train.y.items()},
                           tr.replicated)
    params = tr.init(s.data.train.x)["params"]
    hand_params = s.hand.init(jax.random.key(0), s.x[:1], train=False)["params"]
    hand, tx = tt.hand_step(s, True)

    def copy(tree: Any) -> Any:
        return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)

    def carry() -> Any:
        p = copy(params)
        sums = jax.tree.map(lambda a: jnp.zeros((), jnp.float32), {"count": 0, "loss": 0,
                                                                     "accuracy": 0})
        return jax.device_put((p, {}, tr.tx.init(p), sums, jnp.int32(_NO_STEP),
                               jnp.float32(1.0), trainable_mask(p, tr.graph), jnp.int32(0)),
                              tr.replicated)

    jitted = tr.train_step()
    compiled = jitted.lower(carry(), jax.device_put(idx[0], tr.sharded),
                            jax.device_put(w[0], tr.sharded), x_all, y_all).compile()
    i_dev, w_dev = jax.device_put(idx[0], tr.sharded), jax.device_put(w[0], tr.sharded)
    put = jax.device_put
    jax.block_until_ready(jitted(carry(), idx[0], w[0], x_all, y_all))  # fills jit's cache
    hand_params_c = copy(hand_params)
    hand_compiled = hand.lower((hand_params_c, tx.init(hand_params_c), jnp.zeros(()),
                                jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
                               s.x_dev, s.y_dev, idx[0]).compile()

    def nnspec_loop(args: Any, fn: Any = compiled) -> Any:
        def run() -> float:
            c = carry()
            jax.block_until_ready(c)
            t0 = time.perf_counter()
            for i in range(calls):
                c = fn(c, *args(i), x_all, y_all)
            jax.block_until_ready(c)
            return time.perf_counter() - t0
        return run

    def hand_loop(fn: Any) -> Any:
        def run() -> float:
            p = copy(hand_params)
            c = (p, tx.init(p), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                 jnp.zeros((), jnp.int32))
            c = fn(c, s.x_dev, s.y_dev, idx[0])
            jax.block_until_ready(c)
            t0 = time.perf_counter()
            for i in range(calls):
                c = fn(c, s.x_dev, s.y_dev, idx[i % len(idx)])
            jax.block_until_ready(c)
            return time.perf_counter() - t0
        return run

    def host(fn: Any) -> Any:
        def run() -> float:
            t0 = time.perf_counter()
            for i in range(calls):
                fn(i)
            return time.perf_counter() - t0
        return run

    n = len(idx)
    cases = {
        "jax.device_put(idx, NamedSharding)": host(lambda i: put(idx[i % n], tr.sharded)),
        "jax.device_put(idx)": host(lambda i: put(idx[i % n])),
        "jnp.asarray(idx)": host(lambda i: jnp.asarray(idx[i % n])),
        "nnspec step, batch already on device": nnspec_loop(lambda i: (i_dev, w_dev)),
        "nnspec step, numpy batch": nnspec_loop(lambda i: (idx[i % n], w[i % n])),
        "nnspec step, 2x device_put (as is)": nnspec_loop(
            lambda i: (put(idx[i % n], tr.sharded), put(w[i % n], tr.sharded))),
        "nnspec step, numpy batch, jax.jit call": nnspec_loop(
            lambda i: (idx[i % n], w[i % n]), jitted),
        "hand step, numpy indices": hand_loop(hand),
        "hand step, numpy indices, AOT compiled call": hand_loop(hand_compiled),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, run in cases.items():
            times[k].append(run() / calls * 1e6)
    return {k: {"median_us": median(v), "min_us": min(v)} for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--diff", action="store_true", help="print each variant's diff")
    parser.add_argument("--micro", action="store_true",
                        help="also time the pieces of one step (device_put, dispatch)")
    parser.add_argument("--json")
    parser.add_argument("--tuned-env", action="store_true")
    args = parser.parse_args(argv)
    if args.tuned_env:
        reexec_tuned([__file__, *(sys.argv[1:] if argv is None else argv)])
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}")
        patched_source(v)  # every replacement still applies
    if args.diff:
        for v in variants[1:] if variants[0] == "as_is" else variants:
            print(f"## {v}\n{diff(v)}")
    results, micro = [], {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if args.micro:
            micro[name] = pieces(name)
            print(table(["piece (per call)", "median us", "min us"],
                        [[k, f"{v['median_us']:.1f}", f"{v['min_us']:.1f}"]
                         for k, v in micro[name].items()]))
        epochs = args.epochs or args.warmup + max(
            1, -(-args.steps // tt._steps_per_epoch(name)))
        results.append(profile(name, variants, args.rounds, epochs, args.warmup))
    rows = [[r["model"], v, f"{r['median_samples_per_second'][v]:,.0f}",
             f"{r['ratio_vs_hand'][v]:.3f}"] for r in results for v in variants]
    rows += [[r["model"], "hand", f"{r['median_samples_per_second']['hand']:,.0f}", "1"]
             for r in results]
    print(table(["model", "variant", "samples/s", "x hand"], rows))
    write_json(args.json, {"benchmark": "profile_trainer", "machine": machine(),
                           "tuned_env": args.tuned_env, "variants": variants,
                           "diffs": {v: diff(v) for v in variants}, "micro": micro,
                           "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
