"""The fast formulations compute the same function as the plain ones, gradients included.

compiler/layers/_fast_conv.py replaces JAX's convolution gradient by canonical convolutions
(so that XLA:CPU runs them fast inside fused training loops); here its value and both
gradients are compared with `lax.conv_general_dilated`'s own, eagerly, jitted and inside a
`lax.scan` (the fused loop's situation), and a conv2d layer's training gradient through
nnspec's Flax lowering is compared with the plain `nn.Conv`'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nnspec.compiler.layers._fast_conv import conv_general_dilated as fast_conv

SPECS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
CASES = [  # input shape, kernel shape, padding, dilation
    ((2, 9, 8, 3), (3, 3, 3, 4), "SAME", (1, 1)),
    ((2, 9, 8, 3), (3, 2, 3, 4), "VALID", (2, 1)),
    ((3, 6, 6, 1), (3, 3, 1, 2), ((1, 0), (2, 1)), (1, 1)),
    ((2, 10, 4), (4, 4, 2), ((3, 0),), (1,)),  # causal
    ((2, 7, 3), (3, 3, 5), "SAME", (2,)),
]


def losses(x_shape, w_shape, padding, dilation):
    nd = len(x_shape) - 2
    dn = lax.conv_dimension_numbers(x_shape, w_shape, SPECS[nd])

    def make(conv):
        def loss(x, w):
            y = conv(x, w, (1,) * nd, padding, rhs_dilation=dilation, dimension_numbers=dn)
            return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)
        return loss

    return make(lax.conv_general_dilated), make(fast_conv)


def data(x_shape, w_shape):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=x_shape), jnp.float32),
            jnp.asarray(rng.normal(size=w_shape), jnp.float32))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_fast_conv_value_and_gradients_equal_lax(case):
    plain, fast = losses(*case)
    x, w = data(*case[:2])
    assert "custom_vjp" in str(jax.make_jaxpr(fast)(x, w))  # the fast path was taken
    np.testing.assert_allclose(fast(x, w), plain(x, w), rtol=1e-6)
    want = jax.grad(plain, (0, 1))(x, w)
    for got in (jax.grad(fast, (0, 1))(x, w), jax.jit(jax.grad(fast, (0, 1)))(x, w)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fast_conv_gradients_inside_a_scan_equal_lax():
    case = CASES[0]
    plain, fast = losses(*case)
    x, w = data(*case[:2])

    def run(loss):
        def body(w, _):
            g = jax.grad(loss, 1)(x, w)
            return w - 0.1 * g, jnp.sum(g)
        return jax.jit(lambda w: lax.scan(body, w, None, length=3))(w)

    (wa, sa), (wb, sb) = run(fast), run(plain)
    np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)


def test_ineligible_convolutions_fall_back_to_lax():
    x, w = data((2, 9, 8, 4), (3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, SPECS[2])
    for kwargs in ({"window_strides": (2, 2)}, {"feature_group_count": 2}):
        args = {"window_strides": (1, 1), "feature_group_count": 1, **kwargs}
        xs = x if args["feature_group_count"] == 2 else x[..., :2]

        def f(x, w, args=args):
            return fast_conv(x, w, args["window_strides"], "SAME", dimension_numbers=dn,
                             feature_group_count=args["feature_group_count"])

        assert "custom_vjp" not in str(jax.make_jaxpr(f)(xs, w))
        want = lax.conv_general_dilated(xs, w, args["window_strides"], "SAME",
                                        dimension_numbers=dn,
                                        feature_group_count=args["feature_group_count"])
        np.testing.assert_array_equal(f(xs, w), want)


def test_conv2d_layer_training_gradient_equals_plain_flax():
    import flax.linen as nn

    from nnspec.compiler.layers.conv2d import Conv2D

    layer = Conv2D(filters=6, kernel_size=3, padding="same", activation="relu")
    assert not layer.slow_in_cpu_loops  # so `train.loop: auto` fuses it on the CPU
    assert Conv2D(filters=6, kernel_size=3, strides=2).slow_in_cpu_loops

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layer.flax(x, name="conv", train=True)

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(6, (3, 3), padding="SAME", name="conv")(x)

    x, _ = data((4, 7, 7, 2), (1,))
    params = Plain().init(jax.random.key(0), x)

    def loss(module):
        return lambda p: jnp.sum(jnp.tanh(module.apply(p, x)) ** 2)

    ours, plain = jax.grad(loss(Ours()))(params), jax.grad(loss(Plain()))(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


PATCH_CASES = [  # input shape, Conv2D/Conv1D parameters: few input taps take the patches path
    ((3, 9, 8, 1), {"filters": 5, "kernel_size": 3}),
    ((2, 7, 6, 1), {"filters": 4, "kernel_size": [3, 2], "padding": "same", "dilation": [2, 1]}),
    ((2, 6, 6, 2), {"filters": 3, "kernel_size": 2, "padding": [[1, 0], [0, 1]],
                    "use_bias": False}),
    ((2, 10, 3), {"filters": 4, "kernel_size": 5, "padding": "same"}),
]


@pytest.mark.parametrize(("shape", "params"), PATCH_CASES, ids=lambda c: str(c)[:40])
def test_few_tap_convolutions_as_patches_equal_plain_flax(shape, params):
    """Patches times kernel (bias folded in as a column of ones): the same output, kernel,
    bias and input gradients as nn.Conv, and no convolution left in the forward pass."""
    import flax.linen as nn

    from nnspec.compiler.layers.conv1d import Conv1D
    from nnspec.compiler.layers.conv2d import Conv2D

    layer = (Conv2D if len(shape) == 4 else Conv1D).model_validate(params)
    args = layer.flax_args()
    pads = layer.pads_for(shape[1:])

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layer.flax(x, name="conv", train=True)

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(padding=pads, name="conv", **args)(x)

    x, _ = data(shape, (1,))
    params_ = Plain().init(jax.random.key(0), x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params_,
                                     Ours().init(jax.random.key(0), x)))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(Ours().apply)(params_, x))
    np.testing.assert_allclose(Ours().apply(params_, x), Plain().apply(params_, x),
                               rtol=1e-5, atol=1e-6)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * jnp.arange(7.0).sum())

    want = jax.grad(loss(Plain()), (0, 1))(params_, x)
    for got in (jax.grad(loss(Ours()), (0, 1))(params_, x),
                jax.jit(jax.grad(loss(Ours()), (0, 1)))(params_, x)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_max_pool_gradient_equals_reshape_max_with_ties():
    """_fast_pool.py: the same values and the same gradient, bit for bit, as JAX's own rule
    for the reshape-and-max pool, ties (shared equally) included; 2-D and 1-D windows."""
    from nnspec.compiler.layers._fast_pool import max_pool_exact

    rng = np.random.default_rng(0)
    for shape, size in (((2, 6, 8, 3), (2, 2)), ((2, 9, 4, 2), (3, 2)), ((3, 8, 2), (4,))):
        # Rounded values tie often: 2, 3 and 4 equal maxima per window all occur.
        x = jnp.asarray(np.round(rng.normal(size=shape)), jnp.float32)
        split = [d for n, k in zip(shape[1:-1], size) for d in (n // k, k)]

        def plain(v, size=size, split=split):
            axes = tuple(range(2, 2 * len(size) + 1, 2))
            return v.reshape(v.shape[0], *split, v.shape[-1]).max(axis=axes)

        g = jnp.asarray(rng.normal(size=plain(x).shape), jnp.float32)
        np.testing.assert_array_equal(max_pool_exact(x, size), plain(x))
        want = jax.vjp(plain, x)[1](g)[0]
        assert len(np.unique(np.asarray(want))) > 3  # shares of tied windows are present
        def grad(v, g, size=size):
            return jax.vjp(lambda u: max_pool_exact(u, size), v)[1](g)[0]

        for f in (grad, jax.jit(grad)):
            np.testing.assert_array_equal(f(x, g), want)
