"""Running a study's runs: in this process or in worker processes, with a progress bar and clean stops."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqt.errors import UserError
from pqt.studies.sweep.aggregate import aggregate
from pqt.studies.sweep.ray_executor import RayOptions
from pqt.studies.sweep.runs import execute_run, fraction_done, inspect_run, read_error, write_error
from pqt.studies.sweep.study_file import DEFAULT_OUT, DEFAULT_RESULTS, WORKER_LOG, RunSpec, Study


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


def run_sweep(study: Study, out: str | Path = DEFAULT_OUT, jobs: int = 1, results: str | Path = DEFAULT_RESULTS,
              show_progress: bool = True, print_fn: Callable[[str], None] = print,
              ray: RayOptions | None = None) -> SweepOutcome:
    """Execute the study's runs (skip finished, resume interrupted) and aggregate the results.

    ``ray`` given, the runs are Ray tasks (:mod:`pqt.studies.sweep.ray_executor`) instead of local workers.
    """
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
            write_error(root / run.name, detail)
            outcome.failed[run.name] = detail
        else:
            todo.append(run)
    jobs = max(1, min(jobs, len(todo)))
    threads = default_threads(jobs)
    where = (f"Ray ({ray.address or 'local cluster'}), {ray.cpus_per_run:g} CPU(s) and {ray.gpus_per_run:g} GPU(s) "
             "per run" if ray else f"{jobs} worker(s) x {threads} thread(s)")
    print_fn(f"study {study.name} ({study.kind}, protocol {study.protocol}): {len(study.runs)} runs in {root}; "
             f"{len(outcome.skipped)} finished, {len(todo)} to run on {where}")
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
        if ray is not None:
            from pqt.studies.sweep.ray_executor import run_on_ray

            run_on_ray(study, root, todo, ray, bar, record)
        elif jobs == 1:
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
                        write_error(run_dir, message)
                    record(name, "failed", message)
            if bar is not None:
                bar.set_postfix_str(", ".join(active) if len(active) <= 2 else f"{len(active)} running",
                                    refresh=False)
                bar.update(done + sum(fraction_done(root / name, study.kind) for name in active) - bar.n)
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
