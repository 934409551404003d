"""flatten: collapse every per-sample axis into one, in row-major (channels-last) order."""

from __future__ import annotations

import math
from typing import Any

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register


@register
class Flatten(Layer):
    """Flatten each sample to a vector, in the element order of Flax's channels-last arrays."""

    type_name = "flatten"
    examples = (
        Example({}, ((4, 3),)),
        Example({}, ((2, 3, 4),)),
        Example({}, ((5,),), note="already flat"),
    )

    def infer(self, shape: Shape) -> Shape:
        if None in shape:
            raise ValueError(f"cannot flatten a free length, got {describe(shape)}")
        return (math.prod(shape),)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return x.reshape((x.shape[0], -1))

    def onnx(self, g: Any, x: str) -> str:
        # The exporter keeps tensors channels-last between layers, so a plain Flatten matches.
        return g.op("Flatten", x, axis=1)
