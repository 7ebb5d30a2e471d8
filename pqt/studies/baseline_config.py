"""Settings of a classical baseline run (``pqt baseline``): a plain dataclass, cheap to import.

Each field carries its flag's metadata (:func:`pqt.training.config.setting`), as ``pqt train``'s do:
the CLI builds its flags from it and checks values as they are parsed, and :meth:`validate` checks
config files against the same ranges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pqt.errors import UserError
from pqt.training.config import check_known_keys, check_setting, setting

ACTIVATIONS = ("none", "relu", "tanh", "gelu")  # pqt.targets.networks.ACTIVATIONS (not imported: it needs torch)
DATASETS = ("partial-mnist", "mnist", "fashion-mnist", "perceval-quest", "cifar-10")
METHODS = ("classical", "weight-sharing", "pruning")


@dataclass
class BaselineConfig:
    method: str = setting("classical", "baseline method", group="baseline", choices=METHODS, cli=False)
    epochs: int = setting(50, "training epochs", group="baseline", low=1)
    lr: float = setting(1e-3, "Adam learning rate", group="baseline", low=0, low_open=True, metavar="LR")
    batch_size: int = setting(128, "batch size", group="baseline", low=1)
    seed: int = setting(0, "random seed (initialisation, pruning mask, shuffling)", group="baseline", low=0)
    share_k: int | None = setting(None, "weight-sharing: shared row vectors per layer (required with that method)",
                                  group="baseline", low=1, metavar="K", label="shared row vectors per layer")
    share_layers: tuple[str, ...] | None = setting(
        None, "weight-sharing: layers to share", group="baseline", nargs="+", metavar="LAYER",
        default_text="all weight layers: conv1 conv2 fc1 fc2")
    keep_ratio: float | None = setting(None, "pruning: fraction of each weight tensor kept, in (0, 1] (required "
                                       "with that method)", group="baseline", low=0, high=1, low_open=True,
                                       metavar="X", label="the kept fraction")
    target: str = setting("paper-cnn", "target network: paper-cnn, cifar-cnn, mlp, or module:callable",
                          group="baseline", metavar="NAME")
    activation: str = setting("none", "target activation: none (paper), relu, tanh, gelu", group="baseline",
                              choices=ACTIVATIONS)
    dataset: str = setting("partial-mnist", "dataset", group="baseline", choices=DATASETS)
    data_dir: str | None = setting(None, "folder holding the data", group="baseline", metavar="DIR",
                                   default_text="PQT_DATA_DIR, else ../shared/data")
    train_limit: int | None = setting(None, "use only the first N training images", group="baseline", low=1,
                                      metavar="N", default_text="all", label="the training image count")
    test_limit: int | None = setting(None, "use only the first N test images", group="baseline", low=1,
                                     metavar="N", default_text="all", label="the test image count")
    validation_size: int = setting(0, "hold out the last N training images as a validation set (never tune on "
                                   "test)", group="baseline", low=0, metavar="N", label="the validation image count")
    augment_shift: int = setting(0, "random translations of the training images by up to N pixels (fresh each "
                                 "epoch)", group="baseline", low=0, metavar="N", label="the shift")
    lr_schedule: str = setting("constant", "learning rate: constant, or cosine decay to 0 over the epochs",
                               group="baseline", choices=("constant", "cosine"))
    device: str = setting("cpu", "torch device (cpu, cuda)", group="baseline")
    threads: int | None = setting(None, "torch threads", group="baseline", low=1, default_text="torch's choice")

    def validate(self) -> BaselineConfig:
        if self.method not in METHODS:
            raise UserError(f"unknown baseline method {self.method!r}: choose one of {', '.join(METHODS)}")
        for f in dataclasses.fields(self):
            check_setting(f, getattr(self, f.name))
        if self.method == "weight-sharing":
            if self.share_k is None:
                raise UserError("weight-sharing needs --share-k, a whole number >= 1")
        elif self.share_k is not None or self.share_layers is not None:
            raise UserError(f"share-k / share-layers apply to --method weight-sharing only (method is "
                            f"{self.method!r})")
        if self.method == "pruning":
            if self.keep_ratio is None:
                raise UserError("pruning needs --keep-ratio in (0, 1]")
        elif self.keep_ratio is not None:
            raise UserError(f"keep-ratio applies to --method pruning only (method is {self.method!r})")
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
        elif isinstance(layers, list | tuple):
            data["share_layers"] = tuple(str(v) for v in layers)
        if isinstance(data.get("keep_ratio"), int) and not isinstance(data["keep_ratio"], bool):
            data["keep_ratio"] = float(data["keep_ratio"])
        return cls(**data)
