"""The photonic QT paper's mapping model: a matrix product state over (index bits, value) per weight.

The paper's parameterisation (TorchMPS style): n input sites with the feature map
x -> [x, 1 - x], open boundaries, the output site in the middle (n // 2 sites on its left), and
one trainable bias matrix per half added to every site matrix of that half:

    A_s(x) = W_s[0] * x + W_s[1] * (1 - x) + B_half          (chi x chi)
    y      = e_0^T  A_1 ... A_{n/2}  O  A_{n/2+1} ... A_n  e_0

with fixed boundary vectors e_0. Parameters: n * 2 * chi^2 + chi^2 (O) + 2 * chi^2 (B) =
31 chi^2 for the paper's n = 14 features. Initialisation starts near the identity (cores
~ N(0, init_std), biases and O = identity), so every weight starts at the same value.

:class:`MPS` is the network over any n features; :class:`MPSMapper` is the mapping model, which
feeds it each weight's fixed index bits and varying value and contracts it per distinct bit
pattern (exact, and much cheaper than one chain of matrix products per weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pqt.errors import UserError
from pqt.mappers.base import Mapper


@dataclass(frozen=True)
class FixedSitesPlan:
    """Precomputed structure for inputs whose features are fixed except the last one.

    In Quantum-Train only the probability value (the last feature) changes between calls; the
    13 index bits never do, and they take few distinct values per half (<= 2^7 each). Contracting
    each half once per *distinct* bit pattern and gathering is exact and much cheaper than one
    chain of matrix products per weight.
    """

    left_unique: torch.Tensor  # (U_l, n_left) distinct left-half feature rows
    left_inverse: torch.Tensor  # (B,) row -> index into left_unique
    right_unique: torch.Tensor  # (U_r, n_right - 1) distinct right-half rows, last site excluded
    right_inverse: torch.Tensor  # (B,)
    pair: torch.Tensor  # (B,) left_inverse * U_r + right_inverse: row b's (left, right) pair
    pair_is_range: bool  # pair == arange(B): rows are read by a slice

    @staticmethod
    def build(left_unique: torch.Tensor, left_inverse: torch.Tensor, right_unique: torch.Tensor,
              right_inverse: torch.Tensor) -> FixedSitesPlan:
        pair = left_inverse * right_unique.shape[0] + right_inverse
        is_range = bool(torch.equal(pair, torch.arange(pair.shape[0], device=pair.device)))
        return FixedSitesPlan(left_unique, left_inverse, right_unique, right_inverse, pair, is_range)


def mps_parameter_count(n_inputs: int, bond_dim: int) -> int:
    return (2 * n_inputs + 3) * bond_dim**2


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows and each row's index among them (zero columns: one distinct, empty row)."""
    if rows.shape[1] == 0:
        return rows[:1], torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    return torch.unique(rows, dim=0, return_inverse=True)


class MPS(nn.Module):
    """The tensor network: n_inputs features (x -> [x, 1 - x] each) -> one output."""

    def __init__(self, n_inputs: int, bond_dim: int, init_std: float = 1e-9) -> None:
        super().__init__()
        if isinstance(bond_dim, bool) or int(bond_dim) != bond_dim or bond_dim < 1:
            raise UserError(f"bond dimension must be a whole number >= 1 (got {bond_dim!r})")
        if n_inputs < 1:
            raise UserError(f"the MPS needs at least 1 input feature (got {n_inputs})")
        chi = int(bond_dim)
        self.bond_dim = chi
        self.n_inputs = n_inputs
        self.n_left = n_inputs // 2
        n_right = n_inputs - self.n_left
        eye = torch.eye(chi)
        self.left_cores = nn.Parameter(torch.randn(self.n_left, 2, chi, chi) * init_std)
        self.right_cores = nn.Parameter(torch.randn(n_right, 2, chi, chi) * init_std)
        self.left_bias = nn.Parameter(eye.clone())
        self.right_bias = nn.Parameter(eye.clone())
        self.output_core = nn.Parameter(eye + torch.randn(chi, chi) * init_std)
        boundary = torch.zeros(chi)
        boundary[0] = 1.0
        self.register_buffer("boundary", boundary)

    def _site_matrices(self, x: torch.Tensor, cores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: (B, s) -> (B, s, chi, chi); both feature components in one contraction.
        feats = torch.stack([x, 1.0 - x], dim=-1)
        return torch.einsum("bsf,sflr->bslr", feats, cores) + bias

    def plan_fixed(self, fixed: torch.Tensor) -> FixedSitesPlan:
        """Plan for inputs ``cat([fixed, last])`` where only ``last`` (B,) will vary."""
        if fixed.shape[-1] != self.n_inputs - 1 or self.n_inputs - self.n_left < 1:
            raise ValueError(f"fixed features must have {self.n_inputs - 1} columns")
        lu, li = _unique_rows(fixed[:, : self.n_left])
        ru, ri = _unique_rows(fixed[:, self.n_left :])
        return FixedSitesPlan.build(lu, li, ru, ri)

    def forward_planned(self, plan: FixedSitesPlan, last: torch.Tensor) -> torch.Tensor:
        """Same result as ``forward(cat([fixed, last[:, None]], 1))``, contracted per distinct row."""
        lu, ru = plan.left_unique, plan.right_unique
        # unbind: one backward node for all sites (indexing site by site would zero-fill a gradient
        # of the whole (U, sites, chi, chi) tensor per site).
        v = self.boundary.expand(lu.shape[0], -1)
        for site in self._site_matrices(lu, self.left_cores, self.left_bias).unbind(1):
            v = torch.bmm(v.unsqueeze(1), site).squeeze(1)
        v = v @ self.output_core  # (U_l, chi)
        # The last site acts on e_0 affinely: A(x) e_0 = x * slope + offset, so every output is
        # y = x * (v^T A_fixed slope) + (v^T A_fixed offset), with A_fixed the product of the right
        # half's fixed sites: two (U_l x U_r) tables read per weight.
        n_fixed_right = ru.shape[1]
        last_core = self.right_cores[n_fixed_right]  # (2, chi, chi)
        slope = last_core[0, :, 0] - last_core[1, :, 0]
        offset = last_core[1, :, 0] + self.right_bias[:, 0]
        w = torch.stack([slope, offset], dim=1).expand(ru.shape[0], -1, -1)  # (U_r, chi, 2)
        if n_fixed_right:
            right = self._site_matrices(ru, self.right_cores[:n_fixed_right], self.right_bias)
            for site in reversed(right.unbind(1)):  # matrix-times-(chi x 2), never matrix products
                w = torch.bmm(site, w)
        # Then ONE (U_l x chi) @ (chi x 2 U_r) GEMM: row l * U_r + r holds that pair's (slope, offset).
        tables = (v @ w.permute(1, 0, 2).reshape(self.bond_dim, -1)).reshape(-1, 2)
        # Weights in index order with the left half the high bits make pair k = k: a slice, whose
        # backward is a copy, instead of a gather, whose backward is a scatter-add.
        rows = tables[: last.shape[0]] if plan.pair_is_range else tables[plan.pair]
        slopes, offsets = rows.unbind(1)
        return last * slopes + offsets

    def _sweep_left(self, mats: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        for s in range(mats.shape[1]):
            v = torch.bmm(v.unsqueeze(1), mats[:, s]).squeeze(1)
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_inputs) features -> (B,) outputs."""
        if x.shape[-1] != self.n_inputs:
            raise ValueError(f"MPS expects {self.n_inputs} features, got {x.shape[-1]}")
        left = self._site_matrices(x[:, : self.n_left], self.left_cores, self.left_bias)
        right = self._site_matrices(x[:, self.n_left :], self.right_cores, self.right_bias)
        batch = x.shape[0]
        v = self._sweep_left(left, self.boundary.expand(batch, -1)) @ self.output_core
        w = self.boundary.expand(batch, -1)
        for s in reversed(range(right.shape[1])):  # sweep right -> output site
            w = torch.bmm(right[:, s], w.unsqueeze(-1)).squeeze(-1)
        return (v * w).sum(-1)



class MPSMapper(Mapper):
    """The MPS as a mapping model: (index bits, value) of each weight -> raw weight.

    The bits never change, so the contraction plan (distinct bit patterns per half) is computed once
    and kept in buffers (moved by ``.to(device)`` with everything else).
    """

    kind = "mps"

    def __init__(self, n_weights: int, bond_dim: int, init_std: float = 1e-9, inputs: str = "bits+value") -> None:
        super().__init__(n_weights, inputs)
        self.mps = MPS(self.n_features, bond_dim, init_std)
        plan = self.mps.plan_fixed(self.bits)
        # Buffers, so .to(device) moves them. plan_pair is derived from the others and kept out of the
        # state_dict, so checkpoints written before it existed still load.
        for name in ("left_unique", "left_inverse", "right_unique", "right_inverse"):
            self.register_buffer(f"plan_{name}", getattr(plan, name))
        self.register_buffer("plan_pair", plan.pair, persistent=False)
        self.plan_pair_is_range = plan.pair_is_range

    @property
    def bond_dim(self) -> int:
        return self.mps.bond_dim

    @property
    def plan(self) -> FixedSitesPlan:
        return FixedSitesPlan(self.plan_left_unique, self.plan_left_inverse, self.plan_right_unique,
                              self.plan_right_inverse, self.plan_pair, self.plan_pair_is_range)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.mps.forward_planned(self.plan, values.to(self.bits))

    def reference_forward(self, values: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        """Straightforward per-weight contraction (the paper's way); for tests and benchmarks.

        ``limit``: only the first ``limit`` weights (a benchmark times a slice of a large target).
        """
        return self.mps(self.features(values)[:limit])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bond_dim": self.bond_dim}
