"""softmax: normalised exponentials over one axis."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Softmax(Layer):
    """Softmax over `axis` (default the last). Before a cross-entropy loss, training uses the
    logits that feed it, so the loss is computed stably."""

    type_name = "softmax"
    elementwise = True  # usable as `activation: softmax` (over the last axis)
    axis: int = -1

    examples = (
        Example({}, ((10,),)),
        Example({"axis": 1}, ((3, 5),), note="rank 3, middle axis"),
    )

    def infer(self, shape: Shape) -> Shape:
        rank = len(shape) + 1
        if not -rank <= self.axis < rank:
            raise ValueError(f"`axis` must index a dimension of the input (including batch "
                             f"axis 0). Received: axis={self.axis} for rank {rank}")
        if self.axis % rank == 0:
            raise ValueError(f"`axis` must not be the batch axis. Received: axis={self.axis}")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import jax

        return jax.nn.softmax(x, axis=self.axis)

    def onnx(self, g: Any, x: str) -> str:
        # Softmax-13 normalises one axis; earlier versions flattened to 2-D first.
        return g.op("Softmax", x, axis=self.axis)
