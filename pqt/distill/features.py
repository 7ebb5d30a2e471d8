"""The photonic conditioning signal phi: shot-limited estimates of the circuits' distributions, EMA-smoothed.

Each student step gets a fresh estimate phi_hat_t (new shots, from the backend) and advances the
exponential moving average

    phi_t = beta phi_(t-1) + (1 - beta) phi_hat_t          (phi_1 = phi_hat_1; beta = 0: no smoothing)

over the concatenated distributions; the student sees phi_t normalised (:func:`normalise_features`).
The average starts at the first estimate rather than at zero (so no bias correction is needed): our
choice. The ablation sources (:mod:`pqt.distributions.sources`: random-fixed, random-redraw, constant)
replace the circuits' distributions before the average, everything else equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pqt.distill.student import normalise_features
from pqt.distributions.sources import DistributionSource


class PhotonicFeatures:
    def __init__(self, sizes: Sequence[int], beta: float, source: str, seed: int) -> None:
        self.sizes = list(sizes)
        self.beta = float(beta)
        self.source = DistributionSource(source, self.sizes, seed)
        self.smoothed: torch.Tensor | None = None  # the EMA of the concatenated distributions (float64)

    @property
    def n_features(self) -> int:
        return sum(self.sizes)

    def _raw(self, dists: Sequence[Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(d), dtype=torch.float64).flatten()
                          for d in self.source.replace(list(dists))])

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return normalise_features(torch.split(raw, self.sizes))

    def estimate(self, dists: Sequence[Any]) -> torch.Tensor:
        """phi from one estimate alone (no smoothing, no state change): what a candidate's shots give."""
        return self._normalise(self._raw(dists))

    def update(self, dists: Sequence[Any]) -> torch.Tensor:
        """Advance the average by one estimate; returns the smoothed phi."""
        raw = self._raw(dists)
        self.smoothed = raw if self.smoothed is None else self.beta * self.smoothed + (1.0 - self.beta) * raw
        return self._normalise(self.smoothed)

    def current(self) -> torch.Tensor | None:
        """The smoothed phi as it stands (None before the first estimate)."""
        return None if self.smoothed is None else self._normalise(self.smoothed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ema": torch.empty(0, dtype=torch.float64) if self.smoothed is None else self.smoothed.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ema = state["ema"]
        self.smoothed = None if ema.numel() == 0 else ema.clone().to(torch.float64)
