"""The recurrent layers beyond the registry-driven parity test: the export is native RNN/LSTM/GRU
operators (never Loop or Scan, which tract cannot run), one exported file serves every batch
size and sequence length, and sequence classifiers train end to end through the CLI."""

from __future__ import annotations

import functools
import json
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import onnx
import pytest
from conftest import EXAMPLES, run_cli

from nnspec.compiler.export.layer_check import example_graph, sample_inputs
from nnspec.compiler.export.onnx_graph import check_shapes, to_onnx
from nnspec.compiler.layers.base import Example, discover
from nnspec.compiler.train.module import GraphModule
from nnspec.runtime.runners import RUNNERS

REGISTRY = discover()
NATIVE = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# Beyond each layer's own examples: a free-length bidirectional sequence output (which the LSTM
# lowers as two forward passes) of a width closer to what specs use.
EXTRA = (Example({"units": 16, "bidirectional": True, "return_sequences": True}, ((None, 8),)),)
EXAMPLES_OF = {name: (*REGISTRY[name].examples, *EXTRA) for name in NATIVE}
CASES = [pytest.param(name, i, id=f"{name}-{i}")
         for name, examples in EXAMPLES_OF.items() for i in range(len(examples))]
ATOL = 1e-5


@functools.cache
def _export(name: str, index: int):
    """One example's graph, Flax module, initialised variables and ONNX export (built once)."""
    graph = example_graph(REGISTRY[name], EXAMPLES_OF[name][index])
    module = GraphModule(graph)
    variables = jax.device_get(module.init(jax.random.key(0), sample_inputs(graph, batch=2)))
    return graph, module, variables, to_onnx(graph, variables, opset=21)


@pytest.mark.parametrize(("name", "index"), CASES)
def test_export_is_native_recurrent_operators_with_dynamic_dims(name, index):
    graph, _, _, model = _export(name, index)
    check_shapes(model, graph)  # ONNX's strict shape inference agrees with nnspec's
    ops = {n.op_type for n in model.graph.node}
    assert NATIVE[name] in ops
    assert not ops & {"Loop", "Scan", "If"}, ops
    # Batch, and time when free, stay symbolic: no length is baked into the graph.
    (dims,) = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
               for i in model.graph.input]
    assert dims[0] == "batch"
    assert isinstance(dims[1], str) == (EXAMPLES_OF[name][index].inputs[0][0] is None)


@pytest.mark.parametrize(("name", "index"), CASES)
def test_one_export_matches_flax_at_every_length_and_batch(name, index):
    graph, module, variables, model = _export(name, index)
    data = model.SerializeToString()
    fixed = EXAMPLES_OF[name][index].inputs[0][0]
    apply = jax.jit(module.apply)
    for steps in (5, 13) if fixed is None else (fixed,):
        inputs = sample_inputs(graph, 37, seed=steps, free=steps)
        with jax.default_matmul_precision("highest"):
            expected = np.asarray(apply(variables, inputs)["output"], np.float64)
        # Samples are independent, so batch 1 is checked against the first row of batch 37.
        for batch in (1, 37):
            feeds = {k: v[:batch] for k, v in inputs.items()}
            for runtime in ("onnxruntime", "tract"):
                got = RUNNERS[runtime](data, feeds)["output"]
                assert got.shape == expected[:batch].shape, (runtime, steps, batch)
                diff = float(np.max(np.abs(got - expected[:batch])))
                assert diff <= ATOL, (runtime, steps, batch, diff)


# Each example spec, briefly: enough epochs to show learning, not to reach its full accuracy.
SPECS = {"rnn": ("RNN", 5), "lstm": ("LSTM", 5), "gru": ("GRU", 5), "bilstm": ("LSTM", 5)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each example spec trained through the CLI: name -> (result, run directory)."""
    root = tmp_path_factory.mktemp("recurrent")

    def train(name):
        out = root / name
        result = run_cli("train", str(EXAMPLES / f"{name}.yaml"), "--out", str(out), "-q",
                         "--set", f"train.epochs={SPECS[name][1]}")
        return name, (result, out)

    # Two at a time: process start and JAX compilation are mostly single-threaded.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(train, SPECS))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_example_spec_trains_and_exports_native_operator(trained, name):
    result, out = trained[name]
    assert result.returncode == 0, result.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-5, parity
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert SPECS[name][0] in ops and not ops & {"Loop", "Scan"}, ops
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5, metrics["test"]  # chance is 0.1
