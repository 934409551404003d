"""The suite's three networks, each written once per contender: as an nnspec spec, in
flax.linen, in PyTorch and in Keras 3; plus synthetic MNIST-shaped data and FLOP counts.

Every framework import happens inside the function that needs it, so a worker process loads
only its own framework (and the orchestrator none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODELS = ("mlp", "cnn", "lstm")
TITLES = {"mlp": "MLP 784-128-64-10", "cnn": "CNN conv32-pool-conv64-pool-128-10",
          "lstm": "LSTM(128) x 28 steps -> 10"}
INPUT = {"mlp": (28, 28), "cnn": (28, 28, 1), "lstm": (28, 28)}
SCALE = 1 / 255


def forward_macs(model: str) -> int:
    """Multiply-adds of one sample's forward pass (dense layers, convolutions, LSTM gates)."""
    if model == "mlp":
        return 784 * 128 + 128 * 64 + 64 * 10
    if model == "cnn":
        return 26 * 26 * 9 * 32 + 11 * 11 * 9 * 32 * 64 + 1600 * 128 + 128 * 10
    return 28 * (28 + 128) * 4 * 128 + 128 * 10


def train_flops(model: str) -> int:
    """FLOPs of one training sample: forward plus backward, counted as 3x the forward."""
    return 3 * 2 * forward_macs(model)


def synthetic(model: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped uint8 images and integer labels 0..9."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, *INPUT[model]), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32))


_LAYERS = {
    "mlp": """  - {type: flatten}
  - {type: rescale, scale: 0.00392156862745098}
  - {type: dense, name: fc1, units: 128, activation: relu}
  - {type: dense, name: fc2, units: 64, activation: relu}
""",
    "cnn": """  - {type: rescale, scale: 0.00392156862745098}
  - {type: conv2d, name: conv1, filters: 32, kernel_size: 3, activation: relu}
  - {type: max_pool2d, name: pool1, pool_size: 2}
  - {type: conv2d, name: conv2, filters: 64, kernel_size: 3, activation: relu}
  - {type: max_pool2d, name: pool2, pool_size: 2}
  - {type: flatten}
  - {type: dense, name: fc, units: 128, activation: relu}
""",
    "lstm": """  - {type: rescale, scale: 0.00392156862745098}
  - {type: lstm, name: lstm, units: 128}
""",
}


def spec_yaml(model: str, data: str, epochs: int, source: str = "npz") -> str:
    """The model as an nnspec spec on `data` (an .npz path, or empty for a named source)."""
    shape = list(INPUT[model])
    path = f", path: {data}" if source == "npz" else ""
    return f"""version: 1
name: bench_{model}
inputs:
  pixels: {{shape: {shape}, dtype: uint8}}
layers:
{_LAYERS[model]}  - {{type: dense, name: logits, units: 10}}
  - {{type: softmax, name: probabilities}}
outputs:
  digit: {{from: probabilities, labels: ["0","1","2","3","4","5","6","7","8","9"]}}
data: {{source: {source}{path}, validation_split: 0.0, test_split: 0.0}}
train:
  epochs: {epochs}
  batch_size: 128
  optimizer: {{name: adam, learning_rate: 1.0e-3}}
  loss: categorical_crossentropy
  metrics: [accuracy]
  seed: 0
export:
  opset: 21
  parity: {{samples: 64, atol: 1.0e-4, rtol: 1.0e-4}}
"""


def flax_module(model: str) -> Any:
    """The network in flax.linen (logits out; the 2x2 pool as reshape + max, as nnspec)."""
    import flax.linen as nn
    import jax.numpy as jnp

    def pool(x: Any) -> Any:
        b, h, w, c = x.shape
        x = x[:, : h // 2 * 2, : w // 2 * 2]
        return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = x.astype(jnp.float32) * SCALE
            if model == "mlp":
                x = x.reshape((x.shape[0], -1))
                x = nn.relu(nn.Dense(64)(nn.relu(nn.Dense(128)(x))))
            elif model == "cnn":
                x = pool(nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x)))
                x = pool(nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)))
                x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
            else:
                carry, _ = nn.RNN(nn.OptimizedLSTMCell(128), return_carry=True)(x)
                x = carry[1]
            return nn.Dense(10)(x)

    return Net()


def torch_module(model: str) -> Any:
    """The network in PyTorch (logits out; float input already scaled)."""
    import torch
    from torch import nn

    class LSTMNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(28, 128, batch_first=True)
            self.out = nn.Linear(128, 10)

        def forward(self, x: Any) -> Any:
            _, (h, _) = self.lstm(x)
            return self.out(h[0])

    if model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64),
                             nn.ReLU(), nn.Linear(64, 10))
    if model == "cnn":  # channels-first, as PyTorch runs convolutions
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))
    del torch
    return LSTMNet()


def torch_input(model: str, x: np.ndarray) -> Any:
    """uint8 samples as PyTorch's float input (scaled; CNN channels-first)."""
    import torch

    t = torch.from_numpy(x.astype(np.float32) * np.float32(SCALE))
    return t.permute(0, 3, 1, 2).contiguous() if model == "cnn" else t


def keras_model(model: str) -> Any:
    """The network in Keras 3 (softmax out, as `model.fit` with a cross-entropy expects)."""
    import keras
    from keras import layers

    inputs = keras.Input(INPUT[model])
    x = layers.Rescaling(SCALE)(inputs)
    if model == "mlp":
        x = layers.Flatten()(x)
        x = layers.Dense(64, "relu")(layers.Dense(128, "relu")(x))
    elif model == "cnn":
        x = layers.MaxPooling2D(2)(layers.Conv2D(32, 3, activation="relu")(x))
        x = layers.MaxPooling2D(2)(layers.Conv2D(64, 3, activation="relu")(x))
        x = layers.Dense(128, "relu")(layers.Flatten()(x))
    else:
        x = layers.LSTM(128)(x)
    return keras.Model(inputs, layers.Dense(10, "softmax")(x))
