"""reshape: give each sample a new shape with the same elements, in row-major (channels-last)
order, as Keras' `Reshape`."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field, field_validator

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register

Dim = Annotated[int, Field(ge=-1)]


@register
class Reshape(Layer):
    """Reshape each sample to `target_shape` (batch excluded); one entry may be -1, inferred
    from the others. A free length (`None`) in the input must be absorbed by that -1."""

    type_name = "reshape"
    target_shape: list[Dim] = Field(min_length=1, max_length=8,
                                    description="per-sample shape; one -1 is inferred")

    examples = (
        Example({"target_shape": [3, 4]}, ((12,),)),
        Example({"target_shape": [-1, 2]}, ((4, 3),), note="inferred length"),
        Example({"target_shape": [6, 2, 1]}, ((2, 3, 2),), note="rank 4 output"),
        Example({"target_shape": [-1, 2, 3]}, ((None, 6),), note="free length kept free"),
    )

    @field_validator("target_shape")
    @classmethod
    def _one_unknown(cls, value: list[int]) -> list[int]:
        if 0 in value:
            raise ValueError("`target_shape` entries must be positive or -1 (0 would copy "
                             f"nothing here). Received: target_shape={value}")
        if value.count(-1) > 1:
            raise ValueError("`target_shape` may contain at most one -1. "
                             f"Received: target_shape={value}")
        return value

    def infer(self, shape: Shape) -> Shape:
        target = self.target_shape
        known = math.prod(d for d in target if d != -1)
        if None in shape:
            # A free length can only land in the -1; and every length must divide evenly, so
            # the fixed part of the input must already be a multiple of the fixed target.
            fixed = math.prod(d for d in shape if d is not None)
            if -1 not in target:
                raise ValueError(f"cannot reshape an input with a free length {describe(shape)} "
                                 f"to a fixed shape; put a -1 where the free length goes. "
                                 f"Received: target_shape={target}")
            if fixed % known:
                raise ValueError(f"`target_shape` must divide the input's fixed elements for "
                                 f"every free length: {fixed} is not a multiple of {known}. "
                                 f"Received: target_shape={target}")
            return tuple(None if d == -1 else d for d in target)
        total = math.prod(shape)
        if -1 in target:
            if total % known:
                raise ValueError(f"`target_shape` must divide the number of elements of the "
                                 f"input: {total} is not a multiple of {known}. "
                                 f"Received: target_shape={target}")
            return tuple(total // known if d == -1 else d for d in target)
        if known != total:
            raise ValueError(f"`target_shape` must have the same number of elements as the "
                             f"input: {total} vs {known}. Received: target_shape={target}")
        return tuple(target)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        return x.reshape((x.shape[0], *self.target_shape))

    def onnx(self, g: Any, x: str) -> str:
        import numpy as np

        # Batch entry 0 copies the input's batch (allowzero unset), leaving the one -1 to the
        # per-sample axes, where it absorbs a free length; ONNX shape inference resolves it
        # when every length is known.
        return g.op("Reshape", x, g.const([0, *self.target_shape], np.int64, "shape"))
