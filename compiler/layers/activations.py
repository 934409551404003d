"""Element-wise activations: each is a layer type and can also be named by the `activation:`
parameter of a layer (for example `{type: dense, units: 64, activation: relu}`).

They share one file because each is two lines of Flax and one of ONNX; adding one adds a class
here and nothing elsewhere.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, register

_EXAMPLES = (Example({}, ((9,),)), Example({}, ((2, 3, 4),), note="rank 4"))


class _Elementwise(Layer):
    elementwise = True
    examples = _EXAMPLES

    def infer(self, shape: Shape) -> Shape:
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import jax

        return self.jax(jax, x)

    def jax(self, jax: Any, x: Any) -> Any:
        raise NotImplementedError


@register
class Relu(_Elementwise):
    """max(x, 0)."""

    type_name = "relu"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.relu(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Relu", x)


@register
class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""

    type_name = "sigmoid"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.sigmoid(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Sigmoid", x)


@register
class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    type_name = "tanh"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.numpy.tanh(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Tanh", x)


@register
class LeakyRelu(_Elementwise):
    """x for x > 0, else negative_slope * x (Flax's default slope, 0.01)."""

    type_name = "leaky_relu"
    negative_slope: float = Field(default=0.01, ge=0)
    examples = (*_EXAMPLES, Example({"negative_slope": 0.2}, ((5,),)))

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.leaky_relu(x, self.negative_slope)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("LeakyRelu", x, alpha=self.negative_slope)


@register
class Elu(_Elementwise):
    """x for x > 0, else alpha * (exp(x) - 1)."""

    type_name = "elu"
    alpha: float = Field(default=1.0, gt=0)

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.elu(x, self.alpha)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Elu", x, alpha=self.alpha)


@register
class Selu(_Elementwise):
    """Scaled ELU with the self-normalising constants."""

    type_name = "selu"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.selu(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Selu", x, alpha=1.6732632423543772, gamma=1.0507009873554805)


@register
class Gelu(_Elementwise):
    """Gaussian error linear unit; `approximate: true` (Flax's default) is the tanh form."""

    type_name = "gelu"
    approximate: bool = True
    examples = (*_EXAMPLES, Example({"approximate": False}, ((7,),), note="exact (erf)"))

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.gelu(x, approximate=self.approximate)

    def onnx(self, g: Any, x: str) -> str:
        if g.opset >= 20:
            # ONNX Gelu defaults to the exact form; Flax's default is the tanh one: always say.
            return g.op("Gelu", x, approximate="tanh" if self.approximate else "none")
        half_x = g.op("Mul", x, g.const(0.5, name="half"))
        if self.approximate:
            cube = g.op("Mul", g.op("Mul", x, x), x)
            inner = g.op("Add", x, g.op("Mul", cube, g.const(0.044715, name="c")))
            t = g.op("Tanh", g.op("Mul", inner, g.const(math.sqrt(2 / math.pi), name="k")))
        else:
            t = g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2), name="k")))
        return g.op("Mul", half_x, g.op("Add", t, g.const(1.0, name="one")))


@register
class Silu(_Elementwise):
    """x * sigmoid(x), also called swish."""

    type_name = "silu"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.silu(x)

    def onnx(self, g: Any, x: str) -> str:
        # The Swish operator exists only from opset 24.
        return g.op("Mul", x, g.op("Sigmoid", x))


@register
class Swish(Silu):
    """Another name for silu."""

    type_name = "swish"


@register
class Softplus(_Elementwise):
    """log(1 + exp(x))."""

    type_name = "softplus"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.softplus(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("Softplus", x)


@register
class HardSigmoid(_Elementwise):
    """relu6(x + 3) / 6, as Keras 3 and JAX define it."""

    type_name = "hard_sigmoid"

    def jax(self, jax: Any, x: Any) -> Any:
        return jax.nn.hard_sigmoid(x)

    def onnx(self, g: Any, x: str) -> str:
        return g.op("HardSigmoid", x, alpha=1 / 6, beta=0.5)
