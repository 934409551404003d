"""gru: gated recurrent unit."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from nnspec.compiler.layers._recurrent import Recurrent, biases, kernels
from nnspec.compiler.layers.base import register


@register
class GRU(Recurrent):
    """Gated recurrent unit as Flax `nn.GRUCell`: the reset gate scales the recurrent
    projection after its bias, `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))` (Keras'
    `reset_after=True`, PyTorch's GRU); exported as ONNX `GRU` with `linear_before_reset=1`."""

    type_name = "gru"
    onnx_op = "GRU"
    onnx_attrs: ClassVar[dict[str, Any]] = {"linear_before_reset": 1}

    def flax_cell(self) -> Any:
        import flax.linen as nn

        return nn.GRUCell(self.units, parent=None)

    def onnx_weights(self, cell: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # ONNX orders the gates z, r, h (Flax's n); Flax's hr and hz Denses have no bias.
        return (kernels(cell, ["iz", "ir", "in"]), kernels(cell, ["hz", "hr", "hn"]),
                biases(cell, ["iz", "ir", "in", None, None, "hn"], self.units))
