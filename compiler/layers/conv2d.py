"""conv2d: a convolution over the height and width of a (height, width, channels) image."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import Conv
from nnspec.compiler.layers.base import Example, register


@register
class Conv2D(Conv):
    """2-D convolution (Keras `Conv2D`, Flax `nn.Conv`) on channels-last images. `groups`
    equal to the input channels (and `filters` a multiple of them) is a depthwise
    convolution."""

    type_name = "conv2d"
    ndim = 2
    examples = (
        Example({"filters": 4, "kernel_size": [3, 2], "strides": 2, "padding": "same"},
                ((7, 6, 3),), note="SAME, stride 2, odd and even sizes, even kernel"),
        Example({"filters": 5, "kernel_size": 3, "dilation": [2, 1], "activation": "relu"},
                ((8, 7, 2),), note="VALID, dilated"),
        Example({"filters": 8, "kernel_size": 3, "groups": 4, "padding": "same",
                 "use_bias": False, "dilation": 2}, ((6, 6, 4),),
                note="depthwise x2, SAME with dilation"),
        Example({"filters": 3, "kernel_size": 3, "padding": [[1, 0], [2, 1]],
                 "strides": [1, 2]}, ((5, 6, 2),), note="explicit pads"),
    )
