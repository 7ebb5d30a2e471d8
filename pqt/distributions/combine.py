"""From circuit distributions to one value per weight: combination and scaling.

The distributions of a generator's circuits are combined by their outer (tensor) product, flattened
row-major (value ``70 i + j`` for the photonic paper's pair; a single circuit is used as it is), and
the first m values are used for a target with m weights: weight k reads outcome k. Scalings (which
make values O(1) before the mapping model):

- ``mean`` (photonic QT paper's code): each distribution divided by its own mean, i.e. multiplied by
  its number of outcomes, before the product; any overall normalisation cancels.
- ``qt`` (gate-based QT paper's code): on the first m values of the product p,
  x = (0.8 tanh(0.1 (K / 2) p))^exponent, then x minus its mean; K is the number of combined
  outcomes, so K / 2 = 2^(N-1) for N qubits as in the paper's code. The exponent is 0.3 there
  (some later variants use 0.6).
- ``none``: the probabilities as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from pqt.errors import UserError

SCALINGS = ("mean", "qt", "none")
QT_EXPONENT = 0.3


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


def combine_distributions(dists: Sequence[np.ndarray | torch.Tensor], n_weights: int, scaling: str = "mean",
                          exponent: float = QT_EXPONENT) -> torch.Tensor:
    """P1 (x) P2 (x) ... flattened row-major, first ``n_weights`` values, scaled, as float32.

    Works on numpy arrays and on torch tensors alike (differentiable for joint training).
    """
    if scaling not in SCALINGS:
        raise UserError(f"unknown probability scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")
    combined: torch.Tensor | None = None
    outcomes = 1
    for d in dists:
        p = torch.as_tensor(d, dtype=torch.float64)
        outcomes *= p.numel()
        if scaling == "mean":
            p = p / p.mean().clamp_min(1e-300)
        combined = p if combined is None else torch.outer(combined, p).reshape(-1)
    if combined is None or combined.numel() < n_weights:
        raise UserError(f"combined distribution has {0 if combined is None else combined.numel()} values, "
                        f"target needs {n_weights}")
    values = combined[:n_weights]
    if scaling == "qt":
        values = (0.8 * torch.tanh(0.1 * (outcomes / 2) * values)) ** exponent
        values = values - values.mean()
    return values.to(torch.float32)
