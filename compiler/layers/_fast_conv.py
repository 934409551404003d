"""A convolution whose gradient is written as canonical convolutions (not a layer file).

XLA:CPU rewrites convolutions into its fast canonical layout only in a module's entry
computation (`conv_canonicalization.cc` visits `entry_computation()` alone). JAX's own
gradient rules emit convolutions with batch and feature dimensions swapped, which inside a
while loop (a fused training loop) then run as a naive single-threaded loop nest: a CNN's
fused epoch trained 6-25x slower than one jitted step per call (shared/reference/perf-cpu.md,
cause 4). Here the backward pass is spelt out as two convolutions in the forward's own
layout (batch first, channels last; kernel spatial..., in, out), with explicit transposes
around them, which XLA:CPU runs at full speed anywhere:

- input gradient: the output gradient convolved with the spatially flipped kernel whose
  in/out axes are swapped, padded by (k_eff - 1 - low, k_eff - 1 - high);
- kernel gradient: the padded input with batch and channels exchanged, convolved with the
  output gradient as the kernel (its batch axis as the input channels), stepping by the
  dilation.

The same function as `lax.conv_general_dilated`: the forward pass is that call itself, and
tests/test_fast_kernels.py checks both gradients against JAX's own rules. Only stride 1,
one group and no input dilation take this path; anything else is handed to lax unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

Pads = tuple[tuple[int, int], ...]


def _specs(nd: int) -> tuple[str, str, str]:
    space = "DHW"[-nd:] if nd <= 3 else None
    if space is None:
        raise ValueError(f"at most 3 spatial dimensions, got {nd}")
    return f"N{space}C", f"{space}IO", f"N{space}C"


def eligible(strides: Sequence[int], groups: int, lhs_dilation: Sequence[int] | None,
             pads: Pads, k_eff: Sequence[int]) -> bool:
    """Whether the canonical-gradient path applies (otherwise lax's own convolution)."""
    return (all(s == 1 for s in strides) and groups == 1
            and all(d == 1 for d in (lhs_dilation or ()))
            and all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(pads, k_eff)))


def conv_general_dilated(lhs: Any, rhs: Any, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> Any:
    """Drop-in for `lax.conv_general_dilated` (as `nn.Conv(conv_general_dilated=...)` calls
    it) for channels-last inputs and (spatial..., in, out) kernels."""
    from jax import lax

    nd = lhs.ndim - 2
    dilation = tuple(rhs_dilation or (1,) * nd)
    k_eff = tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:nd], dilation))
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], k_eff, window_strides, padding))
    else:
        pads = tuple(tuple(p) for p in padding)
    canonical = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _specs(nd))
    given = (canonical if dimension_numbers is None else
             lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))
    if (given != canonical or kwargs
            or not eligible(window_strides, feature_group_count, lhs_dilation, pads, k_eff)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv(lhs, rhs, pads, dilation, precision)


def _forward(x: Any, w: Any, pads: Pads, dilation: tuple[int, ...], precision: Any) -> Any:
    from jax import lax

    nd = x.ndim - 2
    return lax.conv_general_dilated(x, w, (1,) * nd, pads, rhs_dilation=dilation,
                                    dimension_numbers=_specs(nd), precision=precision)


def _make() -> Any:
    import jax
    import jax.numpy as jnp
    from jax import lax

    @partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
    def conv(x: Any, w: Any, pads: Pads, dilation: tuple[int, ...], precision: Any) -> Any:
        return _forward(x, w, pads, dilation, precision)

    def fwd(x: Any, w: Any, pads: Pads, dilation: tuple[int, ...], precision: Any) -> Any:
        return _forward(x, w, pads, dilation, precision), (x, w)

    def bwd(pads: Pads, dilation: tuple[int, ...], precision: Any, res: Any, g: Any) -> Any:
        x, w = res
        nd = x.ndim - 2
        space = tuple(range(nd))
        specs = _specs(nd)
        k_eff = [(k - 1) * d + 1 for k, d in zip(w.shape[:nd], dilation)]
        # Input gradient: a full correlation of g with the flipped, in/out-swapped kernel.
        w_t = jnp.swapaxes(jnp.flip(w, space), nd, nd + 1)
        back = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, k_eff))
        dx = lax.conv_general_dilated(g.astype(w.dtype), w_t, (1,) * nd, back,
                                      rhs_dilation=dilation, dimension_numbers=specs,
                                      precision=precision).astype(x.dtype)
        # Kernel gradient: channels as the batch, batch as the channels.
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        lhs = jnp.moveaxis(xp, (0, nd + 1), (nd + 1, 0))  # (C, spatial..., N)
        rhs = jnp.moveaxis(g, 0, nd)  # (spatial_out..., N, O)
        dw = lax.conv_general_dilated(lhs, rhs.astype(lhs.dtype), dilation, [(0, 0)] * nd,
                                      dimension_numbers=specs, precision=precision)
        dw = jnp.moveaxis(dw, 0, nd)  # (C, k..., O) -> (k..., C, O)
        return dx, dw.astype(w.dtype)

    conv.defvjp(fwd, bwd)
    return conv


_CONV: list[Any] = []


def _conv(x: Any, w: Any, pads: Pads, dilation: tuple[int, ...], precision: Any) -> Any:
    if not _CONV:  # built on first use: importing this module must not import JAX
        _CONV.append(_make())
    return _CONV[0](x, w, pads, dilation, precision)
