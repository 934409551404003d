"""The Flax convolution module of the conv layers, with two CPU-speed formulations (not a layer
file). Same parameters (`kernel`, `bias`), initializers and function as `nn.Conv`.

Measured on the suite's CNN (2 cores, scan-fused epoch; benchmarks/README.md, "CNN on CPU"):

- **Patches for few input taps.** A convolution whose `in_channels x kernel taps` is small (the
  first layer of an image network: 1 channel x 3x3 = 9) gives XLA:CPU's convolution a
  contraction of 9, which it runs at a few GFLOP/s: conv1 of the CNN took 2.2-5 ms forward
  for 50 MFLOP. Written as patches (`taps` shifted slices, plus a column of ones for the bias)
  times the (taps + 1, out) matrix it takes 0.6 ms, and the kernel gradient with the bias
  gradient is one more product of the same patches with the output gradient (0.85 ms, against
  1 ms + transposes + 1.3 ms for the bias reduction). The input gradient is the canonical
  full correlation (_fast_conv.py); XLA drops it when nothing reads it (the first layer).
- **Bias gradient as a product.** JAX differentiates the bias broadcast into a reduction over
  batch and space, which XLA:CPU runs single-threaded (1.26 ms for 128x26x26x32); the same sum
  as `ones @ g` runs on both cores (0.36 ms).

Both change only the order of float additions (loss traces equal to nn.Conv's within 3e-7).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any

from nnspec.compiler.layers._fast_conv import _specs, conv_general_dilated, eligible

# Patches pay for themselves while the contraction is short; 9 (1 channel, 3x3) measured.
MAX_PATCH_TAPS = 16


def patches_apply(in_channels: int, kernel: tuple[int, ...], strides: tuple[int, ...],
                  groups: int, pads: Any, dilation: tuple[int, ...]) -> bool:
    """Whether the patches formulation applies (stride 1, one group, few taps)."""
    k_eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    taps = in_channels * math.prod(kernel)
    return taps <= MAX_PATCH_TAPS and eligible(strides, groups, None, pads, k_eff)


def _patches(x: Any, kernel: tuple[int, ...], dilation: tuple[int, ...], bias: bool) -> Any:
    """(batch x out positions, taps x channels [+ 1]) of an already padded input."""
    import jax.numpy as jnp

    nd = x.ndim - 2
    out = [n - (k - 1) * d for n, k, d in zip(x.shape[1:-1], kernel, dilation)]
    taps = []
    for offs in itertools.product(*(range(k) for k in kernel)):
        index = tuple(slice(o * d, o * d + n) for o, d, n in zip(offs, dilation, out))
        taps.append(x[(slice(None), *index, slice(None))])
    if bias:
        taps.append(jnp.ones((x.shape[0], *out, 1), x.dtype))
    p = jnp.concatenate(taps, axis=-1)
    return p.reshape(-1, p.shape[-1]), (x.shape[0], *out), nd


def _input_grad(g: Any, w: Any, pads: Any, dilation: tuple[int, ...]) -> Any:
    """The canonical full correlation of _fast_conv.py (the input gradient)."""
    import jax.numpy as jnp
    from jax import lax

    nd = g.ndim - 2
    k_eff = [(k - 1) * d + 1 for k, d in zip(w.shape[:nd], dilation)]
    w_t = jnp.swapaxes(jnp.flip(w, tuple(range(nd))), nd, nd + 1)
    back = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, k_eff))
    return lax.conv_general_dilated(g.astype(w.dtype), w_t, (1,) * nd, back,
                                    rhs_dilation=dilation, dimension_numbers=_specs(nd))


def _make() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    def pad(x: Any, pads: Any) -> Any:
        if any(lo or hi for lo, hi in pads):
            return jnp.pad(x, ((0, 0), *pads, (0, 0)))
        return x

    def patch_fwd(x: Any, w: Any, b: Any, pads: Any, dilation: Any) -> Any:
        nd = x.ndim - 2
        p, shape, _ = _patches(pad(x, pads), w.shape[:nd], dilation, b is not None)
        mat = w.reshape(-1, w.shape[-1])
        if b is not None:
            mat = jnp.concatenate([mat, b[None].astype(mat.dtype)], axis=0)
        return (p @ mat).reshape(*shape, w.shape[-1]), p

    @partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def patch_conv(x: Any, w: Any, b: Any, pads: Any, dilation: Any) -> Any:
        return patch_fwd(x, w, b, pads, dilation)[0]

    def patch_f(x: Any, w: Any, b: Any, pads: Any, dilation: Any) -> Any:
        y, p = patch_fwd(x, w, b, pads, dilation)
        return y, (p, w)

    def patch_b(pads: Any, dilation: Any, res: Any, g: Any) -> Any:
        p, w = res
        has_bias = p.shape[1] > math.prod(w.shape[:-1])  # the column of ones
        grad = jnp.einsum("nk,nf->kf", p, g.reshape(-1, g.shape[-1]).astype(p.dtype))
        dw = grad[: grad.shape[0] - has_bias].reshape(w.shape).astype(w.dtype)
        dx = _input_grad(g, w, pads, dilation).astype(p.dtype)
        return dx, dw, (grad[-1] if has_bias else None)

    patch_conv.defvjp(patch_f, patch_b)

    def add(y: Any, b: Any) -> Any:
        return y + b.reshape((1,) * (y.ndim - 1) + b.shape)

    @jax.custom_vjp
    def bias_add(y: Any, b: Any) -> Any:
        return add(y, b)

    def bias_b(b: Any, g: Any) -> Any:
        flat = g.reshape(-1, g.shape[-1])
        ones = jnp.ones((1, flat.shape[0]), flat.dtype)
        return g, (ones @ flat)[0].astype(b.dtype)

    bias_add.defvjp(lambda y, b: (add(y, b), b), bias_b)
    return {"patch_conv": patch_conv, "bias_add": bias_add}


_FNS: dict[str, Any] = {}


def _fns() -> dict[str, Any]:
    if not _FNS:  # built on first use: importing this module must not import JAX
        _FNS.update(_make())
    return _FNS


def conv_module(features: int, kernel_size: tuple[int, ...], strides: tuple[int, ...],
                padding: Any, kernel_dilation: tuple[int, ...], groups: int, use_bias: bool,
                kernel_init: Any, name: str) -> Any:
    """An `nn.Conv` equivalent (same parameter tree and initialization) for channels-last
    inputs; `padding` 'VALID', 'SAME' or (low, high) pairs, as `nn.Conv` takes it."""
    import flax.linen as nn
    import jax.numpy as jnp
    from flax.linen.dtypes import promote_dtype
    from jax import lax

    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            nd = len(kernel_size)
            shape = (*kernel_size, x.shape[-1] // groups, features)
            kernel = self.param("kernel", kernel_init, shape, jnp.float32)
            bias = (self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
                    if use_bias else None)
            x, kernel, bias = promote_dtype(x, kernel, bias, dtype=None)
            k_eff = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation))
            pads = (tuple(lax.padtype_to_pads(x.shape[1:-1], k_eff, strides, padding))
                    if isinstance(padding, str) else padding)
            pads = tuple((int(lo), int(hi)) for lo, hi in pads)
            if patches_apply(x.shape[-1], kernel_size, strides, groups, pads, kernel_dilation):
                return _fns()["patch_conv"](x, kernel, bias, pads, tuple(kernel_dilation))
            y = conv_general_dilated(x, kernel, strides, pads, rhs_dilation=kernel_dilation,
                                     dimension_numbers=_specs(nd), feature_group_count=groups)
            return y if bias is None else _fns()["bias_add"](y, bias)

    return Conv(name=name)
