"""Ablations: replace the circuits' distributions fed to the mapping model, everything else unchanged.

- ``circuit`` (also called ``photonic``, its name before gate-based QNNs existed): the circuits'
  distributions (Quantum-Train itself);
- ``random-fixed``: one random vector per QNN, drawn once from the run's seed and kept;
- ``random-redraw``: a fresh random vector at every forward pass (the paper's ablation, but
  keeping the real index bits, unlike the paper's code);
- ``constant``: the uniform distribution (after mean scaling every value is 1).

Random vectors are uniform in [0, 1) and normalised like a distribution, so the mean scaling
before the MPS treats them exactly as it treats photonic ones. The phases are still optimised
(the objective simply does not depend on them), so runs cost the same and compare fairly; under joint
training they simply receive no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DISTRIBUTION_SOURCES = ("circuit", "photonic", "random-fixed", "random-redraw", "constant")


class DistributionSource:
    def __init__(self, kind: str, sizes: Sequence[int], seed: int) -> None:
        self.kind = kind
        self.sizes = list(sizes)
        self._fixed = [self._random(np.random.default_rng([seed, 0xAB1A7E]), n) for n in self.sizes]
        self._redraw = np.random.default_rng([seed, 0x5EED])

    @staticmethod
    def _random(rng: np.random.Generator, n: int) -> np.ndarray:
        v = rng.random(n)
        return v / v.sum()

    def reseed(self, seed: int, round_index: int) -> None:
        self._redraw = np.random.default_rng([seed, round_index, 0x5EED])

    @property
    def redraws(self) -> bool:
        """Whether every call gives a fresh vector (so it cannot be computed once per stage)."""
        return self.kind == "random-redraw"

    def replace(self, circuit: list[Any]) -> list[Any]:
        if self.kind in ("circuit", "photonic"):
            return circuit
        if self.kind == "random-fixed":
            return self._fixed
        if self.kind == "random-redraw":
            return [self._random(self._redraw, n) for n in self.sizes]
        return [np.full(n, 1.0 / n) for n in self.sizes]
