"""add: the element-wise sum of two or more tensors of one shape (residual connections)."""

from __future__ import annotations

from functools import reduce
from typing import Any

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register
from nnspec.spec.errors import DataError


def merge_inputs(shapes: tuple[Shape, ...]) -> Shape:
    """The common shape of an element-wise merge's inputs. Shapes must be equal: broadcasting
    a (1, 4) against a (3, 4) is almost always a wiring mistake, so it is refused. Free
    lengths (`None`) match each other; their equality is the runtime's to check."""
    if len(shapes) < 2:
        raise ValueError(f"a merge layer needs at least 2 inputs (list them in `inputs:`). "
                         f"Received: {len(shapes)} input(s)")
    first = shapes[0]
    for other in shapes[1:]:
        if tuple(other) != tuple(first):
            got = ", ".join(describe(s) for s in shapes)
            raise ValueError(f"needs inputs of one shape (no broadcasting). Received shapes "
                             f"{got} from {{source}}")
    return first


def check_free_lengths(xs: tuple[Any, ...], name: str) -> None:
    """Free lengths match at validation (`merge_inputs`), but two derived from one free
    length in different ways (a reshape folding it with 4 features, another with 5) differ
    once data gives it a value: say so, naming the layer, rather than fail inside JAX."""
    shapes = [tuple(x.shape) for x in xs]
    if any(s != shapes[0] for s in shapes[1:]):
        raise DataError(f"layer {name!r}: its inputs have shapes "
                        f"{', '.join(str(s[1:]) for s in shapes)} on this data; a merge needs "
                        f"one shape. Their free lengths, equal in the spec, come out different "
                        f"here (e.g. reshapes folding one free length with different sizes)")


@register
class Add(Layer):
    """Sum of the inputs, all of one shape, as Keras' `Add`."""

    type_name = "add"
    arity = None

    examples = (
        Example({}, ((4,), (4,))),
        Example({}, ((3, 5), (3, 5), (3, 5)), note="three inputs"),
        Example({}, ((2, 3, 4), (2, 3, 4)), note="rank 4"),
    )

    def infer(self, *shapes: Shape) -> Shape:
        return merge_inputs(shapes)

    def flax(self, *xs: Any, name: str, train: bool) -> Any:
        check_free_lengths(xs, name)
        return reduce(lambda a, b: a + b, xs)

    def onnx(self, g: Any, *xs: str) -> str:
        # A chain of Add sums in Flax's left-to-right order; Sum's order is the runtime's.
        return reduce(lambda a, b: g.op("Add", a, b), xs)
