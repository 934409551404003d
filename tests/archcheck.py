"""Prove one spec end to end: validate, build, one training step, export, every runtime.

`prove(text)` takes a spec's YAML and raises `Disproved` naming the stage that failed:
  validate  the spec loader and shape checks (the spec must be valid)
  shapes    inferred output shapes = Flax's = each runtime's
  train     one Adam step in training mode (dropout, noise and batch statistics on): a finite
            loss and gradient, and every trainable parameter that the loss reaches moved
  summary   `nnspec summary`'s parameter count = the trained variables' size
  parity    Flax (inference mode, highest matmul precision) = onnxruntime = the ONNX reference
            evaluator (= tract where installed) on random inputs, batch 3 and batch 1

tests/archsearch.py runs thousands of tests/archgen.py specs (`shrink` reduces a finding).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

FREE = 12  # the length of free (None) dimensions in the random inputs
RTOL = 1e-4  # relative to the largest value of the output (random deep nets grow values)
BATCHES = (3, 1)  # inference batch sizes checked on every runtime
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}  # see prove()


class Disproved(AssertionError):
    """A spec the compiler got wrong, with the stage that showed it."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.stage = stage


def _size(tree: Any) -> int:
    import jax

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _close(stage: str, what: str, expected: np.ndarray, got: np.ndarray) -> None:
    if tuple(expected.shape) != tuple(got.shape):
        raise Disproved("shapes", f"{what}: shape {tuple(got.shape)}, Flax gives "
                                  f"{tuple(expected.shape)}")
    if not expected.size:
        return
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(expected.astype(np.float64) - got)))
    if not err <= RTOL * scale:  # NaN fails too
        raise Disproved(stage, f"{what}: max |diff| {err:.3g} > {RTOL:g} x {scale:.3g}")


def prove(text: str, seed: int = 0, runtimes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run every check on one spec (YAML text); returns a few facts about it.

    The fast compile (COMPILER_OPTIONS) is only a first try: level 0 is not what users run and
    it has produced non-finite gradients XLA's default level does not (search seed 10028: a
    bidirectional GRU, layer_norm, global_max_pool). A spec it disproves is proven again with
    XLA's defaults, and only that verdict counts."""
    try:
        return _prove(text, seed, runtimes, COMPILER_OPTIONS)
    except Disproved:
        return _prove(text, seed, runtimes, {})


def _prove(text: str, seed: int, runtimes: tuple[str, ...] | None,
           options: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    from nnspec.compiler.export.layer_check import sample_inputs
    from nnspec.compiler.export.onnx_graph import to_onnx
    from nnspec.compiler.graph.ir import check_spec
    from nnspec.compiler.graph.summary import summarize
    from nnspec.compiler.train.module import GraphModule
    from nnspec.runtime.runners import RUNNERS, available
    from nnspec.spec.errors import SpecError

    runtimes = tuple(available()) if runtimes is None else runtimes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text)
        try:
            _, graph = check_spec(path)
        except SpecError as e:
            raise Disproved("validate", str(e)) from None
    module = GraphModule(graph)
    train_x = sample_inputs(graph, 4, seed=seed, free=FREE)
    feeds = {b: sample_inputs(graph, b, seed=seed + 3 + b, free=FREE) for b in BATCHES}
    tx = optax.adam(1e-2)

    def everything(key: Any, train_x: Any, feeds: Any) -> tuple[Any, ...]:
        variables = module.init({"params": key, "dropout": key}, train_x)
        params = variables.get("params", {})
        state = {k: v for k, v in variables.items() if k != "params"}

        def loss_fn(p: Any) -> tuple[Any, Any]:
            out, new_state = module.apply({**state, "params": p}, train_x, train=True,
                                          rngs={"dropout": jax.random.fold_in(key, 2)},
                                          mutable=list(state))
            # Sums over sizes, not means: a free length may shrink to nothing (empty output).
            loss = sum(jnp.sum((out[n] - jax.random.normal(jax.random.fold_in(key, 100 + i),
                                                           out[n].shape)) ** 2)
                       / max(1, out[n].size) for i, n in enumerate(sorted(out))) / len(out)
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        trained = optax.apply_updates(params, updates)
        final = {**state, **dict(new_state), "params": trained}
        return (params, loss, grads, final,
                {b: module.apply(final, x) for b, x in feeds.items()})

    # One XLA program for init, the training step and inference at both batch sizes, compiled
    # at `options` (see prove): compiling was ~70% of a check (four programs a spec) and
    # level 0 compiles 2-3x faster.
    key = jax.random.key(seed)
    with jax.default_matmul_precision("highest"):
        compiled = jax.jit(everything).lower(key, train_x, feeds).compile(
            compiler_options=options)
        params, loss, grads, variables, flax_out = jax.device_get(
            compiled(key, train_x, feeds))
    leaves = jax.tree_util.tree_leaves(grads)
    if not np.isfinite(loss) or not all(np.all(np.isfinite(g)) for g in leaves):
        raise Disproved("train", f"loss {float(loss)} or its gradient is not finite")
    for (where, g), before, after in zip(jax.tree_util.tree_leaves_with_path(grads),
                                         jax.tree_util.tree_leaves(params),
                                         jax.tree_util.tree_leaves(variables["params"])):
        # Below ~1e-19 a gradient's square underflows in float32 and Adam's step (about
        # lr * g / eps) vanishes against the weight: a saturated LSTM gate (search seed 10968).
        if np.any(np.abs(g) > 1e-12) and np.all(before == after):
            raise Disproved("train", f"{jax.tree_util.keystr(where)} has a gradient but "
                                     f"did not move")
    counted = sum(r.params + r.non_trainable for r in summarize(graph))
    if counted != _size(variables):
        raise Disproved("summary", f"summary counts {counted} parameters, the trained "
                                   f"variables hold {_size(variables)}")
    try:
        data = to_onnx(graph, variables, 21).SerializeToString()
    except Exception as e:  # an export that fails on a valid spec is a finding, not a crash
        raise Disproved("export", f"{type(e).__name__}: {e}") from None
    for outputs in flax_out.values():
        for name, value in outputs.items():
            want = graph.output_node(name).shape
            if len(want) != value.ndim - 1 or any(
                    d not in (None, got) for d, got in zip(want, value.shape[1:])):
                raise Disproved("shapes", f"output {name!r}: Flax gives "
                                          f"{value.shape[1:]}, inference says {want}")
    # tract last, after every other runtime at both batches: a failure there alone, with the
    # others equal to Flax, is tract's (stage "tract"), on a model the ONNX specification runs.
    for runtime in sorted(runtimes, key=lambda r: r == "tract"):
        stage = "tract" if runtime == "tract" else "parity"
        for batch, x in feeds.items():
            try:
                got = RUNNERS[runtime](data, x)
            except Exception as e:
                first = str(e).split("Stack backtrace")[0].strip()
                raise Disproved(stage, f"{runtime} fails at batch {batch}: "
                                       f"{type(e).__name__}: {first[:400]}") from None
            for name, want in flax_out[batch].items():
                _close(stage, f"{runtime} output {name!r} at batch {batch}", np.asarray(want),
                       np.asarray(got[name]))
    return {"layers": len(graph.nodes), "params": counted, "loss": float(loss)}


def shrink(spec: dict[str, Any], fails: Any, budget: int = 60) -> dict[str, Any]:
    """A smaller spec for which `fails(text)` still holds: drop outputs, then layers (a dropped
    layer's readers read its first input instead), while the result validates and fails."""
    import copy

    def variants(s: dict[str, Any]) -> Any:
        for out in list(s["outputs"]):
            if len(s["outputs"]) > 1:
                t = copy.deepcopy(s)
                del t["outputs"][out]
                yield t
        for i in range(len(s["layers"])):
            t = copy.deepcopy(s)
            gone = t["layers"].pop(i)
            prev = gone.get("inputs", s["layers"][i - 1]["name"] if i else None)
            if prev is None:
                continue
            first = prev if isinstance(prev, str) else prev[0]
            if i < len(t["layers"]) and "inputs" not in t["layers"][i]:
                t["layers"][i]["inputs"] = first
            for other in t["layers"]:
                ins = other.get("inputs")
                if ins == gone["name"]:
                    other["inputs"] = first
                elif isinstance(ins, list):
                    other["inputs"] = [first if n == gone["name"] else n for n in ins]
            for out in t["outputs"].values():
                if out["from"] == gone["name"]:
                    out["from"] = first if first not in t["inputs"] else out["from"]
            yield t

    progress = True
    while progress and budget > 0:
        progress = False
        for candidate in variants(spec):
            budget -= 1
            if fails(yaml.safe_dump(candidate, sort_keys=False)):
                spec, progress = candidate, True
                break
            if budget <= 0:
                break
    return spec
