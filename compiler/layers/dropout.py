"""dropout: zero a random fraction of activations while training; absent from the export."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Dropout(Layer):
    """Inverted dropout (kept values scaled by 1/(1-rate)) in training, identity at inference."""

    type_name = "dropout"
    train_only = True
    rate: float = Field(ge=0, lt=1, description="fraction of activations dropped")

    examples = (
        Example({"rate": 0.5}, ((6,),)),
        Example({"rate": 0.1}, ((3, 4),)),
    )

    def infer(self, shape: Shape) -> Shape:
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        return nn.Dropout(self.rate, deterministic=not train, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        return x  # never reached: the exporter skips train-only layers
