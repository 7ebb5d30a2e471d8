"""Quantum-Train generator: photonic distributions -> MPS -> the target network's weights.

Scaling before the MPS (as in the paper's code): each QNN's distribution is divided by its own
mean, i.e. multiplied by its number of patterns, so values are O(1) whatever C(M, N) is (and any
overall normalisation cancels). The scaled vectors are combined by the outer (tensor) product,
flattened row-major (index 70 i + j for the paper's pair), and the first m values are used for
a target with m weights. The generated weights are the MPS outputs minus their mean, so the
network starts from all-zero weights as in the paper.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pqt.errors import UserError
from pqt.mappers.mps import MPSMapper, index_bits

SCALINGS = ("mean", "none")


def check_outcome_capacity(sizes: Sequence[tuple[int, int]], n_weights: int) -> None:
    """Refuse QNN shapes whose combined patterns cannot cover every weight, suggesting fits."""
    available = math.prod(math.comb(m, n) for m, n in sizes)
    if available >= n_weights:
        return
    shape = " x ".join(f"{m} modes/{n} photons ({math.comb(m, n):,})" for m, n in sizes)
    fits = []
    photons = [n for _, n in sizes]
    if len(sizes) == 2:
        for m1, m2 in itertools.product(range(2, 17), repeat=2):
            if m1 >= photons[0] and m2 >= photons[1] and m1 >= m2:
                total = math.comb(m1, photons[0]) * math.comb(m2, photons[1])
                if total >= n_weights:
                    fits.append((total, m1, m2))
        fits.sort()
        hint = "; ".join(f"{m1} modes/{photons[0]} photons x {m2} modes/{photons[1]} photons ({t:,})"
                         for t, m1, m2 in fits[:3])
    else:
        hint = "more modes or photons per QNN"
    raise UserError(f"too few photon patterns for the target: {shape} = {available:,} < {n_weights:,} "
                    f"weights; configurations that fit: {hint}")


def combine_distributions(dists: Sequence[np.ndarray | torch.Tensor], n_weights: int,
                          scaling: str = "mean") -> torch.Tensor:
    """P1 (x) P2 (x) ... flattened row-major, first ``n_weights`` values, as float32.

    Works on numpy arrays and on torch tensors alike (differentiable for the exact-gradient path).
    """
    if scaling not in SCALINGS:
        raise UserError(f"unknown probability scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")
    combined: torch.Tensor | None = None
    for d in dists:
        p = torch.as_tensor(d, dtype=torch.float64)
        if scaling == "mean":
            p = p / p.mean().clamp_min(1e-300)
        combined = p if combined is None else torch.outer(combined, p).reshape(-1)
    if combined is None or combined.numel() < n_weights:
        raise UserError(f"combined distribution has {0 if combined is None else combined.numel()} values, "
                        f"target needs {n_weights}")
    return combined[:n_weights].to(torch.float32)


class WeightGenerator(nn.Module):
    """The trainable classical part: MPS over (index bits, probability value) per weight."""

    def __init__(self, n_weights: int, bond_dim: int, init_std: float = 1e-9) -> None:
        super().__init__()
        self.n_weights = n_weights
        self.register_buffer("bits", index_bits(n_weights))
        self.mps = MPSMapper(self.bits.shape[1] + 1, bond_dim, init_std)
        self._plan = self.mps.plan_fixed(self.bits)

    @property
    def n_features(self) -> int:
        return self.mps.n_inputs

    def forward(self, combined: torch.Tensor) -> torch.Tensor:
        """combined: (n_weights,) scaled probability values -> (n_weights,) weights."""
        raw = self.mps.forward_planned(self._plan, combined.to(self.bits))
        return raw - raw.mean()

    def reference_forward(self, combined: torch.Tensor) -> torch.Tensor:
        """Straightforward per-weight contraction (the paper's way); for tests and benchmarks."""
        features = torch.cat([self.bits, combined.to(self.bits).unsqueeze(1)], dim=1)
        raw = self.mps(features)
        return raw - raw.mean()
