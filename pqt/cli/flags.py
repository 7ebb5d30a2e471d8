"""The training flags, built from :class:`~pqt.training.config.TrainConfig`'s field metadata.

One flag per setting, grouped as in ``--help`` (data, generator, mapper, target, training, optimiser,
backend, run), each with its choices or range and one default. Values are checked as they are
parsed (the same check config files get), so ``--adam-lr nan`` or ``--seed -1`` is one line naming
the allowed range. Backend settings come from each backend's :class:`~backends.base.Option` list.
Nothing here imports torch or Perceval: ``pqt train --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pqt.errors import UserError
from pqt.training.config import TrainConfig, check_value, field_kind, load_config_file

BACKEND_OPTION = "backend_option:"


def _parse_number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _converter(f: dataclasses.Field) -> Any:
    """argparse ``type=`` for a field: parse, then check the range; errors name the allowed range."""
    kind = field_kind(f)
    meta = f.metadata

    def convert(text: str) -> Any:
        if f.name == "shots" and text.strip().lower() == "exact":
            return None
        value = _parse_number(text, kind) if kind in (int, float) else text
        try:
            return check_value(f.name, meta, value, kind)
        except UserError as e:  # "--flag: ...": argparse already names the flag
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    convert.__name__ = kind.__name__  # argparse names it in "invalid <name> value"
    return convert


def _default_text(f: dataclasses.Field, default: Any) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if f.name == "shots" and default is None:
        return "exact"
    if isinstance(default, tuple | list):
        return " ".join(str(v) for v in default)
    return str(default)


def add_config_flags(p: argparse.ArgumentParser, config_class: type[TrainConfig] = TrainConfig) -> None:
    """Every setting of ``config_class`` as a flag (defaults SUPPRESSed: only given flags override a --config
    file)."""
    defaults = config_class()
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of config keys; flags override it")
    groups = {key: p.add_argument_group(title) for key, title in config_class.GROUPS.items()}
    for f in config_class.settings():
        meta = f.metadata
        if not meta.get("cli"):
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f"{meta['help']} (default: {_default_text(f, getattr(defaults, f.name))})"}
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["type"] = _converter(f)
            kwargs["metavar"] = meta["metavar"] or f.name.split("_")[-1].upper()
        if meta["nargs"]:
            kwargs["nargs"] = meta["nargs"]
        groups[meta["group"]].add_argument(flag, **kwargs)
    if "target" in groups:
        groups["target"].add_argument("--no-fast-path", dest="fast_path", action="store_false",
                                      default=argparse.SUPPRESS,
                                      help="use the plain functional forward everywhere (for checks and timings)")
    _add_backend_flags(p)


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    import backends

    seen: set[str] = set()
    for name in backends.available_backends():
        options = [o for o in backends.backend_class(name).options if not o.secret and o.name not in seen]
        if not options:
            continue
        group = p.add_argument_group(f"backend {name}")
        for opt in options:
            seen.add(opt.name)
            group.add_argument(f"--{opt.name}", dest=BACKEND_OPTION + opt.key, type=opt.type,
                               metavar=opt.key.split("_")[-1].upper(), default=argparse.SUPPRESS,
                               help=f"{opt.help} (default: {opt.default})")


def config_from_args(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The configuration: the --config file, then the flags given."""
    data: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    options = dict(data.get("backend_options", {}))
    for key, value in given_settings(args, config_class).items():
        if key.startswith("backend_options."):
            options[key.split(".", 1)[1]] = value
        else:
            data[key] = value
    data["backend_options"] = options
    return config_class.from_dict(data).validate()


def given_settings(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
    """The settings given as flags (config keys; backend options as ``backend_options.<key>``)."""
    names = {f.name for f in config_class.settings()}
    given = {}
    for key, value in vars(args).items():
        if key.startswith(BACKEND_OPTION):
            given[f"backend_options.{key[len(BACKEND_OPTION):]}"] = value
        elif key in names:
            given[key] = value
    return given
