"""rescale: `y = x * scale + offset`, so preprocessing such as pixel scaling ships inside the
exported model (as Keras' `Rescaling`)."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Rescale(Layer):
    """Multiply by `scale`, then add `offset`; the output is float32 whatever the input dtype,
    so a device can feed raw integer pixels."""

    type_name = "rescale"
    scale: float = 1.0
    offset: float = 0.0

    examples = (
        Example({"scale": 1 / 255}, ((6,),)),
        Example({"scale": 2.0, "offset": -1.0}, ((2, 3),)),
        Example({"scale": 1 / 16}, ((4,),), dtype="uint8", note="raw integer pixels"),
    )

    def infer(self, shape: Shape) -> Shape:
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import jax.numpy as jnp

        return x.astype(jnp.float32) * self.scale + self.offset

    def onnx(self, g: Any, x: str) -> str:
        from onnx import TensorProto

        y = g.op("Mul", g.op("Cast", x, to=TensorProto.FLOAT), g.const(self.scale, name="scale"))
        return g.op("Add", y, g.const(self.offset, name="offset")) if self.offset else y
