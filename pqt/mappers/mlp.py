"""The gate-based QT paper's mapping model: a small multilayer perceptron per weight.

Layers Linear(N + 1, w1) -> Linear(w1, w2) -> ... -> Linear(wk, 1); the paper's MNIST model is
widths (4, 20, 4): 60 + 100 + 84 + 5 = 249 parameters for N = 13, its CIFAR-10 model (40, 200, 40)
17,121 for N = 19. The paper's text puts tanh after the first layer; its public code applies no
activation at all (the model is then one affine map of its inputs). ``activation`` chooses:
``none`` (the code, our default), ``tanh`` (the text: after the first layer only), or
``tanh-all`` (after every hidden layer).

Speed: the same small network runs on every weight (285,226 of them for the CIFAR-10 CNN, 16,840
multiply-adds each with the widths above). Consecutive layers with no activation between them
compose into one affine map, so :meth:`MLPMapper.forward` multiplies their (small) weight matrices
first and applies the product once per weight (a run of several layers always ends at the single
output, so that is never more work than its first layer): with no activation the whole model costs 20 multiply-adds per
weight, with ``tanh`` the first layer plus 40. Same function and same gradients (autograd runs
through the product); float32 rounding differs from layer-by-layer evaluation, which
:meth:`MLPMapper.reference_forward` keeps for tests and ``pqt bench``.
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

    def _activated(self, i: int) -> bool:
        """Whether tanh follows layer i."""
        return i < len(self.layers) - 1 and (self.activation == "tanh-all" or (self.activation == "tanh" and i == 0))

    def _segments(self) -> list[list[nn.Linear]]:
        """Runs of consecutive layers with no activation between them (tanh follows each run but the last)."""
        segments: list[list[nn.Linear]] = [[]]
        for i, layer in enumerate(self.layers):
            segments[-1].append(layer)
            if self._activated(i):
                segments.append([])
        return segments

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = self.features(values)
        segments = self._segments()
        for j, segment in enumerate(segments):
            x = _apply_affine_run(segment, x)
            if j < len(segments) - 1:
                x = torch.tanh(x)
        return x.squeeze(1)

    def reference_forward(self, values: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        """Layer by layer, as written (the papers' way); for tests and benchmarks.

        ``limit``: only the first ``limit`` weights (a benchmark times a slice of a large target).
        """
        x = self.features(values)[:limit]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self._activated(i):
                x = torch.tanh(x)
        return x.squeeze(1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "widths": list(self.widths), "activation": self.activation}


def _apply_affine_run(layers: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """x through consecutive Linear layers, composed into one (W, b) first.

    With the activations offered, a run of several layers always ends at the single output, so the
    composition (in x 1) is never more work per row than the first layer alone.
    """
    weight, bias = layers[0].weight, layers[0].bias
    for layer in layers[1:]:
        weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
    return torch.nn.functional.linear(x, weight, bias)
