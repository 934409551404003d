"""simple_rnn: the Elman recurrence `h_t = tanh(x_t W_i + b + h_{t-1} W_h)`."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnspec.compiler.layers._recurrent import Recurrent, biases, kernels
from nnspec.compiler.layers.base import register


@register
class SimpleRNN(Recurrent):
    """Fully connected recurrence with tanh, as Keras `SimpleRNN` / Flax `nn.SimpleCell`;
    exported as ONNX `RNN`."""

    type_name = "simple_rnn"
    onnx_op = "RNN"

    def flax_cell(self) -> Any:
        import flax.linen as nn

        return nn.SimpleCell(self.units, parent=None)

    def onnx_weights(self, cell: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Flax puts the only bias on the input Dense `i`; ONNX's recurrent bias block is zero.
        return kernels(cell, "i"), kernels(cell, "h"), biases(cell, ["i", None], self.units)
