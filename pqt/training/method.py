"""What the one training loop trains: a :class:`Method` (Quantum-Train, distillation, ...).

The loop (:mod:`pqt.training.trainer`) owns everything methods share: data, the backend and its shot
accounting, the random streams, the circuits' parameters (numpy vectors for gradient-free optimisers,
a torch leaf for joint training), the Adam optimisers and learning-rate schedules, rounds,
checkpoints, metrics and logs. A method owns its classical model and says how circuit
distributions and a batch of images become a loss:

- :meth:`Method.batch_loss`: the Adam stage's loss on one batch;
- :meth:`Method.batch_objective`: the circuit-parameter optimiser's objective on a fixed batch;
- :meth:`Method.network`: the trained classical network of the round (evaluated and saved as model.pt).

Batches come with the row indices of their images in the training set, so a method can look up
per-image data it prepared once (:meth:`Method.prepare`; e.g. a distillation teacher's logits).
:func:`create_method` picks the method a configuration names (its class's ``METHOD``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pqt.circuits.base import Circuit

if TYPE_CHECKING:
    from pqt.data import Dataset
    from pqt.training.config import TrainConfig


@dataclass
class Network:
    """A round's trained classical network: how to run it, and its plain state_dict (model.pt)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    state_dict: dict[str, torch.Tensor]


class Method(abc.ABC):
    """A training method of the loop. Subclasses build their model in ``__init__``."""

    name: ClassVar[str]
    circuits: list[Circuit]
    # True when every Adam step needs fresh circuit evaluations (e.g. new shots each step); the loop then
    # asks the backend once per step instead of once per Adam stage. A method may set it per instance.
    fresh_distributions_per_step: bool = False

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The trainable classical model (its parameters go to Adam; its state_dict to the checkpoint)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Kind and shape, recorded in metrics.json."""

    @abc.abstractmethod
    def parameter_report(self) -> dict[str, Any]:
        """Trainable and deployed parameter counts, from the built modules."""

    def split(self, flat: Any) -> list[Any]:
        """One flat vector of all circuit parameters (numpy or torch) -> one vector per circuit."""
        sizes = [c.n_parameters for c in self.circuits]
        if isinstance(flat, torch.Tensor):
            return list(torch.split(flat, sizes))
        return list(np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1]))

    def initial_parameters(self, rng: np.random.Generator) -> list[np.ndarray]:
        return [c.random_parameters(rng) for c in self.circuits]

    def torch_distributions(self, flat: torch.Tensor,
                            simulate: Callable[[Circuit, torch.Tensor], torch.Tensor] | None = None,
                            ) -> list[torch.Tensor]:
        """Differentiable exact distributions of every circuit (joint training).

        ``simulate(circuit, parameters)`` gives one circuit's distribution: the backend's (the training
        loop passes ``Backend.torch_distribution``, which knows its noise model); the ideal one by default.
        """
        simulate = simulate or (lambda circuit, parameters: circuit.torch_distribution(parameters))
        return [simulate(c, p) for c, p in zip(self.circuits, self.split(flat), strict=True)]

    def prepare(self, train_set: Dataset) -> None:  # noqa: B027  (optional hook)
        """Called once with the run's training split, before training (row i of it is index i of a batch)."""

    def metrics_fields(self) -> dict[str, Any]:
        """Method-specific keys of metrics.json, written after ``generator``."""
        return {}

    def begin_round(self, seed: int, round_index: int) -> None:  # noqa: B027  (optional hook)
        """Reseed the method's own random streams for round ``round_index`` (resume replays them)."""

    def begin_adam_stage(self, dists: Sequence[np.ndarray] | None) -> None:  # noqa: B027  (optional hook)
        """Called once before each Adam stage with the circuits' current distributions (None when joint)."""

    @abc.abstractmethod
    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, dists: Sequence[np.ndarray] | None,
                   joint_dists: Sequence[torch.Tensor] | None, *, indices: torch.Tensor) -> torch.Tensor:
        """The Adam stage's loss on one batch (called once per Adam step).

        ``dists``: this step's distributions (fresh when :attr:`fresh_distributions_per_step`, else the
        stage's); ``joint_dists``: differentiable distributions when the circuits train jointly;
        ``indices``: the batch's rows in the training split.
        """

    @abc.abstractmethod
    def batch_objective(self, images: torch.Tensor, labels: torch.Tensor, *,
                        indices: torch.Tensor) -> Callable[[Sequence[np.ndarray]], float]:
        """The circuit-parameter optimiser's objective on a fixed batch: distributions -> loss (no gradient)."""

    def round_objective(self, network: Network, images: torch.Tensor, labels: torch.Tensor, *,
                        indices: torch.Tensor) -> float:
        """The round's network judged by the optimiser's objective on its fixed batch (logged as its end value).

        The default is the cross-entropy, Quantum-Train's objective.
        """
        with torch.inference_mode():
            return float(F.cross_entropy(network.forward(images), labels).item())

    @abc.abstractmethod
    def network(self, dists: Sequence[Any]) -> Network:
        """The classical network the method deploys, given the circuits' distributions."""

    def state_dict(self) -> dict[str, Any]:
        """Everything to checkpoint: the module's state and any other state of the method."""
        return self.module().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module().load_state_dict(state)


def create_method(config: TrainConfig, input_shape: tuple[int, ...], device: torch.device) -> Method:
    """The method a configuration trains: Quantum-Train for a TrainConfig, distillation for a DistillConfig."""
    if config.METHOD == "distill":
        from pqt.distill.method import DistillMethod

        return DistillMethod(config, input_shape, device)  # type: ignore[arg-type]
    from pqt.training.quantum_train import QuantumTrainMethod

    return QuantumTrainMethod(config, input_shape, device)
