"""The gate-based QT paper's mapping model: a small multilayer perceptron per weight.

Layers Linear(N + 1, w1) -> Linear(w1, w2) -> ... -> Linear(wk, 1); the paper's MNIST model is
widths (4, 20, 4): 60 + 100 + 84 + 5 = 249 parameters for N = 13, its CIFAR-10 model (40, 200, 40)
17,121 for N = 19. The paper's text puts tanh after the first layer; its public code applies no
activation at all (the model is then one affine map of its inputs). ``activation`` chooses:
``none`` (the code, our default), ``tanh`` (the text: after the first layer only), or
``tanh-all`` (after every hidden layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pqt.errors import UserError
from pqt.mappers.base import Mapper

MLP_ACTIVATIONS = ("none", "tanh", "tanh-all")
PAPER_WIDTHS = (4, 20, 4)


class MLPMapper(Mapper):
    kind = "mlp"

    def __init__(self, n_weights: int, widths: Sequence[int] = PAPER_WIDTHS, activation: str = "none",
                 inputs: str = "bits+value") -> None:
        super().__init__(n_weights, inputs)
        if activation not in MLP_ACTIVATIONS:
            raise UserError(f"unknown MLP activation {activation!r}: choose one of {', '.join(MLP_ACTIVATIONS)}")
        widths = tuple(int(w) for w in widths)
        if any(w < 1 for w in widths):
            raise UserError(f"MLP widths must be >= 1 (got {list(widths)})")
        self.widths = widths
        self.activation = activation
        sizes = (self.n_features, *widths, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = self.features(values)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last and (self.activation == "tanh-all" or (self.activation == "tanh" and i == 0)):
                x = torch.tanh(x)
        return x.squeeze(1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "widths": list(self.widths), "activation": self.activation}
