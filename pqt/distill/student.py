"""PQKD's student: dictionary convolutions whose channel mixing comes from the photonic features.

A :class:`DictionaryConv2d` layer with C_in -> C_out channels and k x k kernels holds K trainable basis
filters B_1..B_K (K k^2 parameters) and a fixed random transform A (C_out C_in K rows, one column per
feature; seeded, stored with the run, never trained). Given the feature vector phi, its mixing
coefficients and kernels are

    C = s * (A phi) + b        (scale s and shift b trainable per layer; C = A phi with coefficients "fixed")
    W[o, i] = sum_j C[o, i, j] B_j

so the layer trains K k^2 (+ 2) numbers whatever its width. The :class:`DictionaryStudent` stacks such
layers (each followed by ReLU and 2x2 max-pooling), then average pooling to a small grid and a trainable
linear head: the same computation as the plain ``student-cnn`` (:mod:`pqt.targets.students`) whose kernels are
W. :meth:`DictionaryStudent.deployed_state_dict` gives that network's state_dict for a fixed phi.

Scales (our choices, not the paper's): A has N(0, 1/d) entries for d features and phi is normalised to
unit root-mean-square (:func:`normalise_features`), so the coefficients have unit variance whatever the
circuit's distribution; the basis filters start with std sqrt(2 / (C_in k^2 K)), which gives the kernels
He initialisation's variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pqt.targets.registry import NUM_CLASSES
from pqt.targets.students import head_input

_TRANSFORM_SALT = 0xA11CE  # seeds the fixed transforms apart from every other random stream


def normalise_features(distributions: Sequence[Any]) -> torch.Tensor:
    """phi: each circuit's distribution times its length (mean 1, as Quantum-Train's mean scaling),
    concatenated, then scaled to unit root-mean-square (float32).

    Uniform distributions become the all-ones vector; a distribution concentrated on a few outcomes keeps
    its shape, not its larger norm, so the kernels' scale does not depend on it.
    """
    phi = torch.cat([torch.as_tensor(d, dtype=torch.float64).flatten() * len(d) for d in distributions])
    rms = phi.square().mean().sqrt()
    return (phi / rms.clamp_min(1e-12)).to(torch.float32)


class DictionaryConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, basis: int, n_features: int,
                 affine: bool, transform_generator: torch.Generator) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.n_basis = kernel_size, basis
        self.basis = nn.Parameter(torch.randn(basis, kernel_size, kernel_size)
                                  * math.sqrt(2.0 / (in_channels * kernel_size * kernel_size * basis)))
        transform = torch.randn(out_channels * in_channels * basis, n_features, generator=transform_generator,
                                dtype=torch.float64) / math.sqrt(n_features)
        self.register_buffer("transform", transform.to(torch.float32))  # A: fixed, saved, never trained
        self.scale = nn.Parameter(torch.ones(())) if affine else None
        self.shift = nn.Parameter(torch.zeros(())) if affine else None
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def coefficients(self, phi: torch.Tensor) -> torch.Tensor:
        """C (C_out, C_in, K) for the features ``phi``."""
        c = (self.transform @ phi).view(self.out_channels, self.in_channels, self.n_basis)
        if self.scale is not None:
            c = self.scale * c + self.shift
        return c

    def kernels(self, phi: torch.Tensor) -> torch.Tensor:
        """W (C_out, C_in, k, k) = sum_j C[:, :, j] B_j."""
        return torch.einsum("oij,jxy->oixy", self.coefficients(phi), self.basis)

    def forward(self, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernels(phi), self.bias, padding=self.kernel_size // 2)


class DictionaryStudent(nn.Module):
    """Dictionary-convolution layers conditioned by phi, global average pooling, a linear head."""

    def __init__(self, in_channels: int, widths: Sequence[int], kernel_size: int, basis: int, n_features: int,
                 affine: bool, seed: int, head_grid: int = 3) -> None:
        super().__init__()
        self.head_grid = head_grid
        channels = [in_channels, *widths]
        layers = []
        for index, (a, b) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + _TRANSFORM_SALT + index)
            layers.append(DictionaryConv2d(a, b, kernel_size, basis, n_features, affine, g))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(channels[-1] * head_grid * head_grid, NUM_CLASSES)

    def forward(self, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.max_pool2d(F.relu(layer(x, phi)), 2)
        return self.head(head_input(x, self.head_grid))

    def deployed_state_dict(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``student-cnn`` state_dict with every kernel fixed from ``phi`` (plain tensors, on the CPU)."""
        state = {}
        with torch.no_grad():
            for index, layer in enumerate(self.layers):
                state[f"convs.{index}.weight"] = layer.kernels(phi).detach().clone().cpu()
                state[f"convs.{index}.bias"] = layer.bias.detach().clone().cpu()
            state["head.weight"] = self.head.weight.detach().clone().cpu()
            state["head.bias"] = self.head.bias.detach().clone().cpu()
        return state

    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable parameters by part, and the fixed transforms' entries (not trained)."""
        basis = sum(layer.basis.numel() for layer in self.layers)
        mixing = sum(2 for layer in self.layers if layer.scale is not None)
        biases = sum(layer.bias.numel() for layer in self.layers)
        head = sum(p.numel() for p in self.head.parameters())
        return {"basis_parameters": basis, "mixing_parameters": mixing, "conv_bias_parameters": biases,
                "head_parameters": head, "fixed_transform_entries": sum(layer.transform.numel()
                                                                        for layer in self.layers)}
