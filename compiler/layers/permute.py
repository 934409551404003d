"""permute: reorder the per-sample axes, as Keras' `Permute`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Permute(Layer):
    """Transpose each sample: output axis i is input axis `dims[i-1]`. Axes count from 1, the
    first per-sample axis (0 is the batch, which never moves), as in Keras: `dims: [2, 1]`
    swaps the two axes of a (time, features) sample."""

    type_name = "permute"
    dims: list[int] = Field(min_length=1, max_length=8,
                            description="a permutation of 1..rank (batch excluded)")

    examples = (
        Example({"dims": [2, 1]}, ((3, 5),)),
        Example({"dims": [3, 1, 2]}, ((2, 3, 4),), note="rank 4"),
        Example({"dims": [2, 1]}, ((None, 4),), note="free length moves"),
    )

    def infer(self, shape: Shape) -> Shape:
        if sorted(self.dims) != list(range(1, len(shape) + 1)):
            raise ValueError(f"`dims` must be a permutation of the per-sample axes 1..{len(shape)} "
                             f"(the batch axis 0 stays first). Received: dims={self.dims}")
        return tuple(shape[d - 1] for d in self.dims)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return x.transpose((0, *self.dims))

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Transpose", x, perm=[0, *self.dims])
