"""layer_norm: normalise each sample's feature vector (the last axis), then scale and shift."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nnspec.compiler.layers.base import (
    Example,
    Layer,
    Shape,
    describe,
    per_value_macs,
    register,
)


@register
class LayerNorm(Layer):
    """Layer normalisation over the last axis, as Flax `nn.LayerNorm` / Keras
    `LayerNormalization(axis=-1)`: the same in training and inference.

    `epsilon` defaults to Flax's 1e-6 (Keras: 1e-3, ONNX: 1e-5): nnspec trains with Flax, so a
    spec that states nothing behaves as the Flax layer; the export always writes it."""

    type_name = "layer_norm"
    min_opset: ClassVar[int] = 17  # LayerNormalization
    epsilon: float = Field(default=1e-6, gt=0, description="added to the variance")
    center: bool = Field(default=True, description="learn a per-feature bias")
    scale: bool = Field(default=True, description="learn a per-feature scale")

    examples = (
        Example({}, ((8,),)),
        Example({"epsilon": 1e-3}, ((None, 6),), note="free-length sequence"),
        Example({"center": False}, ((2, 3, 5),), note="image"),
        Example({"scale": False, "center": False}, ((4, 7),)),
    )

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        return per_value_macs(output)  # with or without a learnt scale and shift

    def infer(self, shape: Shape) -> Shape:
        if shape[-1] is None:
            raise ValueError(f"needs a known last dimension, got {describe(shape)}")
        if shape[-1] == 1:
            # Each value would be its own mean: the output is the bias alone.
            raise ValueError(f"normalises the last axis, which has a single feature: the "
                             f"output would be the bias alone. Received input {describe(shape)}")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        # Fast variance (E[x²]-E[x]²) drifts 1.5e-5 from ONNX on inputs of mean 10; the
        # two-pass form stays within 1e-6.
        return nn.LayerNorm(epsilon=self.epsilon, use_bias=self.center, use_scale=self.scale,
                            use_fast_variance=False, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        # LayerNormalization requires a scale. Without a learned one the width is not known
        # here (layers see tensor names, not shapes), so ones are shaped from the input's own
        # last dimension; runtimes fold this when the input's width is declared.
        if self.scale:
            scale = g.param("scale")
        else:
            scale = g.op("ConstantOfShape", g.op("Shape", x, start=-1), value=_one())
        inputs = [x, scale] + ([g.param("bias")] if self.center else [])
        return g.op("LayerNormalization", *inputs, axis=-1, epsilon=self.epsilon)


def _one() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
