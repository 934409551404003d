"""conv2d_transpose: the transposed ("fractionally strided") 2-D convolution, which upsamples.

`padding` describes the forward convolution being transposed, as in Keras, PyTorch and ONNX:
'same' gives height * stride, 'valid' height * stride + max(kernel - stride, 0), and an explicit
[low, high] pair crops that much from each end of the full output. (Flax's `nn.ConvTranspose`
reads explicit pairs as padding of the stride-dilated input instead; they are converted.)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from nnspec.compiler.layers._spatial import ConvBase, Pairs, channels_last, shown, spatial_input
from nnspec.compiler.layers._spatial import transpose_pads as lax_pads
from nnspec.compiler.layers.base import Example, Shape, describe, register


@register
class Conv2DTranspose(ConvBase):
    """Transposed 2-D convolution on channels-last images: Flax `nn.ConvTranspose` (kernel
    (height, width, in, out), not flipped), Keras `Conv2DTranspose`, ONNX `ConvTranspose`."""

    type_name = "conv2d_transpose"
    ndim = 2
    padding: Literal["valid", "same"] | Pairs = Field(
        default="valid", description="of the forward convolution: 'valid', 'same' or one "
        "[low, high] pair per spatial axis, cropped from the full output")

    examples = (
        Example({"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
                ((5, 4, 3),), note="SAME stride 2: doubles odd and even sizes"),
        Example({"filters": 3, "kernel_size": [2, 3], "strides": [3, 2]}, ((3, 4, 2),),
                note="VALID, stride larger than the kernel (output_padding)"),
        Example({"filters": 2, "kernel_size": 3, "dilation": 2, "padding": "same",
                 "activation": "tanh"}, ((4, 5, 3),), note="dilated, SAME, stride 1"),
        Example({"filters": 3, "kernel_size": 4, "strides": 2, "padding": [[1, 1], [2, 0]],
                 "use_bias": False}, ((3, 3, 2),), note="explicit crop"),
    )

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        """Every input position scatters the whole kernel: kernel size times input positions
        (what the output keeps after padding does not change the work)."""
        if any(d is None for d in inputs[0]):
            return None
        return math.prod(variables["kernel"].shape) * math.prod(inputs[0][:-1])

    def infer(self, shape: Shape) -> Shape:
        sizes = spatial_input(self, shape, self.ndim)
        _, strides, k_eff = self.geometry()
        pads = lax_pads(self.padding, k_eff, strides)
        out = [None if n is None else (n - 1) * s + lo + hi - k + 2
               for n, s, k, (lo, hi) in zip(sizes, strides, k_eff, pads)]
        if any(o is not None and o < 1 for o in out):
            raise ValueError(f"`padding` crops the whole output of the {describe(shape)} input "
                             f"from {{source}}. Received: padding={shown(self.padding)}")
        return (*out, self.filters)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        _, strides, k_eff = self.geometry()
        padding = (self.padding.upper() if isinstance(self.padding, str)
                   else lax_pads(self.padding, k_eff, strides))
        return nn.ConvTranspose(padding=padding, name=name, **self.flax_args())(x)

    def onnx(self, g: Any, x: str) -> str:
        _, strides, k_eff = self.geometry()
        n = self.ndim
        # lax correlates the zero-stuffed input with the kernel as is; ONNX ConvTranspose
        # scatters, which is correlating with the flipped kernel. Layouts: Flax (spatial...,
        # in, out), ONNX (in, out, spatial...).
        w = np.asarray(g.variables["params"][g.scope]["kernel"])[(slice(None, None, -1),) * n]
        crop = [(k - 1 - lo, k - 1 - hi)
                for (lo, hi), k in zip(lax_pads(self.padding, k_eff, strides), k_eff)]
        # A negative end crop (VALID, stride > kernel) is output past the last kernel tap:
        # ONNX's output_padding grows the output there, holding just the bias, as in Flax.
        perm = (n, n + 1, *range(n))
        back = (f"transpose={','.join(map(str, np.argsort(perm)))};"
                f"flip={','.join(map(str, range(n)))}")
        y = g.op("ConvTranspose", *self.onnx_inputs(g, x, w.transpose(perm), back),
                 **self.conv_attrs(), pads=[lo for lo, _ in crop] + [max(hi, 0) for _, hi in crop],
                 output_padding=[max(-hi, 0) for _, hi in crop])
        return channels_last(g, y, n)
