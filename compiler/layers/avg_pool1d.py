"""avg_pool1d: the mean over windows of steps of a (steps, channels) sequence."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import AvgPool
from nnspec.compiler.layers.base import Example, register


@register
class AvgPool1D(AvgPool):
    """1-D average pooling (Flax `nn.avg_pool`); `strides` default to `pool_size`. Under
    'same', padding counts in the mean unless `count_include_pad: false` (Keras' behaviour)."""

    type_name = "avg_pool1d"
    ndim = 1
    examples = (
        Example({"pool_size": 2}, ((9, 3),), note="VALID"),
        Example({"pool_size": 3, "strides": 2, "padding": "same"}, ((8, 2),),
                note="SAME, padding counted"),
        Example({"pool_size": 3, "padding": "same", "count_include_pad": False},
                ((7, 2),), note="SAME, padding not counted"),
    )
