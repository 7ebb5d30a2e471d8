"""Run configuration: every training setting, a CLI flag and a key in the recorded config file.

A run records ``config.json`` in its output directory; ``pqt train --config FILE`` reads the
same keys (JSON or TOML), and command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqt.errors import UserError

DEFAULT_SHOTS = 10_000  # shots per circuit evaluation when training shot-based (the default)


@dataclass
class TrainConfig:
    # photonic QNNs: (modes, photons) each; input modes default to evenly spaced photons
    qnn_modes: tuple[int, ...] = (9, 8)
    qnn_photons: tuple[int, ...] = (4, 4)
    backend: str = "slos"
    shots: int | None = DEFAULT_SHOTS  # None = exact probabilities
    max_shots: int | None = None  # total shot budget of the run
    backend_options: dict[str, Any] = field(default_factory=dict)
    # mapping model and target
    bond_dim: int = 4
    mps_init_std: float = 1e-9
    scaling: str = "mean"
    # ablation: where the MPS's probability values come from (see pqt.training.trainer.DISTRIBUTION_SOURCES)
    distribution_source: str = "photonic"
    target: str = "paper-cnn"
    activation: str = "none"
    # training, as the paper
    rounds: int = 200
    adam_epochs: int = 5
    adam_lr: float = 1e-3
    lr_schedule: str = "constant"  # constant (paper) or cosine: decay to 0 over the whole run
    batch_size: int = 128
    phase_optimizer: str = "cobyla"
    phase_batch: int = 1000  # images in the phase optimizer's objective (fixed during one call)
    cobyla_maxiter: int = 1000
    cobyla_rhobeg: float = 1.0
    spsa_iterations: int = 100
    spsa_a: float = 0.2
    spsa_c: float = 0.1
    spsa_alpha: float = 0.602
    spsa_gamma: float = 0.101
    phase_lr: float = 1e-2  # exact-gradient: Adam learning rate of the phases
    # data
    dataset: str = "partial-mnist"
    data_dir: str | None = None
    train_limit: int | None = None  # use only the first N training images (quick checks)
    test_limit: int | None = None
    validation_size: int = 0  # hold out the last N training images for tuning (never tune on test)
    # run
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    def validate(self) -> TrainConfig:
        if len(self.qnn_modes) != len(self.qnn_photons) or not self.qnn_modes:
            raise UserError("give one photon number per QNN (--modes 9 8 --photons 4 4)")
        for modes, photons in zip(self.qnn_modes, self.qnn_photons, strict=True):
            if photons > modes:
                raise UserError(f"{photons} photons do not fit in {modes} modes collision-free: use at most "
                                f"{modes} photons or at least {photons} modes per QNN")
        if isinstance(self.bond_dim, bool) or int(self.bond_dim) != self.bond_dim or self.bond_dim < 1:
            raise UserError(f"bond dimension must be a whole number >= 1 (got {self.bond_dim!r})")
        if self.shots is not None and (int(self.shots) != self.shots or self.shots < 1):
            raise UserError(f"shots must be >= 1 (got {self.shots}); use --shots exact for exact probabilities")
        for name in ("rounds", "batch_size", "phase_batch", "cobyla_maxiter", "spsa_iterations"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        from pqt.distributions.sources import DISTRIBUTION_SOURCES

        if self.distribution_source not in DISTRIBUTION_SOURCES:
            raise UserError(f"unknown distribution source {self.distribution_source!r}: choose one of "
                            f"{', '.join(DISTRIBUTION_SOURCES)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"unknown lr schedule {self.lr_schedule!r}: choose constant or cosine")
        if self.adam_epochs < 0:
            raise UserError(f"adam-epochs must be >= 0 (got {self.adam_epochs})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_known_keys(cls, data, "config")
        data = dict(data)
        for key in ("qnn_modes", "qnn_photons"):
            if key in data:
                data[key] = tuple(int(v) for v in data[key])
        if data.get("shots") == "exact":
            data["shots"] = None
        return cls(**data)


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass ``cls``, listing the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown {what} key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file (keys as in :class:`TrainConfig`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
