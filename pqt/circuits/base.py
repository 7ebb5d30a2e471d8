"""What every quantum circuit of a Quantum-Train generator offers, photonic or gate-based.

A circuit has trainable real parameters and an output distribution over a fixed, ordered list of
outcomes. The generator only ever asks for that distribution: exactly (numpy), differentiably
(torch, for joint training in simulation), or through a backend (shots, noise, the cloud).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from pqt.errors import UserError


class Circuit(abc.ABC):
    """A parameterised circuit with a probability distribution over ``n_outcomes`` outcomes."""

    kind: ClassVar[str]  # "photonic" or "qubit": which backends can run it

    @property
    @abc.abstractmethod
    def n_parameters(self) -> int:
        """Trainable real parameters (phases or rotation angles)."""

    @property
    @abc.abstractmethod
    def n_outcomes(self) -> int:
        """Length of the output distribution."""

    @abc.abstractmethod
    def exact_distribution(self, parameters: Any) -> np.ndarray:
        """Exact output distribution (sums to 1), float64."""

    @abc.abstractmethod
    def torch_distribution(self, parameters: Any) -> Any:
        """The same distribution from a float64 torch tensor of parameters, differentiable."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Shape of the circuit, recorded in config.json and metrics.json."""

    def random_parameters(self, rng: np.random.Generator) -> np.ndarray:
        """Initial parameters: uniform in [0, 2 pi), as both papers initialise them."""
        return rng.uniform(0.0, 2.0 * np.pi, self.n_parameters)

    def distribution(self, parameters: Any, shots: int | None = None,
                     seed: int | np.random.Generator | None = None) -> np.ndarray:
        """Exact distribution (``shots=None``) or the frequencies of ``shots`` measurement events.

        The events are a true multinomial draw from the exact distribution, seeded by ``seed``.
        """
        probs = self.exact_distribution(parameters)
        if shots is None:
            return probs
        return sample_frequencies(probs, shots, seed)

    def check_parameters(self, parameters: Any) -> None:
        if len(parameters) != self.n_parameters:
            raise UserError(f"{self!r} takes {self.n_parameters} parameters, got {len(parameters)}")


def sample_frequencies(probs: np.ndarray, shots: int,
                       seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Empirical frequencies of ``shots`` events drawn (multinomially) from ``probs``."""
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise UserError(f"shots must be a whole number >= 1 (got {shots!r}); use --shots exact for "
                        "exact probabilities")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    p = np.clip(probs, 0.0, None)
    counts = rng.multinomial(int(shots), p / p.sum())
    return counts / float(shots)
