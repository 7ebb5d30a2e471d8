"""What a mapping model is: one small network applied to every weight of the target.

Weight k's input is its index in binary (the ceil(log2 m) bits of k, most significant first, each
as -1 or +1) followed by its scaled circuit value; the output is one number, the raw weight. With
``inputs="value"`` the index bits are left out, so each weight is a function of its circuit value
alone: the circuit's distribution must then carry the network's structure by itself.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from pqt.errors import UserError

MAPPER_INPUTS = ("bits+value", "value")


def index_bits(n_weights: int) -> torch.Tensor:
    """Binary code of each weight index, most significant bit first, encoded as -1/+1.

    ceil(log2 m) bits: 13 for the paper CNN's 6,690 weights.
    """
    n_bits = max(1, math.ceil(math.log2(n_weights)))
    k = torch.arange(n_weights).unsqueeze(1)
    shifts = torch.arange(n_bits - 1, -1, -1)
    bits = (k >> shifts) & 1
    return bits.float() * 2.0 - 1.0


class Mapper(nn.Module):
    """Maps (index bits, value) of each of ``n_weights`` weights to one raw output.

    Subclasses implement :meth:`forward` (values (m,) -> raw outputs (m,)); the bits are a buffer,
    so ``.to(device)`` moves them with the parameters.
    """

    kind: ClassVar[str]

    def __init__(self, n_weights: int, inputs: str = "bits+value") -> None:
        super().__init__()
        if inputs not in MAPPER_INPUTS:
            raise UserError(f"unknown mapper inputs {inputs!r}: choose one of {', '.join(MAPPER_INPUTS)}")
        self.n_weights = int(n_weights)
        self.inputs = inputs
        bits = index_bits(self.n_weights) if inputs == "bits+value" else torch.zeros(self.n_weights, 0)
        self.register_buffer("bits", bits)

    @property
    def n_features(self) -> int:
        """Inputs per weight: the index bits (if used) and the value."""
        return int(self.bits.shape[1]) + 1

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def features(self, values: torch.Tensor) -> torch.Tensor:
        """(m, n_features): the bits followed by the value, per weight."""
        return torch.cat([self.bits, values.to(self.bits).unsqueeze(1)], dim=1)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": self.inputs, "features": self.n_features,
                "parameters": self.n_parameters}
