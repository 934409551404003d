"""`nnspec schema`: the JSON Schema of the spec language, for editors.

Draft-07, because yaml-language-server (the YAML extension of most editors) does not fully
support 2020-12, which pydantic emits: `$defs` become `definitions`. Each layer type is one
alternative of `layers`' items, told apart by its `type` constant.
"""

from __future__ import annotations

import json
from typing import Any

from nnspec.compiler.layers.base import discover
from nnspec.spec.schema import Spec

DRAFT7 = "http://json-schema.org/draft-07/schema#"
REF = "#/definitions/{model}"


def _layer_schema(cls: type) -> dict[str, Any]:
    schema = cls.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    props = schema.setdefault("properties", {})
    props["type"] = {"const": cls.type_name, "description": (cls.__doc__ or "").strip()}
    props["name"] = {"type": "string", "description": "node name (weights are NAME/param)"}
    props["trainable"] = {"type": "boolean", "description": "false: keep the weights fixed"}
    props["inputs"] = {"description": "layer or input name(s); default: the previous layer",
                       "anyOf": [{"type": "string"}, {"type": "array",
                                                      "items": {"type": "string"}}]}
    schema["required"] = ["type", *schema.get("required", [])]
    schema["additionalProperties"] = False
    schema["title"] = cls.type_name
    return {"schema": schema, "defs": defs}


def spec_schema() -> dict[str, Any]:
    """The whole spec language as one draft-07 JSON Schema."""
    root = Spec.model_json_schema(ref_template=REF)
    definitions = root.pop("$defs", {})
    alternatives = []
    for name, cls in sorted(discover().items()):
        part = _layer_schema(cls)
        definitions.update(part["defs"])
        definitions[f"layer_{name}"] = part["schema"]
        alternatives.append({"$ref": f"#/definitions/layer_{name}"})
    alternatives.append({"type": "object", "required": ["block"], "title": "block use",
                         "properties": {"block": {"type": "string"},
                                        "repeat": {"type": "integer", "minimum": 1},
                                        "name": {"type": "string"},
                                        "inputs": {}}})
    layers = {"type": "array", "minItems": 1, "items": {"anyOf": alternatives},
              "description": "the model's layers; each takes the previous one's output unless "
                             "it names its `inputs`"}
    root["properties"]["layers"] = layers
    for short in ("LossSpec", "OptimizerSpec", "ScheduleSpec", "QuantizeSpec"):
        # `loss: mse` is short for `loss: {name: mse}`: the schema accepts both.
        if short in definitions:
            model = definitions[short]
            props = model["properties"]
            name = props["name"] if "name" in props else props["method"]
            definitions[short] = {"anyOf": [model, name], "description": model.get(
                "description", "")}
    if "BlockSpec" in definitions:
        # Inside a block any value may be a `$param` placeholder, substituted on expansion.
        template = json.loads(json.dumps(layers))
        for alt in template["items"]["anyOf"]:
            ref = alt.get("$ref", "").rsplit("/", 1)[-1]
            if ref:
                layer = json.loads(json.dumps(definitions[ref]))
                for key, prop in layer["properties"].items():
                    if key != "type":
                        layer["properties"][key] = {"anyOf": [prop, {"type": "string",
                                                                     "pattern": r"^\$"}]}
                definitions[f"template_{ref}"] = layer
                alt["$ref"] = f"#/definitions/template_{ref}"
        definitions["BlockSpec"]["properties"]["layers"] = template
    root = {"$schema": DRAFT7, "$id": "https://nnspec.dev/schema/v1.json", **root,
            "definitions": definitions}
    return json.loads(json.dumps(root).replace('"$defs"', '"definitions"'))
