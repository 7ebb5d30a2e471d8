"""Use a trained network without any quantum software: plain torch and the saved state_dict.

``model.pt`` is the target network's ``state_dict``. The network is rebuilt from the run's
``config.json`` (its target, activation, the target's shape options such as a distilled student's
widths, and dataset, which gives the image shape); a bare model.pt without a run directory is taken to
be the paper CNN unless ``target`` says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqt.errors import UserError


def run_config(model_file: Path) -> dict[str, Any]:
    """The run's config.json beside ``model_file`` ({} for a bare model.pt)."""
    config_file = model_file.parent / "config.json"
    if not config_file.is_file():
        return {}
    try:
        data = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{config_file} is not a valid run config; pass --target and --activation, or fix it") from None
    if not isinstance(data, dict):
        raise UserError(f"{config_file} is not a valid run config; pass --target and --activation, or fix it")
    for key in ("target", "activation", "dataset"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UserError(f"{config_file}: {key} must be a name (got {data[key]!r}); pass --{key} or fix the file")
    return data


def model_file_of(path: str | Path) -> Path:
    path = Path(path)
    model_file = path / "model.pt" if path.is_dir() else path
    if not model_file.is_file():
        raise UserError(f"no trained model at {model_file}: give a model.pt or a run directory from pqt train")
    return model_file


def load_model(path: str | Path, activation: str | None = None, target: str | None = None) -> nn.Module:
    """The trained network of a run directory (or a model.pt), in eval mode."""
    from pqt.data import input_shape_of
    from pqt.targets import create_target
    from pqt.targets.registry import target_options

    model_file = model_file_of(path)
    config = run_config(model_file)
    name = target or config.get("target") or "paper-cnn"
    # A target's shape options (e.g. a distilled student's widths) come from the run that trained it.
    model = create_target(name, input_shape_of(config.get("dataset") or "partial-mnist"),
                          activation or config.get("activation"), target_options(name, config))
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a wrong or damaged file: say which, not a traceback
        raise UserError(f"{model_file} is not a state_dict of the {name} target: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.eval()


def _run_dataset(model_path: str | Path) -> str:
    return run_config(model_file_of(model_path)).get("dataset") or "partial-mnist"


@torch.inference_mode()
def evaluate_model(model_path: str | Path, dataset: str | None, data_dir: str | None, split: str = "test",
                   activation: str | None = None, target: str | None = None,
                   confusion: bool = False) -> dict[str, Any]:
    """Accuracy and loss on a dataset split; the dataset defaults to the one the run was trained on.

    ``confusion`` adds the confusion matrix: ``confusion[true][predicted]`` image counts.
    """
    from pqt.data import class_names, load_dataset
    from pqt.targets import loss_and_accuracy, predicted_labels

    model = load_model(model_path, activation, target)
    dataset = dataset or _run_dataset(model_path)
    train, test = load_dataset(dataset, data_dir)
    data = test if split == "test" else train
    loss, accuracy = loss_and_accuracy(model, data.images, data.labels)
    result: dict[str, Any] = {"dataset": dataset, "split": split, "images": len(data), "accuracy": accuracy,
                              "loss": loss}
    if confusion:
        predicted = predicted_labels(model, data.images)
        n = max(10, int(max(data.labels.max().item(), predicted.max().item())) + 1)  # every dataset has 10
        matrix = torch.zeros(n, n, dtype=torch.int64)
        matrix.index_put_((data.labels, predicted), torch.ones_like(predicted), accumulate=True)
        result["classes"] = list(class_names(dataset) or [str(k) for k in range(n)])[:n]
        result["confusion"] = matrix.tolist()
    return result


@torch.inference_mode()
def predict_files(model_path: str | Path, images: list[str], activation: str | None = None,
                  target: str | None = None, invert: bool | None = None, top: int = 3) -> list[dict[str, Any]]:
    """The ``top`` most probable classes of every image in ``images`` (files), and how each file was prepared.

    Images are read at the shape of the dataset the run was trained on (1x28x28 or 3x32x32) and, for
    grayscale networks, brought to the training data's polarity and framing (:func:`pqt.data.prepare_images`).
    """
    from pqt.data import class_names, input_shape_of, prepare_images

    model = load_model(model_path, activation, target)
    dataset = _run_dataset(model_path)
    names = class_names(dataset)
    results = []
    for path in images:
        prepared = prepare_images(path, input_shape_of(dataset), invert)
        probabilities = torch.softmax(model(prepared.images).double(), dim=1)
        best = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
        predictions = []
        for i in range(len(prepared.images)):
            ranked = [{"label": int(label), **({"name": names[int(label)]} if names else {}), "probability": float(p)}
                      for p, label in zip(best.values[i], best.indices[i], strict=True)]
            predictions.append({"index": i, "inverted": prepared.inverted[i], "top": ranked})
        results.append({"file": str(path), "preparation": prepared.notes, "predictions": predictions})
    return results
