"""conv1d: a convolution over the steps of a (steps, channels) sequence."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import Conv
from nnspec.compiler.layers.base import Example, register


@register
class Conv1D(Conv):
    """1-D convolution (Keras `Conv1D`, Flax `nn.Conv` with one spatial axis) on channels-last
    sequences; `padding: causal` pads only the start, so step t never sees later steps."""

    type_name = "conv1d"
    ndim = 1
    examples = (
        Example({"filters": 4, "kernel_size": 3, "padding": "same", "strides": 2}, ((9, 3),),
                note="SAME, stride 2, odd length"),
        Example({"filters": 5, "kernel_size": 3, "padding": "causal", "dilation": 2,
                 "activation": "relu"}, ((None, 2),), note="causal, dilated, free length"),
        Example({"filters": 6, "kernel_size": 2, "padding": [[2, 1]], "groups": 3,
                 "use_bias": False}, ((7, 6),), note="explicit pads, grouped, no bias"),
    )
