"""A Quantum-Train generator: circuits -> distributions -> values -> mapping model -> weights.

One interface for every Quantum-Train variant. A :class:`QuantumTrainGenerator` holds one or more
circuits (photonic interferometers, gate-based QNNs, or a mix), a scaling, and a mapping model (MPS
or MLP). Given the circuits' distributions (exact, from shots, or from a backend) it returns the
flat weight vector of the target network:

    values  = scale(P_1 (x) P_2 (x) ...)[:m]          (pqt.distributions.combine)
    weights = mapper(bits(k), values[k]) - mean        (pqt.mappers)

The generated weights are the mapping model's outputs minus their mean, so the network starts from
(near) all-zero weights, as in both papers. The circuits' parameters are not held here: training
keeps them (numpy for gradient-free optimisers, a torch leaf for joint training), since on
hardware they are settings sent with each job. Parameter counts come from the built circuits and
modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pqt.circuits.base import Circuit
from pqt.distributions.combine import QT_EXPONENT, check_outcome_capacity, combine_distributions
from pqt.errors import UserError
from pqt.mappers import Mapper, create_mapper

if TYPE_CHECKING:
    from pqt.training.config import TrainConfig

GENERATORS = ("photonic", "qubit")


class QuantumTrainGenerator(nn.Module):
    """Circuits + scaling + mapping model -> the flat weights of a target with ``n_weights`` weights."""

    def __init__(self, circuits: Sequence[Circuit], mapper: Mapper, scaling: str = "mean",
                 scaling_exponent: float = QT_EXPONENT) -> None:
        super().__init__()
        if not circuits:
            raise UserError("a generator needs at least one circuit")
        self.circuits = list(circuits)
        self.mapper = mapper
        self.n_weights = mapper.n_weights
        self.scaling = scaling
        self.scaling_exponent = float(scaling_exponent)
        check_capacity(self.circuits, self.n_weights)

    # ---- shape and accounting --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "+".join(dict.fromkeys(c.kind for c in self.circuits))

    @property
    def circuit_sizes(self) -> list[int]:
        """Trainable parameters of each circuit, in order."""
        return [c.n_parameters for c in self.circuits]

    @property
    def n_circuit_parameters(self) -> int:
        return sum(self.circuit_sizes)

    @property
    def n_mapper_parameters(self) -> int:
        return sum(p.numel() for p in self.mapper.parameters())

    def describe(self) -> dict[str, Any]:
        """Kind and shape, recorded in metrics.json."""
        return {"kind": self.kind, "circuits": [c.describe() for c in self.circuits],
                "mapper": self.mapper.describe(), "scaling": self.scaling,
                **({"scaling_exponent": self.scaling_exponent} if self.scaling == "qt" else {}),
                "weights": self.n_weights}

    # ---- circuit parameters ------------------------------------------------------------------------------
    def initial_parameters(self, rng: np.random.Generator) -> list[np.ndarray]:
        return [c.random_parameters(rng) for c in self.circuits]

    def split(self, flat: Any) -> list[Any]:
        """One flat parameter vector (numpy or torch) -> one vector per circuit."""
        if isinstance(flat, torch.Tensor):
            return list(torch.split(flat, self.circuit_sizes))
        return list(np.split(np.asarray(flat, dtype=np.float64), np.cumsum(self.circuit_sizes)[:-1]))

    def torch_distributions(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Differentiable exact distributions from a float64 tensor of all circuit parameters."""
        return [c.torch_distribution(p) for c, p in zip(self.circuits, self.split(flat), strict=True)]

    # ---- the map -------------------------------------------------------------------------------------------
    def values(self, distributions: Sequence[Any]) -> torch.Tensor:
        """Scaled combined value of each weight (float32, on the mapper's device)."""
        values = combine_distributions(distributions, self.n_weights, self.scaling, self.scaling_exponent)
        return values.to(self.mapper.bits.device)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (m,) -> weights (m,): the mapping model's outputs minus their mean."""
        raw = self.mapper(values)
        return raw - raw.mean()

    def generate(self, distributions: Sequence[Any]) -> torch.Tensor:
        return self(self.values(distributions))


def check_capacity(circuits: Sequence[Circuit], n_weights: int) -> None:
    """Refuse circuits whose combined outcomes cannot give every weight a value, saying what fits."""
    if math.prod(c.n_outcomes for c in circuits) >= n_weights:
        return
    if all(c.kind == "photonic" for c in circuits):
        check_outcome_capacity([(c.modes, c.photons) for c in circuits], n_weights)  # type: ignore[attr-defined]
    need = max(1, math.ceil(math.log2(n_weights)))
    raise UserError(f"too few outcomes for the target: {math.prod(c.n_outcomes for c in circuits):,} < "
                    f"{n_weights:,} weights; a gate-based QNN needs --qubits >= {need}")


def build_circuits(config: TrainConfig, n_weights: int) -> list[Circuit]:
    """The circuits a configuration asks for (``--generator``, modes/photons or qubits/blocks)."""
    if config.generator == "photonic":
        from pqt.circuits.photonic import PhotonicQNN

        return [PhotonicQNN(m, n) for m, n in zip(config.qnn_modes, config.qnn_photons, strict=True)]
    if config.generator == "qubit":
        from pqt.circuits.qubit import QubitQNN, qubits_for

        return [QubitQNN(config.qubits or qubits_for(n_weights), config.blocks)]
    raise UserError(f"unknown generator {config.generator!r}: choose one of {', '.join(GENERATORS)}")


def build_generator(config: TrainConfig, n_weights: int) -> QuantumTrainGenerator:
    """The generator a configuration describes, for a target of ``n_weights`` weights."""
    circuits = build_circuits(config, n_weights)
    check_capacity(circuits, n_weights)
    mapper = create_mapper(config.mapper_kind, n_weights, bond_dim=config.bond_dim, init_std=config.mps_init_std,
                           widths=config.mlp_widths, activation=config.mlp_activation, inputs=config.mapper_inputs)
    return QuantumTrainGenerator(circuits, mapper, config.scaling_kind, config.scaling_exponent)
