"""normalize: `(x - mean) / std` per feature of the last axis, the statistics either given or
adapted from the training data, so the preprocessing ships inside the exported model."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from nnspec.compiler.layers.base import (
    Example,
    Layer,
    Shape,
    describe,
    per_value_macs,
    register,
)

ADAPT_ROWS = 65_536
"""Samples a block of the statistics' sums."""
_module_cls = None


def _module() -> Any:
    """The Flax module, defined on first use so that importing this file needs no JAX."""
    global _module_cls
    if _module_cls is None:
        import flax.linen as nn
        import jax.numpy as jnp

        class NormalizeModule(nn.Module):
            mean: tuple[float, ...] | None
            std: tuple[float, ...] | None

            @nn.compact
            def __call__(self, x: Any) -> Any:
                c = x.shape[-1]
                mean = self.variable("stats", "mean", lambda: jnp.broadcast_to(
                    jnp.asarray(self.mean or 0.0, jnp.float32), (c,)))
                std = self.variable("stats", "std", lambda: jnp.broadcast_to(
                    jnp.asarray(self.std or 1.0, jnp.float32), (c,)))
                # Explicit broadcast: the tests forbid silent rank promotion.
                shape = (1,) * (x.ndim - 1) + (c,)
                return (x.astype(jnp.float32) - mean.value.reshape(shape)) / std.value.reshape(
                    shape)

        _module_cls = NormalizeModule
    return _module_cls


@register
class Normalize(Layer):
    """Standardise each feature of the last axis. Give `mean` and `std` (one value, or one per
    feature), or leave them out to have them computed from the training data before training
    starts (Keras' `Normalization.adapt`); the layer must then read a model input. The
    statistics are not trained."""

    type_name = "normalize"
    mean: float | list[float] | None = None
    std: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] | None = None
    epsilon: float = Field(default=1e-7, gt=0, description="added to adapted standard "
                           "deviations, so a constant feature does not divide by zero")

    examples = (
        Example({"mean": 2.0, "std": 4.0}, ((5,),)),
        Example({"mean": [0.0, 1.0, -1.0], "std": [1.0, 2.0, 0.5]}, ((4, 3),)),
        Example({}, ((6,),), note="adapted statistics (initial 0/1)"),
        Example({"mean": 8.0, "std": 4.0}, ((2, 2),), dtype="uint8", note="raw pixels"),
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> Normalize:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both `mean` and `std`, or neither (to adapt them from the "
                             "training data)")
        return self

    @property
    def adapt(self) -> bool:
        return self.mean is None

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        return per_value_macs(output)  # with or without a learnt scale and shift

    def infer(self, shape: Shape) -> Shape:
        if shape[-1] is None:
            # The statistics are one per feature of the last axis: a free last axis would size
            # them by whatever length the model was first initialised with.
            raise ValueError(f"standardises each feature of the last axis, which is a free "
                             f"length in {describe(shape)} from {{source}}; put the features "
                             f"last (permute) or give that axis a fixed length")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != shape[-1]:
                raise ValueError(f"`{key}` must have one value per feature of the last axis "
                                 f"({shape[-1]}), got {describe(shape)} from {{source}}. "
                                 f"Received: {key} with {len(value)} values")
        return shape

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        as_tuple = lambda v: None if v is None else tuple(np.atleast_1d(v).tolist())  # noqa: E731
        return _module()(as_tuple(self.mean), as_tuple(self.std), name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        from onnx import TensorProto

        x = g.op("Cast", x, to=TensorProto.FLOAT)
        centred = g.op("Sub", x, g.param("mean", collection="stats"))
        return g.op("Div", centred, g.param("std", collection="stats"))

    def statistics(self, x: Any) -> dict[str, np.ndarray]:
        """Per-feature mean and standard deviation of training samples `x` (adapt), in two
        passes over blocks of `ADAPT_ROWS` samples: a set larger than memory (memory-mapped,
        or read from disk when indexed) is never held whole, and the sums are cut into the
        same blocks wherever the samples live, so the statistics are the same bits."""
        n, features = len(x), x.shape[-1]

        def blocks() -> Any:
            for lo in range(0, n, ADAPT_ROWS):
                yield np.asarray(x[lo:lo + ADAPT_ROWS], np.float64).reshape(-1, features)

        count = n * int(np.prod(x.shape[1:-1], dtype=np.int64))
        total = np.zeros(features)
        for block in blocks():
            total = total + block.sum(0)
        mean = total / max(count, 1)
        squares = np.zeros(features)
        for block in blocks():
            centred = block - mean
            squares = squares + (centred * centred).sum(0)
        std = np.sqrt(squares / max(count, 1))
        return {"mean": mean.astype(np.float32), "std": (std + self.epsilon).astype(np.float32)}
