"""Pick a target network by name or by a user's callable (in the spirit of timm's ``create_model``).

``@register_target("name", input_shape=...)`` adds a builder ``fn(input_shape, activation) -> nn.Module``
(``options=("key", ...)``: run-config keys the builder also takes, as keyword arguments, e.g. a
distilled student's widths; :func:`create_target` passes them and ``pqt evaluate`` reads them from
the run's config.json);
:func:`create_target` builds one from a registered name, or from ``"module:callable"`` (a function or
class of the user's, called with no arguments, that returns an ``nn.Module``; the module is imported
from the working directory or ``PYTHONPATH``). Every target maps images of the dataset's shape to 10
logits; that is checked once on a dummy batch, so a mismatch is one clear line, not a traceback
mid-training.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pqt.errors import UserError

NUM_CLASSES = 10


@dataclass(frozen=True)
class TargetSpec:
    name: str
    build: Callable[[tuple[int, ...], str], nn.Module]
    input_shape: tuple[int, ...] | None  # None: any image shape
    default_activation: str
    description: str
    options: tuple[str, ...] = ()  # run-config keys the builder takes as keyword arguments


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(name: str, *, input_shape: tuple[int, ...] | None, default_activation: str = "none",
                    description: str = "", options: tuple[str, ...] = (),
                    ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = TargetSpec(name, build, input_shape, default_activation, description, tuple(options))
        return build

    return decorate


def registered_targets() -> dict[str, TargetSpec]:
    # Registers the built-in targets: Quantum-Train's networks, distillation's teachers and students.
    import pqt.targets.networks  # noqa: F401
    import pqt.targets.students  # noqa: F401
    import pqt.targets.teachers  # noqa: F401

    return dict(_REGISTRY)


def is_user_target(name: str) -> bool:
    return ":" in name


def default_activation(name: str) -> str:
    """The activation a target uses when none is given ('none' for user targets: theirs is their own)."""
    spec = registered_targets().get(name)
    return spec.default_activation if spec else "none"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _user_target(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--target {spec!r}: give a registered name or module:callable (e.g. mynets:make_net)")
    if os.getcwd() not in sys.path:  # `pqt` is a console script: the working directory is not on sys.path
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UserError(f"--target {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); "
                        "run from its folder or add it to PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"--target {spec!r}: {module_name} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:
        raise UserError(f"--target {spec!r}: calling {attr}() failed ({type(e).__name__}: {e}); it must take no "
                        "arguments and return an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--target {spec!r}: {attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def target_options(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of registered target ``name`` that a run's config records (pqt evaluate)."""
    spec = registered_targets().get(name)
    return {key: config[key] for key in (spec.options if spec else ()) if config.get(key) is not None}


def create_target(name: str, input_shape: tuple[int, ...] = (1, 28, 28), activation: str | None = None,
                  options: dict[str, Any] | None = None) -> nn.Module:
    """The target network ``name`` (registered, or ``module:callable``) for images of ``input_shape``.

    ``options``: keyword arguments of a registered target that declares them (e.g. a student's widths).
    """
    registry = registered_targets()
    if is_user_target(name):
        if activation not in (None, "none"):
            raise UserError(f"--activation {activation} applies to the built-in targets; a user target "
                            f"({name}) has its own activations: leave --activation unset")
        model = _user_target(name)
    else:
        spec = registry.get(name)
        if spec is None:
            raise UserError(f"unknown target {name!r}: choose one of {', '.join(registry)} or give module:callable")
        if spec.input_shape is not None and tuple(spec.input_shape) != tuple(input_shape):
            raise UserError(f"target {name} takes {_shape_text(spec.input_shape)} images but the dataset gives "
                            f"{_shape_text(input_shape)}: choose a matching --dataset or --target")
        unknown = sorted(set(options or {}) - set(spec.options))
        if unknown:
            raise UserError(f"target {name} takes no option(s) {', '.join(unknown)}"
                            + (f"; its options: {', '.join(spec.options)}" if spec.options else ""))
        model = spec.build(tuple(input_shape), activation or spec.default_activation, **(options or {}))
    check_target(model, name, input_shape)
    return model


def check_target(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
    """One dummy forward: 10 logits per image, and at least one trainable parameter."""
    if not any(True for _ in model.parameters()):
        raise UserError(f"target {name} has no parameters to generate")
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:
        raise UserError(f"target {name} fails on {_shape_text(input_shape)} images ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); choose a target for this dataset") from None
    if tuple(out.shape) != (2, NUM_CLASSES):
        raise UserError(f"target {name} returns shape {tuple(out.shape[1:])} per batch, not {NUM_CLASSES} logits")
