"""batch_norm: normalise each channel (the last axis) by batch statistics while training and by
their running averages at inference, then scale and shift."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register


@register
class BatchNorm(Layer):
    """Batch normalisation over the last (channel) axis of an input of any rank, as Flax
    `nn.BatchNorm` / Keras `BatchNormalization(axis=-1)`.

    Training normalises by the batch's mean and (biased) variance and updates the running
    statistics as `running = momentum * running + (1 - momentum) * batch`; inference and the
    export use the running statistics. `epsilon` defaults to Flax's 1e-5 (Keras uses 1e-3):
    nnspec trains with Flax, so a spec that states nothing behaves as the Flax layer, and 1e-5
    is also ONNX `BatchNormalization`'s default."""

    type_name = "batch_norm"
    momentum: float = Field(default=0.99, ge=0, lt=1,
                            description="weight of the old running statistics per step")
    epsilon: float = Field(default=1e-5, gt=0, description="added to the variance")
    center: bool = Field(default=True, description="learn a per-channel bias")
    scale: bool = Field(default=True, description="learn a per-channel scale")

    examples = (
        Example({}, ((6,),)),
        Example({"momentum": 0.9, "epsilon": 1e-3}, ((5, 4),), note="sequence"),
        Example({"center": False, "scale": False}, ((3, 4, 2),), note="image, no affine"),
        Example({"scale": False}, ((None, 3),), note="free length"),
    )

    def infer(self, shape: Shape) -> Shape:
        if shape[-1] is None:
            raise ValueError(f"needs a known channel (last) dimension, got {describe(shape)}")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        # The exact two-pass variance: E[x²]-E[x]² loses the variance of inputs far from zero
        # (raw pixels), and that variance becomes the running one that is exported.
        return nn.BatchNorm(use_running_average=not train, axis=-1, momentum=self.momentum,
                            epsilon=self.epsilon, use_bias=self.center, use_scale=self.scale,
                            use_fast_variance=False, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        # Broadcast Sub/Mul/Add on the last axis rather than BatchNormalization: the ONNX op
        # wants channels on axis 1, so every rank above 2 would need a transpose pair. The
        # order is Flax's, (x - mean) * (scale / sqrt(var + eps)) + bias; folding the mean into
        # the bias instead (x * a + (bias - mean * a)) cancels catastrophically when |mean| is
        # large against the spread. The trained statistics stay in the file under their own
        # names; runtimes fold the constant multiplier when they load the model.
        mean = g.param("mean", collection="batch_stats")
        var = g.param("var", collection="batch_stats")
        inv_std = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.const(self.epsilon,
                                                                          name="epsilon"))))
        multiplier = g.op("Mul", inv_std, g.param("scale")) if self.scale else inv_std
        y = g.op("Mul", g.op("Sub", x, mean), multiplier)
        return g.op("Add", y, g.param("bias")) if self.center else y
