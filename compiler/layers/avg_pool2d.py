"""avg_pool2d: the mean over windows of a (height, width, channels) image."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import AvgPool
from nnspec.compiler.layers.base import Example, register


@register
class AvgPool2D(AvgPool):
    """2-D average pooling (Flax `nn.avg_pool`); `strides` default to `pool_size`. Under
    'same', padding counts in the mean unless `count_include_pad: false` (Keras' behaviour)."""

    type_name = "avg_pool2d"
    ndim = 2
    examples = (
        Example({"pool_size": 2}, ((7, 6, 3),), note="VALID, odd height cropped"),
        Example({"pool_size": 3, "strides": 2, "padding": "same"}, ((7, 8, 2),),
                note="SAME stride 2, odd size, padding counted"),
        Example({"pool_size": [2, 3], "strides": 1, "padding": "same",
                 "count_include_pad": False}, ((5, 5, 2),), note="padding not counted"),
    )
