"""max_pool1d: the maximum over windows of steps of a (steps, channels) sequence."""

from __future__ import annotations

from nnspec.compiler.layers._spatial import MaxPool
from nnspec.compiler.layers.base import Example, register


@register
class MaxPool1D(MaxPool):
    """1-D max pooling (Keras `MaxPooling1D`, Flax `nn.max_pool`); `strides` default to
    `pool_size`."""

    type_name = "max_pool1d"
    ndim = 1
    examples = (
        Example({"pool_size": 2}, ((9, 3),), note="VALID, odd length cropped"),
        Example({"pool_size": 3, "strides": 2, "padding": "same"}, ((8, 2),),
                note="overlapping windows, SAME"),
        Example({"pool_size": 3, "strides": 1, "padding": "same"}, ((None, 4),),
                note="SAME stride 1, free length"),
    )
