"""Run exported nnspec models with only numpy and onnxruntime (no JAX, Flax or Optax)."""

from nnspec.runtime.model import InputError, Model, TensorInfo, UsageError, load, model_path

__all__ = ["InputError", "Model", "TensorInfo", "UsageError", "load", "model_path"]
