"""Use a trained network without any quantum software: plain torch and the saved state_dict.

``model.pt`` is the target network's ``state_dict``; the activation (not part of a state_dict)
is read from the run's ``config.json`` when the model sits in a run directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pqt.errors import UserError
from pqt.targets.networks import PaperCNN, loss_and_accuracy


def load_model(path: str | Path, activation: str | None = None) -> PaperCNN:
    path = Path(path)
    model_file = path / "model.pt" if path.is_dir() else path
    if not model_file.is_file():
        raise UserError(f"no trained model at {model_file}: give a model.pt or a run directory from pqt train")
    config_file = model_file.parent / "config.json"
    if activation is None and config_file.is_file():
        try:
            activation = json.loads(config_file.read_text()).get("activation", "none")
        except (OSError, json.JSONDecodeError, AttributeError):
            raise UserError(f"{config_file} is not a valid run config; pass --activation (none, relu, ...)") from None
    model = PaperCNN(activation or "none")
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a wrong or damaged file: say which, not a traceback
        raise UserError(f"{model_file} is not a state_dict of the paper CNN: {str(e).splitlines()[0]}") from None
    return model.eval()


@torch.inference_mode()
def evaluate_model(model_path: str | Path, dataset: str, data_dir: str | None, split: str = "test",
                   activation: str | None = None) -> dict[str, Any]:
    from pqt.data import load_dataset

    model = load_model(model_path, activation)
    train, test = load_dataset(dataset, data_dir)
    data = test if split == "test" else train
    loss, accuracy = loss_and_accuracy(model, data.images, data.labels)
    return {"dataset": dataset, "split": split, "images": len(data), "accuracy": accuracy, "loss": loss}


@torch.inference_mode()
def predict_files(model_path: str | Path, images: list[str], activation: str | None = None,
                  ) -> Iterator[tuple[str, list[int]]]:
    from pqt.data import load_images

    model = load_model(model_path, activation)
    for path in images:
        yield path, model(load_images(path)).argmax(1).tolist()
