"""global_max_pool: the maximum over every spatial axis, one value per channel."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.layers._spatial import GlobalPool
from nnspec.compiler.layers.base import Example, register


@register
class GlobalMaxPool(GlobalPool):
    """Maximum over the steps of a (steps, channels) sequence or the height and width of an
    image, giving (channels,) (Keras `GlobalMaxPooling1D/2D`)."""

    type_name = "global_max_pool"
    reduce = "ReduceMax"
    examples = (
        Example({}, ((5, 6, 3),), note="image"),
        Example({}, ((None, 4),), note="sequence of free length"),
    )

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return x.max(axis=tuple(range(1, x.ndim - 1)))
