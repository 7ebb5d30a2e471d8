"""PQKD as a training method of the one loop (:mod:`pqt.training.trainer`).

Each round: ``adam_epochs`` student epochs of Adam on the basis filters, mixing scales, biases and head,
every step with a fresh shot-limited estimate of the circuit's distribution (through the backend: shots,
noise, the cloud's journal and budget) advancing the EMA-smoothed features phi; then a gradient-free
update of the circuit's phases (SPSA by default) on the distillation loss of a fixed batch, each
candidate judged by the features its own shots give. After the round the network is deployed: one more
estimate at the new phases advances phi, and the kernels are fixed from it. That plain ``student-cnn`` is
what the loop evaluates and saves as model.pt.

Loss (Hinton et al.'s): alpha T^2 KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) CE(s, y), with the
teacher's logits t looked up from its cache by the batch's rows. ``--student plain`` trains the same
network's kernels directly with the same loss (the classical KD baseline): no circuit, no phase stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pqt.data import Dataset
from pqt.distill.config import STUDENT_TARGET, DistillConfig
from pqt.distill.features import PhotonicFeatures
from pqt.distill.student import DictionaryStudent
from pqt.distill.teacher import Teacher, load_teacher, training_logits
from pqt.errors import UserError
from pqt.targets import create_target, n_parameters
from pqt.targets.students import StudentCNN, check_depth
from pqt.training.method import Method, Network


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """alpha T^2 KL(teacher || student, both softened by T) + (1 - alpha) cross-entropy (batch means)."""
    ce = F.cross_entropy(student, labels)
    if teacher is None or alpha == 0:
        return ce
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  log_target=True, reduction="batchmean")
    return alpha * temperature * temperature * kl + (1.0 - alpha) * ce


def _digest_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


class DistillMethod(Method):
    name = "distill"

    def __init__(self, config: DistillConfig, input_shape: tuple[int, ...], device: torch.device) -> None:
        self.config = config
        self.device = device
        check_depth(config.widths, input_shape)
        self.dictionary = config.student == "dictionary"
        if self.dictionary:
            from pqt.circuits.photonic import PhotonicQNN

            self.circuits = [PhotonicQNN(m, n) for m, n in zip(config.qnn_modes, config.qnn_photons, strict=True)]
        else:
            self.circuits = []
        # New shots at every student step; exact probabilities do not change within a stage, so the loop's
        # one evaluation per stage gives every step the same estimate (the average still advances per step).
        self.fresh_distributions_per_step = self.dictionary and config.shots is not None
        self.features = PhotonicFeatures([c.n_outcomes for c in self.circuits], config.ema_beta,
                                         config.distribution_source, config.seed)
        options = {"widths": config.widths, "kernel_size": config.kernel_size, "head_grid": config.head_grid}
        torch.manual_seed(config.seed)  # the student's initialisation (the transforms have their own seeds)
        self.student: nn.Module
        if self.dictionary:
            self.student = DictionaryStudent(input_shape[0], config.widths, config.kernel_size, config.basis,
                                             self.features.n_features, config.coefficients == "affine", config.seed,
                                             config.head_grid)
        else:
            self.student = StudentCNN(input_shape[0], config.widths, config.kernel_size, config.head_grid)
        self.student.to(device)
        self.deployed = create_target(STUDENT_TARGET, input_shape, options=options).to(device).eval()
        self.teacher: Teacher | None = (load_teacher(config.teacher, config.dataset, input_shape)
                                        if config.alpha > 0 and config.teacher else None)
        self.teacher_logits: torch.Tensor | None = None
        # Shot noise of the per-step estimates, measured from consecutive estimates within a student stage
        # (the phases are fixed there, so their difference is noise alone): sums of squares and counts.
        self._previous_estimate: torch.Tensor | None = None
        self._noise = torch.zeros(2, dtype=torch.float64)

    # ---- what the loop asks -------------------------------------------------------------------------------
    def module(self) -> nn.Module:
        return self.student

    def prepare(self, train_set: Dataset) -> None:
        if self.teacher is not None:
            self.teacher_logits = training_logits(self.teacher, train_set.images, self.config.data_dir,
                                                  self.device).to(self.device)

    def describe(self) -> dict[str, Any]:
        c = self.config
        student = {"kind": c.student, "widths": list(c.widths), "kernel_size": c.kernel_size,
                   "head_grid": c.head_grid}
        if self.dictionary:
            student.update({"basis": c.basis, "coefficients": c.coefficients})
        return {"kind": "pqkd" if self.dictionary else "plain-kd" if self.teacher else "plain",
                "circuits": [q.describe() for q in self.circuits], "features": self.features.n_features,
                "feature_source": c.distribution_source, "ema_beta": c.ema_beta, "student": student}

    def metrics_fields(self) -> dict[str, Any]:
        c = self.config
        return {"target": STUDENT_TARGET, "student": c.student, "widths": list(c.widths), "basis": c.basis,
                "kernel_size": c.kernel_size, "head_grid": c.head_grid, "alpha": c.alpha,
                "temperature": c.temperature, "ema_beta": c.ema_beta, "feature_source": c.distribution_source,
                "feature_noise": self.feature_noise,
                "teacher": self.teacher.describe() if self.teacher else None}

    def parameter_report(self) -> dict[str, Any]:
        student = sum(p.numel() for p in self.student.parameters())
        parts = (self.student.parameter_breakdown() if isinstance(self.student, DictionaryStudent) else
                 {"basis_parameters": 0, "mixing_parameters": 0,
                  "conv_bias_parameters": sum(conv.bias.numel() for conv in self.student.convs),
                  "head_parameters": sum(p.numel() for p in self.student.head.parameters()),
                  "fixed_transform_entries": 0})
        phases = sum(q.n_parameters for q in self.circuits)
        deployed = n_parameters(self.deployed)
        trainable = student + phases
        return {
            "teacher_parameters": self.teacher.parameters if self.teacher else None,
            "student_trainable_parameters": student, **parts,
            "photonic_parameters": phases, "circuit_parameters": phases,
            "trainable_parameters": trainable,
            "deployed_parameters": deployed, "target_parameters": deployed,
            "compression_ratio": deployed / trainable,
            "parameter_counting": (
                "trainable_parameters = the student's trainable parameters (basis filters, per-layer mixing scale "
                "and shift, conv biases, head; every kernel weight for --student plain) + the photonic phases; "
                "fixed_transform_entries (the seeded transforms A_l) are stored, never trained, and not counted; "
                "deployed_parameters is the plain student-cnn's size"),
        }

    def begin_round(self, seed: int, round_index: int) -> None:
        self.features.source.reseed(seed, round_index)

    def begin_adam_stage(self, dists: Sequence[np.ndarray] | None) -> None:
        self._previous_estimate = None  # the phases changed since the last stage

    def _record_noise(self, dists: Sequence[np.ndarray]) -> None:
        estimate = self.features.estimate(dists).to(torch.float64)
        if self._previous_estimate is not None:
            # E|a - b|^2 = 2 d sigma^2 for two independent estimates with per-component variance sigma^2
            self._noise += torch.tensor([float((estimate - self._previous_estimate).square().sum()) / 2.0,
                                         float(estimate.numel())], dtype=torch.float64)
        self._previous_estimate = estimate

    @property
    def feature_noise(self) -> float | None:
        """RMS shot noise per component of one estimate of phi (phi has unit RMS); None before two estimates."""
        total, count = (float(v) for v in self._noise)
        return (total / count) ** 0.5 if count else None

    def _teacher(self, indices: torch.Tensor) -> torch.Tensor | None:
        if self.teacher_logits is None:
            return None
        return self.teacher_logits[indices.to(self.teacher_logits.device)]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        return distillation_loss(logits, teacher, labels, self.config.alpha, self.config.temperature)

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, dists: Sequence[np.ndarray] | None,
                   joint_dists: Sequence[torch.Tensor] | None, *, indices: torch.Tensor) -> torch.Tensor:
        if self.dictionary:
            assert dists is not None
            if self.fresh_distributions_per_step:
                self._record_noise(dists)
            phi = self.features.update(dists).to(self.device)  # one student step = one step of the average
            logits = self.student(x, phi)
        else:
            logits = self.student(x)
        return self._loss(logits, y, self._teacher(indices))

    def batch_objective(self, images: torch.Tensor, labels: torch.Tensor, *,
                        indices: torch.Tensor) -> Callable[[Sequence[np.ndarray]], float]:
        teacher = self._teacher(indices)

        def objective(dists: Sequence[np.ndarray]) -> float:
            with torch.inference_mode():
                phi = self.features.estimate(dists).to(self.device)
                return float(self._loss(self.student(images, phi), labels, teacher).item())

        return objective

    def network(self, dists: Sequence[Any]) -> Network:
        if isinstance(self.student, DictionaryStudent):
            state = self.student.deployed_state_dict(self.features.update(dists).to(self.device))
        else:
            state = {k: v.detach().clone().cpu() for k, v in self.student.state_dict().items()}
        self.deployed.load_state_dict(state)
        return Network(self.deployed, state)

    def round_objective(self, network: Network, images: torch.Tensor, labels: torch.Tensor, *,
                        indices: torch.Tensor) -> float:
        with torch.inference_mode():
            return float(self._loss(network.forward(images), labels, self._teacher(indices)).item())

    # ---- checkpoint --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        state.update({f"features.{k}": v for k, v in self.features.state_dict().items()})
        state["teacher_sha256"] = _digest_tensor(self.teacher.sha256 if self.teacher else "")
        state["feature_noise"] = self._noise.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recorded = bytes(state["teacher_sha256"].tolist()).decode()
        current = self.teacher.sha256 if self.teacher else ""
        if recorded != current:
            raise UserError(f"the teacher changed since this run started (its model.pt has another SHA-256): resume "
                            f"with the original teacher ({self.config.teacher}) or start a new run with --out DIR")
        self.student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                       if k.startswith("features.")})
        self._noise = state["feature_noise"].clone().to(torch.float64)
