"""The reference page of the spec language, generated from its single sources of truth: the
pydantic models of the sections (`nnspec.spec.schema`) and the layer registry
(`nnspec.compiler.layers`). Regenerate the shipped page with

    python -m nnspec.compiler.graph.reference > docs/spec-reference.md

The output depends only on the code (no dates, no paths, no environment), so a test can
compare the shipped page with a fresh one. Nothing here imports JAX.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nnspec.compiler.graph.ir import GRAPH_KEYS
from nnspec.compiler.layers.base import Layer, discover
from nnspec.spec.blocks import USE_KEYS
from nnspec.spec.schema import MAX_OPSET, MIN_OPSET, SPEC_VERSION, Spec

COMMAND = "python -m nnspec.compiler.graph.reference > docs/spec-reference.md"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"

# Words for keys whose pydantic field has no `description`: used only while the field has
# none, so a description added to the model takes over at the next regeneration.
FALLBACK: dict[tuple[str, str], str] = {
    ("Spec", "name"): "the model's name: the default run directory is `runs/NAME`, and the "
                      "ONNX graph is named after it",
    ("Spec", "description"): "free text, kept in the run's resolved spec",
    ("Spec", "layers"): "the model's layers, in order; see [Layers](#layers)",
    ("InputSpec", "shape"): "per-sample shape, without the batch axis; `null` is a free "
                            "length",
    ("InputSpec", "dtype"): "element type of the samples fed to the model (and the exported "
                            "graph's input)",
    ("OutputSpec", "from"): "the layer whose output this is; default: the last layer",
    ("OutputSpec", "loss"): "this output's loss; default: `train.loss`",
    ("OutputSpec", "loss_weight"): "weight of this output's loss in the total",
    ("OutputSpec", "metrics"): "this output's metrics; default: `train.metrics`",
    ("OptimizerSpec", "name"): "the Optax optimizer",
    ("OptimizerSpec", "learning_rate"): "the initial (peak) learning rate",
    ("LossSpec", "name"): "the loss function",
    ("ScheduleSpec", "name"): "the schedule's shape",
    ("TrainSpec", "epochs"): "passes over the training split",
    ("TrainSpec", "batch_size"): "samples per optimizer step",
    ("TrainSpec", "metrics"): "metrics computed on every split",
    ("DataSpec", "source"): "where the samples come from",
    ("DataSpec", "validation_split"): "fraction of the training part held out for "
                                      "validation",
    ("TrainSpec", "seed"): "seed of the whole run: initialisation, batch order, dropout, "
                           "augmentation",
    ("DataSpec", "path"): "the .npz, .csv, .parquet or .array_record file, or the image, "
                          ".npy or .array_record folder, relative to the spec file",
    ("ExportSpec", "opset"): "ONNX opset of the exported model",
    ("QuantizeSpec", "method"): "`dynamic` (int8 weights, activations quantized at run time), "
                                "`static` (int8, activation ranges calibrated on training "
                                "samples) or `float16`",
    ("ParitySpec", "samples"): "held-out samples compared",
    ("ParitySpec", "atol"): "absolute tolerance",
    ("ParitySpec", "rtol"): "relative tolerance",
    ("BlockSpec", "layers"): "the block's layers, as in `layers`, with `$name` values and "
                             "`$input` references",
    ("RegularizationSpec", "l2"): "weight of the squared-weights penalty",
    ("RegularizationSpec", "l1"): "weight of the absolute-weights penalty",
    ("RegularizationSpec", "layers"): "names of the penalised layers; default: all",
    ("EarlyStoppingSpec", "monitor"): "a logged quantity: `loss`, `val_loss`, `val_accuracy`, ...",
    ("EarlyStoppingSpec", "mode"): "whether smaller or larger is better; `auto` guesses from "
                                   "the name",
    ("EarlyStoppingSpec", "patience"): "epochs without improvement before stopping",
    ("EarlyStoppingSpec", "min_delta"): "smallest change that counts as an improvement",
    ("EarlyStoppingSpec", "restore_best"): "end with the best epoch's weights",
    ("AugmentSpec", "type"): "the augmentation",
    ("AugmentSpec", "inputs"): "the inputs it applies to; default: every image-like input",
    ("AugmentSpec", "mode"): "random_flip: the axis",
    ("CheckpointSpec", "every_epochs"): "epochs between checkpoints",
    ("CheckpointSpec", "keep"): "newest checkpoints kept",
    ("*", "use_bias"): "add a learned bias",
    ("*", "strides"): "step of the window, an int or one per spatial axis",
    ("*", "dilation"): "spacing of the kernel taps, an int or one per spatial axis",
    ("*", "kernel_initializer"): "initializer of the kernel (Keras' names)",
    ("*", "padding"): "`valid` (no padding) or `same` (output size = input size / stride)",
    ("*", "axis"): "the axis, counting the batch axis as 0; negative counts from the end",
    ("rescale", "scale"): "multiplier",
    ("rescale", "offset"): "added after the multiplication",
    ("elu", "alpha"): "the value approached for large negative inputs is -alpha",
    ("gelu", "approximate"): "the tanh approximation (Flax's default) rather than the exact "
                             "erf form",
    ("leaky_relu", "negative_slope"): "slope for negative inputs",
}

# Fields whose annotation is a plain container, because their items are checked elsewhere.
TYPE_OVERRIDE = {
    ("Spec", "layers"): "list of [layers and block uses](#layers) (at least 1 item)",
    ("BlockSpec", "layers"): "list of [layers and block uses](#layers) (at least 1 item)",
    ("BlockSpec", "params"): "mapping of name to any",
}

# How the shorthand of a model that takes a bare string is shown (its first choice otherwise).
SHORTHAND_EXAMPLE = {"LossSpec": "mse", "OptimizerSpec": "adam", "ScheduleSpec": "cosine"}

GRAPH_KEY_DOCS = {
    "type": ("string", "required", "the layer type, one of the [layer types](#layer-types)"),
    "name": ("name", "`TYPE_N`", "the layer's name, for other layers' `inputs` and "
             "`outputs.*.from`; its weights are `NAME/param` in the ONNX file. Unnamed layers "
             "are called `TYPE_1`, `TYPE_2`, ... per type"),
    "inputs": ("name or list of names", "the previous layer", "the layers or model inputs "
               "this layer reads, in order; needed on the first layer of a model with several "
               "inputs, and on merge layers"),
    "trainable": ("bool", "`true`", "`false` keeps the layer's weights as initialised (or "
                  "loaded by `train.init_from`) until `train.unfreeze_after` epochs"),
}


@dataclass(frozen=True)
class _Section:
    """One model to document, at the path where the spec first uses it."""

    model: type[BaseModel]
    path: str
    anchor: str
    depth: int


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "") if obj.__doc__ else ""


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower().replace("[]", "")).strip("-")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


# -- values ---------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def yaml_value(value: Any) -> str:
    """A value in YAML flow style, as a spec would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"  # `1.0e-05`: a float under YAML 1.1 too
        return text
    if isinstance(value, str):
        return value if _PLAIN.match(value) and value.lower() not in _YAML_WORDS else \
            json.dumps(value)
    if isinstance(value, BaseModel):
        return yaml_value(value.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{yaml_value(field.default_factory())}`"
    return f"`{yaml_value(field.default)}`"


# -- types ----------------------------------------------------------------------------------

def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(item.metadata))
            continue
        for key in ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern"):
            value = getattr(item, key, None)
            if value is not None:
                found[key] = value
    return found


def _number(value: Any) -> str:
    if isinstance(value, int) and value >= 1 << 16 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return yaml_value(value)


def _bounded(base: str, c: dict[str, Any]) -> str:
    """`base` with its numeric bounds and lengths, e.g. `float in [0, 1)`, `int > 0`."""
    if c.get("pattern") == NAME_PATTERN:
        return "name"
    low = ("(", c["gt"]) if "gt" in c else ("[", c["ge"]) if "ge" in c else None
    high = (")", c["lt"]) if "lt" in c else ("]", c["le"]) if "le" in c else None
    if low and high:
        base = f"{base} in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    elif low:
        base = f"{base} {'>' if low[0] == '(' else '>='} {_number(low[1])}"
    elif high:
        base = f"{base} {'<' if high[0] == ')' else '<='} {_number(high[1])}"
    lo, hi = c.get("min_length"), c.get("max_length")
    if lo is not None and hi is not None:
        base = f"{base} ({lo} to {hi} items)"
    elif lo is not None:
        base = f"{base} (at least {lo} item{'s' if lo > 1 else ''})"
    elif hi is not None:
        base = f"{base} (at most {hi} items)"
    return base


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


class _Types:
    """Renders annotations as words, linking models to their sections."""

    def __init__(self, anchors: dict[type[BaseModel], str]):
        self.anchors = anchors

    def render(self, tp: Any, c: dict[str, Any] | None = None) -> str:
        c = c or {}
        if tp is type(None):
            return "null"
        if tp is Any:
            return "any"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.render(args[0], {**_constraints(list(args[1:])), **c})
        if origin is typing.Literal:
            return "one of " + ", ".join(f"`{yaml_value(a)}`" for a in args)
        union = _union_args(tp)
        if union is not None:
            parts = [self.render(a, c) for a in union if a is not type(None)]
            if type(None) in union:
                parts.append("null")
            return " or ".join(parts)
        if origin in (list, tuple):
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                return "[" + ", ".join(self.render(a) for a in args) + "]"
            return _bounded(f"list of {self.render(args[0])}", c)
        if origin is dict:
            return _bounded(f"mapping of {self.render(args[0])} to {self.render(args[1])}", c)
        if _is_model(tp):
            link = f"[object](#{self.anchors[tp]})" if tp in self.anchors else "object"
            key = _shorthand_key(tp)
            if key is not None:
                return f"{link} or {self.render(tp.model_fields[key].annotation)}"
            return link
        names = {str: "string", int: "int", float: "float", bool: "bool"}
        return _bounded(names.get(tp, getattr(tp, "__name__", str(tp))), c)

    def field(self, field: FieldInfo) -> str:
        return self.render(field.annotation, _constraints(field.metadata))


# -- sections of the spec -------------------------------------------------------------------

def _models_in(tp: Any) -> list[tuple[type[BaseModel], str]]:
    """The models an annotation holds, each with the path suffix that reaches it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _models_in(args[0])
    union = _union_args(tp)
    if union is not None:
        return [m for a in union for m in _models_in(a)]
    if origin in (list, tuple):
        return [(m, "[]" + s) for m, s in _models_in(args[0])]
    if origin is dict:
        return [(m, ".NAME" + s) for m, s in _models_in(args[1])]
    return [(tp, "")] if _is_model(tp) else []


def _key(name: str, field: FieldInfo) -> str:
    return field.alias or name


def _sections() -> list[_Section]:
    """Every model reachable from `Spec`, depth first in field order, each documented once at
    its first use."""
    out: list[_Section] = []
    seen: set[type[BaseModel]] = {Spec}

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, field in model.model_fields.items():
            for sub, suffix in _models_in(field.annotation):
                if sub in seen:
                    continue
                seen.add(sub)
                path = f"{prefix}{_key(name, field)}{suffix}"
                out.append(_Section(sub, path, _anchor(path), depth))
                walk(sub, path.replace("[]", "") + ".", depth + 1)

    walk(Spec, "", 2)
    return out


def _description(owner: str, name: str, field: FieldInfo) -> str:
    name = _key(name, field)
    if field.description:
        return field.description
    if (owner, name) in FALLBACK:
        return FALLBACK[(owner, name)]
    if ("*", name) in FALLBACK:
        return FALLBACK[("*", name)]
    models = _models_in(field.annotation)
    return _first_sentence(_doc(models[0][0])) if models else ""


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _field_rows(model: type[BaseModel], owner: str, kinds: _Types) -> list[tuple[str, ...]]:
    return [(f"`{_key(name, f)}`", TYPE_OVERRIDE.get((owner, name)) or kinds.field(f),
             _default(f), _description(owner, name, f))
            for name, f in model.model_fields.items()]


def _shorthand_key(model: type[BaseModel]) -> str | None:
    """The key a bare string stands for, when the model takes one (`loss: mse` is
    `loss: {name: mse}`): found by asking the model's own `_shorthand` validator."""
    convert = getattr(model, "_shorthand", None)
    if convert is None:
        return None
    try:
        value = convert("x")
    except Exception:  # noqa: BLE001 - a validator that refuses strings has no shorthand
        return None
    keys = list(value) if isinstance(value, dict) else []
    return keys[0] if len(keys) == 1 and keys[0] in model.model_fields else None


def _shorthand(model: type[BaseModel], key: str) -> str:
    short = _shorthand_key(model)
    choices = typing.get_args(model.model_fields[short].annotation)
    example = SHORTHAND_EXAMPLE.get(model.__name__, choices[0] if choices else "VALUE")
    return (f"Shorthand: a bare value stands for the object with only `{short}`: "
            f"`{key}: {example}` is `{key}: {{{short}: {example}}}`, every other key at its "
            "default.")


def _model_section(section: _Section, kinds: _Types, uses: list[str]) -> list[str]:
    model = section.model
    key = section.path.replace("[]", "").rsplit(".", 1)[-1]
    title = section.path.replace("[]", "[*]")
    lines = [f'<a id="{section.anchor}"></a>', "", f"{'#' * section.depth} `{title}`", ""]
    if section.path.endswith("[]"):
        lines += ["A list; each item is an object with these keys.", ""]
    elif section.path.endswith(".NAME"):
        lines += ["A mapping from names to objects with these keys.", ""]
    if _doc(model):
        lines += [_doc(model), ""]
    if _shorthand_key(model) and "short for" not in _doc(model):
        lines += [_shorthand(model, key), ""]
    if len(uses) > 1:
        others = ", ".join(f"`{u.replace('[]', '[*]')}`" for u in uses[1:])
        lines += [f"The same object is also used at {others}.", ""]
    return lines + _table(_field_rows(model, model.__name__, kinds),
                          ("key", "type", "default", "description")) + [""]


def _uses() -> dict[type[BaseModel], list[str]]:
    """Every path at which each model is used, first use first."""
    uses: dict[type[BaseModel], list[str]] = {}

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        if depth > 8:
            return
        for name, field in model.model_fields.items():
            for sub, suffix in _models_in(field.annotation):
                path = f"{prefix}{_key(name, field)}{suffix}"
                uses.setdefault(sub, []).append(path)
                walk(sub, path.replace("[]", "") + ".", depth + 1)

    walk(Spec, "", 0)
    return uses


# -- layers ---------------------------------------------------------------------------------

def _activations(registry: dict[str, type[Layer]]) -> list[str]:
    return sorted(k for k, c in registry.items() if c.elementwise)


def _layers_section(registry: dict[str, type[Layer]]) -> list[str]:
    acts = ", ".join(f"`{a}`" for a in _activations(registry))
    rows = [(f"`{k}`", *GRAPH_KEY_DOCS[k]) for k in GRAPH_KEYS]
    rows.append(("`activation`", "layer type or null", "`null`", "on layers that have this "
                 "parameter: an element-wise layer applied to the output, as a separate node "
                 "named `NAME_ACTIVATION`; references to `NAME` then mean the activated output. "
                 f"One of {acts} (`linear` or `null`: none)"))
    use_rows = [
        ("`block`", "name", "required", "the block, a key of [`blocks`](#blocks)"),
        ("`name`", "name", "`BLOCK_N`", "the instance's name; its layers are named "
         "`NAME_LAYER` (and `NAME_K_LAYER` when repeated)"),
        ("`repeat`", "int >= 1", "`1`", "chain this many copies, each reading the previous "
         "copy's output"),
        ("`inputs`", "name or list of names", "the previous layer", "what `$input` means in "
         "the first copy"),
        ("*parameter*", "any", "the block's default", "a value for one of the block's "
         "`params`; `$parameter` in the block's layers is replaced by it"),
    ]
    assert [r[0].strip("`") for r in use_rows[:4]] == list(USE_KEYS), USE_KEYS
    return [
        '<a id="layers"></a>', "", "## `layers`", "",
        "A list of layers, run in order: each takes the previous one's output unless it names "
        "its `inputs` (the first layer takes the model's input when there is only one). Every "
        "layer must feed another layer or an output, and every input must be read. An entry "
        "is either a layer (a `type` and its parameters; see [Layer types](#layer-types)) or "
        "the use of a [block](#blocks) (a `block` key).", "",
        "Keys every layer accepts besides its parameters:", "",
        *_table(rows, ("key", "type", "default", "description")), "",
        "Keys of a block use:", "",
        *_table(use_rows, ("key", "type", "default", "description")), "",
    ]


def _blocks_notes() -> list[str]:
    return [
        "In a block's layers, a value written `$name` (the whole value, no expressions) is "
        "replaced by the parameter `name`: the use's value, else the default under `params` "
        "(`null` there makes the parameter required). `$input` in `inputs` is the block's "
        "input: the use's `inputs`, else the layer before the use, or for the second and later "
        "copies of a `repeat`, the previous copy's output. The first layer of a block takes "
        "`$input` unless it names its `inputs`; a block's output is its last layer. Names "
        "inside a block are local to it: `inputs: [conv_b, $input]` means this copy's "
        "`conv_b`. Blocks may use other blocks.", "",
        "```yaml",
        "blocks:",
        "  residual:",
        "    params: {filters: 16}",
        "    layers:",
        "      - {type: conv2d, name: a, filters: $filters, kernel_size: 3, padding: same, "
        "activation: relu}",
        "      - {type: conv2d, name: b, filters: $filters, kernel_size: 3, padding: same}",
        "      - {type: add, inputs: [b, $input]}",
        "layers:",
        "  - {type: conv2d, filters: 16, kernel_size: 3, padding: same}",
        "  - {block: residual, name: res, repeat: 2}   # res_1_a, res_1_b, res_1_add_3, "
        "res_2_a, ...",
        "```", "",
    ]


def _loss_form_notes() -> list[str]:
    # The rule lives in nnspec.compiler.train.heads.loss_form; tests/test_loss_forms.py checks
    # each row of this table against it.
    rows = [
        ("a `softmax` over the last axis", "from the softmax's input (the logits), exactly",
         "error: the units sum to 1 (a single one is always 1)"),
        ("a `sigmoid`", "error: the units are independent yes/no probabilities",
         "from the sigmoid's input (the logits), exactly"),
        ("`hard_sigmoid`, a softmax over another axis, or a reshape, flatten, permute, "
         "pooling, concat or multiply of such values (known to lie in [0, 1])",
         "on the probabilities, clipped to [1e-7, 1] (an error when they come from a sigmoid "
         "or hard_sigmoid)",
         "on the probabilities, clipped to [1e-7, 1 - 1e-7]"),
        ("anything else (a `dense` with no activation, `relu`, `tanh`, ...)",
         "the output is the logits: softmax cross-entropy of it",
         "the output is the logits: sigmoid cross-entropy of it"),
    ]
    return [
        "**Which form a cross-entropy takes.** It depends on the layer that makes the output "
        "(`nnspec validate` and `nnspec summary` print it for each output, e.g. `loss: sparse "
        "categorical cross-entropy from logits`). A categorical cross-entropy over a single "
        "unit is an error (it is always 0). An output that is the logits is exported as it is "
        "(the function trained); its argmax (`argmax: true`, `NAME_class`) is the class, and "
        "metrics that need probabilities (AUC, precision...) read softmax (sigmoid for binary "
        "cross-entropy) of it. `mse`, `mae` and `huber` read the output's values whatever "
        "makes it.", "",
        *_table(rows, ("the output comes from", "categorical_crossentropy, "
                       "sparse_categorical_crossentropy", "binary_crossentropy")), "",
    ]


def _arity(cls: type[Layer], where: str = "") -> str:
    if cls.arity is None:
        return f"several{where}"
    return str(cls.arity)


def _layer_section(name: str, cls: type[Layer], kinds: _Types) -> list[str]:
    lines = [f'<a id="layer-{_anchor(name)}"></a>', "", f"### `{name}`", ""]
    if _doc(cls):
        lines += [_doc(cls), ""]
    facts = [f"inputs: {_arity(cls, ' (see the description)')}"]
    if cls.train_only:
        facts.append("train-only: active in training, removed from the exported model")
    if cls.elementwise:
        facts.append(f"element-wise: also usable as `activation: {name}`")
    if cls.integer_input:
        facts.append("reads integer ids: its input must be a model input of dtype int32, "
                     "int64 or uint8")
    facts.append(f"minimum opset: {cls.min_opset}")
    lines += ["- " + f for f in facts]
    keys = [f"`type: {name}`", *(f"`{k}`" for k in GRAPH_KEYS if k != "type")]
    if "activation" in cls.model_fields:
        keys.append("`activation`")
    lines += ["- keys: " + ", ".join(keys) + " ([graph keys](#layers)), and the "
              "parameters below", ""]
    if cls.model_fields:
        rows = [(f"`{k}`", kinds.field(f), _default(f), _description(name, k, f))
                for k, f in cls.model_fields.items()]
        lines += _table(rows, ("parameter", "type", "default", "description")) + [""]
    else:
        lines += ["No parameters.", ""]
    if cls.examples and cls.examples[0].params:
        example = {"type": name, **cls.examples[0].params}
        lines += ["Example: `" + yaml_value(example) + "`", ""]
    return lines


# -- the page -------------------------------------------------------------------------------

def reference_markdown() -> str:
    """The whole reference page, deterministic for a given nnspec."""
    registry = discover()
    sections = _sections()
    anchors = {s.model: s.anchor for s in sections}
    anchors[Spec] = "top-level"
    kinds = _Types(anchors)
    uses = _uses()
    lines = [
        "# The spec language: reference", "",
        f"<!-- Generated from the code by `{COMMAND}`; do not edit by hand. -->", "",
        "A spec is one YAML file describing a model (`inputs`, `layers`, `outputs`), the data "
        "it learns from, how it trains and how it is exported. Scalars follow YAML 1.2 "
        "(`1e-3` is a number, `no` is a string). Every mapping is closed: an unknown key is "
        "an error, with a suggestion when it looks like a misspelt one. A *name* (of an "
        "input, layer, output or block) starts with a letter or `_` and continues with "
        "letters, digits, `_`, `.` or `-`, at most 128 characters. Sizes and shapes never "
        "include the batch axis. `nnspec validate` checks all of this without training; "
        "`nnspec schema` prints the same language as a JSON Schema for editors. The "
        "[tutorial](tutorial.md) introduces it step by step.", "",
        "Contents: [top level](#top-level)",
    ]
    toc = [f"[`{s.path.replace('[]', '[*]')}`](#{s.anchor})" for s in sections if s.depth == 2]
    toc.insert(1, "[`layers`](#layers)")
    lines[-1] += ", " + ", ".join(toc) + ", [layer types](#layer-types)."
    lines += ["", '<a id="top-level"></a>', "", "## Top level", "", _doc(Spec), "",
              f"This nnspec reads spec version {SPEC_VERSION}.", ""]
    lines += _table(_field_rows(Spec, "Spec", kinds), ("key", "type", "default",
                                                        "description")) + [""]
    for section in sections:
        if section.path.startswith("blocks."):
            lines += _layers_section(registry)  # between inputs and blocks, as in a spec
        lines += _model_section(section, kinds, uses.get(section.model, []))
        if section.model.__name__ == "LossSpec":
            lines += _loss_form_notes()
        if section.path.startswith("blocks"):
            lines += _blocks_notes()
    lines += ['<a id="layer-types"></a>', "", "## Layer types", "",
              f"Every layer type, alphabetically. The export's opset (`export.opset`) is "
              f"{MIN_OPSET} to {MAX_OPSET}; a layer's minimum opset is the lowest it can be "
              f"written in. *inputs* is how many inputs the layer reads.", ""]
    index = [(f"[`{n}`](#layer-{_anchor(n)})", _arity(c), _first_sentence(_doc(c)))
             for n, c in sorted(registry.items())]
    lines += _table(index, ("type", "inputs", "summary")) + [""]
    for name, cls in sorted(registry.items()):
        lines += _layer_section(name, cls, kinds)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
