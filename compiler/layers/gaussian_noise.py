"""gaussian_noise: add zero-mean Gaussian noise while training; absent from the export."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class GaussianNoise(Layer):
    """Adds N(0, stddev²) noise to every value in training (a regulariser, as Keras
    `GaussianNoise`); identity at inference, so the exported graph has no trace of it. The
    noise is drawn from the 'dropout' RNG stream, which training seeds per step."""

    type_name = "gaussian_noise"
    train_only = True
    stddev: float = Field(ge=0, description="standard deviation of the noise")

    examples = (
        Example({"stddev": 0.1}, ((6,),)),
        Example({"stddev": 1.0}, ((None, 3),), note="free-length sequence"),
        Example({"stddev": 0.5}, ((2, 3, 4),), note="image"),
    )

    def infer(self, shape: Shape) -> Shape:
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return _noise_module()(self.stddev, deterministic=not train, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        return x  # never reached: the exporter skips train-only layers


@functools.cache
def _noise_module() -> type:
    # Defined on first use: importing this file must not import JAX (`nnspec validate`).
    import flax.linen as nn
    import jax

    class Noise(nn.Module):
        """x + stddev * N(0, 1), drawn from the 'dropout' stream unless deterministic."""

        stddev: float
        deterministic: bool

        @nn.compact
        def __call__(self, x: Any) -> Any:
            if self.deterministic or self.stddev == 0:
                return x
            noise = jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
            return x + self.stddev * noise

    return Noise
