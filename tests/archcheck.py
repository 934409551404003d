"""Prove one spec end to end: validate, build, one training step, export, every runtime.

`prove(text)` takes a spec's YAML and raises `Disproved` naming the stage that failed:
  validate  the spec loader and shape checks (the spec must be valid)
  shapes    inferred output shapes = Flax's = each runtime's
  train     one Adam step in training mode (dropout, noise and batch statistics on): a finite
            loss and gradient, and every trainable parameter that the loss reaches moved
  summary   `nnspec summary`'s parameter count = the trained variables' size
  parity    Flax (inference mode, highest matmul precision) = onnxruntime = the ONNX reference
            evaluator (= tract where installed) on random inputs, batch 3 and batch 1

`main` runs thousands of tests/archgen.py specs and writes each failing one to a folder.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import yaml

FREE = 12  # the length of free (None) dimensions in the random inputs
RTOL = 1e-4  # relative to the largest value of the output (random deep nets grow values)


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
    """Run every check on one spec (YAML text); returns a few facts about it."""
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
    key = jax.random.key(seed)
    variables = jax.jit(module.init)({"params": key, "dropout": key}, train_x)
    params, state = variables.get("params", {}), {k: v for k, v in variables.items()
                                                 if k != "params"}
    targets = {n: np.random.default_rng(seed + 1).normal(size=o.shape).astype(np.float32)
               for n, o in jax.eval_shape(module.apply, variables, train_x).items()}
    tx = optax.adam(1e-2)

    def loss_fn(p: Any) -> tuple[Any, Any]:
        out, new_state = module.apply({**state, "params": p}, train_x, train=True,
                                      rngs={"dropout": jax.random.key(seed + 2)},
                                      mutable=list(state))
        # Sums over sizes, not means: a free length may shrink to nothing (an empty output).
        loss = sum(jnp.sum((out[n] - targets[n]) ** 2) / max(1, out[n].size)
                   for n in out) / len(out)
        return loss, new_state

    @jax.jit
    def step(p: Any) -> tuple[Any, ...]:
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, _ = tx.update(grads, tx.init(p), p)
        return loss, new_state, grads, optax.apply_updates(p, updates)

    loss, new_state, grads, trained = jax.device_get(step(params))
    leaves = jax.tree_util.tree_leaves(grads)
    if not np.isfinite(loss) or not all(np.all(np.isfinite(g)) for g in leaves):
        raise Disproved("train", f"loss {float(loss)} or its gradient is not finite")
    for (where, g), before, after in zip(jax.tree_util.tree_leaves_with_path(grads),
                                         jax.tree_util.tree_leaves(jax.device_get(params)),
                                         jax.tree_util.tree_leaves(trained)):
        if np.any(g != 0) and np.all(before == after):
            raise Disproved("train", f"{jax.tree_util.keystr(where)} has a gradient but "
                                     f"did not move")
    variables = jax.device_get({**state, **dict(new_state), "params": trained})
    counted = sum(r.params + r.non_trainable for r in summarize(graph))
    if counted != _size(variables):
        raise Disproved("summary", f"summary counts {counted} parameters, the trained "
                                   f"variables hold {_size(variables)}")
    try:
        data = to_onnx(graph, variables, 21).SerializeToString()
    except Exception as e:  # an export that fails on a valid spec is a finding, not a crash
        raise Disproved("export", f"{type(e).__name__}: {e}") from None
    apply = jax.jit(module.apply)
    for batch in (3, 1):
        x = sample_inputs(graph, batch, seed=seed + 3 + batch, free=FREE)
        with jax.default_matmul_precision("highest"):
            expected = {n: np.asarray(v) for n, v in apply(variables, x).items()}
        for name in expected:
            want = graph.output_node(name).shape
            if len(want) != expected[name].ndim - 1 or any(
                    d not in (None, got) for d, got in zip(want, expected[name].shape[1:])):
                raise Disproved("shapes", f"output {name!r}: Flax gives "
                                          f"{expected[name].shape[1:]}, inference says {want}")
        # tract last: a failure there alone, with the others equal to Flax, is tract's
        # (stage "tract"), on a model that onnxruntime and the ONNX specification run.
        for runtime in sorted(runtimes, key=lambda r: r == "tract"):
            stage = "tract" if runtime == "tract" else "parity"
            try:
                got = RUNNERS[runtime](data, x)
            except Exception as e:
                first = str(e).split("Stack backtrace")[0].strip()
                raise Disproved(stage, f"{runtime} fails at batch {batch}: "
                                       f"{type(e).__name__}: {first[:400]}") from None
            for name, want in expected.items():
                _close(stage, f"{runtime} output {name!r} at batch {batch}", want,
                       np.asarray(got[name]))
    return {"layers": len(graph.nodes), "params": counted, "loss": float(loss)}


def main(argv: list[str]) -> int:
    """`python tests/archgen.py --count N --seed S`: prove N random specs, report findings."""
    from archgen import layer_types, random_spec

    parser = argparse.ArgumentParser(prog="python tests/archgen.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="specs to prove")
    parser.add_argument("--seed", type=int, default=1, help="first spec's seed")
    parser.add_argument("--max-layers", type=int, default=10)
    parser.add_argument("--runtimes", default=None,
                        help="comma-separated (default: every installed runtime)")
    parser.add_argument("--minutes", type=float, default=math.inf, help="stop after this long")
    parser.add_argument("--failures", type=Path, default=Path("archgen-failures"),
                        help="folder for the YAML of each failing spec")
    args = parser.parse_args(argv)
    runtimes = tuple(args.runtimes.split(",")) if args.runtimes else None
    start, found, used, done = time.monotonic(), {}, set(), 0
    for seed in range(args.seed, args.seed + args.count):
        if time.monotonic() - start > args.minutes * 60:
            break
        spec = random_spec(random.Random(seed), args.max_layers)
        used |= layer_types(spec)
        text = yaml.safe_dump(spec, sort_keys=False)
        try:
            prove(text, seed=seed, runtimes=runtimes)
        except Exception as e:  # a crash is a finding too: record it, keep going
            stage = e.stage if isinstance(e, Disproved) else "crash"
            detail = str(e) if isinstance(e, Disproved) else traceback.format_exc(limit=3)
            found[seed] = f"{stage}: {detail}"
            args.failures.mkdir(parents=True, exist_ok=True)
            note = "".join(f"# {line}\n" for line in found[seed].splitlines()[:8])
            (args.failures / f"seed{seed}.yaml").write_text(note + text)
            print(f"seed {seed}: {' / '.join(found[seed].splitlines()[:4])[:300]}", flush=True)
        done += 1
        if done % 50 == 0:
            print(f"... {done} specs, {len(found)} failing, "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    print(f"{done} specs proven in {time.monotonic() - start:.0f} s over {len(used)} layer "
          f"types; {len(found)} failed" + (f" (YAML in {args.failures}/)" if found else ""))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


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
