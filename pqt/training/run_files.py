"""Files of a run directory, written atomically so an interrupted run never leaves half a file.

    config.json      the configuration as run
    provenance.json  what produced it: data files (SHA-256), code version and commit, packages, threads
    checkpoint.pt    everything needed to resume after the last finished round
    model.pt         the generated network's state_dict (plain torch, no quantum software)
    metrics.json     the contract read by tools (see README), rewritten after every round
    train.log        the per-round log lines
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
LOG = "train.log"
PROVENANCE = "provenance.json"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are ordinary user files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(data, indent=2, default=_jsonable) + "\n").encode()))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_torch(path: Path, obj: Any) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path) -> Any:
    """Load a run's .pt file with ``weights_only=True``: tensors and plain values, never pickled code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def final_results(last: dict[str, Any]) -> dict[str, Any]:
    """The result keys of metrics.json, from the last history entry (round or epoch)."""
    return {
        "test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
        "test_loss": last.get("test_loss"), "train_loss": last.get("train_loss"),
        "generalization_error": (last["test_loss"] - last["train_loss"]) if last else None,
        "validation_accuracy": last.get("validation_accuracy"), "validation_loss": last.get("validation_loss"),
    }


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json, or {} when it is missing or unreadable (a run killed mid-write)."""
    try:
        return read_json(Path(run_dir) / METRICS)
    except (OSError, json.JSONDecodeError):
        return {}


def append_log(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
