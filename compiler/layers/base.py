"""The layer contract and its registry.

A layer type is one file in this folder holding one `Layer` subclass: its typed fields are the
parameters a spec may give it, and its methods are the three things every layer must do (infer
its output shape, run in Flax, lower to ONNX), beside its own parity `examples`. The backends
are generic walkers that know nothing about individual layers.

Nothing here imports JAX: shape inference runs in `nnspec validate`, which must stay instant.
Flax and ONNX are imported inside the methods that need them.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from nnspec.compiler.export.builder import OnnxBuilder

Shape = tuple[int | None, ...]
"""A per-sample shape: the batch dimension is implicit; `None` is a free length."""


@dataclass(frozen=True)
class Example:
    """One parity case of a layer: parameters and per-sample input shapes."""

    params: dict[str, Any]
    inputs: tuple[Shape, ...]
    dtype: str = "float32"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Layer(BaseModel):
    """Base of every layer type. Subclasses set `type_name` and `examples` and implement the
    three rules; unknown parameters are errors and parameters are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type_name: ClassVar[str]
    examples: ClassVar[tuple[Example, ...]] = ()
    arity: ClassVar[int | None] = 1
    """How many inputs the layer takes; None for any number (merge layers)."""
    train_only: ClassVar[bool] = False
    """Train-only layers (dropout, noise, augmentation) vanish from the exported graph."""
    elementwise: ClassVar[bool] = False
    """Element-wise activations may also be named by the `activation:` parameter of a layer."""
    min_opset: ClassVar[int] = 13
    integer_input: ClassVar[bool] = False
    """The layer reads integer ids (embedding): its inputs must be integer model inputs."""
    slow_in_cpu_loops: ClassVar[bool] = False
    """XLA:CPU runs this layer's gradient much slower inside a compiled loop than as a step of
    its own, so `train.loop: auto` dispatches one step at a time on the CPU."""

    def infer(self, *shapes: Shape) -> Shape:
        """The output shape for these input shapes; a ValueError says what is wrong."""
        raise NotImplementedError

    def flax(self, *xs: Any, name: str, train: bool) -> Any:
        """Apply the layer inside a compact Flax module; submodules are named `name`."""
        raise NotImplementedError

    def onnx(self, g: OnnxBuilder, *xs: str) -> str:
        """Emit ONNX nodes reading tensors `xs`; return the output tensor's name."""
        raise NotImplementedError

    def macs(self, inputs: tuple[Shape, ...], output: Shape, variables: dict[str, Any]
             ) -> int | None:
        """Multiply-adds per sample, given the input and output shapes and the shapes of the
        layer's variables (`variables[name].shape`, nested by submodule); None when they
        cannot be counted (a free length) or the layer does none (activations, pooling,
        reshapes). By default: a `kernel` applied at every output position (dense,
        convolutions); else, for a layer with variables (the normalisations), one per output
        value (the scale and shift they fold into at inference)."""
        if any(d is None for d in output):
            return None
        positions = math.prod(output[:-1]) if output else 1
        kernel = variables.get("kernel")
        if kernel is not None:
            return math.prod(kernel.shape) * positions
        return math.prod(output) if variables else None

    @property
    def activation_name(self) -> str | None:
        """The element-wise activation this layer's `activation:` parameter names, if any."""
        act = getattr(self, "activation", None)
        return None if act in (None, "linear") else act


REGISTRY: dict[str, type[Layer]] = {}


def per_value_macs(output: Shape) -> int | None:
    """One multiply-add per output value: what a normalisation costs at inference, where it
    is a scale and a shift (None for a free length)."""
    return None if any(d is None for d in output) else math.prod(output)


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator adding a layer type to the registry; a duplicate name is an error."""
    name = cls.type_name
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise RuntimeError(f"layer type {name!r} is registered twice: by "
                           f"{REGISTRY[name].__module__} and {cls.__module__}")
    REGISTRY[name] = cls
    return cls


_discovered = False


def discover() -> dict[str, type[Layer]]:
    """Import every module of this folder so each registers its layers. A broken layer file
    fails loudly here rather than vanishing from the registry."""
    global _discovered
    if not _discovered:
        package = importlib.import_module("nnspec.compiler.layers")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"nnspec.compiler.layers.{info.name}")
        _discovered = True
    return REGISTRY


def describe(shape: Shape) -> str:
    """A shape as users write it, with `?` for a free length."""
    inner = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"
