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


def whole_number(low: int) -> Any:
    """argparse ``type=`` for a plain count flag (``--jobs``, ``--repeats``): a whole number >= ``low``."""

    def convert(text: str) -> int:
        value = _parse_number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low} (got {value})")
        return value

    convert.__name__ = "int"
    return convert


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


def _metavar(f: dataclasses.Field) -> str:
    """What the flag takes: the field's own metavar, else N (whole number), X (number) or NAME."""
    if f.metadata["metavar"]:
        return f.metadata["metavar"]
    return {int: "N", float: "X"}.get(field_kind(f), "NAME")


def add_setting_flag(container: Any, f: dataclasses.Field, default: Any) -> None:
    """The flag of one dataclass setting (its metadata: help, choices or range, nargs), default SUPPRESSed:
    only flags given override a --config file."""
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    # a setting without a default (and no text for it) says in its own help what happens when it is not given
    shown = "" if default is None and not meta.get("default_text") and f.name != "shots" else \
        f" (default: {_default_text(f, default)})"
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{meta['help']}{shown}"}
    if meta["choices"]:
        kwargs["choices"] = meta["choices"]
    else:
        kwargs["type"] = _converter(f)
        kwargs["metavar"] = _metavar(f)
    if meta["nargs"]:
        kwargs["nargs"] = meta["nargs"]
    container.add_argument(flag, **kwargs)


def add_config_flags(p: argparse.ArgumentParser, config_class: type[TrainConfig] = TrainConfig) -> None:
    """Every setting of ``config_class`` as a flag, in its --help group, plus the backends' options.

    Groups appear in the class's ``GROUPS`` order, each backend's own settings right after the backend group.
    """
    defaults = config_class()
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of config keys; flags override it")
    groups = {}
    for key, title in config_class.GROUPS.items():
        groups[key] = p.add_argument_group(title)
        if key == "backend":
            _add_backend_flags(p)
    for f in config_class.settings():
        if f.metadata.get("cli"):
            add_setting_flag(groups[f.metadata["group"]], f, getattr(defaults, f.name))
    if "target" in groups:
        groups["target"].add_argument("--no-fast-path", dest="fast_path", action="store_false",
                                      default=argparse.SUPPRESS,
                                      help="use the plain functional forward everywhere (for checks and timings)")


def _option_metavar(opt: Any) -> str:
    if "second" in opt.help:
        return "SECONDS"
    if opt.type is int:
        return "N"
    if opt.type is float:
        return "X"
    return opt.key.split("_")[-1].upper()


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    import backends

    seen: set[str] = set()
    for name in backends.available_backends():
        options = [o for o in backends.backend_class(name).options if not o.secret and o.name not in seen]
        if not options:
            continue
        group = p.add_argument_group(f"backend {name} (with --backend {name})")
        for opt in options:
            seen.add(opt.name)
            # An option whose default is None explains what "unset" means in its own help.
            default = "" if opt.default is None else f" (default: {opt.default})"
            kind = {"choices": opt.choices} if opt.choices else {"metavar": _option_metavar(opt)}
            group.add_argument(f"--{opt.name}", dest=BACKEND_OPTION + opt.key, type=_option_converter(opt),
                               default=argparse.SUPPRESS, help=opt.help + default, **kind)


def _option_converter(opt: Any) -> Any:
    """argparse ``type=`` for a backend option: parse, then check its range (as for TrainConfig's flags)."""
    if opt.type not in (int, float):
        return opt.type

    def convert(text: str) -> Any:
        value = _parse_number(text, opt.type)
        try:
            return check_value(opt.key, opt.metadata(), value, opt.type)
        except UserError as e:  # "--flag: ...": argparse already names the flag
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    convert.__name__ = opt.type.__name__
    return convert


def config_from_args(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The configuration: the --config file, then the flags given."""
    data: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    options = data.get("backend_options", {})
    if not isinstance(options, dict):
        raise UserError(f"config key backend_options must be a table of backend settings (got {options!r})")
    options = dict(options)
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
