"""Mapping models: (index bits, circuit value) of each weight -> the weight.

``create_mapper(name, n_weights, ...)`` builds one by name: ``mps`` (photonic QT paper) or ``mlp``
(gate-based QT paper).
"""

from __future__ import annotations

from collections.abc import Sequence

from pqt.errors import UserError
from pqt.mappers.base import MAPPER_INPUTS, Mapper, index_bits
from pqt.mappers.mlp import MLP_ACTIVATIONS, PAPER_WIDTHS, MLPMapper
from pqt.mappers.mps import MPS, MPSMapper, mps_parameter_count

MAPPERS = ("mps", "mlp")

__all__ = ["MAPPERS", "MAPPER_INPUTS", "MLP_ACTIVATIONS", "MLPMapper", "MPS", "MPSMapper", "Mapper", "PAPER_WIDTHS",
           "create_mapper", "index_bits", "mps_parameter_count"]


def create_mapper(name: str, n_weights: int, *, bond_dim: int = 4, init_std: float = 1e-9,
                  widths: Sequence[int] = PAPER_WIDTHS, activation: str = "none",
                  inputs: str = "bits+value") -> Mapper:
    if name == "mps":
        return MPSMapper(n_weights, bond_dim, init_std, inputs)
    if name == "mlp":
        return MLPMapper(n_weights, widths, activation, inputs)
    raise UserError(f"unknown mapper {name!r}: choose one of {', '.join(MAPPERS)}")
