"""Run configuration: every training setting, a CLI flag and a key in the recorded config file.

Each field of :class:`TrainConfig` carries its flag's metadata (:func:`setting`): help text, the
``--help`` group, allowed choices or numeric range. The CLI builds its flags from it and
:meth:`TrainConfig.validate` checks config files against the same ranges, so a bad value gets the
same one-line error whether it came from a flag or a file. A run records ``config.json`` in its
output directory; ``pqt train --config FILE`` reads the same keys (JSON or TOML), and flags override
the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pqt.errors import UserError

DEFAULT_SHOTS = 10_000  # shots per circuit evaluation when training shot-based (the default)

# --help groups, in display order.
GROUPS = {
    "data": "data",
    "generator": "generator: circuits and how their distributions become values",
    "mapper": "mapping model",
    "target": "target network",
    "training": "training (Adam)",
    "phase": "circuit-parameter optimiser",
    "backend": "backend (where the circuits run)",
    "run": "run",
}

# What `pqt train --resume` may change: how fast the run learns from here on, how long it runs, what it may
# spend, and how it talks to the cloud. Anything else would make the resumed run a different experiment.
RESUME_CHANGEABLE = frozenset({
    "adam_lr", "phase_lr", "rounds", "max_shots", "threads", "device", "backend_options.cloud_url",
    "backend_options.max_retries", "backend_options.retry_backoff", "backend_options.job_timeout",
    "backend_options.poll_interval", "backend_options.request_timeout"})

GENERATOR_DEFAULTS = {  # each paper's own choices, used when --mapper / --scaling are not given
    "photonic": {"mapper": "mps", "scaling": "mean"},
    "qubit": {"mapper": "mlp", "scaling": "qt"},
}
LR_SCHEDULES = ("constant", "cosine", "plateau")


def setting(default: Any, help: str, *, group: str, flag: str | None = None, choices: tuple[str, ...] | None = None,
            low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            metavar: str | None = None, nargs: str | None = None, default_text: str | None = None,
            hint: str = "", label: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with the metadata its CLI flag and its validation need.

    ``label`` names the setting in errors (default: the help text's first phrase); ``hint`` is added to
    a range error (what to do instead).
    """
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "metavar": metavar, "nargs": nargs,
            "default_text": default_text, "hint": hint, "label": label, "cli": cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    METHOD: ClassVar[str] = "quantum-train"  # the training method (pqt.training.method.create_method)
    COMMAND: ClassVar[str] = "train"  # the pqt command that trains it (named in messages)
    GROUPS: ClassVar[dict[str, str]] = GROUPS  # --help groups, in display order
    # what `--resume` may change (a moved data folder too: the same data); anything else is another experiment
    RESUME_CHANGEABLE: ClassVar[frozenset[str]] = RESUME_CHANGEABLE

    # ---- data
    dataset: str = setting("partial-mnist", "dataset", group="data",
                           choices=("partial-mnist", "mnist", "fashion-mnist", "perceval-quest", "cifar-10"))
    data_dir: str | None = setting(None, "data folder", group="data", metavar="DIR",
                                   default_text="PQT_DATA_DIR, else ../shared/data")
    train_limit: int | None = setting(None, "use only the first N training images", group="data", low=1,
                                      metavar="N", default_text="all", label="the training image count")
    test_limit: int | None = setting(None, "use only the first N test images", group="data", low=1, metavar="N",
                                     default_text="all", label="the test image count")
    validation_size: int = setting(0, "hold out the last N training images for tuning (never tune on test)",
                                   group="data", low=0, metavar="N", label="the validation image count")
    # ---- generator
    generator: str = setting("photonic", "photonic interferometers (Liu & Chen 2025) or a gate-based QNN "
                             "(Liu et al. 2024)", group="generator", choices=("photonic", "qubit"))
    qnn_modes: tuple[int, ...] = setting((9, 8), "photonic: modes of each interferometer", group="generator",
                                         flag="--modes", low=2, nargs="+", metavar="M")
    qnn_photons: tuple[int, ...] = setting((4, 4), "photonic: photons of each interferometer", group="generator",
                                           flag="--photons", low=1, nargs="+", metavar="N")
    qubits: int | None = setting(None, "qubit: qubits N", group="generator", low=1, high=26, metavar="N",
                                 default_text="ceil(log2 weights)")
    blocks: int = setting(16, "qubit: blocks L of (Ry on every qubit, CNOT ring)", group="generator", low=1,
                          metavar="L")
    scaling: str | None = setting(None, "probability scaling: mean (photonic paper), qt (gate-based paper), none",
                                  group="generator", choices=("mean", "qt", "none"),
                                  default_text="mean for photonic, qt for qubit")
    scaling_exponent: float = setting(0.3, "exponent of the qt scaling", group="generator", low=0, low_open=True)
    distribution_source: str = setting(
        "circuit", "ablation: feed the mapper the circuits' distributions (circuit; 'photonic' is an alias), one "
        "random vector (random-fixed), a fresh one every step (random-redraw) or a constant", group="generator",
        choices=("circuit", "photonic", "random-fixed", "random-redraw", "constant"))
    # ---- mapping model
    mapper: str | None = setting(None, "mapping model: mps (photonic paper) or mlp (gate-based paper)",
                                 group="mapper", choices=("mps", "mlp"), default_text="mps for photonic, mlp for qubit")
    mapper_inputs: str = setting("bits+value", "what the mapper sees per weight: its index bits and value "
                                 "(both papers) or the value alone", group="mapper", choices=("bits+value", "value"))
    bond_dim: int = setting(4, "mps: bond dimension chi", group="mapper", low=1, metavar="CHI")
    mps_init_std: float = setting(1e-9, "mps: std of the core initialisation", group="mapper", low=0,
                                  metavar="STD")
    mlp_widths: tuple[int, ...] = setting((4, 20, 4), "mlp: hidden layer widths", group="mapper", low=1,
                                          nargs="+", metavar="W")
    mlp_activation: str = setting("none", "mlp: activation; the paper's code uses none, its text tanh after "
                                  "the first layer", group="mapper", choices=("none", "tanh", "tanh-all"))
    # ---- target
    target: str = setting("paper-cnn", "target network: paper-cnn, cifar-cnn, mlp, or module:callable for your "
                          "own nn.Module", group="target", metavar="NAME")
    activation: str | None = setting(None, "activation of a built-in target", group="target",
                                     choices=("none", "relu", "tanh", "gelu"),
                                     default_text="the target's own: none for paper-cnn")
    fast_path: bool = setting(True, "use the specialised paper-CNN paths, and channels-last images for other "
                              "convolutional targets, on CPU (off: --no-fast-path)",
                              group="target", cli=False, flag="--no-fast-path")
    # ---- training
    rounds: int = setting(200, "rounds (each: Adam epochs, then one phase-optimiser call)", group="training",
                          low=1)
    adam_epochs: int = setting(5, "Adam epochs on the mapper per round", group="training", low=0)
    adam_lr: float = setting(1e-3, "Adam learning rate", group="training", low=0, low_open=True, metavar="LR")
    weight_decay: float = setting(0.0, "Adam weight decay (the QT paper's code: 1e-5)", group="training", low=0)
    lr_schedule: str = setting("constant", "learning rates: constant (paper), cosine decay over the run, or "
                               "halved on a training-loss plateau", group="training", choices=LR_SCHEDULES)
    plateau_factor: float = setting(0.5, "plateau: factor the rates are multiplied by", group="training", low=0,
                                    high=1, low_open=True, high_open=True)
    plateau_patience: int = setting(5, "plateau: rounds without improvement before reducing", group="training",
                                    low=0)
    batch_size: int = setting(128, "Adam batch size", group="training", low=1)
    seed: int = setting(0, "random seed", group="training", low=0)
    # ---- circuit-parameter optimiser
    phase_optimizer: str = setting("cobyla", "cobyla (paper; scipy's), nlopt-cobyla (nlopt's compiled COBYLA, "
                                   "optional: pip install nlopt), spsa, or exact-gradient (joint training by "
                                   "backpropagation through the exact simulation)", group="phase",
                                   choices=("cobyla", "nlopt-cobyla", "spsa", "exact-gradient"),
                                   label="phase optimizer")
    phase_batch: int = setting(1000, "training images in the optimiser's objective (fixed per call)",
                               group="phase", low=1, metavar="N")
    cobyla_maxiter: int = setting(1000, "cobyla: objective evaluations per round", group="phase", low=1,
                                  metavar="N")
    cobyla_rhobeg: float = setting(1.0, "cobyla: initial step", group="phase", low=0, low_open=True)
    spsa_iterations: int = setting(100, "spsa: steps per round (2 evaluations each)", group="phase", low=1,
                                   metavar="N")
    spsa_a: float = setting(0.2, "spsa: step-size gain a", group="phase", low=0, low_open=True)
    spsa_c: float = setting(0.1, "spsa: perturbation size c", group="phase", low=0, low_open=True)
    spsa_alpha: float = setting(0.602, "spsa: step-size decay exponent", group="phase", low=0)
    spsa_gamma: float = setting(0.101, "spsa: perturbation decay exponent", group="phase", low=0)
    phase_lr: float = setting(1e-2, "exact-gradient: Adam learning rate of the circuit parameters",
                              group="phase", low=0, low_open=True, metavar="LR")
    # ---- backend
    backend: str = setting("slos", "where the circuits run", group="backend", choices=("slos", "noisy", "remote"))
    shots: int | None = setting(DEFAULT_SHOTS, "shots per circuit evaluation, or 'exact'", group="backend",
                                low=1, metavar="N|exact", hint="; use --shots exact for exact probabilities")
    max_shots: int | None = setting(None, "total shot budget; the run stops cleanly before exceeding it",
                                    group="backend", low=1, metavar="N", default_text="no limit")
    backend_options: dict[str, Any] = setting({}, "backend settings", group="backend", cli=False)
    circuit_backends: tuple[str, ...] | None = setting(
        None, "distributed QNNs: one backend per circuit, in order, each slos, noisy, remote, remote:PLATFORM or "
        "remote:PLATFORM@URL (e.g. remote:qpu:belenos remote:sim:ascella); replaces --backend",
        group="backend", nargs="+", metavar="SPEC", default_text="every circuit on --backend")
    # ---- run
    device: str = setting("cpu", "torch device of the mapper and target (cpu, cuda, cuda:1, ...)", group="run")
    threads: int | None = setting(None, "torch threads", group="run", low=1, default_text="torch's choice")

    # ---- derived ----------------------------------------------------------------------------------------
    @property
    def mapper_kind(self) -> str:
        return self.mapper or GENERATOR_DEFAULTS[self.generator]["mapper"]

    @property
    def scaling_kind(self) -> str:
        return self.scaling or GENERATOR_DEFAULTS[self.generator]["scaling"]

    @property
    def uses_circuit(self) -> bool:
        """Whether the mapper is fed the circuits' distributions (not an ablation source)."""
        return self.distribution_source in ("circuit", "photonic")

    def validate(self) -> TrainConfig:
        for f in dataclasses.fields(self):
            check_setting(f, getattr(self, f.name))
        if self.circuit_backends:
            from backends.distributed import parse_spec

            names = {parse_spec(spec)[0] for spec in self.circuit_backends}
            if self.backend != "slos":
                raise UserError("give either --backend (every circuit) or --circuit-backends (one per circuit), "
                                "not both")
            circuits = len(self.qnn_modes) if self.generator == "photonic" else 1
            if len(self.circuit_backends) != circuits:
                raise UserError(f"--circuit-backends gives {len(self.circuit_backends)} backend(s) for the "
                                f"{circuits} circuit(s) of the {self.generator} generator: give one per circuit")
            if self.generator == "qubit" and names != {"slos"}:
                raise UserError("a gate-based QNN runs on the local simulator only: --circuit-backends slos")
            check_backend_options(sorted(names), self.backend_options)
        else:
            check_backend_options(self.backend, self.backend_options)
        if self.generator == "photonic":
            if len(self.qnn_modes) != len(self.qnn_photons) or not self.qnn_modes:
                raise UserError("give one photon number per photonic QNN (--modes 9 8 --photons 4 4)")
            for modes, photons in zip(self.qnn_modes, self.qnn_photons, strict=True):
                if photons > modes:
                    raise UserError(f"{photons} photons do not fit in {modes} modes collision-free: use at most "
                                    f"{modes} photons or at least {photons} modes per QNN")
        elif self.backend != "slos":
            raise UserError(
                f"a gate-based QNN runs on the local simulator only (--backend slos, exact or with --shots), not on "
                f"the photonic backend {self.backend!r}: Perceval's qubit-to-photonic conversion needs 2 modes per "
                "qubit plus heralded CNOTs, far beyond what can be simulated or run at 13 qubits")
        return self

    @classmethod
    def settings(cls) -> list[dataclasses.Field]:
        """The fields that are this configuration's settings (config keys; flags unless ``cli=False``)."""
        return list(dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_known_keys(cls, data, "config")
        data = dict(data)
        for key in ("qnn_modes", "qnn_photons", "mlp_widths"):
            if key in data and isinstance(data[key], list | tuple):
                data[key] = tuple(data[key])
        if data.get("shots") == "exact":
            data["shots"] = None
        return cls(**data)


def flag_of(key: str) -> str:
    """The CLI flag of a setting: a TrainConfig field (``qnn_modes`` -> ``--modes``) or ``backend_options.<key>``."""
    name = key.split(".", 1)[1] if key.startswith("backend_options.") else key
    f = TrainConfig.__dataclass_fields__.get(name)
    return (f.metadata.get("flag") if f is not None and f.metadata else None) or "--" + name.replace("_", "-")


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with backend options as ``backend_options.<key>`` and tuples as lists (comparable)."""
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k != "backend_options"}
    options = config.get("backend_options")
    if isinstance(options, dict):
        flat.update({f"backend_options.{k}": v for k, v in options.items()})
    return flat


def setting_differences(recorded: dict[str, Any], wanted: dict[str, Any], ignore: frozenset[str] = RESUME_CHANGEABLE
                        ) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ between two configs (defaults filled in), except ``ignore``d ones."""
    defaults = flat_settings(TrainConfig().to_dict())
    a, b = flat_settings(recorded), flat_settings(wanted)
    diffs = {}
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        old, new = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        if old != new:
            diffs[key] = (old, new)
    return diffs


def _allowed(meta: dict[str, Any]) -> str:
    low, high = meta["low"], meta["high"]
    if high is None:
        return f"{'>' if meta['low_open'] else '>='} {low:g}"
    return f"in {'(' if meta['low_open'] else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"


def label(meta: dict[str, Any]) -> str:
    """What a setting is, from its help text: "mps: bond dimension chi" -> "bond dimension chi"."""
    if meta.get("label"):
        return meta["label"]
    text = meta["help"].split(";")[0].split(" (")[0].split(",")[0]
    return text.split(": ", 1)[-1]


def check_value(name: str, meta: dict[str, Any], value: Any, kind: type) -> Any:
    """``value`` checked against the field's choices or range; a one-line UserError otherwise.

    The message reads "--flag: what it is must be ... (got ...)".
    """
    flag = meta["flag"] or "--" + name.replace("_", "-")
    if meta["choices"] is not None:
        if value not in meta["choices"]:
            raise UserError(f"{flag}: {label(meta)} must be one of {', '.join(meta['choices'])} (got {value!r})")
        return value
    if kind not in (int, float):
        return value
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if kind is int and not bad and (isinstance(value, float) and not value.is_integer()):
        bad = True
    if not bad:
        number = float(value)
        low, high = meta["low"], meta["high"]
        bad = not math.isfinite(number)
        bad = bad or (low is not None and (number < low or (meta["low_open"] and number == low)))
        bad = bad or (high is not None and (number > high or (meta["high_open"] and number == high)))
    if bad:
        what = "a whole number" if kind is int else "a number"
        allowed = f" {_allowed(meta)}" if meta["low"] is not None else ""
        raise UserError(f"{flag}: {label(meta)} must be {what}{allowed} (got {value!r}){meta['hint']}")
    return value


def field_kind(f: dataclasses.Field) -> type:
    """int, float, str or bool: the scalar type of a field (of its items, for tuples)."""
    text = str(f.type)
    for kind in (bool, int, float):
        if kind.__name__ in text.split("|")[0]:
            return kind
    return str


def check_setting(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if not meta or value is None:
        return
    kind = field_kind(f)
    if meta["nargs"]:
        if not isinstance(value, tuple | list) or not value:
            raise UserError(f"{meta['flag'] or '--' + f.name.replace('_', '-')} needs one or more values "
                            f"(got {value!r})")
        for item in value:
            check_value(f.name, meta, item, kind)
    elif kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {f.name} must be true or false (got {value!r})")
    elif f.name == "backend_options":
        if not isinstance(value, dict):
            raise UserError(f"config key backend_options must be a table of backend settings (got {value!r})")
    elif kind is str and meta["choices"] is None and not isinstance(value, str):
        raise UserError(f"config key {f.name} ({label(meta)}) must be a string (got {value!r})")
    else:
        check_value(f.name, meta, value, kind)


def check_backend_options(backend: str | list[str], options: dict[str, Any]) -> None:
    """Each backend option must be one the chosen backend(s) take, of its type and in its range."""
    import backends

    names = [backend] if isinstance(backend, str) else backend
    known = {o.key: o for name in names for o in backends.backend_class(name).options if not o.secret}
    backend = " / ".join(names)
    others = sorted(set(options) - set(known))
    if others:
        names = ", ".join("--" + k.replace("_", "-") for k in others)
        takes = ", ".join("--" + o.name for o in known.values()) or "no options"
        verb = "does" if len(others) == 1 else "do"
        raise UserError(f"{names} {verb} not apply to --backend {backend} (it takes {takes}); remove it or choose "
                        "the backend it belongs to")
    for key, value in options.items():
        option = known[key]
        if value is None:
            continue
        if option.type is str:
            if not isinstance(value, str):
                raise UserError(f"--{option.name} must be a string (got {value!r})")
            continue
        check_value(key, option.metadata(), value, option.type)


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass ``cls``, listing the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown {what} key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file (keys as in :class:`TrainConfig`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table of settings (got a {type(data).__name__})")
    return data
