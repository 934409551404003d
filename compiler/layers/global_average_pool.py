"""global_average_pool: the mean over every spatial axis, one value per channel."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.layers._spatial import GlobalPool
from nnspec.compiler.layers.base import Example, register


@register
class GlobalAveragePool(GlobalPool):
    """Mean over the steps of a (steps, channels) sequence or the height and width of an
    image, giving (channels,) (Keras `GlobalAveragePooling1D/2D`)."""

    type_name = "global_average_pool"
    reduce = "ReduceMean"
    examples = (
        Example({}, ((5, 6, 3),), note="image"),
        Example({}, ((None, 4),), note="sequence of free length"),
    )

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return x.mean(axis=tuple(range(1, x.ndim - 1)))
