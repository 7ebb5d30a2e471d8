"""The distillation teacher: trained classically once per dataset (``pqt teacher``), reused by every student.

Training is the classical loop of the baselines (:mod:`pqt.studies.baselines`, ``--method classical``)
on a teacher network (:mod:`pqt.targets.teachers`): the same run files (config.json, checkpoint.pt after
every epoch, model.pt, metrics.json), resume after an interruption, and ``pqt evaluate`` on the result.

A student needs the teacher's logits on its training images at every step; the teacher's forward pass
costs more than the student's whole step, so they are computed once and cached in the teacher's
directory (``train_logits.pt``): the logits of the first N images of the dataset's training split (N:
the rows the teacher trained on; more when a student asks), keyed by the SHA-256 of the teacher's
model.pt and of those images, so a retrained teacher or other data is never served stale logits. A
student's training images are the first rows of that split (limits and validation hold-outs cut the
end), so its logits are the cache's first rows.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqt.errors import UserError
from pqt.training import run_files

LOGITS_FILE = "train_logits.pt"


def default_architecture(input_shape: tuple[int, ...]) -> str:
    """teacher-resnet for colour images (CIFAR-10), teacher-cnn otherwise."""
    return "teacher-resnet" if input_shape[0] == 3 else "teacher-cnn"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass
class Teacher:
    """A trained teacher: its network (eval mode), where it lives and what it is."""

    model: nn.Module
    run_dir: Path
    sha256: str  # of its model.pt: identifies the teacher a student was distilled from
    dataset: str
    architecture: str
    parameters: int
    test_accuracy: float | None

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.run_dir), "sha256": self.sha256, "dataset": self.dataset,
                "architecture": self.architecture, "parameters": self.parameters,
                "test_accuracy": self.test_accuracy}


def load_teacher(run_dir: str | Path, dataset: str, input_shape: tuple[int, ...]) -> Teacher:
    """The teacher in ``run_dir``, checked to be a finished teacher of ``dataset``."""
    from pqt.deploy import load_model, run_config
    from pqt.targets import n_parameters

    run_dir = Path(run_dir)
    model_file = run_dir / run_files.MODEL
    if not model_file.is_file():
        raise UserError(f"--teacher {run_dir}: no trained teacher there ({model_file} missing); train one with "
                        f"'pqt teacher --dataset {dataset} --out {run_dir}'")
    config = run_config(model_file)
    if config.get("dataset") != dataset:
        raise UserError(f"--teacher {run_dir} was trained on {config.get('dataset')!r}, the student on "
                        f"{dataset!r}: train a teacher on it with 'pqt teacher --dataset {dataset} --out DIR'")
    model = load_model(run_dir)
    from pqt.data import input_shape_of

    if input_shape_of(dataset) != tuple(input_shape):
        raise UserError(f"--teacher {run_dir} takes {input_shape_of(dataset)} images, the data gives {input_shape}")
    metrics = run_files.read_metrics(run_dir)
    if metrics and metrics.get("status") != "finished":
        raise UserError(f"--teacher {run_dir} has not finished training ({metrics.get('status')}); finish it with "
                        f"'pqt teacher --out {run_dir}' (it resumes) or choose a finished teacher")
    return Teacher(model, run_dir, _sha256_file(model_file), dataset, str(config.get("target")),
                   n_parameters(model), metrics.get("test_accuracy"))


@torch.inference_mode()
def compute_logits(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                   batch: int = 1000) -> torch.Tensor:
    model = model.to(device).eval()
    parts = [model(images[i : i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, 10)


def training_logits(teacher: Teacher, train_images: torch.Tensor, data_dir: str | None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The teacher's logits on a student's training images, from the teacher's cache when they are the first rows
    of the dataset's training split (as limits and validation hold-outs leave them)."""
    from pqt.data import load_dataset

    full, _ = load_dataset(teacher.dataset, data_dir)
    n = len(train_images)
    if n > len(full) or not torch.equal(train_images, full.images[:n]):
        return compute_logits(teacher.model, train_images, device)  # not a prefix of the split: no cache
    return cached_logits(teacher, full.images, n, device)


def cached_logits(teacher: Teacher, split_images: torch.Tensor, rows: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits on the first ``rows`` images of a training split, read from (or computed into) the teacher's cache.

    The cache holds the logits of the split's first N rows, with the SHA-256 of the teacher's model.pt and of
    those images; a request for more rows, or a cache of another teacher or other images, computes afresh.
    """
    path = teacher.run_dir / LOGITS_FILE
    try:
        cache = run_files.load_torch(path) if path.is_file() else None
    except Exception:  # a damaged cache is recomputed, never trusted
        cache = None
    if isinstance(cache, dict) and cache.get("teacher_sha256") == teacher.sha256 \
            and isinstance(cache.get("logits"), torch.Tensor) and rows <= len(cache["logits"]) <= len(split_images) \
            and cache.get("images_sha256") == _sha256_tensor(split_images[: len(cache["logits"])]):
        return cache["logits"][:rows]
    images = split_images[:rows]
    logits = compute_logits(teacher.model, images, device)
    with contextlib.suppress(OSError):  # a read-only teacher directory only costs recomputing next time
        run_files.save_torch(path, {"teacher_sha256": teacher.sha256, "images_sha256": _sha256_tensor(images),
                                    "logits": logits})
    return logits


def train_teacher(config: Any, out: Path) -> dict[str, Any]:
    """Train (or resume, or skip if finished) a teacher run, then cache its training logits."""
    from pqt.data import load_dataset
    from pqt.studies.baselines import run_baseline

    metrics = run_baseline(config, out)
    full, _ = load_dataset(config.dataset, config.data_dir)
    teacher = load_teacher(out, config.dataset, full.input_shape)
    # the rows it trained on: the logits every student of the same (or a shorter) split needs
    rows = min(len(full), config.train_limit or len(full)) - config.validation_size
    cached_logits(teacher, full.images, rows, config.device)
    return metrics
