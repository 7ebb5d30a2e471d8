"""Quantum-Train as a training method: the circuits' distributions generate a target network's weights.

The loss of a batch is the target's cross-entropy with the generated weights; the circuit-parameter
objective is the same loss on a fixed batch (the paper CNN's fast path when it applies); the round's
network is the target with the weights generated from fresh circuit evaluations. The ablation sources
(:mod:`pqt.distributions.sources`) replace the circuits' distributions here, everything else equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pqt.distributions.sources import DistributionSource
from pqt.generator import build_generator
from pqt.targets import create_target, functional_forward, n_parameters, unflatten
from pqt.targets.functional import channels_last_applies
from pqt.targets.paper_cnn_fast import FixedBatchLoss, fast_path_applies, training_forward
from pqt.training.accounting import parameter_report
from pqt.training.config import TrainConfig
from pqt.training.method import Method, Network


class QuantumTrainMethod(Method):
    name = "quantum-train"

    def __init__(self, config: TrainConfig, input_shape: tuple[int, ...], device: torch.device) -> None:
        self.config = config
        self.device = device
        self.target = create_target(config.target, input_shape, config.activation).to(device)
        self.n_weights = n_parameters(self.target)
        torch.manual_seed(config.seed)
        self.generator = build_generator(config, self.n_weights).to(device)
        self.circuits = self.generator.circuits
        self.source = DistributionSource(config.distribution_source, [c.n_outcomes for c in self.circuits],
                                         config.seed)
        self._values: torch.Tensor | None = None
        self._stage_dists: Sequence[np.ndarray] | None = None
        probe = torch.zeros(1, *input_shape, device=device)
        self.fast_path = bool(config.fast_path and fast_path_applies(self.target, torch.zeros(self.n_weights,
                                                                                                device=device), probe))
        self.channels_last = bool(config.fast_path and not self.fast_path and channels_last_applies(self.target, probe))

    def module(self) -> nn.Module:
        return self.generator

    def describe(self) -> dict[str, Any]:
        return self.generator.describe()

    def parameter_report(self) -> dict[str, Any]:
        return parameter_report(self.generator, self.target)

    def metrics_fields(self) -> dict[str, Any]:
        return {"target": self.config.target, "bond_dim": self.config.bond_dim}

    def begin_round(self, seed: int, round_index: int) -> None:
        self.source.reseed(seed, round_index)

    def begin_adam_stage(self, dists: Sequence[np.ndarray] | None) -> None:
        self._stage_dists = dists
        # Computed once per stage (for random-redraw too: it draws once here, as it always has).
        self._values = None if dists is None else self.generator.values(self.source.replace(dists))

    def _weights(self, dists: Sequence[Any]) -> torch.Tensor:
        return self.generator.generate(self.source.replace(dists))

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, dists: Sequence[np.ndarray] | None,
                   joint_dists: Sequence[torch.Tensor] | None, *, indices: torch.Tensor) -> torch.Tensor:
        if joint_dists is not None:
            weights = self.generator.generate(joint_dists)
        elif self.source.redraws:
            weights = self._weights(dists)  # a fresh vector every forward pass
        else:
            weights = self.generator(self._values)
        return F.cross_entropy(training_forward(self.target, weights, x, self.config.fast_path), y)

    def batch_objective(self, images: torch.Tensor, labels: torch.Tensor, *,
                        indices: torch.Tensor) -> Callable[[Sequence[np.ndarray]], float]:
        loss = FixedBatchLoss(self.target, images, labels, self.config.fast_path)

        def objective(dists: Sequence[np.ndarray]) -> float:
            with torch.inference_mode():
                return loss(self._weights(dists))

        return objective

    def network(self, dists: Sequence[Any]) -> Network:
        with torch.no_grad():
            weights = self._weights(dists)
        state = {k: v.detach().clone().cpu() for k, v in unflatten(self.target, weights).items()}
        return Network(lambda x: functional_forward(self.target, weights, x), state)
