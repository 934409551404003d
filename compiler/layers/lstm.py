"""lstm: long short-term memory."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnspec.compiler.layers._recurrent import Recurrent, biases, kernels
from nnspec.compiler.layers.base import register


@register
class LSTM(Recurrent):
    """Long short-term memory, as Keras `LSTM` / Flax `nn.OptimizedLSTMCell` (sigmoid gates,
    tanh cell; no peepholes); exported as ONNX `LSTM`."""

    type_name = "lstm"
    onnx_op = "LSTM"
    # tract 0.23 fails at run time on the sequence output of a bidirectional LSTM whose batch is
    # symbolic ("Clashing resolution for expression"); GRU and RNN are not affected.
    fused_bidirectional_sequences = False

    def flax_cell(self) -> Any:
        import flax.linen as nn

        # Same parameters and function as nn.LSTMCell, with the four gates' matmuls fused.
        return nn.OptimizedLSTMCell(self.units, parent=None)

    def flax_rnn(self) -> Any:
        # On the CPU the recurrence runs as one fused kernel call per direction and pass
        # (compiler/kernels/lstm.py); elsewhere, when the kernel cannot be built, or with
        # NNSPEC_FUSED_RNN=0, it is nn.RNN.
        from nnspec.compiler.kernels.lstm import fast_rnn

        return fast_rnn()

    @staticmethod
    def hidden(carry: Any) -> Any:
        return carry[1]

    def onnx_weights(self, cell: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # ONNX orders the gates i, o, f, c (Flax's g); Flax biases only the recurrent Denses.
        return (kernels(cell, ["ii", "io", "if", "ig"]), kernels(cell, ["hi", "ho", "hf", "hg"]),
                biases(cell, [None, None, None, None, "hi", "ho", "hf", "hg"], self.units))
