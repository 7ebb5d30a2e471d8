"""Parameter accounting: what Quantum-Train trains against what the target network has.

Our count is honest: every photonic phase we count enters its circuit (M(M-1) per
GenericInterferometer of MZIs: 72 + 56 = 128 for the paper's pair). The paper counts
3M(M-1)/2 per mesh (108 + 84 = 192), of which only 171 reach its hand-built circuits;
``paper_count_parameters`` reproduces its totals (223, 316, ..., 3292 for chi = 1..10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pqt.mappers.mps import mps_parameter_count

if TYPE_CHECKING:
    from torch import nn

    from pqt.circuits.photonic import PhotonicQNN
    from pqt.training.config import TrainConfig


def paper_phase_count(modes: Sequence[int]) -> int:
    return sum(3 * m * (m - 1) // 2 for m in modes)


def parameter_report(config: TrainConfig, qnns: Sequence[PhotonicQNN], target: nn.Module) -> dict[str, Any]:
    from pqt.targets.networks import n_parameters

    target_parameters = n_parameters(target)
    n_features = max(1, math.ceil(math.log2(target_parameters))) + 1
    mps = mps_parameter_count(n_features, config.bond_dim)
    photonic = sum(q.n_parameters for q in qnns)
    total = mps + photonic
    return {
        "mps_parameters": mps,
        "photonic_parameters": photonic,
        "trainable_parameters": total,
        "target_parameters": target_parameters,
        "compression_ratio": target_parameters / total,
        "paper_count_parameters": mps + paper_phase_count([q.modes for q in qnns]),
        "parameter_counting": (
            "trainable_parameters counts the live interferometer phases (M(M-1) per mesh); "
            "paper_count_parameters uses the paper's 3M(M-1)/2 per mesh"
        ),
    }
