"""CIFAR-10 in its python-batch format (the ``cifar-10-batches-py`` folder torchvision downloads).

Each batch file is a pickled dict with ``b"data"`` (N x 3072 uint8: 1,024 red, then green, then blue
values, row-major 32x32) and ``b"labels"`` (N ints 0-9); training is ``data_batch_1`` .. ``_5``,
testing ``test_batch``. Pickle runs code while it loads, so the loader only lets through what these
files hold (dicts, lists, bytes, numbers and numpy arrays): a tampered file is refused, not run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pqt.errors import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SHAPE = (3, 32, 32)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one python-batch file."""
    try:
        batch = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        raise UserError(f"{path} is not a CIFAR-10 python batch ({e}); download cifar-10-python.tar.gz again "
                        "and unpack it") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no data/labels); unpack cifar-10-python.tar.gz")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} holds data {data.dtype} {data.shape} and {len(labels)} labels; expected uint8 "
                        "(N, 3072) and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path} has labels outside 0-9; the file is corrupt")
    return data.reshape(-1, *SHAPE), labels


def find_folder(roots: list[Path]) -> Path | None:
    for root in roots:
        for folder in (root / FOLDER, root):
            if all((folder / name).is_file() for name in TRAIN_FILES + TEST_FILES):
                return folder
    return None


def load_split(folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 3, 32, 32) in [0, 1] (no normalisation, as for MNIST) and int64 labels."""
    parts = [read_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images).to(torch.float32) / 255.0, torch.from_numpy(labels)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the same format (tests and synthetic benchmarks: no CIFAR-10 is available offline)."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [int(v) for v in labels],
                                   b"batch_label": path.name.encode()}))
