"""Settings of a PQKD run (``pqt distill``): the training loop's settings plus the student's and the
distillation's, each a flag and a config key with its range (the same machinery as ``pqt train``).

:class:`DistillConfig` extends :class:`~pqt.training.config.TrainConfig`: the loop's settings (data,
Adam, rounds, the gradient-free phase optimiser, backends, shots) keep their names; the
Quantum-Train-only ones (generator, mapper, target, ...) are not settings of a distillation run and are
refused in its config files. Defaults that differ from ``pqt train``: one 8-mode, 3-photon
interferometer, SPSA, and a shorter run (see the README's PQKD section for why).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from pqt.errors import UserError
from pqt.training.config import GROUPS, TrainConfig, setting

# Defaults of pqt teacher: measured on partial-MNIST (98% test after 20 epochs; 97.2% with Adam 1e-3, batch 128,
# 15 epochs): the teachers study's protocol (experiments/teachers.toml).
TEACHER_DEFAULT_EPOCHS = 20
TEACHER_DEFAULT_LR = 2e-3
TEACHER_DEFAULT_BATCH_SIZE = 64
TEACHER_DEFAULT_AUGMENT_SHIFT = 2  # pixels: random translations, the usual augmentation for digits

# Quantum-Train settings that a distillation run does not have.
QT_ONLY = frozenset({
    "generator", "qubits", "blocks", "scaling", "scaling_exponent", "mapper", "mapper_inputs", "bond_dim",
    "mps_init_std", "mlp_widths", "mlp_activation", "activation", "fast_path", "phase_lr",
})
STUDENTS = ("dictionary", "plain")
STUDENT_TARGET = "student-cnn"  # the registered network the deployed student is (pqt.targets.students)

DISTILL_GROUPS = {
    "data": GROUPS["data"],
    "student": "student network",
    "features": "photonic features (the conditioning signal phi)",
    "distill": "distillation",
    "training": GROUPS["training"],
    "phase": GROUPS["phase"],
    "backend": GROUPS["backend"],
    "run": GROUPS["run"],
}


@dataclass
class DistillConfig(TrainConfig):
    METHOD: ClassVar[str] = "distill"
    COMMAND: ClassVar[str] = "distill"
    GROUPS: ClassVar[dict[str, str]] = DISTILL_GROUPS
    # a resume may also point at the same teacher in another place
    RESUME_CHANGEABLE: ClassVar[frozenset[str]] = TrainConfig.RESUME_CHANGEABLE | {"teacher"}

    # ---- loop settings with other defaults or other meaning here
    qnn_modes: tuple[int, ...] = setting((8,), "modes of each interferometer (phi concatenates their "
                                         "distributions)", group="features", flag="--modes", low=2, nargs="+",
                                         metavar="M")
    qnn_photons: tuple[int, ...] = setting((3,), "photons of each interferometer", group="features",
                                           flag="--photons", low=1, nargs="+", metavar="N")
    distribution_source: str = setting(
        "circuit", "ablation: phi from the circuit (circuit), or replaced by one fixed random vector "
        "(random-fixed), a fresh random vector every step (random-redraw), or the uniform vector (constant)",
        group="features", choices=("circuit", "photonic", "random-fixed", "random-redraw", "constant"),
        label="feature source")
    rounds: int = setting(20, "rounds (each: student epochs, then one phase-optimiser call)", group="training",
                          low=1)
    adam_epochs: int = setting(1, "student epochs of Adam per round (E)", group="training", low=0)
    adam_lr: float = setting(3e-3, "Adam learning rate of the student", group="training", low=0, low_open=True,
                             metavar="LR")
    phase_optimizer: str = setting("spsa", "gradient-free optimiser of the phases: spsa (sampling-robust) or "
                                   "cobyla", group="phase", choices=("spsa", "cobyla"), label="phase optimizer")
    phase_batch: int = setting(500, "training images in the optimiser's objective (fixed per call)",
                               group="phase", low=1, metavar="N")
    spsa_iterations: int = setting(20, "spsa: steps per round (2 evaluations each)", group="phase", low=1,
                                   metavar="N")
    cobyla_maxiter: int = setting(100, "cobyla: objective evaluations per round", group="phase", low=1,
                                  metavar="N")
    # Smaller than pqt train's 0.2 / 0.1: the distillation loss is larger (T^2 KL) and every coefficient of the
    # student moves with phi, so larger steps scrambled the student (validation accuracy 75% with 0.2 / 0.1, unstable
    # with 0.01, 95% with 0.002: experiments/results/pqkd_tuning.md).
    spsa_a: float = setting(0.002, "spsa: step-size gain a", group="phase", low=0, low_open=True)
    spsa_c: float = setting(0.02, "spsa: perturbation size c", group="phase", low=0, low_open=True)

    # ---- student
    target: str = setting(STUDENT_TARGET, "the network deployed (recorded for pqt evaluate)", group="student",
                          choices=(STUDENT_TARGET,), cli=False)
    student: str = setting("dictionary", "dictionary convolutions conditioned by phi (PQKD), or plain "
                           "convolutions of free kernels (the classical KD baseline; no circuit)",
                           group="student", choices=STUDENTS)
    widths: tuple[int, ...] = setting((8, 16), "channels of each conv layer (each followed by ReLU and 2x2 "
                                      "max-pooling)", group="student", low=1, nargs="+", metavar="C")
    head_grid: int = setting(3, "the last feature map is average-pooled to G x G, flattened, and fed to the "
                             "linear head (1: global average pooling)", group="student", low=1, high=8, metavar="G",
                             label="the head's grid size")
    kernel_size: int = setting(3, "kernel size k (odd; 'same' padding)", group="student", low=1, high=9,
                               metavar="K")
    basis: int = setting(4, "dictionary: shared basis filters per layer (K)", group="student", low=1,
                         metavar="K", label="the basis filter count")
    # "fixed" by default: the trainable scale and shift did not help on a validation split (pqkd_tuning)
    coefficients: str = setting("fixed", "dictionary: mixing coefficients C = A_l phi (fixed), or C = s_l A_l phi "
                                "+ b_l with a trainable scale and shift per layer (affine)",
                                group="student", choices=("fixed", "affine"))
    # ---- photonic features
    ema_beta: float = setting(0.9, "EMA smoothing of phi: phi_t = beta phi_(t-1) + (1 - beta) phi_hat_t "
                              "(0: off)", group="features", flag="--beta", low=0, high=1, high_open=True,
                              metavar="BETA", label="the EMA coefficient beta")
    # ---- distillation
    teacher: str | None = setting(None, "teacher run directory (pqt teacher --out DIR); not needed with "
                                  "--alpha 0", group="distill", metavar="DIR", default_text="none")
    alpha: float = setting(0.5, "weight of the distillation term: alpha T^2 KL(teacher || student) + "
                           "(1 - alpha) cross-entropy", group="distill", low=0, high=1, label="alpha")
    temperature: float = setting(4.0, "softmax temperature T of the distillation term", group="distill",
                                 low=0, low_open=True, metavar="T", label="the temperature")

    # ---- which fields are settings ---------------------------------------------------------------------
    @classmethod
    def settings(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in QT_ONLY]

    @property
    def uses_circuit(self) -> bool:
        return self.student == "dictionary" and super().uses_circuit

    def validate(self) -> DistillConfig:
        super().validate()
        if self.kernel_size % 2 == 0:
            raise UserError(f"--kernel-size must be odd so that convolutions keep the image size (got "
                            f"{self.kernel_size}); use {self.kernel_size - 1} or {self.kernel_size + 1}")
        if self.student == "plain" and self.backend != "slos":
            raise UserError(f"--student plain uses no circuit, so no backend: leave --backend at slos (got "
                            f"{self.backend!r})")
        from pqt.data import input_shape_of
        from pqt.targets.students import check_depth

        check_depth(self.widths, input_shape_of(self.dataset))
        if self.alpha > 0 and not self.teacher:
            raise UserError("distillation needs a teacher: give --teacher DIR (a pqt teacher run; train one "
                            "with 'pqt teacher --dataset D --out DIR'), or --alpha 0 to train without one")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in QT_ONLY}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        foreign = sorted(set(data) & QT_ONLY)
        if foreign:
            raise UserError(f"{', '.join(foreign)}: Quantum-Train setting(s) of pqt train, not of pqt distill; "
                            "remove them from the config")
        data = dict(data)
        if isinstance(data.get("widths"), list):
            data["widths"] = tuple(data["widths"])
        config = super().from_dict(data)
        assert isinstance(config, DistillConfig)
        return config
