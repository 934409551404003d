"""max_pool2d: the maximum over windows of a (height, width, channels) image."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import MaxPool
from nnspec.compiler.layers.base import Example, register


@register
class MaxPool2D(MaxPool):
    """2-D max pooling (Keras `MaxPooling2D`, Flax `nn.max_pool`); `strides` default to
    `pool_size`."""

    type_name = "max_pool2d"
    ndim = 2
    examples = (
        Example({"pool_size": 2}, ((7, 6, 3),), note="VALID 2x2, odd height cropped"),
        Example({"pool_size": [3, 2], "padding": "same"}, ((7, 5, 2),),
                note="SAME, non-square windows, odd sizes"),
        Example({"pool_size": 3, "strides": [2, 1]}, ((7, 6, 2),), note="overlapping windows"),
        Example({"pool_size": [3, 2], "strides": 1, "padding": "same"}, ((5, 6, 2),),
                note="stride 1, SAME: uneven pads"),
    )
