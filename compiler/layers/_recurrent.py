"""What simple_rnn, lstm and gru share: parameters, shape rule, Flax lowering through linen's
`nn.RNN` / `nn.Bidirectional`, and the ONNX lowering to native RNN/LSTM/GRU operators (one per
layer, except a bidirectional LSTM's sequence output: see `fused_bidirectional_sequences`).

Each recurrent layer file only names its Flax cell, its ONNX operator and how one direction's
trained cell parameters become that operator's `W`, `R` and `B` (gate order, bias layout).
The export never uses `Loop` or `Scan`: tract cannot run `Loop`, and the native operators are
what every runtime optimises.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from nnspec.compiler.layers.base import Example, Layer, Shape, describe


class Recurrent(Layer):
    """Base of the recurrent layers (not registered itself). Input `(time, features)`, time
    possibly free; initial state zero.

    Output: with `return_sequences`, every step's hidden state, `(time, units)`, or
    `(time, 2*units)` when `bidirectional` (forward then backward state of each step). Without
    it, the final state: the last step's `(units,)`; when bidirectional the concatenation of the
    forward direction's final state (after step T) and the backward direction's final state
    (after it has read back to step 1, i.e. its output at t=0), `(2*units,)`. That is what
    Keras' `Bidirectional(..., return_sequences=False)` returns and what ONNX's `Y_h` holds;
    it is not the last row of the bidirectional sequence output, whose backward half has only
    seen the last step.
    """

    # Every recurrent type is proven on the same cases (its `units` and cell differ).
    examples = (
        Example({"units": 8}, ((6, 5),), note="final state"),
        Example({"units": 4, "return_sequences": True}, ((None, 6),), note="free length"),
        Example({"units": 5, "bidirectional": True}, ((None, 3),),
                note="free length, both final states"),
        Example({"units": 3, "bidirectional": True, "return_sequences": True}, ((7, 4),),
                note="both directions' sequences"),
    )


    units: int = Field(gt=0, description="size of the hidden state")
    return_sequences: bool = Field(default=False, description="output every step's state "
                                   "(time, units) rather than the final state (units,)")
    bidirectional: bool = Field(default=False, description="also run the sequence backwards "
                                "and concatenate both directions' states (2*units features)")

    onnx_op: ClassVar[str]
    """The native ONNX operator: RNN, LSTM or GRU."""
    onnx_attrs: ClassVar[dict[str, Any]] = {}
    """Extra attributes of that operator (GRU's `linear_before_reset`)."""
    fused_bidirectional_sequences: ClassVar[bool] = True
    """Whether a bidirectional sequence output may come from one `direction="bidirectional"`
    operator; otherwise two forward operators, the second on the time-reversed sequence."""

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        """The matrix products of each step: gates x units x (features + units), per step and
        direction (the gates' element-wise products are not counted; `return_sequences` does
        not change the work)."""
        steps, features = inputs[0]
        if steps is None:
            return None
        gates = {"lstm": 4, "gru": 3}.get(self.type_name, 1)
        directions = 2 if self.bidirectional else 1
        return directions * steps * gates * self.units * (features + self.units)

    def infer(self, shape: Shape) -> Shape:
        if len(shape) != 2:
            hint = ("a vector has no time axis: reshape it to (time, features)" if len(shape) < 2
                    else "reshape each step to a vector first")
            raise ValueError(f"expects a sequence of vectors (time, features), got "
                             f"{describe(shape)} from {{source}}; {hint}")
        steps, features = shape
        if features is None:
            raise ValueError(f"needs a known feature dimension, got {describe(shape)} from "
                             f"{{source}}")
        width = self.units * (2 if self.bidirectional else 1)
        return (steps, width) if self.return_sequences else (width,)

    # -- per layer ----------------------------------------------------------------------------

    def flax_cell(self) -> Any:
        """A fresh linen cell of `units` features, built unbound (`parent=None`): created inside
        the graph module's compact method it would otherwise attach to that module, and its
        params would land beside the layer's instead of at `params[name]["cell"]`."""
        raise NotImplementedError

    @staticmethod
    def hidden(carry: Any) -> Any:
        """The hidden state `h` in a cell's carry (the LSTM's carry is `(c, h)`)."""
        return carry

    def flax_rnn(self) -> Any:
        """The linen recurrence module class: `nn.RNN`, or a subclass with the same parameters
        that runs faster where it can (the LSTM's fused CPU kernel)."""
        import flax.linen as nn

        return nn.RNN

    def onnx_weights(self, cell: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One direction's `W (G*H, F)`, `R (G*H, H)`, `B (2*G*H,)` from linen cell params."""
        raise NotImplementedError

    # -- shared lowering ------------------------------------------------------------------------

    def flax(self, x: Any, *, name: str, train: bool) -> Any:
        import flax.linen as nn
        import jax.numpy as jnp

        rnn_class = self.flax_rnn()
        if self.bidirectional:
            # Params land at params[name]["forward_rnn" | "backward_rnn"]["cell"].
            # parent=None: built unbound, so Bidirectional adopts them under its own name.
            directions = [rnn_class(self.flax_cell(), parent=None) for _ in range(2)]
            rnn = nn.Bidirectional(*directions, return_carry=True, name=name)
            (forward, backward), y = rnn(x)
            if self.return_sequences:
                return y
            return jnp.concatenate([self.hidden(forward), self.hidden(backward)], axis=-1)
        carry, y = rnn_class(self.flax_cell(), return_carry=True, name=name)(x)
        return y if self.return_sequences else self.hidden(carry)

    def onnx(self, g: Any, x: str) -> str:
        params = g.variables["params"][g.scope]
        cells = ([params["forward_rnn"]["cell"], params["backward_rnn"]["cell"]]
                 if self.bidirectional else [params["cell"]])
        weights = [self.onnx_weights(c) for c in cells]
        # onnxruntime rejects batch-major recurrences (layout=1), so run time-major.
        steps_first = g.op("Transpose", x, perm=[1, 0, 2])
        if self.bidirectional and self.return_sequences and not self.fused_bidirectional_sequences:
            y = self._two_passes(g, x, steps_first, weights)
        else:
            y, y_h = self._native(g, steps_first, weights, self._zeros(g, x, len(weights)),
                                  "bidirectional" if self.bidirectional else "forward")
        # Reshape codes 0 (copy) and -1 (infer) keep batch and time dynamic.
        if self.return_sequences:
            batch_first = g.op("Transpose", y, perm=[2, 0, 1, 3])  # (T,D,B,H) -> (B,T,D,H)
            return g.op("Reshape", batch_first, g.const([0, 0, -1], np.int64, "shape"))
        if not self.bidirectional:
            return g.op("Squeeze", y_h, g.const([0], np.int64, "axes"))
        batch_first = g.op("Transpose", y_h, perm=[1, 0, 2])  # (D,B,H) -> (B,D,H)
        return g.op("Reshape", batch_first, g.const([0, -1], np.int64, "shape"))

    def _native(self, g: Any, steps_first: str, weights: list, zeros: str, direction: str,
                suffix: str = "") -> tuple[str, str]:
        """One native operator over `steps_first` (T, B, F); returns its `Y` and `Y_h`."""
        w, r, b = (np.stack(parts) for parts in zip(*weights))
        state = [zeros, zeros] if self.onnx_op == "LSTM" else [zeros]  # h (and LSTM's c)
        from nnspec.compiler.export.builder import PACKED

        packed = [g.param(f"{k}{suffix}", v, to_flax=PACKED) for k, v in zip("WRB", (w, r, b))]
        return g.op(self.onnx_op, steps_first, *packed, "", *state, outputs=2,
                    hidden_size=self.units, direction=direction, **self.onnx_attrs)

    def _zeros(self, g: Any, x: str, directions: int) -> str:
        """The zero initial state (directions, batch, units) for a batch-major input `x`.

        It is explicit because tract, given none, sizes its own from the batch dimension and
        panics when that is symbolic (tract 0.23 onnx/src/ops/rec/common.rs)."""
        from onnx import TensorProto, helper

        batch = g.op("Slice", g.op("Shape", x), g.const([0], np.int64, "start"),
                     g.const([1], np.int64, "end"))
        shape = g.op("Concat", g.const([directions], np.int64, "directions"), batch,
                     g.const([self.units], np.int64, "units"), axis=0)
        # The value is spelt out: tract defaults it to float64 (ONNX says float32).
        return g.op("ConstantOfShape", shape,
                    value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))

    def _two_passes(self, g: Any, x: str, steps_first: str, weights: list) -> str:
        """Both directions' `Y` (T, 2, B, H) from two forward operators. Neither a `reverse`
        operator (tract runs it forwards) nor a negative-step Slice (tract mis-sizes it for a
        free length) works in tract, so time is reversed by a Gather over T-1 .. 0."""
        zeros = self._zeros(g, x, 1)
        forward, _ = self._native(g, steps_first, weights[:1], zeros, "forward")
        # Range takes scalars: the number of steps is squeezed out of the shape vector.
        steps = g.op("Squeeze", g.op("Slice", g.op("Shape", x), g.const([1], np.int64, "t0"),
                                     g.const([2], np.int64, "t1")))
        one = g.const(1, np.int64, "one")
        # Range counts up (tract sizes a descending Range wrongly); T-1 - k reverses it.
        rising = g.op("Range", g.const(0, np.int64, "zero"), steps, one)
        reverse = g.op("Sub", g.op("Sub", steps, one), rising)
        backward, _ = self._native(g, g.op("Gather", steps_first, reverse, axis=0), weights[1:],
                                   zeros, "forward", suffix="_backward")
        return g.op("Concat", forward, g.op("Gather", backward, reverse, axis=0), axis=1)


def kernels(cell: Any, names: str | list[str]) -> np.ndarray:
    """The named Dense kernels of a linen cell, transposed to ONNX's (out, in) and stacked
    along the gate axis in the given order."""
    names = [names] if isinstance(names, str) else names
    return np.concatenate([np.asarray(cell[n]["kernel"], np.float32).T for n in names], axis=0)


def biases(cell: Any, names: list[str | None], units: int) -> np.ndarray:
    """The named Dense biases of a linen cell in the given order; None is a zero block (a gate
    whose Flax Dense has no bias)."""
    return np.concatenate([np.zeros(units, np.float32) if n is None else
                           np.asarray(cell[n]["bias"], np.float32) for n in names])
