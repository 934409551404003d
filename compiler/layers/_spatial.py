"""Shared machinery of the convolution and pooling layers (not a layer file: its name starts
with `_`, so the registry skips it).

nnspec keeps every tensor channels-last, as Flax does: a sequence is (steps, channels) and an
image (height, width, channels). ONNX's Conv and pools are channels-first, so each one is
wrapped in a pair of Transposes. Padding is always written out as explicit `pads` computed with
JAX's own SAME formula: ONNX `auto_pad` is deprecated on pools, onnxruntime refuses it with
dilation, and its SAME_LOWER disagrees with JAX.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from nnspec.compiler.layers._conv_module import conv_module
from nnspec.compiler.layers._fast_conv import conv_general_dilated, eligible
from nnspec.compiler.layers._fast_pool import max_pool_exact
from nnspec.compiler.layers.base import REGISTRY, Layer, Shape, describe
from nnspec.compiler.layers.dense import Initializer, flax_initializer

Ints = int | tuple[int, ...]
Pairs = tuple[tuple[int, int], ...]
Pads = list[tuple[int, int]]
AXES = {1: ("steps",), 2: ("height", "width")}


def shown(value: Any) -> Any:
    """A parameter as the user wrote it in YAML (lists, not tuples), for error messages."""
    return [shown(v) for v in value] if isinstance(value, tuple | list) else value


def to_tuple(name: str, value: Ints, ndim: int) -> tuple[int, ...]:
    """An int-or-list parameter as one positive int per spatial axis."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or any(v < 1 for v in values):
        each = "a positive int" if ndim == 1 else f"a positive int or a list of {ndim} of them"
        raise ValueError(f"`{name}` must be {each}. Received: {name}={shown(value)!r}")
    return values


def spatial_input(layer: Layer, shape: Shape, ndim: int, channels: bool = True
                  ) -> tuple[int | None, ...]:
    """The spatial sizes of a per-sample (spatial..., channels) shape, checking its rank."""
    if len(shape) != ndim + 1:
        want = describe((*AXES[ndim], "channels"))
        dims = {2: ("2d", "1d"), 3: ("1d", "2d")}.get(len(shape))
        other = dims and layer.type_name.replace(*dims)
        hint = f"; use {other} for that rank" if other in REGISTRY else ""
        raise ValueError(f"expects a {ndim}-D input {want}, got {describe(shape)} from "
                         f"{{source}}{hint}")
    if channels and shape[-1] is None:
        raise ValueError(f"needs a known channel count (last axis), got {describe(shape)}")
    return shape[:-1]


def resolve_pads(padding: str | Pairs, sizes: tuple[int | None, ...], k_eff: tuple[int, ...],
                 strides: tuple[int, ...]) -> Pads:
    """(low, high) padding per spatial axis, as JAX computes it (`lax.padtype_to_pads`)."""
    ndim = len(sizes)
    if not isinstance(padding, str):
        pairs = tuple(tuple(p) for p in padding)
        if len(pairs) != ndim or any(len(p) != 2 or min(p) < 0 for p in pairs):
            raise ValueError(f"`padding` must be 'same', 'valid' or a list of {ndim} [low, high] "
                             f"pair(s) of non-negative ints. Received: padding={shown(padding)}")
        return [(lo, hi) for lo, hi in pairs]
    if padding == "causal" and ndim != 1:
        raise ValueError("`padding` 'causal' is only for 1-D layers. Received: padding='causal'")
    pads = []
    for n, k, s, axis in zip(sizes, k_eff, strides, AXES[ndim]):
        if padding == "valid":
            pads.append((0, 0))
        elif padding == "causal":
            pads.append((k - 1, 0))
        elif n is None and s > 1:
            # The pads would change with the length; a fixed-pads ONNX graph cannot follow.
            raise ValueError(f"`padding` 'same' with stride {s} needs a known {axis} length, got a "
                             f"free one from {{source}}; use padding 'valid' or stride 1")
        else:
            total = k - 1 if n is None else max(0, (-(-n // s) - 1) * s + k - n)
            pads.append((total // 2, total - total // 2))
    return pads


def output_sizes(sizes: tuple[int | None, ...], k_eff: tuple[int, ...],
                 strides: tuple[int, ...], pads: Pads, what: str) -> tuple[int | None, ...]:
    """Output length per spatial axis (floor division: neither JAX nor our ONNX uses ceil)."""
    out = []
    for n, k, s, (lo, hi), axis in zip(sizes, k_eff, strides, pads, AXES[len(sizes)]):
        if n is not None and n + lo + hi < k:
            raise ValueError(f"{what} spans {k} along {axis}, more than the input's {n}"
                             + (f" padded by {lo}+{hi}" if lo or hi else "")
                             + " from {source}; use a smaller window or padding 'same'")
        out.append(None if n is None else (n + lo + hi - k) // s + 1)
    return tuple(out)


def channels_first(g: Any, x: str, ndim: int) -> str:
    return g.op("Transpose", x, perm=[0, ndim + 1, *range(1, ndim + 1)])


def channels_last(g: Any, x: str, ndim: int) -> str:
    return g.op("Transpose", x, perm=[0, *range(2, ndim + 2), 1])


def onnx_pads(pads: Pads) -> list[int]:
    return [lo for lo, _ in pads] + [hi for _, hi in pads]


class Spatial(Layer):
    """Base of the windowed layers. SAME pads depend on the input size: the ONNX rule takes it
    from the builder (`g.input_shapes`), as shape inference found it."""

    ndim: ClassVar[int]

    def pads_for(self, shape: Shape) -> Pads:
        raise NotImplementedError

    def resolved_pads(self, g: Any) -> Pads:
        return self.pads_for(g.input_shapes[0])


class Pool(Spatial):
    """A sliding-window pool over the spatial axes; `strides` default to `pool_size`."""

    pool_size: Ints = Field(default=2, description="window size, an int or one per axis")
    strides: Ints | None = Field(default=None, description="step; default: the pool size")
    padding: Literal["valid", "same"] = "valid"

    def window(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        size = to_tuple("pool_size", self.pool_size, self.ndim)
        return size, size if self.strides is None else to_tuple("strides", self.strides,
                                                                 self.ndim)

    def pads_for(self, shape: Shape) -> Pads:
        size, strides = self.window()
        return resolve_pads(self.padding, tuple(shape[:-1]), size, strides)

    def infer(self, shape: Shape) -> Shape:
        sizes = spatial_input(self, shape, self.ndim, channels=False)
        size, strides = self.window()
        pads = resolve_pads(self.padding, sizes, size, strides)
        return (*output_sizes(sizes, size, strides, pads, "the pool window"), shape[-1])

    def pool_attrs(self, g: Any) -> dict[str, Any]:
        size, strides = self.window()
        return {"kernel_shape": list(size), "strides": list(strides), "ceil_mode": 0,
                "pads": onnx_pads(self.resolved_pads(g))}


class MaxPool(Pool):
    """Maximum over each window (padding counts as -inf, so it never wins)."""

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn
        import jax.numpy as jnp

        size, strides = self.window()
        if size != strides:
            return nn.max_pool(x, size, strides, self.padding.upper())
        # Non-overlapping windows: crop, then the max of the window's strided slices. Same
        # values as reduce_window, but its gradient is an element-wise mask instead of
        # XLA:CPU's slow select_and_scatter (see shared/reference/perf-cpu.md); ties share the
        # gradient instead of the first taking it, which after a ReLU only happens between
        # zeros. _fast_pool.py: the reshape-and-max gradient in cheaper kernels.
        pads = resolve_pads(self.padding, x.shape[1:-1], size, strides)
        if any(lo or hi for lo, hi in pads):
            x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
        out = [n // k for n, k in zip(x.shape[1:-1], size)]
        x = x[(slice(None), *(slice(0, o * k) for o, k in zip(out, size)))]
        return max_pool_exact(x, size)

    def onnx(self, g: Any, x: str) -> str:
        x, attrs = channels_first(g, x, self.ndim), self.pool_attrs(g)
        if set(attrs["strides"]) == {1} and any(attrs["pads"]):
            # onnx.reference (1.23) runs stride-1 MaxPool through a path that ignores 1-D pads
            # and reads 2-D ones in the wrong order; an explicit -inf Pad is exact everywhere.
            pads = self.resolved_pads(g)
            value = g.const(-np.inf, np.float32, "neg_inf")  # a scalar: tract insists
            x = g.op("Pad", x, g.const([0, 0, *(lo for lo, _ in pads), 0, 0,
                                        *(hi for _, hi in pads)], np.int64, "pads"), value)
            attrs["pads"] = [0] * len(attrs["pads"])
        return channels_last(g, g.op("MaxPool", x, **attrs), self.ndim)


class AvgPool(Pool):
    """Mean over each window."""

    count_include_pad: bool = Field(default=True, description="divide by the whole window, "
                                    "padding included (Flax's default; Keras' 'same' is false)")

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        size, strides = self.window()
        return nn.avg_pool(x, size, strides, self.padding.upper(),
                           count_include_pad=self.count_include_pad)

    def onnx(self, g: Any, x: str) -> str:
        # ONNX's default is count_include_pad=0, Flax's True: always write it.
        y = g.op("AveragePool", channels_first(g, x, self.ndim), **self.pool_attrs(g),
                 count_include_pad=int(self.count_include_pad))
        return channels_last(g, y, self.ndim)


class GlobalPool(Layer):
    """Reduce every spatial axis of a (steps, channels) or (height, width, channels) input."""

    reduce: ClassVar[str]

    def infer(self, shape: Shape) -> Shape:
        if len(shape) < 2:
            raise ValueError(f"expects a (steps, channels) or (height, width, channels) input, "
                             f"got {describe(shape)} from {{source}}")
        return (shape[-1],)

    def onnx(self, g: Any, x: str) -> str:
        # Reducing the channels-last tensor directly needs no Transpose.
        axes = list(range(1, len(g.input_shapes[0])))
        if g.opset >= 18:
            return g.op(self.reduce, x, g.const(axes, np.int64, "axes"), keepdims=0)
        return g.op(self.reduce, x, axes=axes, keepdims=0)


class ConvBase(Spatial):
    """What every convolution shares: its parameters but `groups`."""

    # XLA:CPU canonicalizes convolution layouts only in the entry computation, so inside a
    # while loop the gradient convolutions fall to a naive loop nest (6x slower; perf-cpu.md).
    slow_in_cpu_loops: ClassVar[bool] = True
    filters: int = Field(gt=0, description="output channels")
    kernel_size: Ints = Field(description="window size, an int or one per spatial axis")
    strides: Ints = 1
    padding: str | Pairs = "valid"  # narrowed by each subclass; declared here for field order
    dilation: Ints = 1
    use_bias: bool = True
    activation: str | None = Field(default=None, description="an element-wise activation "
                                   "layer type, applied after the convolution")
    kernel_initializer: Initializer = "glorot_uniform"

    def geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Kernel size, strides and dilated kernel size, one per spatial axis."""
        kernel = to_tuple("kernel_size", self.kernel_size, self.ndim)
        dilation = to_tuple("dilation", self.dilation, self.ndim)
        k_eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        return kernel, to_tuple("strides", self.strides, self.ndim), k_eff

    def conv_attrs(self) -> dict[str, Any]:
        kernel, strides, _ = self.geometry()
        return {"kernel_shape": list(kernel), "strides": list(strides),
                "dilations": list(to_tuple("dilation", self.dilation, self.ndim))}

    def flax_args(self) -> dict[str, Any]:
        kernel, strides, _ = self.geometry()
        return {"features": self.filters, "kernel_size": kernel, "strides": strides,
                "kernel_dilation": to_tuple("dilation", self.dilation, self.ndim),
                "use_bias": self.use_bias,
                "kernel_init": flax_initializer(self.kernel_initializer)}

    def onnx_inputs(self, g: Any, x: str, kernel: np.ndarray, to_flax: str) -> list[str]:
        """The channels-first input, the kernel (already in ONNX layout; `to_flax` the steps
        back to the trained one) and the bias."""
        inputs = [channels_first(g, x, self.ndim),
                  g.param("kernel", value=kernel, to_flax=to_flax)]
        return [*inputs, g.param("bias")] if self.use_bias else inputs


class Conv(ConvBase):
    """A channels-last convolution, as Keras' ConvND and Flax's `nn.Conv`."""

    padding: Literal["valid", "same", "causal"] | Pairs = Field(
        default="valid", description="'valid', 'same' (JAX's: extra pixel at the end), "
        "'causal' (1-D), or one [low, high] pair per spatial axis")
    groups: int = Field(default=1, gt=0, description="channel groups; = input channels for a "
                        "depthwise convolution")

    def infer(self, shape: Shape) -> Shape:
        sizes = spatial_input(self, shape, self.ndim)
        kernel, strides, k_eff = self.geometry()
        for what, count in (("input channels", shape[-1]), ("filters", self.filters)):
            if count % self.groups:
                raise ValueError(f"`groups` must divide the {what} ({count}). Received: "
                                 f"groups={self.groups}")
        pads = resolve_pads(self.padding, sizes, k_eff, strides)
        what = "the dilated kernel" if k_eff != kernel else "the kernel"
        return (*output_sizes(sizes, k_eff, strides, pads, what), self.filters)

    def pads_for(self, shape: Shape) -> Pads:
        _, strides, k_eff = self.geometry()
        return resolve_pads(self.padding, tuple(shape[:-1]), k_eff, strides)

    @property
    def slow_in_cpu_loops(self) -> bool:  # type: ignore[override]
        """Only convolutions outside the canonical-gradient path (_fast_conv.py) are slow
        inside XLA:CPU loops: strides > 1, groups, or pads wider than the kernel."""
        _, strides, k_eff = self.geometry()
        # 'valid', 'same' and 'causal' never pad by more than k_eff - 1.
        pads = (((0, 0),) * self.ndim if isinstance(self.padding, str) else
                tuple(tuple(p) for p in self.padding))
        return not eligible(strides, self.groups, None, pads, k_eff)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        # Flax gets the padding as the user wrote it, so the parity tests check our formula.
        # Its convolution is ours: the same forward, a gradient XLA:CPU runs fast in loops;
        # the module (_conv_module.py) also takes few-tap convolutions as patches.
        padding = self.padding.upper() if isinstance(self.padding, str) else self.padding
        if padding != "CAUSAL":
            args = self.flax_args()
            return conv_module(args["features"], args["kernel_size"], args["strides"], padding,
                               args["kernel_dilation"], self.groups, args["use_bias"],
                               args["kernel_init"], name)(x)
        return nn.Conv(padding=padding, feature_group_count=self.groups, name=name,
                       conv_general_dilated=conv_general_dilated, **self.flax_args())(x)

    def onnx(self, g: Any, x: str) -> str:
        n = self.ndim
        # Flax: (spatial..., in/groups, out); ONNX: (out, in/groups, spatial...).
        perm = (n + 1, n, *range(n))
        w = np.asarray(g.variables["params"][g.scope]["kernel"]).transpose(perm)
        back = "transpose=" + ",".join(map(str, np.argsort(perm)))
        y = g.op("Conv", *self.onnx_inputs(g, x, w, back), **self.conv_attrs(), group=self.groups,
                 pads=onnx_pads(self.resolved_pads(g)))
        return channels_last(g, y, n)


def transpose_pads(padding: str | Pairs, k_eff: tuple[int, ...], strides: tuple[int, ...]
                   ) -> Pads:
    """Padding of the stride-dilated input of a transposed convolution, for `padding` of the
    forward convolution it transposes (`lax.conv_transpose`'s `_conv_transpose_padding`)."""
    if not isinstance(padding, str):
        forward = resolve_pads(padding, (None,) * len(k_eff), k_eff, strides)
        return [(k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(forward, k_eff)]
    pads = []
    for k, s in zip(k_eff, strides):
        low = k - 1 if padding == "valid" or s > k - 1 else -(-(k + s - 2) // 2)
        pads.append((low, k + s - 2 + (max(k - s, 0) if padding == "valid" else 0) - low))
    return pads
