"""concat: join two or more tensors along one axis."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register
from nnspec.spec.errors import DataError


@register
class Concat(Layer):
    """Concatenate the inputs along `axis`, as Keras' `Concatenate`. `axis` counts the batch
    axis, as in Keras and `softmax`: -1 (the default) is the last axis, 1 the first per-sample
    axis; the batch axis 0 cannot be joined. Every other axis must agree."""

    type_name = "concat"
    arity = None
    axis: int = -1

    examples = (
        Example({}, ((3,), (5,))),
        Example({"axis": 1}, ((2, 4), (3, 4), (1, 4)), note="first per-sample axis, 3 inputs"),
        Example({"axis": -2}, ((2, 3, 4), (2, 1, 4)), note="rank 4, negative axis"),
    )

    def _axis(self, rank: int) -> int:
        """`axis` as a per-sample index (0 = first axis after the batch)."""
        full = rank + 1
        if not -full <= self.axis < full or self.axis % full == 0:
            raise ValueError(f"`axis` must index a per-sample axis: 1..{rank} or -{rank}..-1 "
                             f"(axis 0 is the batch). Received: axis={self.axis} for inputs of "
                             f"rank {full} including the batch")
        return self.axis % full - 1

    def infer(self, *shapes: Shape) -> Shape:
        if len(shapes) < 2:
            raise ValueError(f"a merge layer needs at least 2 inputs (list them in `inputs:`). "
                             f"Received: {len(shapes)} input(s)")
        ranks = {len(s) for s in shapes}
        got = ", ".join(describe(s) for s in shapes)
        if len(ranks) > 1:
            raise ValueError(f"needs inputs of one rank. Received shapes {got} from {{source}}")
        a = self._axis(len(shapes[0]))
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len(rest) > 1:
            raise ValueError(f"requires inputs with matching shapes except for the "
                             f"concatenation axis. Received shapes {got} from {{source}} with "
                             f"axis={self.axis}")
        joined = [s[a] for s in shapes]
        length = None if None in joined else sum(joined)
        first = shapes[0]
        return (*first[:a], length, *first[a + 1:])

    def flax(self, *xs: Any, name: str, train: bool) -> Any:
        import jax.numpy as jnp

        a = self.axis % xs[0].ndim
        if any(x.shape[:a] + x.shape[a + 1:] != xs[0].shape[:a] + xs[0].shape[a + 1:]
               for x in xs[1:]):  # free lengths, equal in the spec, that the data sets apart
            raise DataError(f"layer {name!r}: its inputs have shapes "
                            f"{', '.join(str(x.shape[1:]) for x in xs)} on this data; only "
                            f"axis {self.axis} may differ (their free lengths, equal in the "
                            f"spec, come out different here)")
        return jnp.concatenate(xs, axis=self.axis)

    def onnx(self, g: Any, *xs: str) -> str:
        return g.op("Concat", *xs, axis=self.axis)
