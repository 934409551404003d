"""Random valid specs over the whole layer catalogue, for proving the compiler end to end.

`random_spec(rng)` draws a network: one to three inputs (vectors, sequences with a fixed or a
free length, images, raw uint8 pixels, integer ids), then layers drawn from every registered
type with random hyperparameters, wired as chains, branches and merges (add, multiply, concat,
cross-attention); every layer nobody reads becomes an output. A candidate layer is kept only if
the layer's own shape rule accepts its input shapes, so a new layer file is reachable with no
edit here (its parity examples give its parameters until a sampler is written below). Nothing
here imports JAX: drawing thousands of specs is instant.

The checks live in tests/archcheck.py, the search in tests/archsearch.py; to run thousands
(see README, Development):

    python tests/archgen.py --count 2000 --seed 1 --jobs 2
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from typing import Any

from nnspec.compiler.layers.base import Layer, Shape, discover

MAX_ELEMENTS = 1536  # per sample, free lengths counted as FREE: keeps each check ~a second
FREE = 12  # the length the checks give free (None) dimensions (archcheck.FREE)
ID_HIGH = 16  # integer ids are drawn in [0, ID_HIGH); embeddings get input_dim >= this
INITS = ["glorot_uniform", "glorot_normal", "lecun_normal", "he_normal", "he_uniform", "zeros"]

R = random.Random
Sampler = Callable[[R, tuple[Shape, ...]], dict[str, Any]]


def activations() -> list[str]:
    """The element-wise activation types (also valid as `activation:` of dense and convs)."""
    return sorted(k for k, c in discover().items() if c.elementwise)


def _act(r: R) -> dict[str, Any]:
    choice = r.choice([None, None, "linear", *activations()])
    return {} if choice is None else {"activation": choice}


def _ints(r: R, ndim: int, lo: int, hi: int) -> int | list[int]:
    return r.randint(lo, hi) if r.random() < 0.6 else [r.randint(lo, hi) for _ in range(ndim)]


def _conv(ndim: int, transpose: bool = False) -> Sampler:
    def draw(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
        p: dict[str, Any] = {"filters": r.randint(1, 6), "kernel_size": _ints(r, ndim, 1, 3)}
        if r.random() < 0.5:
            p["strides"] = _ints(r, ndim, 1, 3)
        pads = ["valid", "same", "explicit"] + (["causal"] if ndim == 1 and not transpose else [])
        pad = r.choice(pads)
        p["padding"] = ([[r.randint(0, 2), r.randint(0, 2)] for _ in range(ndim)]
                        if pad == "explicit" else pad)
        if r.random() < 0.3:
            p["dilation"] = _ints(r, ndim, 1, 2)
        if not transpose and r.random() < 0.3:
            p["groups"] = r.choice([2, 3, shapes[0][-1] or 1])
        if r.random() < 0.3:
            p["use_bias"] = False
        if r.random() < 0.3:
            p["kernel_initializer"] = r.choice(INITS)
        return {**p, **_act(r)}
    return draw


def _pool(ndim: int, average: bool) -> Sampler:
    def draw(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
        p: dict[str, Any] = {"pool_size": _ints(r, ndim, 1, 3),
                             "padding": r.choice(["valid", "same"])}
        if r.random() < 0.5:
            p["strides"] = _ints(r, ndim, 1, 3)
        if average and r.random() < 0.5:
            p["count_include_pad"] = r.random() < 0.5
        return p
    return draw


def _norm(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    return {"epsilon": r.choice([1e-6, 1e-5, 1e-3]), "center": r.random() < 0.8,
            "scale": r.random() < 0.8}


def _group_norm(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    channels = shapes[0][-1] or 1
    groups = r.choice([d for d in range(1, channels + 1) if channels % d == 0])
    return {**_norm(r, shapes), "groups": groups}


def _stat(r: R, channels: int | None, positive: bool) -> Any:
    kind = r.choice(["scalar", "list", None])
    value = (lambda: round(r.uniform(0.2, 3.0), 3)) if positive else (
        lambda: round(r.uniform(-2, 2), 3))
    if kind == "scalar" or (kind == "list" and channels is None):
        return value()
    return [value() for _ in range(channels)] if kind == "list" else None


def _normalize(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    p = {"mean": _stat(r, shapes[0][-1], False), "std": _stat(r, shapes[0][-1], True)}
    return {k: v for k, v in p.items() if v is not None}


def _recurrent(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    return {"units": r.randint(1, 6), "return_sequences": r.random() < 0.5,
            "bidirectional": r.random() < 0.4}


def _attention(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    p: dict[str, Any] = {"num_heads": r.randint(1, 3), "key_dim": r.randint(1, 5)}
    if r.random() < 0.4:
        p["value_dim"] = r.randint(1, 5)
    for key in ("causal", "use_bias"):
        if r.random() < 0.4:
            p[key] = r.random() < 0.5
    if r.random() < 0.4:
        p["dropout"] = round(r.uniform(0, 0.5), 2)
    return p


def _reshape(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    shape = shapes[0]
    if None in shape:
        fixed = math.prod(d for d in shape if d is not None)
        return {"target_shape": r.choice([[-1, fixed], [-1], [fixed, -1]])}
    total = math.prod(shape)
    dims = []
    while total > 1 and len(dims) < 3:
        d = r.choice([f for f in range(1, total + 1) if total % f == 0])
        dims.append(d)
        total //= d
    dims.append(total)
    if r.random() < 0.4:
        dims[r.randrange(len(dims))] = -1
    return {"target_shape": dims}


def _axis(r: R, shapes: tuple[Shape, ...]) -> dict[str, Any]:
    rank = len(shapes[0])
    return {"axis": r.choice([*range(1, rank + 1), *range(-rank, 0)])}


SAMPLERS: dict[str, Sampler] = {
    "dense": lambda r, s: {"units": r.randint(1, 12), **_act(r),
                           **({"use_bias": False} if r.random() < 0.2 else {}),
                           **({"kernel_initializer": r.choice(INITS)} if r.random() < 0.2 else {})},
    "conv1d": _conv(1), "conv2d": _conv(2), "conv2d_transpose": _conv(2, transpose=True),
    "max_pool1d": _pool(1, False), "max_pool2d": _pool(2, False),
    "avg_pool1d": _pool(1, True), "avg_pool2d": _pool(2, True),
    "batch_norm": lambda r, s: {**_norm(r, s), "momentum": r.choice([0.0, 0.5, 0.9, 0.99])},
    "layer_norm": _norm, "group_norm": _group_norm, "normalize": _normalize,
    "rescale": lambda r, s: {"scale": round(r.uniform(-2, 2), 3),
                             "offset": round(r.uniform(-1, 1), 3)},
    "embedding": lambda r, s: {"input_dim": r.randint(ID_HIGH, ID_HIGH + 8),
                               "output_dim": r.randint(1, 6)},
    "lstm": _recurrent, "gru": _recurrent, "simple_rnn": _recurrent,
    "multi_head_attention": _attention,
    "concat": _axis, "softmax": _axis, "add": lambda r, s: {}, "multiply": lambda r, s: {},
    "permute": lambda r, s: {"dims": r.sample(range(1, len(s[0]) + 1), len(s[0]))},
    "reshape": _reshape,
    "dropout": lambda r, s: {"rate": round(r.uniform(0, 0.9), 2)},
    "spatial_dropout": lambda r, s: {"rate": round(r.uniform(0, 0.9), 2)},
    "gaussian_noise": lambda r, s: {"stddev": round(r.uniform(0, 1), 2)},
    "elu": lambda r, s: {"alpha": round(r.uniform(0.1, 2), 2)},
    "leaky_relu": lambda r, s: {"negative_slope": round(r.uniform(0, 0.5), 3)},
    "gelu": lambda r, s: {"approximate": r.random() < 0.5},
}


def sample_params(kind: str, cls: type[Layer], r: R, shapes: tuple[Shape, ...]) -> dict:
    """Random parameters for a layer type; a type with no sampler borrows an example's."""
    if kind in SAMPLERS:
        return SAMPLERS[kind](r, shapes)
    if cls.examples:
        return dict(r.choice(cls.examples).params)
    return {}


def _elements(shape: Shape) -> int:
    return math.prod(FREE if d is None else d for d in shape)


def _draw_input(r: R, index: int) -> tuple[str, dict[str, Any]]:
    kind = r.choice(["vector", "sequence", "sequence", "image", "pixels", "ids"])
    name = f"in{index}"
    if kind == "vector":
        return name, {"shape": [r.randint(1, 10)]}
    if kind == "sequence":
        steps = None if r.random() < 0.3 else r.randint(1, 8)
        return name, {"shape": [steps, r.randint(1, 6)]}
    if kind == "image":
        return name, {"shape": [r.randint(2, 8), r.randint(2, 8), r.randint(1, 4)]}
    if kind == "pixels":
        return name, {"shape": [r.randint(2, 8), r.randint(2, 8)], "dtype": "uint8"}
    return name, {"shape": [None if r.random() < 0.3 else r.randint(1, 8)],
                  "dtype": r.choice(["int32", "int64", "uint8"])}


def random_spec(rng: R, max_layers: int = 10) -> dict[str, Any]:
    """A random spec dict that validates: every layer legal for the shapes it receives."""
    registry = discover()
    acts = set(activations())
    kinds = sorted(k for k in registry if k not in acts) + ["<activation>"] * 3
    inputs = dict(_draw_input(rng, i) for i in range(rng.choice([1, 1, 1, 2, 2, 3])))
    # pool: tensor name -> (shape, is integer); sinks: tensors nobody reads yet, newest last
    pool: dict[str, tuple[Shape, bool]] = {
        n: (tuple(s["shape"]), s.get("dtype", "float32") != "float32") for n, s in inputs.items()}
    sinks = list(pool)
    layers: list[dict[str, Any]] = []
    target = rng.randint(max(len(inputs), 2), max_layers)
    attempts = 0
    while (len(layers) < target or any(pool[s][1] for s in sinks)) and attempts < 400 and (
            len(layers) < 2 * max_layers):
        attempts += 1
        kind = rng.choice(kinds)
        if kind == "<activation>":
            kind = rng.choice(sorted(acts))
        cls = registry[kind]
        first = sinks[-1] if rng.random() < 0.7 and sinks else rng.choice(sorted(pool))
        if pool[first][1] and inputs[first].get("dtype") == "uint8" and kind in (
                "rescale", "normalize"):
            pass  # raw pixels: scaled inside the model, as a device feeds them
        elif pool[first][1] != bool(cls.integer_input):
            continue
        srcs = [first]
        if cls.arity is None:
            others = [n for n in pool if n != first and not pool[n][1]]
            want = 1 if kind == "multi_head_attention" else rng.choice([1, 1, 2])
            if kind != "multi_head_attention" or rng.random() < 0.5:
                if len(others) < want:
                    continue
                srcs += rng.sample(sorted(others), want)
            if kind == "multi_head_attention" and len(srcs) > 1 and rng.random() < 0.3:
                srcs = [first, first]  # self-attention given its input twice
        shapes = tuple(pool[s][0] for s in srcs)
        params = sample_params(kind, cls, rng, shapes)
        try:
            shape = tuple(cls(**params).infer(*shapes))
        except (ValueError, TypeError, ZeroDivisionError):
            continue
        if _elements(shape) > MAX_ELEMENTS or 0 in shape:
            continue
        name = f"l{len(layers)}_{kind}"
        layer: dict[str, Any] = {"type": kind, "name": name, **params}
        if not (layers and srcs == [layers[-1]["name"]] and rng.random() < 0.5):
            layer["inputs"] = srcs if len(srcs) > 1 else srcs[0]
        layers.append(layer)
        for s in srcs:
            if s in sinks:
                sinks.remove(s)
        pool[name] = (shape, False)
        sinks.append(name)
    outputs = {f"out{i}": {"from": s} for i, s in enumerate(sinks) if not pool[s][1]}
    unread = [s for s in sinks if s in inputs]
    if unread or not outputs:  # an input nothing reads (rare): start again
        return random_spec(rng, max_layers)
    return {"version": 1, "name": "random", "inputs": inputs, "layers": layers,
            "outputs": outputs}


def layer_types(spec: dict[str, Any]) -> set[str]:
    """Every layer type a spec uses, `activation:` parameters included."""
    used = {layer["type"] for layer in spec["layers"]}
    return used | {layer["activation"] for layer in spec["layers"]
                   if layer.get("activation") not in (None, "linear")}


if __name__ == "__main__":
    import archsearch

    sys.exit(archsearch.main(sys.argv[1:]))
