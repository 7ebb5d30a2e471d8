"""Pluggable photonic backends: ``create_backend(name, ...)`` is all training code needs.

Each backend lives in its own module and is imported only when chosen, so the local path never
imports cloud clients. To add one: subclass :class:`backends.base.Backend`, implement ``_run``,
and list it in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendFailure, BudgetExhausted, Evaluation, Option
from pqt.errors import UserError

# name -> (module, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "slos": ("backends.local", "SLOSBackend"),
    "noisy": ("backends.noisy", "NoisyBackend"),
    "remote": ("backends.remote", "RemoteBackend"),
}

__all__ = ["Backend", "BackendFailure", "BudgetExhausted", "Evaluation", "Option", "backend_class",
           "available_backends", "create_backend"]


def available_backends() -> list[str]:
    return list(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise UserError(f"unknown backend {name!r}: choose one of {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, shots: int | None, seed: int = 0, max_shots: int | None = None,
                   run_dir: Path | None = None, options: dict[str, Any] | None = None) -> Backend:
    """Build backend ``name``; ``options`` holds its own settings (unknown keys are ignored)."""
    return backend_class(name)(shots=shots, seed=seed, max_shots=max_shots, run_dir=run_dir,
                               **(options or {}))
