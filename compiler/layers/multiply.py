"""multiply: the element-wise product of two or more tensors of one shape (gating)."""

from __future__ import annotations

from functools import reduce
from typing import Any

from nnspec.compiler.layers.add import check_free_lengths, merge_inputs
from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Multiply(Layer):
    """Product of the inputs, all of one shape, as Keras' `Multiply`."""

    type_name = "multiply"
    arity = None

    examples = (
        Example({}, ((6,), (6,))),
        Example({}, ((2, 3), (2, 3), (2, 3)), note="three inputs"),
        Example({}, ((2, 2, 3), (2, 2, 3)), note="rank 4"),
    )

    def infer(self, *shapes: Shape) -> Shape:
        return merge_inputs(shapes)

    def flax(self, *xs: Any, name: str, train: bool) -> Any:
        check_free_lengths(xs, name)
        return reduce(lambda a, b: a * b, xs)

    def onnx(self, g: Any, *xs: str) -> str:
        return reduce(lambda a, b: g.op("Mul", a, b), xs)
