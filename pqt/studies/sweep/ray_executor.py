"""Running a study's runs as Ray tasks (``pqt sweep STUDY --executor ray [--address ADDR]``).

Each run of the grid is one Ray task asking for the CPUs (``--cpus-per-run``) and GPUs
(``--gpus-per-run``) it needs; Ray places it on any node of the cluster with them free. The task does
exactly what a local worker does (:func:`pqt.studies.sweep.runs.execute_run`: skip a finished run,
resume an interrupted one from its checkpoint, record a failure in its folder), so the sweep's rules
are the same whichever executor ran it. Run folders must be on storage every node sees (the same
absolute path everywhere: NFS, Lustre, ...), since a run's checkpoints are written by whichever node
trains it and read by the next one that resumes it.

A worker that dies (killed, node lost) fails its run; the next ``pqt sweep`` resumes it from its last
checkpoint. Tasks are not retried by Ray itself: an automatic retry could resume a run on two nodes at
once if the first one were only unreachable, not dead (the run lock prevents the damage, but the retry
would just be reported busy). Ctrl-C cancels the pending tasks; running ones stop like an interrupted
``pqt train`` and keep their checkpoints.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqt.errors import UserError
from pqt.studies.sweep.runs import execute_run, fraction_done, write_error
from pqt.studies.sweep.study_file import WORKER_LOG, RunSpec, Study


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray cluster on this machine
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0


def _ray_task(kind: str, config: dict[str, Any], run_dir: str, threads: int) -> tuple[str, str | None]:
    """The body of one Ray task: a run, with its output in run_dir/worker.log (like a local worker)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / WORKER_LOG, "a", buffering=1) as log:
        print(f"pqt sweep: Ray worker pid {os.getpid()} on {socket.gethostname()}", file=log)
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log  # also turns the trainer's progress bars off (not a tty)
        try:
            import torch

            if not config.get("threads"):
                torch.set_num_threads(threads)
            return execute_run(kind, config, path)
        except KeyboardInterrupt:  # a cancelled task: the run keeps its checkpoint
            return "interrupted", "cancelled"
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def connect(options: RayOptions) -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install -e \".[ray]\" (or pip install ray)") from None
    if not ray.is_initialized():
        try:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = options.address or "a local cluster"
            raise UserError(f"cannot connect to Ray at {where} ({str(e).splitlines()[0]}); start it with "
                            "'ray start --head' or pass --address HOST:PORT") from None
    return ray


def run_on_ray(study: Study, root: Path, todo: list[RunSpec], options: RayOptions, bar: Any,
               record: Callable[[str, str, str | None], None], poll: float = 1.0) -> None:
    ray = connect(options)
    threads = max(1, int(options.cpus_per_run))
    task = ray.remote(_ray_task).options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
                                         max_retries=0)
    pending = {task.remote(study.kind, run.config, str((root / run.name).resolve()), threads): run for run in todo}
    done = float(bar.n) if bar is not None else 0.0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll)
            for ref in ready:
                run = pending.pop(ref)
                done += 1
                try:
                    status, message = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or its node died: the run keeps its checkpoint
                    status = "failed"
                    message = (f"the Ray worker running it died ({type(e).__name__}); run the sweep again to resume "
                               "it from its last checkpoint")
                    write_error(root / run.name, message)
                if status == "interrupted":
                    raise KeyboardInterrupt
                record(run.name, status, message)
            if bar is not None:
                running = sum(fraction_done(root / r.name, study.kind) for r in pending.values())
                bar.update(done + running - bar.n)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # KeyboardInterrupt inside running tasks: they stop and keep their checkpoints
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in ready:
                pending.pop(ref)
        raise
