"""Data augmentation on the device, inside the jitted training step (`train.augment`).

`augment` applies a list of `AugmentSpec`s, in order, to a batch gathered from device-resident
data. Everything here is traceable: shapes are static, random draws come from explicit keys, and
no Python branch looks at a traced value, so it runs under `jax.jit` and is deterministic for a
given key. Augmentation never reaches the exported model.

Conventions:

- Arrays are batch-first; images are channels-last, `(B, H, W, C)`. An input is *image-like*
  when its per-sample shape is `(H, W, C)` (see `image_like`); the caller decides which inputs
  are images and passes their names as `image_inputs`.
- Randomness is per sample: each sample draws its own flip, offset, angle, delta, factor, noise
  and mixup partner. Spec number `i` uses `fold_in(key, i)`. All inputs named by one spec share
  that spec's per-sample draws, so paired inputs of one shape (two views, an image and its
  mask) stay aligned; `gaussian_noise` alone draws independent noise per input.
- dtypes are preserved. Geometric operations (flip, translate, crop, nearest rotation) move
  values without arithmetic, so integer inputs stay exact. Every other operation computes in
  float32 (or the input's wider float type) and casts back: integer inputs (e.g. uint8 raw
  pixels) are rounded to the nearest integer and clipped to the dtype's range; float inputs are
  cast back without clipping (their value range is unknown here).
- The *value range* that scales `random_brightness` and `gaussian_noise` is 1.0 for float
  inputs and the dtype's maximum for integer inputs (255 for uint8).
- Geometric operations fill with zeros what moves in from outside the image.

Operations (the fields of `AugmentSpec` each one reads):

- `random_flip` (`mode`): flips each sample horizontally (W axis), vertically (H axis) or, for
  `both`, each axis independently, each with probability 0.5.
- `random_translate` (`factor`): shifts each sample by whole pixels, `dy` and `dx` uniform in
  `[-m, m]` with `m = floor(factor * size)` along H and W respectively.
- `random_crop` (`padding`): pads by `padding` zeros on every side, then crops back to the
  original size at a uniform random offset (the CIFAR recipe; a shift by up to `padding`).
- `random_rotation` (`factor`): rotates each sample about its centre by an angle uniform in
  `[-factor * 2π, factor * 2π]` (positive: counter-clockwise as displayed, row 0 on top), with
  bilinear sampling (`rotate` also offers nearest-neighbour).
- `random_brightness` (`factor`): adds a per-sample delta uniform in `±factor * value range`.
- `random_contrast` (`factor`): scales each sample around its mean (per channel over H and W
  for images; over all per-sample values otherwise) by a factor uniform in
  `[1 - factor, 1 + factor]`, floored at 0.
- `gaussian_noise` (`stddev`): adds N(0, (stddev * value range)^2) noise to every value.
- `mixup` (`alpha`): mixes each sample with a partner taken from a random permutation of the
  batch, `x = λ x + (1 - λ) x[perm]`, with one λ ~ Beta(alpha, alpha) *per sample*. Every target
  in `y` is mixed with the same λ and partner: integer class labels become one-hot float32
  targets over `num_classes[output]` classes first; float targets are mixed as they are.

Flip, translate, crop and rotation need image-like inputs: naming any other input (a vector
`(B, F)`, a sequence `(B, T, F)`) raises a `ValueError` naming it, at trace time. Brightness,
contrast, noise and mixup work for inputs of any rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from nnspec.spec.schema import AugmentSpec

__all__ = ["GEOMETRIC", "augment", "flip", "image_like", "rotate", "shift", "value_range"]

GEOMETRIC = frozenset({"random_flip", "random_translate", "random_crop", "random_rotation"})
"""The operations that need image-like `(H, W, C)` inputs."""


def image_like(shape: tuple) -> bool:
    """Whether a per-sample shape (batch axis excluded) is an image `(H, W, C)`: rank 3, with
    a known channel axis last."""
    shape = tuple(shape)
    return len(shape) == 3 and isinstance(shape[-1], (int, np.integer)) and shape[-1] > 0


def value_range(dtype: jnp.dtype) -> float:
    """The scale of brightness deltas and noise: 1.0 for floats, the maximum for integers."""
    dtype = jnp.dtype(dtype)
    return float(jnp.iinfo(dtype).max) if jnp.issubdtype(dtype, jnp.integer) else 1.0


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.dtype(jnp.float32)


def _to_float(a: jax.Array) -> jax.Array:
    return a.astype(_compute_dtype(a.dtype))


def _restore(v: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Back to `dtype`: integers rounded to nearest and clipped to the dtype's range."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.integer):
        return v.astype(dtype)
    info = jnp.iinfo(dtype)
    lo, hi = np.float32(info.min), np.float32(info.max)
    if int(hi) > info.max:  # int32/int64 maxima round up in float32: stay below them
        hi = np.nextafter(hi, np.float32(0))
    return jnp.clip(jnp.round(v), lo, hi).astype(dtype)


def _per_sample(values: jax.Array, like: jax.Array) -> jax.Array:
    """Broadcast a (B,) array against a batch `like`."""
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


# ---- deterministic transforms (per-sample parameters given) -----------------------------------


def flip(images: jax.Array, horizontal: jax.Array | None = None,
         vertical: jax.Array | None = None) -> jax.Array:
    """Flips the samples of a `(B, H, W, C)` batch whose `horizontal` (W axis) or `vertical`
    (H axis) flag, a `(B,)` boolean array, is set."""
    if horizontal is not None:
        images = jnp.where(_per_sample(horizontal, images), images[:, :, ::-1], images)
    if vertical is not None:
        images = jnp.where(_per_sample(vertical, images), images[:, ::-1], images)
    return images


def shift(images: jax.Array, dy: jax.Array, dx: jax.Array, limit: tuple[int, int]) -> jax.Array:
    """Shifts each sample of a `(B, H, W, C)` batch by whole pixels, zero-filled:
    `out[b, i, j] = images[b, i - dy[b], j - dx[b]]`. `dy`, `dx` are `(B,)` integers within the
    static bounds `limit = (max |dy|, max |dx|)`; larger values are clipped to them."""
    my, mx = (int(m) for m in limit)
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (my, my), (mx, mx), (0, 0)))
    dy = jnp.clip(dy.astype(jnp.int32), -my, my)
    dx = jnp.clip(dx.astype(jnp.int32), -mx, mx)

    def one(img: jax.Array, oy: jax.Array, ox: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (my - oy, mx - ox, 0), (h, w, c))

    return jax.vmap(one)(padded, dy, dx)


def rotate(images: jax.Array, angles: jax.Array,
           interpolation: Literal["bilinear", "nearest"] = "bilinear") -> jax.Array:
    """Rotates each sample of a `(B, H, W, C)` batch about its centre by `angles[b]` radians,
    counter-clockwise as displayed (row 0 on top), zero-filled outside the source image.

    Each output pixel samples the source at its position rotated back, by `bilinear`
    interpolation (integer inputs rounded and clipped back) or `nearest` neighbour (exact for
    any dtype). A rotation by 0 is the identity; by π/2 on a square image it is `np.rot90`.
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r}: bilinear or nearest")
    dtype = images.dtype
    _, h, w, _ = images.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
    cols = jnp.arange(w, dtype=jnp.float32)[None, :] - cx

    def one(img: jax.Array, angle: jax.Array) -> jax.Array:
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        src_r = cos * rows + sin * cols + cy  # (H, W) source coordinates of each output pixel
        src_c = -sin * rows + cos * cols + cx

        def gather(r: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            value = img[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
            return value, inside[..., None]

        if interpolation == "nearest":
            r = jnp.floor(src_r + 0.5).astype(jnp.int32)
            c = jnp.floor(src_c + 0.5).astype(jnp.int32)
            value, inside = gather(r, c)
            return jnp.where(inside, value, jnp.zeros((), dtype))
        r0f, c0f = jnp.floor(src_r), jnp.floor(src_c)
        fr, fc = (src_r - r0f)[..., None], (src_c - c0f)[..., None]
        r0, c0 = r0f.astype(jnp.int32), c0f.astype(jnp.int32)
        out = jnp.zeros(img.shape, _compute_dtype(dtype))
        for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                               (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            value, inside = gather(r0 + dr, c0 + dc)
            out = out + jnp.where(inside, weight * _to_float(value), 0.0)
        return _restore(out, dtype)

    return jax.vmap(one)(images, angles.astype(jnp.float32))


# ---- the operations of AugmentSpec ----------------------------------------------------------


def _random_flip(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    kh, kv = jax.random.split(key)
    n = a.shape[0]
    horizontal = jax.random.bernoulli(kh, 0.5, (n,)) if spec.mode != "vertical" else None
    vertical = jax.random.bernoulli(kv, 0.5, (n,)) if spec.mode != "horizontal" else None
    return flip(a, horizontal, vertical)


def _random_shift(key: jax.Array, a: jax.Array, my: int, mx: int) -> jax.Array:
    ky, kx = jax.random.split(key)
    n = a.shape[0]
    dy = jax.random.randint(ky, (n,), -my, my + 1)
    dx = jax.random.randint(kx, (n,), -mx, mx + 1)
    return shift(a, dy, dx, (my, mx))


def _random_translate(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    _, h, w, _ = a.shape
    my = min(h, math.floor(spec.factor * h))
    mx = min(w, math.floor(spec.factor * w))
    return _random_shift(key, a, my, mx)


def _random_crop(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    _, h, w, _ = a.shape
    return _random_shift(key, a, min(h, spec.padding), min(w, spec.padding))


def _random_rotation(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    limit = spec.factor * 2 * math.pi
    angles = jax.random.uniform(key, (a.shape[0],), jnp.float32, -limit, limit)
    return rotate(a, angles, "bilinear")


def _random_brightness(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    limit = spec.factor * value_range(a.dtype)
    delta = jax.random.uniform(key, (a.shape[0],), jnp.float32, -limit, limit)
    v = _to_float(a)
    return _restore(v + _per_sample(delta, v).astype(v.dtype), a.dtype)


def _random_contrast(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    scale = jax.random.uniform(key, (a.shape[0],), jnp.float32,
                               1 - spec.factor, 1 + spec.factor)
    scale = jnp.maximum(scale, 0.0)
    v = _to_float(a)
    axes = (1, 2) if image_like(a.shape[1:]) else tuple(range(1, a.ndim))
    mean = jnp.mean(v, axis=axes, keepdims=True)
    return _restore(mean + _per_sample(scale, v).astype(v.dtype) * (v - mean), a.dtype)


def _gaussian_noise(spec: AugmentSpec, key: jax.Array, a: jax.Array) -> jax.Array:
    v = _to_float(a)
    noise = jax.random.normal(key, v.shape, v.dtype) * (spec.stddev * value_range(a.dtype))
    return _restore(v + noise, a.dtype)


_PER_INPUT = {
    "random_flip": _random_flip,
    "random_translate": _random_translate,
    "random_crop": _random_crop,
    "random_rotation": _random_rotation,
    "random_brightness": _random_brightness,
    "random_contrast": _random_contrast,
    "gaussian_noise": _gaussian_noise,
}


def _mixup(spec: AugmentSpec, key: jax.Array, x: dict[str, jax.Array],
           y: dict[str, jax.Array], names: Sequence[str], num_classes: dict[str, int]
           ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    n = x[names[0]].shape[0]
    for name in names:
        if x[name].shape[0] != n:
            raise ValueError(f"mixup: input {name!r} has batch size {x[name].shape[0]}, "
                             f"input {names[0]!r} has {n}")
    kl, kp = jax.random.split(key)
    lam = jax.random.beta(kl, spec.alpha, spec.alpha, (n,), jnp.float32)
    perm = jax.random.permutation(kp, n)

    def mix(a: jax.Array) -> jax.Array:
        weight = _per_sample(lam, a).astype(a.dtype)
        return weight * a + (1 - weight) * a[perm]

    x = dict(x)
    for name in names:
        x[name] = _restore(mix(_to_float(x[name])), x[name].dtype)
    mixed = {}
    for out, target in y.items():
        target = jnp.asarray(target)
        if jnp.issubdtype(target.dtype, jnp.integer):
            if out not in num_classes:
                raise ValueError(f"mixup: output {out!r} has integer class labels but its "
                                 f"number of classes is unknown")
            target = jax.nn.one_hot(target, num_classes[out], dtype=jnp.float32)
        elif not jnp.issubdtype(target.dtype, jnp.floating):
            target = target.astype(jnp.float32)
        if target.shape[0] != n:
            raise ValueError(f"mixup: output {out!r} has {target.shape[0]} targets for a batch "
                             f"of {n}")
        mixed[out] = mix(target)
    return x, mixed


def _names(spec: AugmentSpec, position: int, x: dict[str, jax.Array],
           image_inputs: Sequence[str]) -> list[str]:
    where = f"train.augment.{position} ({spec.type})"
    names = list(spec.inputs) if spec.inputs is not None else list(image_inputs)
    for name in names:
        if name not in x:
            raise ValueError(f"{where}: no input named {name!r}; the inputs are "
                             f"{', '.join(map(repr, x))}")
    if not names:
        why = ("`inputs` is empty" if spec.inputs is not None else
               "the model has no image-like (H, W, C) input; name the inputs with `inputs:`")
        raise ValueError(f"{where}: no input to augment: {why}")
    if spec.type in GEOMETRIC:
        for name in names:
            shape = tuple(x[name].shape[1:])
            if not image_like(shape):
                raise ValueError(f"{where} needs images of shape (H, W, C), but input "
                                 f"{name!r} has per-sample shape {shape}")
    return names


def augment(specs: Sequence[AugmentSpec], key: jax.Array, x: dict[str, jax.Array],
            y: dict[str, jax.Array], image_inputs: Sequence[str],
            num_classes: dict[str, int]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Applies `specs` in order to a training batch; returns the new inputs and targets.

    Args:
        specs: the augmentations (`train.augment`), applied in order; spec `i` draws from
            `jax.random.fold_in(key, i)`.
        key: a JAX PRNG key (typed or raw); the same key gives the same result.
        x: inputs by name, batch-first; images `(B, H, W, C)`.
        y: targets by name, batch-first. Only `mixup` changes them (see the module docstring).
        image_inputs: the names of the image-like inputs, which a spec without `inputs` applies
            to.
        num_classes: the number of classes of each classifier output, by name; used by `mixup`
            to one-hot encode integer labels.

    Raises:
        ValueError: at trace time, when a spec names an unknown input, resolves to no input, or
            applies a geometric operation to an input that is not `(H, W, C)`; or when `mixup`
            meets integer labels of an output missing from `num_classes`.
    """
    x, y = dict(x), dict(y)
    for position, spec in enumerate(specs):
        names = _names(spec, position, x, image_inputs)
        x.update({name: jnp.asarray(x[name]) for name in names})
        spec_key = jax.random.fold_in(key, position)
        if spec.type == "mixup":
            x, y = _mixup(spec, spec_key, x, y, names, num_classes)
            continue
        op = _PER_INPUT[spec.type]
        for index, name in enumerate(names):
            own = jax.random.fold_in(spec_key, index) if spec.type == "gaussian_noise" else spec_key
            x[name] = op(spec, own, x[name])
    return x, y
