"""Every example of every registered layer, generated from the registry: the inferred shape
equals Flax's and ONNX's, and onnxruntime's output equals Flax's within 1e-5 (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnspec.compiler.export.layer_check import example_graph, run_example, sample_inputs
from nnspec.compiler.layers.base import discover
from nnspec.compiler.train.module import GraphModule
from nnspec.runtime.runners import available

REGISTRY = discover()
CASES = [pytest.param(cls, ex, id=f"{name}-{i}")
         for name, cls in sorted(REGISTRY.items()) for i, ex in enumerate(cls.examples)]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_layer_has_examples(name):
    assert REGISTRY[name].examples, f"layer {name!r} has no parity examples"


RUNTIMES = tuple(available())


def _tolerance(example):
    return example.extra.get("atol", 1e-5)


@pytest.mark.parametrize(("layer", "example"), CASES)
def test_shapes_agree_and_every_runtime_matches_flax(layer, example):
    report = run_example(layer, example, batch=3, runtimes=RUNTIMES)
    free = 5  # run_example's length for free dimensions
    inferred = tuple(free if d is None else d for d in report.inferred)
    assert report.flax_shape == (3, *inferred)
    assert tuple(d if isinstance(d, int) else None for d in report.onnx_shape[1:]) == tuple(
        report.inferred)
    for runtime in RUNTIMES:
        assert report.outputs[runtime].shape == report.flax_shape, runtime
        assert report.max_abs_diff(runtime) <= _tolerance(example), (
            runtime, report.max_abs_diff(runtime))


@pytest.mark.parametrize(("layer", "example"), CASES)
def test_batch_of_one_matches(layer, example):
    report = run_example(layer, example, batch=1)
    assert report.max_abs_diff() <= _tolerance(example)


def test_all_three_runtimes_are_installed():
    # The test extras install them; a missing one would silently thin the parity matrix.
    assert set(RUNTIMES) == {"onnxruntime", "tract", "reference"}


@pytest.mark.parametrize(("layer", "example"),
                         [c for c in CASES if c.values[1].dtype == "float32"])
def test_one_optax_step_lowers_a_loss(layer, example):
    graph = example_graph(layer, example)
    module = GraphModule(graph)
    inputs = sample_inputs(graph, batch=4)
    variables = module.init(jax.random.key(0), inputs)
    if not variables.get("params"):
        pytest.skip(f"{layer.type_name} has no parameters: no optax step to check (by design)")
    target = jax.random.normal(jax.random.key(1),
                               jax.eval_shape(module.apply, variables, inputs)["output"].shape)

    def loss(params):
        out = module.apply({**variables, "params": params}, inputs)["output"]
        return jnp.mean((out - target) ** 2)

    tx = optax.sgd(1e-2)
    params = variables["params"]
    before, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    updates, _ = tx.update(grads, tx.init(params), params)
    assert jax.jit(loss)(optax.apply_updates(params, updates)) < before


def test_an_operator_too_new_for_the_opset_is_refused_by_name():
    from nnspec.compiler.export.builder import ExportError, OnnxBuilder

    g = OnnxBuilder(opset=13, variables={})
    with g.scoped("norm1"), pytest.raises(ExportError, match=r"layer 'norm1' needs ONNX operator "
                                          r"LayerNormalization, which opset 13 lacks; use "
                                          r"export.opset >= 17"):
        g.op("LayerNormalization", "x")
    with g.scoped("act"), pytest.raises(ExportError, match="has no attribute"):
        g.op("Relu", "x", alpha=1.0)


FIRST_CASES = [pytest.param(cls, cls.examples[0], id=name)
               for name, cls in sorted(REGISTRY.items()) if cls.examples]


@pytest.mark.parametrize(("layer", "example"), FIRST_CASES)
def test_onnx_initializers_read_back_as_the_trained_arrays(layer, example, tmp_path):
    """`init_from: model.onnx` reads every trained array of every layer back bit for bit
    (a conv's OIHW kernel, attention's flattened projections included), or the layer's
    initializers are marked packed (recurrent W, R, B) and init_from refuses them by name."""
    from nnspec.compiler.export.onnx_graph import to_onnx
    from nnspec.compiler.train.transfer import PACKED_NODE, _read_source, load_initial
    from nnspec.spec.errors import DataError

    graph = example_graph(layer, example)
    variables = jax.device_get(GraphModule(graph).init(jax.random.key(0),
                                                       sample_inputs(graph, batch=2)))
    if not variables.get("params"):
        pytest.skip(f"{layer.type_name} has no parameters: nothing to read back (by design)")
    path = tmp_path / "model.onnx"
    path.write_bytes(to_onnx(graph, variables, 21).SerializeToString())
    back = _read_source(str(path))
    if (PACKED_NODE, "layer") in back:
        with pytest.raises(DataError, match="packed in ONNX's recurrent layout"):
            load_initial(str(path), variables, log=lambda _: None)
        return
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    for keys, value in flat:
        key = ("params", *(k.key for k in keys))
        assert key in back, (key, sorted(back))
        np.testing.assert_array_equal(back[key], value, err_msg=str(key))
