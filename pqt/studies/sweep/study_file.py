"""Study files: a TOML grid of runs -> the list of runs (settings, directory names), with overrides."""

from __future__ import annotations

import copy
import itertools
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqt.errors import UserError
from pqt.training.run_files import LOCK

KINDS = ("qt", "distill", "baseline")  # pqt train, pqt distill, pqt baseline
DEFAULT_METRICS = ("test_accuracy", "train_accuracy", "generalization_error", "trainable_parameters",
                   "paper_count_parameters", "wall_seconds")
# Written to <name>.csv for every run, after the report's metrics.
RUN_COLUMNS = ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "generalization_error",
               "validation_accuracy", "validation_loss",
               "trainable_parameters", "paper_count_parameters", "target_parameters", "wall_seconds",
               "rounds_completed", "epochs_completed", "shots_used", "circuit_evaluations", "postselection_rate")
STD_KINDS = {"population": 0, "sample": 1}
ERROR_FILE = "error.txt"
LOCK_FILE = LOCK  # flock-ed by the process training the run (pqt.training.run_files.RunLock)
WORKER_LOG = "worker.log"
DEFAULT_OUT = Path("experiments/runs")
DEFAULT_RESULTS = Path("experiments/results")

_STUDY_KEYS = {"name", "protocol", "description", "kind", "extends", "base", "grid", "report"}
_REPORT_KEYS = {"group_by", "metrics", "std", "compare", "reference", "compare_metric"}
# Settings a run may change between start and resume: the length of the run (and its shot budget) ...
EXTENDABLE = {"qt": ("rounds", "max_shots"), "distill": ("rounds", "max_shots"), "baseline": ("epochs",)}
# ... and where / how fast it runs, which does not change what it computes.
NEUTRAL = ("threads", "device", "data_dir")
LENGTH_KEYS = {"qt": ("rounds", "rounds_completed"), "distill": ("rounds", "rounds_completed"),
               "baseline": ("epochs", "epochs_completed")}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")



# --------------------------------------------------------------------------- study files


@dataclass
class RunSpec:
    name: str  # directory name under OUT/<study>/
    values: dict[str, Any]  # grid key -> value of this run
    config: dict[str, Any]  # every setting, normalised (JSON types)


@dataclass
class Study:
    name: str
    protocol: str
    kind: str
    base: dict[str, Any]
    grids: list[dict[str, list[Any]]]
    group_by: list[str]
    metrics: list[str]
    std: str = "population"
    # Welch's t-test of compare_metric between each value of the group key `compare` and its `reference` value,
    # within groups equal on the other group keys (e.g. each ablation source against "photonic" at each chi)
    compare: str | None = None
    reference: Any = None
    compare_metric: str = "test_accuracy"
    description: str = ""
    path: Path | None = None
    runs: list[RunSpec] = field(default_factory=list)

    @property
    def grid_keys(self) -> list[str]:
        keys: list[str] = []
        for grid in self.grids:
            keys += [k for k in grid if k not in keys]
        return keys


def config_class(kind: str) -> Any:
    if kind == "qt":
        from pqt.training.config import TrainConfig

        return TrainConfig
    if kind == "distill":
        from pqt.distill.config import DistillConfig

        return DistillConfig
    if kind == "baseline":
        from pqt.studies.baseline_config import BaselineConfig  # the settings only: no torch

        return BaselineConfig
    raise UserError(f"unknown study kind {kind!r}: choose one of {', '.join(KINDS)}")


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax (1, 0.5, true, [1, 2], "x"), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def get_path(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = data.get(part)
        if not isinstance(child, dict):
            child = data[part] = {}
        data = child
    data[parts[-1]] = copy.deepcopy(value)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def format_value(value: Any) -> str:
    """A value as it appears in run directory names, group labels and tables."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "+".join(format_value(v) for v in value)
    return str(value)


def display_value(key: str, value: Any) -> str:
    """A setting's value in tables: as :func:`format_value`, but exact probabilities read ``exact``."""
    if key == "shots" and value is None:
        return "exact"
    return format_value(value)


def run_name(values: dict[str, Any]) -> str:
    """The run's directory name: ``key1=value1,key2=value2`` in grid order (``base`` without a grid)."""
    if not values:
        return "base"
    parts = [f"{key}={re.sub(r'[^A-Za-z0-9._+-]', '_', format_value(v) or 'none')}" for key, v in values.items()]
    return ",".join(parts)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"study file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"study file {path} is not valid TOML: {e}") from None


def load_study(path: str | Path, overrides: Iterable[str] = ()) -> Study:
    """Read a study file, apply ``--set KEY=VALUE`` overrides and expand its runs."""
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - _STUDY_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown study key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_STUDY_KEYS))}")
    base: dict[str, Any] = {}
    protocol = data.get("protocol")
    if "extends" in data:
        parent_path = (path.parent / str(data["extends"])).resolve()
        parent = _read_toml(parent_path)
        extra = sorted(set(parent) - {"protocol", "base", "description"})
        if extra:
            raise UserError(f"{parent_path}: a protocol file holds only protocol and [base] (found {', '.join(extra)})")
        base = dict(parent.get("base", {}))
        protocol = protocol or parent.get("protocol")
    base = _merge(base, data.get("base", {}))
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"{path}: name must be letters, digits, '_', '.', '-' (got {name!r})")
    if not protocol or not isinstance(protocol, str):
        raise UserError(f"{path}: set protocol = \"...\", a short label of the training protocol (e.g. "
                        "\"reduced-20x200\"), written into every table")
    kind = data.get("kind", "qt")
    config_class(kind)
    raw_grids = data.get("grid", {})
    raw_grids = raw_grids if isinstance(raw_grids, list) else [raw_grids]
    grids: list[dict[str, list[Any]]] = []
    for grid in raw_grids:
        if not isinstance(grid, dict):
            raise UserError(f"{path}: [grid] must be a table of key = [values]")
        clean = {}
        for key, values in grid.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise UserError(f"{path}: grid key {key!r} has an empty list of values")
            clean[key] = values
        grids.append(clean)
    # --set KEY=VALUE: a grid key keeps only the given value(s); anything else goes into [base].
    notes = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (got {item!r})")
        value = parse_value(text.strip())
        in_grid = [g for g in grids if key in g]
        for g in in_grid:
            g[key] = value if isinstance(value, list) else [value]
        if not in_grid:
            set_path(base, key, value)
        notes.append(f"{key}={text.strip()}")
    if notes:
        protocol = f"{protocol} (overridden: {', '.join(notes)})"
    report = data.get("report", {})
    unknown = sorted(set(report) - _REPORT_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown [report] key(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(_REPORT_KEYS))}")
    std = report.get("std", "population")
    if std not in STD_KINDS:
        raise UserError(f"{path}: report.std must be one of {', '.join(STD_KINDS)} (got {std!r})")
    study = Study(name=name, protocol=protocol, kind=kind, base=base, grids=grids or [{}], group_by=[],
                  metrics=list(report.get("metrics", DEFAULT_METRICS)), std=std,
                  description=str(data.get("description", "")).strip(), path=path)
    study.group_by = list(report.get("group_by", [k for k in study.grid_keys if k != "seed"]))
    if "compare" in report:
        study.compare, study.reference = report["compare"], report.get("reference")
        study.compare_metric = report.get("compare_metric", "test_accuracy")
        if study.compare not in study.group_by or study.reference is None:
            raise UserError(f"{path}: report.compare must be one of the group_by keys ({', '.join(study.group_by)}) "
                            "and report.reference one of its values")
    study.runs = expand(study)
    defaults = config_class(kind)().to_dict()
    for key in study.group_by:
        if key.split(".")[0] not in defaults:
            raise UserError(f"{path}: report.group_by key {key!r} is not a setting")
    return study


def normalise_config(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Settings as the run records them (``config.json``): the config class's keys, JSON types."""
    cls = config_class(kind)
    try:
        config = cls.from_dict(data)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad setting ({e})") from None
    return json.loads(json.dumps(config.to_dict(), default=list))


def expand(study: Study) -> list[RunSpec]:
    """The study's runs: every grid's cartesian product, in file order, duplicates once."""
    runs: dict[str, RunSpec] = {}
    for grid in study.grids:
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            config = copy.deepcopy(study.base)
            for key, value in values.items():
                set_path(config, key, value)
            try:
                normalised = normalise_config(study.kind, config)
            except UserError as e:
                raise UserError(f"study {study.name}, run {run_name(values)}: {e}") from None
            name = run_name(values)
            if name in runs:
                if runs[name].config != normalised:
                    raise UserError(f"study {study.name}: two different runs map to directory {name!r}; "
                                    "use values that differ in letters or digits")
                continue
            runs[name] = RunSpec(name, values, normalised)
    return list(runs.values())
