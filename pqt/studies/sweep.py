"""Sweeps: run a study (a grid of training runs) and aggregate its results into tables.

A study is a TOML file::

    name = "table3"                      # results/<name>.csv, runs in OUT/<name>/
    protocol = "reduced-20x200"          # a short label written into every table
    kind = "qt"                          # "qt" (pqt train, default) or "baseline" (pqt baseline)
    extends = "protocols/reduced.toml"   # optional: its `protocol` and [base] are the defaults
    [base]                               # settings shared by every run (TrainConfig / BaselineConfig keys)
    rounds = 20
    [base.backend_options]               # nested tables as in the config file
    indistinguishability = 0.9
    [grid]                               # key -> list of values; the runs are the cartesian product
    bond_dim = [1, 2, 3]
    seed = [0, 1, 2]
    "backend_options.transmittance" = [1.0, 0.8]   # dotted keys reach nested settings
    [report]
    group_by = ["bond_dim"]              # a table row (default: every grid key but seed)
    metrics = ["test_accuracy"]          # columns (default: DEFAULT_METRICS)
    std = "population"                   # or "sample" (ddof=1); named in the table header

Several grids (``[[grid]]`` array of tables) give the union of their products, duplicates once;
e.g. noise along one axis at a time. Each run lives in ``OUT/<name>/<k1>=<v1>,<k2>=<v2>`` (grid keys
in file order). A finished run (``metrics.json`` status "finished" with the same settings) is
skipped, a run with a checkpoint resumed, the rest started; a directory holding a run with other
settings is refused (only the number of rounds / epochs may grow: the run is then extended).
Ctrl-C stops cleanly: finished runs and the last checkpoint of each running one are kept, and a
second ``pqt sweep`` continues where it stopped.

Results (``--results``, default ``experiments/results``): ``<name>.csv`` (one row per run),
``<name>_summary.csv`` and ``<name>.md`` (per group: mean and std over seeds, n), and
``<name>_curves.csv`` (per run and round: accuracies, losses, cumulative wall time and objective
evaluations) for the training-curve figures.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
import re
import signal
import sys
import time
import tomllib
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqt.errors import UserError
from pqt.training import run_files

KINDS = ("qt", "baseline")
DEFAULT_METRICS = ("test_accuracy", "train_accuracy", "generalization_error", "trainable_parameters",
                   "paper_count_parameters", "wall_seconds")
# Written to <name>.csv for every run, after the report's metrics.
RUN_COLUMNS = ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "generalization_error",
               "validation_accuracy", "validation_loss",
               "trainable_parameters", "paper_count_parameters", "target_parameters", "wall_seconds",
               "rounds_completed", "epochs_completed", "shots_used", "circuit_evaluations", "postselection_rate")
STD_KINDS = {"population": 0, "sample": 1}
ERROR_FILE = "error.txt"
LOCK_FILE = ".sweep.lock"  # holds the pid of the process training the run
WORKER_LOG = "worker.log"
DEFAULT_OUT = Path("experiments/runs")
DEFAULT_RESULTS = Path("experiments/results")

_STUDY_KEYS = {"name", "protocol", "description", "kind", "extends", "base", "grid", "report"}
_REPORT_KEYS = {"group_by", "metrics", "std"}
# Settings a run may change between start and resume: the length of the run (and its shot budget) ...
_EXTENDABLE = {"qt": ("rounds", "max_shots"), "baseline": ("epochs",)}
# ... and where / how fast it runs, which does not change what it computes.
_NEUTRAL = ("threads", "device", "data_dir")
_LENGTH = {"qt": ("rounds", "rounds_completed"), "baseline": ("epochs", "epochs_completed")}
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
    if kind == "baseline":
        from pqt.studies.baselines import BaselineConfig

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


# --------------------------------------------------------------------------- one run


def _differences(kind: str, recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    defaults = normalise_config(kind, {})
    skip = set(_EXTENDABLE[kind]) | set(_NEUTRAL)
    diffs = []
    for key in sorted(set(recorded) | set(wanted)):
        if key in skip:
            continue
        old, new = recorded.get(key, defaults.get(key)), wanted.get(key, defaults.get(key))
        if old != new:
            diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def inspect_run(run_dir: Path, kind: str, config: dict[str, Any]) -> tuple[str, str]:
    """What to do with ``run_dir`` for these settings: (state, detail).

    States: ``new`` (nothing to keep), ``finished`` (skip), ``resume`` (checkpoint present, or a
    finished run to extend to more rounds/epochs) and ``mismatch`` (the directory holds a run of
    other settings; detail says which).
    """
    run_dir = Path(run_dir)
    wanted = normalise_config(kind, config)
    has_checkpoint = (run_dir / run_files.CHECKPOINT).is_file()
    metrics = run_files.read_metrics(run_dir)
    finished = metrics.get("status") == "finished"
    if not has_checkpoint and not finished:
        return "new", ""
    if (run_dir / run_files.CONFIG).is_file():
        recorded = run_files.read_json(run_dir / run_files.CONFIG)
        diffs = _differences(kind, recorded, wanted)
        if diffs:
            return "mismatch", (f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); delete the "
                                "directory or choose another --out")
    length_key, done_key = _LENGTH[kind]
    planned = wanted[length_key]
    done = metrics.get(done_key)
    if done is not None and done > planned:
        return "mismatch", (f"{run_dir} holds a run of {done} {length_key}, more than the {planned} asked for; "
                            "delete the directory or choose another --out")
    if finished and done == planned:
        return "finished", ""
    if not has_checkpoint:
        return "mismatch", f"{run_dir} holds a finished run without its checkpoint; it cannot be extended"
    return "resume", f"after {done or 0} of {planned} {length_key}"


def _write_error(run_dir: Path, message: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(message.rstrip() + "\n")


def read_error(run_dir: Path) -> str | None:
    path = Path(run_dir) / ERROR_FILE
    if not path.is_file():
        return None
    lines = path.read_text().strip().splitlines()
    return lines[0] if lines else "failed"


def _run_qt(config: dict[str, Any], run_dir: Path, resume: bool, progress: Callable[[float], None]) -> None:
    from pqt.interrupts import restore_sigint
    from pqt.training.config import TrainConfig
    from pqt.training.trainer import Trainer

    cfg = TrainConfig.from_dict(config).validate()
    holder: list[Any] = []

    def log(line: str) -> None:
        run_files.append_log(run_dir / run_files.LOG, line)
        if holder:
            progress(holder[0].state.round / cfg.rounds)

    trainer = Trainer(cfg, run_dir, log=log)
    restore_sigint()  # after perceval/exqalibur are imported and the backend is built
    holder.append(trainer)
    if resume:
        trainer.load()
        log(f"pqt sweep: resuming after round {trainer.state.round} of {cfg.rounds}")
    else:
        log(f"pqt sweep: starting {cfg.generator} generator, {cfg.mapper_kind} mapper, seed {cfg.seed} "
            f"({cfg.rounds} rounds)")
    run_files.write_json(run_dir / run_files.CONFIG, cfg.to_dict())
    trainer.run()


def _run_baseline(config: dict[str, Any], run_dir: Path, progress: Callable[[float], None]) -> None:
    from pqt.studies.baselines import BaselineConfig, run_baseline

    run_baseline(BaselineConfig.from_dict(config), run_dir,
                 log=lambda line: run_files.append_log(run_dir / run_files.LOG, line), progress=progress)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(run_dir: Path) -> str | None:
    """Take the run's lock file; None when taken, else why not (another live process holds it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                return f"another process (pid {pid}) is training this run; skipped"
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    return f"could not lock {path}; skipped"


def _unlock(run_dir: Path) -> None:
    path = run_dir / LOCK_FILE
    try:
        if int(path.read_text().strip() or 0) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def execute_run(kind: str, config: dict[str, Any], run_dir: str | Path,
                progress: Callable[[float], None] | None = None) -> tuple[str, str | None]:
    """Run, resume or skip one run; returns (status, message).

    Status: finished, skipped (already finished), busy (another live process holds the run's
    lock file) or failed. A failure (a UserError, or any other exception with its traceback) is
    written to ``run_dir/error.txt`` and returned, never raised; KeyboardInterrupt propagates (the
    run keeps its last checkpoint).
    """
    run_dir = Path(run_dir)
    progress = progress or (lambda fraction: None)
    busy = _lock(run_dir)
    if busy is not None:
        return "busy", busy
    try:
        return _execute_locked(kind, config, run_dir, progress)
    finally:
        _unlock(run_dir)


def _execute_locked(kind: str, config: dict[str, Any], run_dir: Path,
                    progress: Callable[[float], None]) -> tuple[str, str | None]:
    try:
        state, detail = inspect_run(run_dir, kind, config)
    except UserError as e:
        _write_error(run_dir, str(e))
        return "failed", str(e)
    if state == "finished":
        return "skipped", None
    if state == "mismatch":
        _write_error(run_dir, detail)
        return "failed", detail
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        if kind == "qt":
            _run_qt(config, run_dir, state == "resume", progress)
        else:
            _run_baseline(config, run_dir, progress)
    except UserError as e:
        _write_error(run_dir, str(e))
        return "failed", str(e)
    except Exception as e:  # a bug in one run must not cost the others: record it, go on
        message = f"{type(e).__name__}: {e}"
        _write_error(run_dir, f"{message}\n\n{traceback.format_exc()}")
        return "failed", message
    return "finished", None


def default_threads(jobs: int = 1) -> int:
    """Torch threads per worker: the machine's cores shared between ``jobs`` workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


_BUSY_EXIT = 75  # a worker found its run locked by another live process


def _worker(kind: str, config: dict[str, Any], run_dir: str, threads: int) -> None:
    """Entry point of a worker process (spawned): one run, output to run_dir/worker.log."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / WORKER_LOG, "a", buffering=1) as log:
        sys.stdout = sys.stderr = log  # also turns the trainer's own progress bars off (not a tty)
        import torch

        if not config.get("threads"):
            torch.set_num_threads(threads)
        try:
            status, _ = execute_run(kind, config, path)
        except KeyboardInterrupt:
            sys.exit(130)
    sys.exit({"finished": 0, "skipped": 0, "busy": _BUSY_EXIT}.get(status, 1))


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepOutcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    result_files: list[Path] = field(default_factory=list)


def _progress_bar(total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.1 if interactive else 60.0,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}{postfix}]")


def _fraction_done(run_dir: Path, kind: str) -> float:
    try:
        m = run_files.read_json(run_dir / run_files.METRICS)
    except (OSError, json.JSONDecodeError):
        return 0.0
    done_key = _LENGTH[kind][1]
    planned = m.get(done_key.replace("completed", "planned"))
    return min(1.0, (m.get(done_key) or 0) / planned) if planned else 0.0


def run_sweep(study: Study, out: str | Path = DEFAULT_OUT, jobs: int = 1, results: str | Path = DEFAULT_RESULTS,
              show_progress: bool = True, print_fn: Callable[[str], None] = print) -> SweepOutcome:
    """Execute the study's runs (skip finished, resume interrupted) and aggregate the results."""
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1 (got {jobs})")
    root = Path(out) / study.name
    outcome = SweepOutcome()
    todo: list[RunSpec] = []
    for run in study.runs:
        state, detail = inspect_run(root / run.name, study.kind, run.config)
        if state == "finished":
            outcome.skipped.append(run.name)
        elif state == "mismatch":
            _write_error(root / run.name, detail)
            outcome.failed[run.name] = detail
        else:
            todo.append(run)
    jobs = max(1, min(jobs, len(todo)))
    threads = default_threads(jobs)
    print_fn(f"study {study.name} ({study.kind}, protocol {study.protocol}): {len(study.runs)} runs in {root}; "
             f"{len(outcome.skipped)} finished, {len(todo)} to run on {jobs} worker(s) x {threads} thread(s)")
    bar = _progress_bar(len(study.runs), len(outcome.skipped) + len(outcome.failed), study.name) \
        if show_progress and todo else None
    write = bar.write if bar is not None else print_fn

    def record(name: str, status: str, message: str | None) -> None:
        if status == "failed":
            outcome.failed[name] = message or "failed"
            write(f"failed: {name}: {message}")
        elif status == "skipped":
            outcome.skipped.append(name)
        elif status == "busy":
            outcome.busy.append(name)
            write(f"busy: {name}: {message}")
        else:
            outcome.finished.append(name)

    try:
        if jobs == 1:
            _run_in_process(study, root, todo, threads, bar, record)
        else:
            _run_in_workers(study, root, todo, jobs, threads, bar, record)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if bar is not None:
            bar.close()
    outcome.result_files = aggregate(study, out, results)
    return outcome


def _run_in_process(study: Study, root: Path, todo: list[RunSpec], threads: int, bar: Any,
                    record: Callable[[str, str, str | None], None]) -> None:
    import torch

    done = float(bar.n) if bar is not None else 0.0
    for run in todo:
        if bar is not None:
            bar.set_postfix_str(run.name, refresh=sys.stderr.isatty())

        def progress(fraction: float, base: float = done) -> None:
            if bar is not None:
                bar.update(base + fraction - bar.n)

        if not run.config.get("threads"):
            torch.set_num_threads(threads)
        status, message = execute_run(study.kind, run.config, root / run.name, progress)
        done += 1
        if bar is not None:
            bar.update(done - bar.n)
        record(run.name, status, message)


def _run_in_workers(study: Study, root: Path, todo: list[RunSpec], jobs: int, threads: int, bar: Any,
                    record: Callable[[str, str, str | None], None], poll: float = 0.5) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    pending = deque(todo)
    active: dict[str, tuple[Any, RunSpec]] = {}
    done = float(bar.n) if bar is not None else 0.0

    def terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # A plain `kill` (SIGTERM) must stop the workers too, not orphan them; and a sweep started in the
    # background of a non-interactive shell has SIGINT ignored, so SIGTERM is its only clean stop.
    previous_term = signal.signal(signal.SIGTERM, terminate)
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run = pending.popleft()
                (root / run.name).mkdir(parents=True, exist_ok=True)
                p = ctx.Process(target=_worker, args=(study.kind, run.config, str(root / run.name), threads),
                                name=f"pqt-sweep-{run.name}", daemon=False)
                p.start()
                active[run.name] = (p, run)
            time.sleep(poll)
            for name, (p, _) in list(active.items()):
                if p.is_alive():
                    continue
                p.join()
                del active[name]
                done += 1
                run_dir = root / name
                if p.exitcode == 0:
                    record(name, "finished", None)
                elif p.exitcode == _BUSY_EXIT:
                    record(name, "busy", "another process is training this run; skipped")
                else:
                    message = read_error(run_dir)
                    if message is None:
                        message = f"worker exited with code {p.exitcode}; see {run_dir / WORKER_LOG}"
                        _write_error(run_dir, message)
                    record(name, "failed", message)
            if bar is not None:
                bar.set_postfix_str(", ".join(active) if len(active) <= 2 else f"{len(active)} running",
                                    refresh=False)
                bar.update(done + sum(_fraction_done(root / name, study.kind) for name in active) - bar.n)
    except KeyboardInterrupt:
        # Workers ignore SIGINT; SIGTERM makes each stop like Ctrl-C in pqt train (checkpoint kept).
        for p, _ in active.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p, _ in active.values():
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)


# --------------------------------------------------------------------------- aggregation


def _run_status(study: Study, run: RunSpec, run_dir: Path) -> tuple[str, dict[str, Any], str]:
    metrics = run_files.read_metrics(run_dir)
    state, detail = inspect_run(run_dir, study.kind, run.config)
    error = read_error(run_dir) or ""
    if state == "finished":
        return "finished", metrics, ""
    if state == "mismatch":
        return "mismatch", {}, detail
    if error:
        return "failed", metrics, error
    if state == "resume":
        length_key, done_key = _LENGTH[study.kind]
        return f"incomplete ({metrics.get(done_key, 0)}/{run.config[length_key]})", metrics, ""
    return "not started", {}, ""


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return format_value(value)
    return value


def _stats(values: list[float], ddof: int) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:  # the spread of one run is undefined, whichever std
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - ddof))


def _is_percent(metric: str) -> bool:
    return metric.endswith("accuracy") or metric == "postselection_rate"


def _fmt_stat(metric: str, mean: float, std: float) -> str:
    """``mean ± std`` in the metric's unit; the std is left out when it is undefined (n < 2) or a count's 0."""
    if math.isnan(mean):
        return "—"
    if _is_percent(metric):
        mean, std, spec = 100 * mean, 100 * std, ".2f"
    elif metric.endswith(("parameters", "_used", "completed", "seconds")):
        spec = ".0f"
    elif metric == "generalization_error" or metric.endswith("loss"):
        spec = ".4f"
    else:
        spec = ".4g"
    text = format(mean, spec)
    if math.isnan(std):
        return text
    if std == 0 and spec == ".0f":
        return text
    return f"{text} ± {format(std, spec)}"


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    os.replace(tmp, path)


def aggregate(study: Study, out: str | Path = DEFAULT_OUT, results: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """Write <name>.csv, <name>_summary.csv, <name>.md and <name>_curves.csv from the run directories."""
    root, results = Path(out) / study.name, Path(results)
    grid_keys = study.grid_keys
    extra_keys = [k for k in study.group_by if k not in grid_keys]
    key_columns = grid_keys + extra_keys + ([] if "seed" in grid_keys else ["seed"])
    metric_columns = list(dict.fromkeys(list(study.metrics) + list(RUN_COLUMNS)))
    rows, curves, groups = [], [], {}
    for run in study.runs:
        run_dir = root / run.name
        status, metrics, error = _run_status(study, run, run_dir)
        keys = {k: display_value(k, get_path(run.config, k)) for k in key_columns}
        row = {"protocol": study.protocol, "run": run.name, **keys, "status": status, "error": error,
               "run_dir": str(run_dir), **{m: metrics.get(m) for m in metric_columns}}
        rows.append(row)
        group_values = tuple(display_value(k, get_path(run.config, k)) for k in study.group_by)
        groups.setdefault(group_values, []).append(row)
        label = ",".join(f"{k}={v}" for k, v in zip(study.group_by, group_values, strict=True)) or "all"
        seconds = evaluations = 0.0
        for entry in metrics.get("history", []) or []:
            seconds += entry.get("seconds") or 0.0
            evaluations += entry.get("objective_evaluations") or 0
            curves.append({"protocol": study.protocol, "group": label,
                           **dict(zip(study.group_by, group_values, strict=True)),
                           "seed": run.config.get("seed"), "status": status,
                           "round": entry.get("round", entry.get("epoch")),
                           "train_accuracy": entry.get("train_accuracy"), "test_accuracy": entry.get("test_accuracy"),
                           "train_loss": entry.get("train_loss"), "test_loss": entry.get("test_loss"),
                           "validation_accuracy": entry.get("validation_accuracy"),
                           "validation_loss": entry.get("validation_loss"),
                           "wall_seconds": seconds, "objective_evaluations": evaluations,
                           "shots_used": entry.get("shots_used"),
                           "postselection_rate": entry.get("postselection_rate")})
    files = [results / f"{study.name}.csv", results / f"{study.name}_summary.csv", results / f"{study.name}.md",
             results / f"{study.name}_curves.csv"]
    _write_csv(files[0], ["protocol", "run", *key_columns, "status", *metric_columns, "error", "run_dir"], rows)

    ddof = STD_KINDS[study.std]
    std_label = "population std (ddof=0)" if ddof == 0 else "sample std (ddof=1)"
    summary = []
    for group_values, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        entry: dict[str, Any] = {"protocol": study.protocol, **dict(zip(study.group_by, group_values, strict=True)),
                                 "n": len(done), "runs": len(members), "std_kind": study.std}
        for m in study.metrics:
            values = [float(r[m]) for r in done if isinstance(r.get(m), int | float) and not isinstance(r[m], bool)]
            entry[f"{m}_mean"], entry[f"{m}_std"] = _stats(values, ddof)
        summary.append(entry)
    stat_columns = [c for m in study.metrics for c in (f"{m}_mean", f"{m}_std")]
    _write_csv(files[1], ["protocol", *study.group_by, "n", "runs", *stat_columns, "std_kind"],
               [{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()} for s in summary])

    lines = [f"# {study.name} — protocol `{study.protocol}`", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Mean ± {std_label} over the finished runs of each row (seeds); n = finished runs of the row's "
              f"total. Accuracies and rates in %. One row per run: `{study.name}.csv`; training curves: "
              f"`{study.name}_curves.csv`.", ""]
    headers = [*study.group_by, "n", *[f"{m} (%)" if _is_percent(m) else m for m in study.metrics]]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" for _ in headers) + "|")
    for s in summary:
        cells = [str(s[k]) for k in study.group_by] + [f"{s['n']}/{s['runs']}"]
        cells += [_fmt_stat(m, s[f"{m}_mean"], s[f"{m}_std"]) for m in study.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    bad = [r for r in rows if r["status"] != "finished"]
    if bad:
        lines += ["", "Runs not in the table:", ""]
        lines += [f"- `{r['run']}`: {r['status']}" + (f" — {r['error']}" if r["error"] else "") for r in bad]
    files[2].write_text("\n".join(lines) + "\n")

    _write_csv(files[3], ["protocol", "group", *study.group_by, "seed", "status", "round", "train_accuracy",
                          "test_accuracy", "train_loss", "test_loss", "validation_accuracy", "validation_loss",
                          "wall_seconds", "objective_evaluations",
                          "shots_used", "postselection_rate"], curves)
    return files


# --------------------------------------------------------------------------- dry run and CLI


def describe_plan(study: Study, out: str | Path = DEFAULT_OUT) -> list[str]:
    """One line per run (its state) and a total, without running anything."""
    root = Path(out) / study.name
    lines, counts = [], {"new": 0, "resume": 0, "finished": 0, "mismatch": 0, "invalid": 0}
    evaluations = shots = 0
    for run in study.runs:
        state, detail = inspect_run(root / run.name, study.kind, run.config)
        try:
            config = config_class(study.kind).from_dict(run.config).validate()
        except UserError as e:
            state, detail = "invalid", str(e)
        counts[state] += 1
        if state in ("new", "resume") and study.kind == "qt":
            from pqt.training.accounting import plan_run

            plan = plan_run(config)
            remaining = 1.0
            if state == "resume":
                remaining = 1 - _fraction_done(root / run.name, study.kind)
            evaluations += round(plan["circuit_evaluations_total"] * remaining)
            shots += round(plan["shots_total"] * remaining)
        lines.append(f"  {run.name:<50} {state}" + (f": {detail}" if detail else ""))
    head = (f"study {study.name} ({study.kind}, protocol {study.protocol}): {len(study.runs)} runs in {root}; "
            f"{counts['new']} new, {counts['resume']} to resume, {counts['finished']} finished, "
            f"{counts['mismatch'] + counts['invalid']} refused")
    tail = []
    if study.kind == "qt":
        tail.append(f"circuit evaluations still to do: <= {evaluations:,}; shots: <= {shots:,} (upper bounds)")
    return [head, *lines, *tail]
