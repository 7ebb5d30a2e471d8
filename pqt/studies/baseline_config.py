"""Settings of a classical baseline run (``pqt baseline``): a plain dataclass, cheap to import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pqt.errors import UserError
from pqt.training.config import check_known_keys

ACTIVATIONS = ("none", "relu", "tanh", "gelu")  # pqt.targets.networks.ACTIVATIONS (not imported: it needs torch)

METHODS = ("classical", "weight-sharing", "pruning")


@dataclass
class BaselineConfig:
    method: str = "classical"
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    share_k: int | None = None  # weight-sharing: shared row vectors per layer
    share_layers: tuple[str, ...] | None = None  # weight-sharing: layers to share (None = all)
    keep_ratio: float | None = None  # pruning: fraction of each weight tensor kept
    target: str = "paper-cnn"
    activation: str = "none"
    dataset: str = "partial-mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    validation_size: int = 0  # hold out the last N training images for tuning (never tune on test)
    augment_shift: int = 0  # random translations of the training images by up to N pixels (fresh each epoch)
    lr_schedule: str = "constant"  # or "cosine": the rate decays to 0 over the epochs
    device: str = "cpu"
    threads: int | None = None

    def validate(self) -> BaselineConfig:
        if self.method not in METHODS:
            raise UserError(f"unknown baseline method {self.method!r}: choose one of {', '.join(METHODS)}")
        if isinstance(self.validation_size, bool) or not isinstance(self.validation_size, int) \
                or self.validation_size < 0:
            raise UserError(f"validation-size must be a whole number >= 0 (got {self.validation_size!r})")
        if isinstance(self.augment_shift, bool) or not isinstance(self.augment_shift, int) or self.augment_shift < 0:
            raise UserError(f"augment-shift must be a whole number >= 0 (got {self.augment_shift!r})")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr-schedule must be constant or cosine (got {self.lr_schedule!r})")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be a whole number >= 1 (got {value!r})")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0 (got {self.lr!r})")
        if self.method == "weight-sharing":
            k = self.share_k
            if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise UserError(f"weight-sharing needs share-k, a whole number >= 1 (got {k!r})")
        elif self.share_k is not None or self.share_layers is not None:
            raise UserError(f"share-k / share-layers apply to --method weight-sharing only (method is "
                            f"{self.method!r})")
        if self.method == "pruning":
            r = self.keep_ratio
            if r is None or isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 1:
                raise UserError(f"pruning needs keep-ratio in (0, 1] (got {r!r})")
        elif self.keep_ratio is not None:
            raise UserError(f"keep-ratio applies to --method pruning only (method is {self.method!r})")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineConfig:
        check_known_keys(cls, data, "baseline")
        data = dict(data)
        layers = data.get("share_layers")
        if isinstance(layers, str):
            data["share_layers"] = (layers,)
        elif layers is not None:
            data["share_layers"] = tuple(str(v) for v in layers)
        if isinstance(data.get("keep_ratio"), int) and not isinstance(data["keep_ratio"], bool):
            data["keep_ratio"] = float(data["keep_ratio"])
        return cls(**data)
