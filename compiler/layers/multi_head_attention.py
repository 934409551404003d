"""multi_head_attention: scaled dot-product attention over sequences, self or cross.

Flax: the projections and attention function of `flax.linen.MultiHeadDotProductAttention`,
with its parameter tree (`query`, `key`, `value`, `out` DenseGeneral kernels and biases), so
that Keras' separate `value_dim` is possible (Flax's module ties it to the key size).

ONNX: decomposed into standard operators (MatMul, Reshape, Transpose, Div, Softmax; for
`causal`, a mask built from the run-time lengths with Shape, ConstantOfShape, Trilu and Where),
so that onnxruntime, tract and the reference evaluator all run it, at any sequence length.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, describe, register


@functools.cache
def _flax_module() -> type:
    """The Flax module class, built on first use so that importing this file needs no JAX."""
    import flax.linen as nn
    import jax.numpy as jnp

    class MultiHeadAttention(nn.Module):
        """`nn.MultiHeadDotProductAttention` with separate key and value head sizes."""

        num_heads: int
        key_dim: int
        value_dim: int
        causal: bool
        use_bias: bool
        dropout: float

        @nn.compact
        def __call__(self, q: Any, kv: Any, train: bool) -> Any:
            def project(x: Any, size: int, name: str) -> Any:
                return nn.DenseGeneral((self.num_heads, size), axis=-1, use_bias=self.use_bias,
                                       name=name)(x)

            query = project(q, self.key_dim, "query")
            key = project(kv, self.key_dim, "key")
            value = project(kv, self.value_dim, "value")
            mask = None
            if self.causal:
                # Query step i sees key steps j <= i (Keras' use_causal_mask, Flax's
                # make_causal_mask); full rank because rank promotion is an error here.
                rows = jnp.arange(q.shape[-2])[:, None]
                cols = jnp.arange(kv.shape[-2])[None, :]
                mask = (cols <= rows)[None, None]
            deterministic = not train or self.dropout == 0.0
            x = nn.dot_product_attention(
                query, key, value, mask=mask, dropout_rate=self.dropout,
                deterministic=deterministic,
                dropout_rng=None if deterministic else self.make_rng("dropout"))
            return nn.DenseGeneral(q.shape[-1], axis=(-2, -1), use_bias=self.use_bias,
                                   name="out")(x)

    return MultiHeadAttention


@register
class MultiHeadAttention(Layer):
    """Multi-head attention, as Keras' `MultiHeadAttention`: one input (T, E) attends to
    itself; two inputs, query (Tq, E) and key/value (Tk, E'), are cross-attention. The output
    has the query's shape. `key_dim` and `value_dim` are per head; queries are scaled by
    1/sqrt(key_dim). `causal` lets query step i see only key steps 0..i. `dropout` drops
    attention weights in training only."""

    type_name = "multi_head_attention"
    arity = None
    min_opset = 14  # Trilu
    num_heads: int = Field(gt=0, description="attention heads")
    key_dim: int = Field(gt=0, description="size of each head's queries and keys")
    value_dim: int | None = Field(default=None, gt=0,
                                  description="size of each head's values (default key_dim)")
    causal: bool = Field(default=False, description="mask out later key steps")
    use_bias: bool = True
    dropout: float = Field(default=0.0, ge=0, lt=1,
                           description="dropout rate on the attention weights, training only")

    examples = (
        Example({"num_heads": 2, "key_dim": 3}, ((4, 6),), note="self-attention"),
        Example({"num_heads": 2, "key_dim": 4, "value_dim": 3, "use_bias": False},
                ((None, 5), (None, 7)), note="cross-attention: other widths, free lengths"),
        Example({"num_heads": 3, "key_dim": 2, "causal": True}, ((6, 4),), note="causal"),
        Example({"num_heads": 2, "key_dim": 4, "causal": True, "dropout": 0.1},
                ((None, 8),), note="causal, free length"),
    )

    @property
    def head_value_dim(self) -> int:
        return self.value_dim or self.key_dim

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        """The four projections, the scores (q . k) and the weighted sum of the values."""
        (tq, dq), (tk, dkv) = inputs[0], inputs[-1]
        if tq is None or tk is None:
            return None
        h, dk, dv = self.num_heads, self.key_dim, self.head_value_dim
        projections = tq * dq * h * dk + tk * dkv * h * (dk + dv) + tq * h * dv * dq
        return projections + h * tq * tk * (dk + dv)

    def infer(self, *shapes: Shape) -> Shape:
        if len(shapes) not in (1, 2):
            raise ValueError(f"takes 1 input (self-attention) or 2 (query, then key/value). "
                             f"Received: {len(shapes)} inputs")
        for role, shape in zip(("query", "key/value"), shapes):
            if len(shape) != 2:
                raise ValueError(f"needs sequences (time, features) as {role}, got "
                                 f"{describe(shape)} from {{source}}")
            if shape[-1] is None:
                raise ValueError(f"needs a known feature size for the {role}, got "
                                 f"{describe(shape)} from {{source}}")
        return shapes[0]

    def flax(self, *xs: Any, name: str, train: bool) -> Any:
        q, kv = xs[0], xs[-1]
        return _flax_module()(self.num_heads, self.key_dim, self.head_value_dim, self.causal,
                              self.use_bias, self.dropout, name=name)(q, kv, train)

    def onnx(self, g: Any, *xs: str) -> str:
        import numpy as np

        q_in, kv_in = xs[0], xs[-1]
        params = g.variables["params"][g.scope]
        heads, dk, dv = self.num_heads, self.key_dim, self.head_value_dim

        def project(x: str, name: str, size: int, perm: list[int]) -> str:
            # DenseGeneral's (E, heads, size) kernel is one (E, heads*size) MatMul; the
            # split into heads is a Reshape with 0 copying batch and the dynamic length.
            p = params[name]
            kernel = np.asarray(p["kernel"])
            y = g.op("MatMul", x, g.param(f"{name}/kernel",
                                          kernel.reshape(kernel.shape[0], heads * size),
                                          to_flax=_reshape(kernel)))
            if self.use_bias:
                bias = np.asarray(p["bias"])
                y = g.op("Add", y, g.param(f"{name}/bias", bias.reshape(-1),
                                           to_flax=_reshape(bias)))
            y = g.op("Reshape", y, g.const([0, 0, heads, size], np.int64, f"{name}/heads"))
            return g.op("Transpose", y, perm=perm)

        query = project(q_in, "query", dk, [0, 2, 1, 3])  # (B, heads, Tq, dk)
        key = project(kv_in, "key", dk, [0, 2, 3, 1])  # (B, heads, dk, Tk)
        value = project(kv_in, "value", dv, [0, 2, 1, 3])  # (B, heads, Tk, dv)
        # Flax divides the query by sqrt(depth) in float32; Div by the same constant is exact.
        query = g.op("Div", query, g.const(np.sqrt(np.float32(dk)), np.float32, "sqrt_depth"))
        logits = g.op("MatMul", query, key)  # (B, heads, Tq, Tk)
        if self.causal:
            logits = self._causal(g, q_in, kv_in, logits)
        weights = g.op("Softmax", logits, axis=-1)
        x = g.op("MatMul", weights, value)  # (B, heads, Tq, dv)
        x = g.op("Transpose", x, perm=[0, 2, 1, 3])
        x = g.op("Reshape", x, g.const([0, 0, heads * dv], np.int64, "merge_heads"))
        out = params["out"]
        kernel = np.asarray(out["kernel"])
        y = g.op("MatMul", x, g.param("out/kernel", kernel.reshape(heads * dv, -1),
                                      to_flax=_reshape(kernel)))
        return g.op("Add", y, g.param("out/bias", out["bias"])) if self.use_bias else y

    def _causal(self, g: Any, q_in: str, kv_in: str, logits: str) -> str:
        import numpy as np
        from onnx import TensorProto, numpy_helper

        # A (Tq, Tk) lower triangle of ones from the inputs' run-time lengths, so a free length
        # works; Trilu keeps j <= i, Flax's causal mask. Later key steps get float32's most
        # negative value, as Flax's mask does (Where, not an added -inf, so a masked logit is
        # that value exactly and never NaN).
        def length(x: str, name: str) -> str:
            return g.op("Gather", g.op("Shape", x), g.const([1], np.int64, name), axis=0)

        lengths = g.op("Concat", length(q_in, "query_time"), length(kv_in, "key_time"), axis=0)
        ones = g.op("ConstantOfShape", lengths,
                    value=numpy_helper.from_array(np.ones(1, np.int64)))
        visible = g.op("Cast", g.op("Trilu", ones, upper=0), to=TensorProto.BOOL)
        big_neg = g.const(np.finfo(np.float32).min, np.float32, "big_neg")
        return g.op("Where", visible, logits, big_neg)


def _reshape(array: Any) -> str:
    """The layout step back from a flattened initializer to the trained array's shape."""
    return "reshape=" + ",".join(map(str, array.shape))
