"""One run of a study: what its directory holds, and running, resuming or skipping it under a lock."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqt.errors import UserError
from pqt.studies.sweep.study_file import ERROR_FILE, EXTENDABLE, LENGTH_KEYS, NEUTRAL, normalise_config
from pqt.training import run_files
from pqt.training.run_files import RunLock

# --------------------------------------------------------------------------- one run


def _differences(kind: str, recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    defaults = normalise_config(kind, {})
    skip = set(EXTENDABLE[kind]) | set(NEUTRAL)
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
        path = run_dir / run_files.CONFIG
        try:
            recorded = run_files.read_json(path)
        except (OSError, ValueError) as e:
            recorded = e
        if not isinstance(recorded, dict):
            why = f"{type(recorded).__name__}" if isinstance(recorded, Exception) else "not a JSON object"
            return "mismatch", (f"{path} is damaged ({why}); restore it, or delete the directory to start the run "
                                "again")
        diffs = _differences(kind, recorded, wanted)
        if diffs:
            return "mismatch", (f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); delete the "
                                "directory or choose another --out")
    length_key, done_key = LENGTH_KEYS[kind]
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


def write_error(run_dir: Path, message: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(message.rstrip() + "\n")


def read_error(run_dir: Path) -> str | None:
    path = Path(run_dir) / ERROR_FILE
    if not path.is_file():
        return None
    lines = path.read_text().strip().splitlines()
    return lines[0] if lines else "failed"


def _run_loop(kind: str, config: dict[str, Any], run_dir: Path, resume: bool,
              progress: Callable[[float], None]) -> None:
    """A run of the one training loop: Quantum-Train (kind qt) or distillation (kind distill)."""
    from pqt.interrupts import restore_sigint
    from pqt.studies.sweep.study_file import config_class
    from pqt.training import provenance
    from pqt.training.trainer import Trainer

    cfg = config_class(kind).from_dict(config).validate()
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
    elif kind == "distill":
        log(f"pqt sweep: starting a {cfg.student} student, widths {list(cfg.widths)}, seed {cfg.seed} "
            f"({cfg.rounds} rounds)")
    else:
        log(f"pqt sweep: starting {cfg.generator} generator, {cfg.mapper_kind} mapper, seed {cfg.seed} "
            f"({cfg.rounds} rounds)")
    run_files.write_json(run_dir / run_files.CONFIG, cfg.to_dict())
    provenance.record(run_dir, cfg.dataset, cfg.data_dir, cfg.threads, cfg.device, "resume" if resume else "start")
    trainer.run()


def _run_baseline(config: dict[str, Any], run_dir: Path, progress: Callable[[float], None]) -> None:
    from pqt.studies.baselines import BaselineConfig, run_baseline

    run_baseline(BaselineConfig.from_dict(config), run_dir,
                 log=lambda line: run_files.append_log(run_dir / run_files.LOG, line), progress=progress)


def execute_run(kind: str, config: dict[str, Any], run_dir: str | Path,
                progress: Callable[[float], None] | None = None) -> tuple[str, str | None]:
    """Run, resume or skip one run; returns (status, message).

    Status: finished, skipped (already finished), busy (another live process holds the run's
    lock: :class:`RunLock`) or failed. A failure (a UserError, or any other exception with its traceback) is
    written to ``run_dir/error.txt`` and returned, never raised; KeyboardInterrupt propagates (the
    run keeps its last checkpoint).
    """
    run_dir = Path(run_dir)
    progress = progress or (lambda fraction: None)
    lock = RunLock(run_dir)
    busy = lock.acquire()
    if busy is not None:
        return "busy", busy
    try:
        return _execute_locked(kind, config, run_dir, progress)
    finally:
        lock.release()


def _execute_locked(kind: str, config: dict[str, Any], run_dir: Path,
                    progress: Callable[[float], None]) -> tuple[str, str | None]:
    try:
        state, detail = inspect_run(run_dir, kind, config)
    except UserError as e:
        write_error(run_dir, str(e))
        return "failed", str(e)
    if state == "finished":
        return "skipped", None
    if state == "mismatch":
        write_error(run_dir, detail)
        return "failed", detail
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        if kind in ("qt", "distill"):
            _run_loop(kind, config, run_dir, state == "resume", progress)
        else:
            _run_baseline(config, run_dir, progress)
    except UserError as e:
        write_error(run_dir, str(e))
        return "failed", str(e)
    except Exception as e:  # a bug in one run must not cost the others: record it, go on
        message = f"{type(e).__name__}: {e}"
        write_error(run_dir, f"{message}\n\n{traceback.format_exc()}")
        return "failed", message
    return "finished", None


def fraction_done(run_dir: Path, kind: str) -> float:
    try:
        m = run_files.read_json(run_dir / run_files.METRICS)
    except (OSError, json.JSONDecodeError):
        return 0.0
    done_key = LENGTH_KEYS[kind][1]
    planned = m.get(done_key.replace("completed", "planned"))
    return min(1.0, (m.get(done_key) or 0) / planned) if planned else 0.0
