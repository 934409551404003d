"""embedding: integer ids to learned vectors, as Keras' `Embedding` / Flax `nn.Embed`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, register


@register
class Embedding(Layer):
    """Look up row `id` of an (input_dim, output_dim) table for each integer id; the output
    gains a last axis of `output_dim`. Ids must be integers in [0, input_dim).

    Out-of-range ids are not caught inside the model, and the two sides disagree on them:
    Flax's `jnp.take` returns NaN rows for them (and wraps -input_dim..-1), onnxruntime fails
    the run ("indices element out of data bounds"). The runtime boundary must reject such ids
    before they reach either."""

    type_name = "embedding"
    integer_input = True
    input_dim: int = Field(gt=0, description="vocabulary size: ids lie in [0, input_dim)")
    output_dim: int = Field(gt=0, description="features of each embedding vector")

    examples = (
        Example({"input_dim": 10, "output_dim": 4}, ((6,),), dtype="int64",
                extra={"int_high": 10}),
        Example({"input_dim": 7, "output_dim": 3}, ((None,),), dtype="int64",
                extra={"int_high": 7}, note="free length"),
        Example({"input_dim": 16, "output_dim": 5}, ((2, 3),), dtype="int32",
                extra={"int_high": 16}, note="2-D ids, int32"),
        Example({"input_dim": 256, "output_dim": 2}, ((4,),), dtype="uint8",
                extra={"int_high": 256}, note="byte ids"),
    )

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        return 0  # a table lookup: no multiply-adds

    def infer(self, shape: Shape) -> Shape:
        return (*shape, self.output_dim)

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn

        return nn.Embed(self.input_dim, self.output_dim, name=name)(x)

    def onnx(self, g: Any, x: str) -> str:
        from onnx import TensorProto

        # Gather takes int32/int64 indices only; the cast lets byte (uint8) ids in as Flax does,
        # and is free for int64 ones.
        ids = g.op("Cast", x, to=TensorProto.INT64)
        return g.op("Gather", g.param("embedding"), ids, axis=0)
