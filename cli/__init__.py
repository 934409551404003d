"""nnspec: a YAML spec in; a Flax model trained under XLA and an ONNX file cross-checked out."""

__version__ = "0.1.0"
