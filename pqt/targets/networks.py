"""The built-in target networks: the classical networks whose weights Quantum-Train generates.

- ``paper-cnn``: both papers' MNIST / Fashion-MNIST CNN, 6,690 weights, no activation (their code).
- ``cifar-cnn``: the gate-based QT paper's CIFAR-10 CNN, 285,226 weights.
- ``mlp``: a small two-layer perceptron for any image size (6,370 weights on 28x28 images).

Each is registered by name (:mod:`pqt.targets.registry`); a user's own module is picked with
``--target module:callable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pqt.targets.registry import register_target

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,  # the paper's code: no activation anywhere
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from pqt.errors import UserError

    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UserError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}") from None


class PaperCNN(nn.Module):
    """The papers' MNIST CNN: 6,690 parameters.

    Conv(1->8, k5) -> MaxPool2 -> Conv(8->12, k5) -> MaxPool2 -> Linear(192->20) -> Linear(20->10).
    ``activation`` is applied after each conv block and after fc1; the papers' code uses none.
    """

    def __init__(self, activation: str = "none") -> None:
        super().__init__()
        self.activation = activation
        self._act = activation_fn(activation)
        self.conv1 = nn.Conv2d(1, 8, kernel_size=5)
        self.conv2 = nn.Conv2d(8, 12, kernel_size=5)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(F.max_pool2d(self.conv1(x), 2))
        x = self._act(F.max_pool2d(self.conv2(x), 2))
        x = self._act(self.fc1(x.flatten(1)))
        return self.fc2(x)


class CifarCNN(nn.Module):
    """The gate-based QT paper's CIFAR-10 CNN: 285,226 parameters.

    Conv(3->16, k5, pad 2) -> MaxPool2 -> Conv(16->32, k5, pad 2) -> MaxPool2 -> 2048-128 -> 128-64 -> 64-10
    (the paper gives "(Conv, max_pooling)*2, 2048-128, 128-64, 64-10"; this layer list reproduces its
    285,226 exactly). ``activation`` follows each conv block and hidden linear layer.
    """

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self._act = activation_fn(activation)
        self.conv1 = nn.Conv2d(3, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(F.max_pool2d(self.conv1(x), 2))
        x = self._act(F.max_pool2d(self.conv2(x), 2))
        x = self._act(self.fc1(x.flatten(1)))
        x = self._act(self.fc2(x))
        return self.fc3(x)


class SmallMLP(nn.Module):
    """Flatten -> Linear(pixels, hidden) -> activation -> Linear(hidden, 10)."""

    def __init__(self, in_features: int = 784, hidden: int = 8, activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self._act = activation_fn(activation)
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self._act(self.fc1(x.flatten(1))))


@register_target("paper-cnn", input_shape=(1, 28, 28), default_activation="none",
                 description="the papers' MNIST CNN, 6,690 weights")
def paper_cnn(input_shape: tuple[int, ...], activation: str) -> nn.Module:
    return PaperCNN(activation)


@register_target("cifar-cnn", input_shape=(3, 32, 32), default_activation="relu",
                 description="the gate-based QT paper's CIFAR-10 CNN, 285,226 weights")
def cifar_cnn(input_shape: tuple[int, ...], activation: str) -> nn.Module:
    return CifarCNN(activation)


@register_target("mlp", input_shape=None, default_activation="relu",
                 description="a small perceptron, pixels-8-10 (6,370 weights on 28x28 images)")
def small_mlp(input_shape: tuple[int, ...], activation: str) -> nn.Module:
    return SmallMLP(math.prod(input_shape), 8, activation)
