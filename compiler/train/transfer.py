"""Transfer learning: start from another run's weights, or from an ONNX file's initializers,
matched by node name (the same `node/param` names the export writes)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nnspec.spec.errors import DataError

# Key of a node whose ONNX initializers are packed from several trained arrays.
PACKED_NODE = "packed"

WEIGHTS = "weights.msgpack"


def save_weights(path: str, variables: Any) -> None:
    """The trained Flax variables, exactly (msgpack: data only, no pickle)."""
    from flax import serialization

    from nnspec._io import write_bytes

    write_bytes(path, serialization.msgpack_serialize(_numpy(variables)))


def _numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def _flat(tree: Any, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, k)))
        return out
    return {prefix: np.asarray(tree)}


def _read_source(source: str) -> dict[tuple, np.ndarray]:
    """Arrays keyed by (collection, node, *param path) from a run directory or an ONNX file."""
    if os.path.isdir(source):
        path = os.path.join(source, WEIGHTS)
        if not os.path.isfile(path):
            raise DataError(f"train.init_from: {source!r} has no {WEIGHTS} (is it a run "
                            "directory of nnspec train?)")
        from flax import serialization

        with open(path, "rb") as fh:
            return _flat(serialization.msgpack_restore(fh.read()))
    if source.endswith(".onnx") and os.path.isfile(source):
        import onnx
        from onnx import numpy_helper

        from nnspec.compiler.export.builder import PACKED, flax_layout
        from nnspec.compiler.export.simplify import channels_last_rows

        model = onnx.load(source, load_external_data=False)
        arrays = {}
        for init in model.graph.initializer:
            node, _, param = init.name.partition("/")
            if not param:
                continue
            if init.doc_string == PACKED:
                arrays[(PACKED_NODE, node)] = np.zeros(0)
                continue
            collection = "batch_stats" if param in ("mean", "var") else "params"
            # A dense kernel after a folded Transpose holds its rows channels-first; other
            # initializers in ONNX's layout (a conv's OIHW kernel) carry the steps back.
            array = channels_last_rows(numpy_helper.to_array(init), init.doc_string)
            arrays[(collection, node, *param.split("/"))] = flax_layout(array, init.doc_string)
        return arrays
    raise DataError(f"train.init_from: {source!r} is neither a run directory nor an .onnx file")


def load_initial(source: str, variables: Any, log: Any = print) -> Any:
    """`variables` with every array whose node name (and parameter) exists in `source`
    replaced by the source's. A shape mismatch on a matched name is an error: rename the
    layer to start it afresh."""
    found = _read_source(source)
    packed = sorted(key[1] for key in found if key[0] == PACKED_NODE
                    and key[1] in variables.get("params", {}))
    if packed:
        raise DataError(f"train.init_from: layer(s) {', '.join(map(repr, packed))} of "
                        f"{source!r} hold their weights packed in ONNX's recurrent layout "
                        "(W, R, B), which cannot be split back into the trained arrays; "
                        "start from the run directory that wrote it (its weights.msgpack)")
    loaded, nodes = 0, set()

    def replace(tree: Any, path: tuple) -> Any:
        nonlocal loaded
        if isinstance(tree, dict):
            return {k: replace(v, (*path, k)) for k, v in tree.items()}
        if path not in found:
            return tree
        value = found[path]
        if value.shape != tuple(tree.shape):
            raise DataError(f"train.init_from: {'/'.join(map(str, path[1:]))} has shape "
                            f"{value.shape} in {source!r} but {tuple(tree.shape)} here; rename "
                            "the layer to train it from scratch")
        loaded += 1
        nodes.add(path[1])
        return np.asarray(value, dtype=np.asarray(tree).dtype)

    result = replace(variables, ())
    if not loaded:
        raise DataError(f"train.init_from: no layer name of this model matches {source!r}")
    log(f"init_from: loaded {loaded} arrays of {len(nodes)} layers ({', '.join(sorted(nodes))})")
    return result
