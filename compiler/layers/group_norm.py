"""group_norm: normalise each sample over its spatial axes and a group of channels, then scale
and shift each channel."""

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
class GroupNorm(Layer):
    """Group normalisation, as Flax `nn.GroupNorm` / Keras `GroupNormalization`: the channels
    (last axis) split into `groups` contiguous groups, each normalised per sample over every
    non-batch axis. `groups: 1` is layer norm over the whole sample; `groups` equal to the
    channels is instance norm. The same in training and inference.

    `epsilon` defaults to Flax's 1e-6 (Keras: 1e-3), as nnspec trains with Flax."""

    type_name = "group_norm"
    min_opset: ClassVar[int] = 17  # LayerNormalization
    groups: int = Field(default=32, gt=0, description="channel groups; must divide channels")
    epsilon: float = Field(default=1e-6, gt=0, description="added to the variance")
    center: bool = Field(default=True, description="learn a per-channel bias")
    scale: bool = Field(default=True, description="learn a per-channel scale")

    examples = (
        Example({"groups": 3}, ((4, 4, 6),), note="image"),
        Example({"groups": 2, "epsilon": 1e-3}, ((None, 8),), note="free-length sequence"),
        Example({"groups": 4, "center": False}, ((8,),), note="vector"),
        Example({"groups": 1, "scale": False, "center": False}, ((3, 5),)),
    )

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        return per_value_macs(output)  # with or without a learnt scale and shift

    def infer(self, shape: Shape) -> Shape:
        channels = shape[-1]
        if channels is None:
            raise ValueError(f"needs a known channel (last) dimension, got {describe(shape)}")
        if channels % self.groups:
            raise ValueError(f"`groups` must divide the number of channels ({channels}). "
                             f"Received: groups={self.groups} for input {describe(shape)}")
        if len(shape) == 1 and self.groups == channels:
            raise ValueError(f"`groups` equal to the channels of a vector normalises single "
                             f"values (the output would be the bias alone). Received: "
                             f"groups={self.groups} for input {describe(shape)}")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        # Two-pass variance, as ONNX computes it (see layer_norm).
        return nn.GroupNorm(num_groups=self.groups, epsilon=self.epsilon, use_bias=self.center,
                            use_scale=self.scale, use_fast_variance=False, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        # Layers see tensor names, not ranks, so the (..., G, C/G) reshape and the transposes
        # that GroupNormalization-21 needs cannot be written here. Rank-free instead: split the
        # last axis into the groups and layer-normalise each group over every axis after the
        # batch (axis=1). ORT before 1.24 wants a LayerNormalization scale of the normalised
        # size exactly, so the ones are shaped from the group itself; the learned per-channel
        # scale and bias follow the concat.
        parts: tuple[str, ...] = (x,)
        if self.groups > 1:
            # Split-18 must be told the count; Split-13 takes it from the outputs.
            count = {"num_outputs": self.groups} if g.opset >= 18 else {}
            parts = g.op("Split", x, outputs=self.groups, axis=-1, **count)
        ones = g.op("ConstantOfShape", g.op("Shape", parts[0], start=1), value=_one())
        normed = [g.op("LayerNormalization", p, ones, axis=1, epsilon=self.epsilon)
                  for p in parts]
        y = normed[0] if self.groups == 1 else g.op("Concat", *normed, axis=-1)
        if self.scale:
            y = g.op("Mul", y, g.param("scale"))
        return g.op("Add", y, g.param("bias")) if self.center else y


def _one() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
