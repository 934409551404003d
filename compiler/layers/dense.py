"""dense: a fully connected layer over the last axis, `y = x @ kernel + bias`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register

Initializer = Literal["glorot_uniform", "glorot_normal", "lecun_normal", "he_normal",
                      "he_uniform", "zeros"]


def flax_initializer(name: str) -> Any:
    """A Keras-named initializer as a JAX initializer (Keras' default is glorot_uniform)."""
    from jax.nn import initializers as init

    return {"glorot_uniform": init.glorot_uniform(), "glorot_normal": init.glorot_normal(),
            "lecun_normal": init.lecun_normal(), "he_normal": init.he_normal(),
            "he_uniform": init.he_uniform(), "zeros": init.zeros}[name]


@register
class Dense(Layer):
    """Fully connected layer on the last axis (any rank), as Keras `Dense` / Flax `nn.Dense`."""

    type_name = "dense"
    units: int = Field(gt=0, description="output features")
    activation: str | None = Field(default=None, description="an element-wise activation "
                                   "layer type, applied after the affine map")
    use_bias: bool = True
    kernel_initializer: Initializer = "glorot_uniform"

    examples = (
        Example({"units": 7}, ((5,),)),
        Example({"units": 3, "use_bias": False}, ((4, 6),), note="rank-3 input"),
        Example({"units": 4, "activation": "relu"}, ((8,),)),
    )

    def infer(self, shape: Shape) -> Shape:
        # Dense maps the last axis, so a sequence of vectors is fine; an image is almost
        # always a forgotten flatten.
        if len(shape) > 2:
            raise ValueError(f"expects a flat input (or a sequence of vectors), got "
                             f"{describe(shape)} from {{source}}; add a flatten layer")
        if shape[-1] is None:
            raise ValueError(f"needs a known last dimension, got {describe(shape)}")
        return (*shape[:-1], self.units)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        return nn.Dense(self.units, use_bias=self.use_bias, name=name,
                        kernel_init=flax_initializer(self.kernel_initializer))(x)

    def onnx(self, g: Any, x: str) -> str:
        bias = [g.param("bias")] if self.use_bias else []
        if len(g.input_shapes[0]) == 1:  # (batch, features): one Gemm, as torch.onnx writes
            return g.op("Gemm", x, g.param("kernel"), *bias)
        y = g.op("MatMul", x, g.param("kernel"))  # Gemm is 2-D only; Dense takes any rank
        return g.op("Add", y, *bias) if bias else y
