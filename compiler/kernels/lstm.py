"""The LSTM recurrence through the fused CPU kernel (`lstm.cc`), with its gradient.

XLA:CPU runs `nn.RNN(nn.OptimizedLSTMCell)` at well under its matmul speed: each step is one
small matmul plus about ten tiny element-wise kernels forward and backward, and the backward
loop also accumulates the recurrent weight's gradient one step at a time
(shared/reference/perf-cpu.md, "The LSTM"). Here:

- forward: every step's input projection as one matmul, then the whole
  recurrence as one kernel call (per step one sgemm and one fused pass of gate math, the batch
  split in row blocks over XLA's own intra-op threads), which saves the gates' activations and
  the cell and hidden states;
- backward (`jax.custom_vjp`): the reverse recurrence as one kernel call giving every step's
  gate pre-activation gradients; the input and recurrent weights' gradients, the bias's and the
  input's are then single large matmuls / sums over all steps, run by XLA on both cores.

The parameters and the function are `nn.OptimizedLSTMCell`'s (gates i, f, g, o; sigmoid gates,
tanh cell); only the rounding differs (the bias is added to the input projection, not to the
recurrent one). tests/test_fused_lstm.py checks values and gradients against Flax's own.

`FastRNN` is `nn.RNN` with this path taken where it applies: CPU, float32, one device, an
`OptimizedLSTMCell` with its default activations, no initial carry, no sequence lengths, the
kernel built (`build.py`), and `NNSPEC_FUSED_RNN` not `0`. Anywhere else, and always while
initialising, it is `nn.RNN` itself, so parameters, their names and their initial values never
depend on the path. `status()` says which path ran and, if it was XLA's, why.
"""

from __future__ import annotations

import os
from typing import Any

FORWARD, BACKWARD = "nnspec_lstm_forward", "nnspec_lstm_backward"
OPT_OUT = "NNSPEC_FUSED_RNN"
_STATE: dict[str, Any] = {}


def available() -> bool:
    """Whether the kernel is built, bound to a BLAS and registered with XLA (tried once per
    process; `reason()` says why not)."""
    if "ok" not in _STATE:
        from nnspec.compiler.kernels import build

        try:
            import jax

            lib = build.load("lstm")
            for target, symbol in ((FORWARD, lib.NnspecLstmForward),
                                   (BACKWARD, lib.NnspecLstmBackward)):
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
            _STATE["ok"] = True
        except Exception as e:  # noqa: BLE001 - any failure means: use the XLA formulation
            _STATE["ok"], _STATE["reason"] = False, str(e).splitlines()[0]
            _STATE["error"] = str(e)
    return _STATE["ok"]


def reason() -> str | None:
    """Why the kernel is not available (None when it is, or before `available()`)."""
    return _STATE.get("reason")


def status() -> str | None:
    """The path the last traced LSTM took: "fused CPU kernel" or "XLA (<why>)"; None when no
    LSTM has been traced in this process. nnspec records it in metrics.json."""
    return _STATE.get("status")


def _why_not(x: Any, cell: Any) -> str | None:
    """None when the fused path may run `cell` over `x`, else the reason it may not."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    if os.environ.get(OPT_OUT, "1") == "0":
        return f"{OPT_OUT}=0"
    if jax.default_backend() != "cpu":
        return f"backend {jax.default_backend()}"
    if jax.device_count() > 1:
        return f"{jax.device_count()} devices (the kernel is not partitioned)"
    if not (type(cell) is nn.OptimizedLSTMCell and cell.gate_fn is nn.sigmoid
            and cell.activation_fn is nn.tanh):
        return f"cell {type(cell).__name__} with other activations"
    if (cell.dtype not in (None, jnp.float32) or cell.param_dtype != jnp.float32
            or x.dtype != jnp.float32 or x.ndim != 3 or 0 in x.shape):
        return (f"input {x.dtype}{tuple(x.shape)}, cell dtype {cell.dtype}: needs float32 "
                "(batch, time, features), none empty")
    if not available():
        return f"kernel unavailable: {reason()}"
    return None


def _make() -> Any:
    import jax
    import jax.numpy as jnp

    from nnspec.compiler.kernels.build import threads

    def recur(xt: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> Any:
        steps, batch, features = xt.shape
        hidden = u.shape[0]
        # The kernel adds the bias as it reads xp (one pass fewer over it).
        xp = (xt.reshape(steps * batch, features) @ w).reshape(steps, batch, 4 * hidden)
        out = [jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32),
               jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32),
               jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)]
        return jax.ffi.ffi_call(FORWARD, out, vmap_method="sequential")(
            xp, u, b, c0, h0, threads=threads(batch))

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
        dz, dc0, dh0 = jax.ffi.ffi_call(BACKWARD, out, vmap_method="sequential")(
            gates, cs, c0, u, dhs, dc_last, jnp.zeros_like(h0), threads=threads(batch))
        dz2 = dz.reshape(steps * batch, 4 * hidden)
        # The weight and bias gradients as one matmul over all steps: [x_t, h_(t-1), 1]^T dz
        # (the ones column gives the bias's; XLA:CPU's column sum of dz is 20x slower).
        ones = jnp.ones((steps, batch, 1), jnp.float32)
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        operands = jnp.concatenate([xt, h_prev, ones], axis=-1).reshape(steps * batch, -1)
        grads = operands.T @ dz2
        dw, du, db = grads[:features], grads[features:features + hidden], grads[-1]
        dxt = (dz2 @ w.T).reshape(steps, batch, features)  # dropped by XLA when unused
        return dxt, dw, du, db, dc0, dh0

    lstm.defvjp(fwd, bwd)
    return lstm


def lstm(x: Any, w: Any, u: Any, b: Any, c0: Any, h0: Any) -> tuple[Any, Any, Any]:
    """The LSTM over a batch-major sequence `x (B, T, F)` with input kernel `w (F, 4H)`,
    recurrent kernel `u (H, 4H)` and bias `b (4H,)`, gates i, f, g, o (Flax's order), from the
    state `(c0, h0)`; returns the final `c`, the final `h` and every step's `h (B, T, H)`.
    Needs `available()`."""
    import jax.numpy as jnp

    if "lstm" not in _STATE:  # built on first use: importing this module must not import JAX
        _STATE["lstm"] = _make()
    c, hs = _STATE["lstm"](jnp.swapaxes(x, 0, 1), w, u, b, c0, h0)
    return c, hs[-1], jnp.swapaxes(hs, 0, 1)


def fast_rnn() -> Any:
    """The `FastRNN` class (built on first use, so that importing this module needs no Flax)."""
    if "rnn" not in _STATE:
        _STATE["rnn"] = _make_rnn()
    return _STATE["rnn"]


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
            why = ("initial carry given" if initial_carry is not None else
                   "sequence lengths given" if seq_lengths is not None else
                   "time-major input" if flags["time_major"] else _why_not(inputs, self.cell))
            if self.is_initializing() or why or "cell" not in self.variables.get("params", {}):
                if not self.is_initializing():
                    _STATE["status"] = f"XLA ({why or 'no cell parameters'})"
                return super().__call__(inputs, initial_carry=initial_carry, init_key=init_key,
                                        seq_lengths=seq_lengths, return_carry=return_carry,
                                        time_major=time_major, reverse=reverse,
                                        keep_order=keep_order)
            _STATE["status"] = "fused CPU kernel"
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
