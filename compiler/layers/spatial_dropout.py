"""spatial_dropout: drop whole channels while training; absent from the export."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register


@register
class SpatialDropout(Layer):
    """Channel dropout for sequences and images, as Keras `SpatialDropout1D/2D/3D`: each
    sample's channels (last axis) are kept or zeroed whole, across every time step or pixel,
    and kept ones are scaled by 1/(1-rate). Identity at inference, absent from the export.

    Neighbouring pixels or steps are strongly correlated, so element-wise dropout barely
    regularises them; dropping a feature map everywhere does."""

    type_name = "spatial_dropout"
    train_only = True
    rate: float = Field(ge=0, lt=1, description="fraction of channels dropped")

    examples = (
        Example({"rate": 0.5}, ((5, 4),), note="sequence"),
        Example({"rate": 0.2}, ((3, 3, 6),), note="image"),
        Example({"rate": 0.3}, ((None, 4),), note="free length"),
    )

    def infer(self, shape: Shape) -> Shape:
        if len(shape) < 2:
            raise ValueError(f"expects a sequence or image input (..., channels), got "
                             f"{describe(shape)}; use dropout for vectors")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        # One mask value per sample and channel, broadcast over the axes between them.
        spatial = tuple(range(1, x.ndim - 1))
        return nn.Dropout(self.rate, broadcast_dims=spatial, deterministic=not train,
                          name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        return x  # never reached: the exporter skips train-only layers
