"""Local ideal simulation: exact probabilities, or shots drawn from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from backends.base import Backend, Evaluation
from pqt.circuits.base import sample_frequencies

if TYPE_CHECKING:
    from pqt.circuits.photonic import PhotonicQNN


class SLOSBackend(Backend):
    """Perceval-circuit simulation on this machine (see ``pqt.circuits.photonic`` for the method).

    With ``shots=S`` each evaluation returns the frequencies of S detection events drawn
    multinomially from the exact collision-free distribution (ideal detectors: every event has
    N clicks, so shots sent = shots kept).
    """

    name = "slos"
    description = "local exact simulation (SLOS-equivalent permanents), optional shot sampling"

    def _run(self, qnns: Sequence[PhotonicQNN], phases: Sequence[np.ndarray], tag: str) -> list[Evaluation]:
        results = []
        for qnn, ph in zip(qnns, phases, strict=True):
            probs = qnn.exact_distribution(ph)
            if self.shots is None:
                results.append(Evaluation(probs))
            else:
                freqs = sample_frequencies(probs, self.shots, self.rng)
                results.append(Evaluation(freqs, self.shots, self.shots))
        return results
