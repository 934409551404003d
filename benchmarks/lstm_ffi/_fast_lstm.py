"""The LSTM recurrence through the fused CPU kernel, with its gradient (not a layer file).

XLA:CPU runs `nn.RNN(nn.OptimizedLSTMCell)` at well under its matmul speed: each step is one
small matmul plus about ten tiny element-wise kernels forward and backward, and the backward
loop also accumulates the recurrent weight's gradient one step at a time
(shared/reference/perf-cpu.md, "The LSTM"). Here:

- forward: every step's input projection (plus the bias) as one matmul, then the whole
  recurrence as one call of `_lstm_kernel.cc` (one sgemm and one fused pass of gate math per
  step), which saves the gates' activations and the cell and hidden states;
- backward (`jax.custom_vjp`): the reverse recurrence as one kernel call giving the gates'
  pre-activation gradients of every step; the input and recurrent weights' gradients, the
  bias's and the input's are then single large matmuls / sums over all steps.

The parameters and the function are `nn.OptimizedLSTMCell`'s (gates i, f, g, o; sigmoid gates,
tanh cell); only the rounding differs (the bias is added to the input projection, not to the
recurrent one). tests/test_fast_kernels.py checks values and gradients against Flax's own.
`FastRNN` is `nn.RNN` with this path taken where it applies (CPU, float32, the kernel built);
anywhere else, and always while initialising, it is `nn.RNN` itself, so parameters, their
names and their initial values never depend on the path.
"""

from __future__ import annotations

from typing import Any

_BUILT: dict[str, Any] = {}


def _make() -> Any:
    import jax
    import jax.numpy as jnp

    from nnspec.compiler.layers import _lstm_kernel as kernel

    def recur(xt: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> Any:
        steps, batch, features = xt.shape
        hidden = u.shape[0]
        xp = (xt.reshape(steps * batch, features) @ w + b[None, :]).reshape(
            steps, batch, 4 * hidden)
        out = [jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32),
               jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32),
               jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)]
        return jax.ffi.ffi_call(kernel.FORWARD, out, vmap_method="sequential")(
            xp, u, c0, h0, threads=kernel.threads(batch))

    @jax.custom_vjp
    def lstm(xt: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> Any:
        _, cs, hs = recur(xt, w, u, b, c0, h0)
        return cs[-1], hs

    def fwd(xt: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> Any:
        gates, cs, hs = recur(xt, w, u, b, c0, h0)
        return (cs[-1], hs), (xt, w, u, gates, cs, hs, c0, h0)

    def bwd(res: Any, cot: Any) -> Any:
        xt, w, u, gates, cs, hs, c0, h0 = res
        dc_last, dhs = cot
        steps, batch, features = xt.shape
        hidden = u.shape[0]
        out = [jax.ShapeDtypeStruct(gates.shape, jnp.float32),
               jax.ShapeDtypeStruct(c0.shape, jnp.float32),
               jax.ShapeDtypeStruct(h0.shape, jnp.float32)]
        # Every step's h cotangent enters the recurrence; the final h's is dhs[-1] already.
        dz, dc0, dh0 = jax.ffi.ffi_call(kernel.BACKWARD, out, vmap_method="sequential")(
            gates, cs, c0, u, dhs, dc_last, jnp.zeros_like(h0), threads=kernel.threads(batch))
        dz2 = dz.reshape(steps * batch, 4 * hidden)
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0).reshape(steps * batch, hidden)
        du = h_prev.T @ dz2
        dw = xt.reshape(steps * batch, features).T @ dz2
        dxt = (dz2 @ w.T).reshape(steps, batch, features)
        return dxt, dw, du, jnp.sum(dz2, axis=0), dc0, dh0

    lstm.defvjp(fwd, bwd)
    return lstm


def lstm(x: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> tuple[Any, Any, Any]:
    """The LSTM over a batch-major sequence `x (B, T, F)` with input kernel `w (F, 4H)`,
    recurrent kernel `u (H, 4H)` and bias `b (4H,)`, gates i, f, g, o (Flax's order), from the
    state `(c0, h0)`; returns the final `c`, the final `h` and every step's `h (B, T, H)`.
    Needs `_lstm_kernel.available()`."""
    import jax.numpy as jnp

    if "lstm" not in _BUILT:  # built on first use: importing this module must not import JAX
        _BUILT["lstm"] = _make()
    c, hs = _BUILT["lstm"](jnp.swapaxes(x, 0, 1), w, u, b, c0, h0)
    return c, hs[-1], jnp.swapaxes(hs, 0, 1)


def applies(x: Any, cell: Any) -> bool:
    """Whether the fused path may run `cell` over `x`: an `nn.OptimizedLSTMCell` with
    float32 parameters and computation, float32 input (B, T, F), JAX on the CPU, kernel built."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from nnspec.compiler.layers import _lstm_kernel

    return (type(cell) is nn.OptimizedLSTMCell and cell.dtype in (None, jnp.float32)
            and cell.param_dtype == jnp.float32 and x.ndim == 3 and x.dtype == jnp.float32
            and cell.gate_fn is nn.sigmoid and cell.activation_fn is nn.tanh
            and jax.default_backend() == "cpu" and _lstm_kernel.available())


def fast_rnn() -> Any:
    """The `FastRNN` class (built on first use, so that importing this module needs no Flax)."""
    if "rnn" not in _BUILT:
        _BUILT["rnn"] = _make_rnn()
    return _BUILT["rnn"]


def _make_rnn() -> Any:
    import flax.linen as nn
    import jax.numpy as jnp

    class FastRNN(nn.RNN):
        """`nn.RNN` over an `nn.OptimizedLSTMCell` through the fused kernel where it applies."""

        def __call__(self, inputs: Any, *, initial_carry: Any = None, init_key: Any = None,
                     seq_lengths: Any = None, return_carry: Any = None,
                     time_major: Any = None, reverse: Any = None,
                     keep_order: Any = None) -> Any:
            flags = {k: getattr(self, k) if v is None else v for k, v in
                     (("return_carry", return_carry), ("time_major", time_major),
                      ("reverse", reverse), ("keep_order", keep_order))}
            if (self.is_initializing() or initial_carry is not None or seq_lengths is not None
                    or flags["time_major"] or not applies(inputs, self.cell)
                    or "cell" not in self.variables.get("params", {})):
                return super().__call__(inputs, initial_carry=initial_carry, init_key=init_key,
                                        seq_lengths=seq_lengths, return_carry=return_carry,
                                        time_major=time_major, reverse=reverse,
                                        keep_order=keep_order)
            p = self.variables["params"]["cell"]
            w = jnp.concatenate([p[f"i{k}"]["kernel"] for k in "ifgo"], axis=-1)
            u = jnp.concatenate([p[f"h{k}"]["kernel"] for k in "ifgo"], axis=-1)
            b = jnp.concatenate([p[f"h{k}"]["bias"] for k in "ifgo"], axis=-1)
            x = jnp.flip(inputs, 1) if flags["reverse"] else inputs
            zeros = jnp.zeros((x.shape[0], u.shape[0]), jnp.float32)
            c, h, ys = lstm(x, w, u, b, zeros, zeros)
            if flags["reverse"] and flags["keep_order"]:
                ys = jnp.flip(ys, 1)
            return ((c, h), ys) if flags["return_carry"] else ys

    return FastRNN
