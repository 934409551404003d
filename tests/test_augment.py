"""On-device data augmentation (`compiler/train/augment.py`): real transforms, pixel by pixel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnspec.compiler.train.augment import augment, flip, image_like, shift
from nnspec.compiler.train.augment import rotate as _rotate
from nnspec.spec.schema import AugmentSpec

B, H, W, C = 16, 7, 9, 3
rotate = jax.jit(_rotate, static_argnums=2)


def _images(dtype=np.uint8, seed=0, n=B, h=H, w=W, c=C):
    # Values 1..255, never 0, so zero fill is told apart from image content.
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=(n, h, w, c)).astype(dtype)


def _run(specs, x, y=None, key=0, image_inputs=("img",), num_classes=None, jit=True):
    """`augment` on one batch; for a tuple of keys, a list of results of one compilation."""
    y = {} if y is None else y

    def f(k, x, y):
        return augment(specs, k, x, y, image_inputs, num_classes or {})

    if jit:  # one compilation per call: far faster than op-by-op dispatch
        f = jax.jit(f)
    if isinstance(key, tuple):
        return [jax.device_get(f(jax.random.key(k), x, y)) for k in key]
    return jax.device_get(f(jax.random.key(key), x, y))


def _find_shift(out, img, limit):
    """The offsets (dy, dx) within `limit` with out[i, j] = img[i - dy, j - dx], zero-filled."""
    h, w = img.shape[:2]
    found = []
    for dy in range(-limit[0], limit[0] + 1):
        for dx in range(-limit[1], limit[1] + 1):
            expect = np.zeros_like(img)
            expect[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
            if np.array_equal(out, expect):
                found.append((dy, dx))
    return found


ALL = [AugmentSpec(type="random_flip", mode="both"),
       AugmentSpec(type="random_translate", factor=0.2),
       AugmentSpec(type="random_crop", padding=2),
       AugmentSpec(type="random_rotation", factor=0.05),
       AugmentSpec(type="random_brightness", factor=0.2),
       AugmentSpec(type="random_contrast", factor=0.3),
       AugmentSpec(type="gaussian_noise", stddev=0.05)]


def test_image_like():
    assert image_like((32, 32, 3)) and image_like((8, 8, 1))
    assert not image_like((8, 8)) and not image_like((10,)) and not image_like((2, 3, 4, 5))
    assert not image_like((None, None, None))


def test_deterministic_for_a_key_and_different_for_another():
    x = {"img": _images()}
    a, b, c = _run(ALL, x, key=(1, 1, 2))  # mixup: see the mixup test
    np.testing.assert_array_equal(a[0]["img"], b[0]["img"])
    assert not np.array_equal(a[0]["img"], c[0]["img"])
    assert a[0]["img"].dtype == np.uint8 and a[0]["img"].shape == (B, H, W, C)


def test_jit_matches_eager():
    x = {"img": _images(np.float32) / 255.0}
    specs = [ALL[0], ALL[4]]
    eager = _run(specs, x, key=3, jit=False)[0]["img"]
    jitted = _run(specs, x, key=3)[0]["img"]
    np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_forced_flips():
    x = jnp.asarray(_images())
    yes = jnp.ones(B, bool)
    np.testing.assert_array_equal(flip(x, horizontal=yes), np.asarray(x)[:, :, ::-1])
    np.testing.assert_array_equal(flip(x, vertical=yes), np.asarray(x)[:, ::-1])
    np.testing.assert_array_equal(flip(flip(x, yes, yes), yes, yes), x)
    np.testing.assert_array_equal(flip(x, ~yes, ~yes), x)


def test_random_flip_is_per_sample():
    x = _images(n=64)
    modes = ("horizontal", "vertical", "both")
    specs = [AugmentSpec(type="random_flip", mode=mode, inputs=[mode]) for mode in modes]
    out = _run(specs, {mode: x for mode in modes}, key=4)[0]
    allowed = {"horizontal": {"none", "horizontal"}, "vertical": {"none", "vertical"},
               "both": {"none", "horizontal", "vertical", "both"}}
    for mode in modes:
        seen = set()
        for o, i in zip(out[mode], x):
            options = {"none": i, "horizontal": i[:, ::-1], "vertical": i[::-1],
                       "both": i[::-1, ::-1]}
            match = [k for k, v in options.items() if np.array_equal(o, v)]
            assert match and match[0] in allowed[mode]
            seen.add(match[0])
        assert seen == allowed[mode]  # every outcome occurs among 64 samples


def test_translate_and_crop_are_integer_shifts_within_bounds():
    x = _images(n=32)
    specs = [AugmentSpec(type="random_translate", factor=0.3, inputs=["t"]),
             AugmentSpec(type="random_crop", padding=2, inputs=["c2"]),
             AugmentSpec(type="random_crop", padding=1, inputs=["c1", "pair"])]
    limits = {"t": (2, 2), "c2": (2, 2), "c1": (1, 1)}  # translate: floor(0.3*7), floor(0.3*9)
    inputs = {"t": x.astype(np.float32), "c2": x, "c1": x, "pair": x}
    out = _run(specs, inputs, key=5)[0]
    for name, limit in limits.items():
        assert out[name].shape == x.shape and out[name].dtype == inputs[name].dtype
        offsets = []
        for o, i in zip(out[name], inputs[name]):
            found = _find_shift(o, i, limit)
            assert found, f"{name}: not a zero-filled integer shift of the input within bounds"
            offsets.append(found[0])
        assert len(set(offsets)) > 4  # per-sample offsets
        assert {dy for dy, _ in offsets} >= {-limit[0], limit[0]}
    # The inputs named by one spec share its draws: paired images stay aligned.
    np.testing.assert_array_equal(out["pair"], out["c1"])


def test_shift_helper():
    x = _images(np.float32, n=4) / 255.0
    moved = shift(jnp.asarray(x), jnp.array([1, 0, -1, 0]), jnp.array([0, 2, 0, -2]), (1, 2))
    np.testing.assert_array_equal(moved[0, 1:], x[0, :-1])
    np.testing.assert_array_equal(moved[0, 0], 0)
    np.testing.assert_array_equal(moved[1, :, 2:], x[1, :, :-2])
    np.testing.assert_array_equal(moved[1, :, :2], 0)
    np.testing.assert_array_equal(moved[2, :-1], x[2, 1:])
    np.testing.assert_array_equal(moved[3, :, :-2], x[3, :, 2:])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotation_by_zero_and_quarter_turns(interpolation):
    x = _images(n=4, h=8, w=8)
    zero = rotate(jnp.asarray(x), jnp.zeros(4), interpolation)
    np.testing.assert_array_equal(zero, x)
    odd = _images(n=4, h=7, w=7)
    for k in (1, 2, 3, -1):
        for img in (x, odd):
            out = rotate(jnp.asarray(img), jnp.full(4, k * np.pi / 2), interpolation)
            assert out.dtype == np.uint8
            np.testing.assert_allclose(np.asarray(out, np.int32),
                                       np.rot90(img, k, axes=(1, 2)).astype(np.int32), atol=1)
    nearest_90 = rotate(jnp.asarray(x), jnp.full(4, np.pi / 2), "nearest")
    np.testing.assert_array_equal(nearest_90, np.rot90(x, 1, axes=(1, 2)))


def test_rotation_zero_fills_and_interpolates():
    x = np.ones((1, 9, 9, 1), np.float32)
    out = np.asarray(rotate(jnp.asarray(x), jnp.array([np.pi / 4]), "bilinear"))[0, :, :, 0]
    assert out[4, 4] == pytest.approx(1.0)  # the centre is fixed
    assert out[0, 0] == 0.0 and out[8, 8] == 0.0  # corners come from outside: zero fill
    assert 0 < out.sum() < 81
    ramp = np.tile(np.arange(9, dtype=np.float32), (9, 1))[None, :, :, None]
    tilt = np.asarray(rotate(jnp.asarray(ramp), jnp.array([0.1]), "bilinear"))
    assert not np.array_equal(tilt, ramp) and np.all(tilt <= 8 + 1e-5)


def test_random_rotation():
    x = _images(np.float32, n=8, h=9, w=9)
    specs = [AugmentSpec(type="random_rotation", factor=0.0, inputs=["still"]),
             AugmentSpec(type="random_rotation", factor=0.25, inputs=["raw"])]
    out = _run(specs, {"still": x, "raw": _images(n=8)})[0]
    np.testing.assert_allclose(out["still"], x, atol=1e-4)
    assert out["raw"].dtype == np.uint8 and out["raw"].shape == (8, H, W, C)
    assert len({o.tobytes() for o in out["raw"]}) == 8  # each sample its own angle


def test_brightness_shifts_each_sample_by_one_delta_within_uint8_range():
    x = np.full((64, 4, 4, 1), 128, np.uint8)
    x[:, 0, 0] = 250
    x[:, 0, 1] = 5
    specs = [AugmentSpec(type="random_brightness", factor=0.2, inputs=["raw"]),
             AugmentSpec(type="random_brightness", factor=0.1, inputs=["float"])]
    out = _run(specs, {"raw": x, "float": x.astype(np.float32) / 255})[0]
    raw = out["raw"]
    assert raw.dtype == np.uint8
    delta = raw.astype(int)[:, 1:, :] - 128
    assert np.all(delta == delta[:, :1, :1])  # one delta per sample
    delta = delta[:, 0, 0, 0]
    assert np.all(np.abs(delta) <= 51) and delta.min() < -20 and delta.max() > 20
    corner = raw[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(corner, np.clip(250 + delta, 0, 255))  # clipped, no wrap
    np.testing.assert_array_equal(raw[:, 0, 1, 0], np.clip(5 + delta, 0, 255))
    moved = (out["float"] - x / 255).reshape(64, -1)
    np.testing.assert_allclose(moved, moved[:, :1] * np.ones((1, 16)), atol=1e-6)
    assert np.abs(moved).max() <= 0.1 + 1e-6 and moved.min() < -0.05 and moved.max() > 0.05


def test_contrast_scales_around_the_mean():
    x = _images(np.float32, n=64, c=2) / 255.0
    raw = _images(n=64)
    specs = [AugmentSpec(type="random_contrast", factor=0.5, inputs=["float"]),
             AugmentSpec(type="random_contrast", factor=0.9, inputs=["raw"])]
    out = _run(specs, {"float": x, "raw": raw})[0]
    np.testing.assert_allclose(out["float"].mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)
    ratio = out["float"].std(axis=(1, 2)) / x.std(axis=(1, 2))  # (N, C): one factor per image
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 2)), rtol=1e-4)
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4
    assert ratio.min() < 0.8 and ratio.max() > 1.2
    strong = out["raw"]
    assert strong.dtype == np.uint8
    spread = strong.astype(float).std(axis=(1, 2, 3)) / raw.astype(float).std(axis=(1, 2, 3))
    assert spread.min() < 0.5 and spread.max() > 1.2  # both directions, clipped to 0..255


def test_noise_brightness_contrast_work_on_any_rank_and_dtype():
    rng = np.random.default_rng(0)
    v = {f"v{i}": rng.normal(size=(512, 6)).astype(np.float32) for i in range(3)}
    v["seq"] = np.ones((512, 5, 3, 2, 2), np.float32)  # rank 4 per sample: not image-like
    v["raw"] = np.full((64, 8, 8, 1), 128, np.uint8)
    specs = [AugmentSpec(type="gaussian_noise", stddev=0.2, inputs=["v0"]),
             AugmentSpec(type="random_brightness", factor=0.5, inputs=["v1"]),
             AugmentSpec(type="random_contrast", factor=0.5, inputs=["v2", "seq"]),
             AugmentSpec(type="gaussian_noise", stddev=0.05, inputs=["raw"])]
    out, _ = _run(specs, v, image_inputs=())
    noise = out["v0"] - v["v0"]
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(0.2, rel=0.05)
    delta = out["v1"] - v["v1"]
    np.testing.assert_allclose(delta, delta[:, :1] * np.ones((1, 6)), atol=1e-5)
    assert np.abs(delta).max() <= 0.5 + 1e-6 and delta.std() > 0.1
    np.testing.assert_allclose(out["v2"].mean(1), v["v2"].mean(1), atol=1e-5)
    ratio = out["v2"].std(1) / v["v2"].std(1)
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.1
    np.testing.assert_allclose(out["seq"], v["seq"], atol=1e-6)  # constant: nothing to scale
    assert out["raw"].dtype == np.uint8  # uint8 noise: stddev in units of the range (255)
    assert out["raw"].astype(float).std() == pytest.approx(0.05 * 255, rel=0.1)


def test_mixup_is_a_convex_combination_of_inputs_and_targets():
    n = 32
    x = _images(np.float32, n=n) / 255.0
    raw = _images(n=n, seed=1)
    vec = np.random.default_rng(1).normal(size=(n, 5)).astype(np.float32)
    labels = np.arange(n, dtype=np.int32)  # one class per sample: the mix reveals partners
    scores = np.random.default_rng(2).random((n, 3)).astype(np.float32)
    inputs = {"img": x, "raw": raw, "vec": vec, "side": vec}
    specs = [AugmentSpec(type="mixup", alpha=0.4, inputs=["img", "raw", "vec"])]
    runs = _run(specs, inputs, {"label": labels, "score": scores}, key=(1, 1, 2),
                num_classes={"label": n})
    (new_x, new_y), (again_x, again_y), (other_x, other_y) = runs
    t = new_y["label"]
    np.testing.assert_array_equal(again_y["label"], t)  # deterministic for a key
    np.testing.assert_array_equal(again_x["img"], new_x["img"])
    assert not np.array_equal(other_y["label"], t) and not np.array_equal(other_x["img"], x)
    assert t.shape == (n, n) and t.dtype == np.float32
    assert np.all(t >= 0) and np.all(t <= 1)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
    assert np.all((t > 0).sum(1) <= 2)
    # t[i] = λ e_i + (1 - λ) e_perm(i): the same weights mix every input and float target.
    np.testing.assert_allclose(new_x["img"], np.einsum("ij,jhwc->ihwc", t, x), atol=1e-5)
    np.testing.assert_allclose(new_x["vec"], t @ vec, atol=1e-5)
    np.testing.assert_allclose(new_y["score"], t @ scores, atol=1e-5)
    assert new_x["raw"].dtype == np.uint8  # mixed in float32, rounded back
    exact = np.einsum("ij,jhwc->ihwc", t, raw.astype(np.float32))
    np.testing.assert_allclose(new_x["raw"], exact, atol=0.5 + 1e-3)
    np.testing.assert_array_equal(new_x["side"], vec)  # not named: untouched
    lam = np.diag(t)
    assert len(np.unique(np.round(lam, 4))) > n // 2  # λ drawn per sample
    partners = [row.argmax() if row.max() < 1 else i for i, row in
                enumerate(t - np.diag(lam))]
    assert len(set(partners)) > n // 2
    with pytest.raises(ValueError, match="'label'"):  # integer labels need a class count
        _run([AugmentSpec(type="mixup")], {"img": x}, {"label": labels})


@pytest.mark.parametrize("kind", ["random_flip", "random_translate", "random_crop",
                                  "random_rotation"])
def test_geometric_ops_refuse_non_images(kind):
    spec = AugmentSpec(type=kind, inputs=["features"])
    with pytest.raises(ValueError, match=r"'features'.*\(10,\)"):
        _run([spec], {"features": np.zeros((4, 10), np.float32)}, image_inputs=())
    with pytest.raises(ValueError, match="'gray'"):
        _run([AugmentSpec(type=kind, inputs=["gray"])], {"gray": np.zeros((4, 8, 8))},
             image_inputs=())  # raised while tracing under jit


def test_bad_names_and_no_inputs():
    with pytest.raises(ValueError, match="'nope'"):
        _run([AugmentSpec(type="gaussian_noise", inputs=["nope"])], {"img": _images()})
    with pytest.raises(ValueError, match="no input to augment"):
        _run([AugmentSpec(type="random_flip")], {"v": np.zeros((4, 3))}, image_inputs=())
    x = {"img": _images()}
    out = _run([], x)[0]
    np.testing.assert_array_equal(out["img"], x["img"])


def test_raw_uint32_keys_work_too():
    x = {"img": _images()}
    run = jax.jit(lambda k: augment(ALL[:1], k, x, {}, ("img",), {})[0]["img"])
    a, b, c = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
