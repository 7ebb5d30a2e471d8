"""The one training loop, for every method (:mod:`pqt.training.method`), generator and target.

Each round: ``adam_epochs`` epochs of Adam on the method's classical model (for Quantum-Train, the
mapping model) with the circuit parameters fixed (one evaluation of the circuits serves the whole
stage, unless the method asks for fresh ones every step), then one call of the circuit-parameter
optimiser (COBYLA by default, the photonic paper's alternation; gradient-free, as on hardware) with
the mapper frozen, its objective the cross-entropy on a random batch of ``phase_batch`` training
images kept fixed for that call. After the round the network is generated once more from fresh
circuit evaluations at the new parameters: that network is evaluated, saved as ``model.pt``, and its
distributions feed the next round's Adam stage.

``phase_optimizer = "exact-gradient"`` is joint training instead (the gate-based paper's protocol):
the circuits are simulated exactly and differentiably (by the backend: ideal, or under the noisy
backend's source and loss noise), and Adam trains their parameters together with the mapper at every
step (``phase_lr``); rounds are then plain epochs.

Reproducibility and resume: every random choice of round r (shuffling, the phase batch, shot
sampling, SPSA perturbations) is drawn from streams seeded by (seed, r), and a checkpoint is
written after every finished round, so ``--resume`` replays an interrupted round exactly and ends
with the same result as an uninterrupted run.

Attempts: each process that runs the loop is an *attempt* (:meth:`Trainer.begin_attempt`, recorded in
the checkpoint at once). Every way an attempt ends (finished, stopped by an error, interrupted, failed)
goes through :meth:`Trainer.end_attempt`, which settles the backend's jobs and writes ``metrics.json``
with the status and the reason; an attempt killed outright is recognised by the next one, which dates
its end from the ``.heartbeat`` file it kept touching.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backends
from backends.base import Backend
from pqt.data import Dataset, training_splits
from pqt.errors import UserError
from pqt.interrupts import Terminated
from pqt.targets import loss_and_accuracy
from pqt.threads import thread_settings
from pqt.training import run_files
from pqt.training.config import TrainConfig, setting_differences
from pqt.training.method import Method, Network, create_method
from pqt.training.phase_optimizers import (
    COBYLA_OPTIMIZERS,
    PhaseStep,
    import_nlopt,
    run_cobyla,
    run_nlopt_cobyla,
    run_spsa,
)
from pqt.training.progress import RunProgress, format_round

# Salts that keep the per-round random streams independent of one another.
_SHUFFLE, _PHASE_BATCH, _SPSA = 1, 2, 3
HEARTBEAT_S = 2.0  # how often a running attempt touches run_dir/.heartbeat


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class RunState:
    round: int  # rounds finished
    parameters: list[np.ndarray]  # circuit parameters, one vector per circuit
    dists: list[np.ndarray] | None  # distributions at ``parameters`` (feed the next Adam stage)
    history: list[dict[str, Any]]
    wall_seconds: float
    # lr_schedule "plateau": the rates' factor and the best training loss so far (checkpointed)
    plateau: dict[str, float] = field(default_factory=lambda: {"factor": 1.0, "best": math.inf, "bad_rounds": 0})
    # circuits simulated by the trainer itself (joint training), beside those a backend evaluated
    simulated_evaluations: int = 0
    # settings changed by `pqt train --resume`: [{"after_round": r, "changes": {key: [old, new]}}]
    resumes: list[dict[str, Any]] = field(default_factory=list)
    # every process that ran the loop: {"started", "started_unix", "seconds", "status", "reason", "after_round"}
    attempts: list[dict[str, Any]] = field(default_factory=list)


class _Heartbeat:
    """Touches a file every few seconds from a daemon thread while an attempt runs.

    A ``kill -9`` stops it with the process, so the file's modification time tells the next attempt
    when the killed one ended (to within ``HEARTBEAT_S``): its time is then counted, not lost.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pqt-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with contextlib.suppress(OSError):  # a full or read-only disk: the next run file write reports it
            self.path.touch()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
            self._thread = None

    def last(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def _stream(seed: int, round_index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_index, salt])


def _torch_generator(seed: int, round_index: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(_stream(seed, round_index, salt).integers(2**62)))
    return g


def _check_finite(value: float, where: str, out_dir: Path, finished: int, command: str = "train") -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"loss became {value} during {where}; stopped. The last good checkpoint (round {finished}) is "
            f"kept in {out_dir}: try a lower --adam-lr or --phase-lr, then pqt {command} --resume {out_dir}"
        )


class Trainer:
    """Trains a :class:`Method` for ``config.rounds`` rounds: the one the config names (Quantum-Train for a
    TrainConfig, distillation for a DistillConfig) unless ``method`` is given.

    ``log`` receives the detailed line of every round (``pqt train`` writes it to train.log);
    ``progress`` draws the bars and the short console lines (default: stage bars only).
    """

    def __init__(self, config: TrainConfig, out_dir: Path, log: Callable[[str], None] = print,
                 method: Callable[[TrainConfig, tuple[int, ...], torch.device], Method] | None = None,
                 progress: RunProgress | None = None) -> None:
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.log = log
        self.progress = progress or RunProgress(show_rounds=False)
        # The attempt starts now: loading data and connecting to a backend are part of its time.
        self._attempt_started, self._attempt_clock = time.time(), time.monotonic()
        self._heartbeat = _Heartbeat(self.out_dir / run_files.HEARTBEAT)
        self.stop_notes: list[str] = []
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = _device(config.device)
        self.train_set, self.validation_set, self.test_set = training_splits(
            config.dataset, config.data_dir, config.train_limit, config.test_limit, config.validation_size)
        if config.circuit_backends:
            from backends.distributed import DistributedBackend

            self.backend: Backend = DistributedBackend(
                config.circuit_backends, shots=config.shots, seed=config.seed, max_shots=config.max_shots,
                run_dir=self.out_dir, options=config.backend_options)
        else:
            self.backend = backends.create_backend(
                config.backend, shots=config.shots, seed=config.seed, max_shots=config.max_shots,
                run_dir=self.out_dir, options=config.backend_options)
        if config.phase_optimizer == "nlopt-cobyla":
            import_nlopt()  # an optional dependency: refuse before any work if it is missing
        self.joint = config.phase_optimizer == "exact-gradient"
        if self.joint and not self.backend.supports_exact_gradient:
            raise UserError(
                "--phase-optimizer exact-gradient needs exact probabilities from a differentiable simulation, which "
                f"backend {config.backend!r} with shots {config.shots or 'exact'} cannot give: "
                f"{self.backend.exact_gradient_obstacle}; or use --phase-optimizer cobyla or spsa")
        self.method = (method or create_method)(config, self.train_set.input_shape, self.device)
        self.method.prepare(self.train_set)
        self.circuits = self.method.circuits
        self.model = self.method.module()
        self.adam = torch.optim.Adam(self.model.parameters(), lr=config.adam_lr, weight_decay=config.weight_decay)
        init_rng = np.random.default_rng([config.seed, 0xC0FFEE])
        parameters = self.method.initial_parameters(init_rng)
        # Joint training: the circuit parameters are a torch leaf trained by their own Adam.
        self.circuit_params: torch.Tensor | None = None
        self.circuit_adam: torch.optim.Optimizer | None = None
        if self.joint:
            self.circuit_params = torch.nn.Parameter(torch.from_numpy(np.concatenate(parameters)).to(self.device))
            self.circuit_adam = torch.optim.Adam([self.circuit_params], lr=config.phase_lr,
                                                 weight_decay=config.weight_decay)
        self.state = RunState(0, parameters, None, [], 0.0)
        self.report = self.method.parameter_report()

    # ---- checkpointing --------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint's content: tensors and plain Python values only, loadable with weights_only=True."""
        s = self.state
        self._clock_attempt()
        return {
            "round": s.round, "circuit_parameters": [torch.from_numpy(np.asarray(p)) for p in s.parameters],
            "dists": None if s.dists is None else [torch.from_numpy(np.asarray(d)) for d in s.dists],
            "history": s.history, "wall_seconds": s.wall_seconds, "plateau": dict(s.plateau),
            "simulated_evaluations": s.simulated_evaluations, "resumes": s.resumes, "attempts": s.attempts,
            "method": self.method.state_dict(), "adam": self.adam.state_dict(),
            "backend": self.backend.state_dict(),
            "circuit_adam": self.circuit_adam.state_dict() if self.circuit_adam else None,
            "config": self.config.to_dict(),
        }

    def save(self) -> None:
        """Write checkpoint.pt (atomically: a failed write keeps the previous one)."""
        run_files.save_torch(self.out_dir / run_files.CHECKPOINT, self.checkpoint())

    def load(self) -> None:
        path = self.out_dir / run_files.CHECKPOINT
        try:
            ck = run_files.load_torch(path)
            recorded = ck["config"]
            if not isinstance(recorded, dict):
                raise TypeError("its config is not a table of settings")
        except Exception as e:  # a damaged file, or one that is not ours: name it, no traceback
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(f"cannot resume from {path} ({type(e).__name__}: {detail}); it is damaged or not a "
                            "pqt checkpoint: start a new run with --out DIR") from None
        # A moved data folder holds the same data; anything else outside RESUME_CHANGEABLE is another experiment.
        diffs = setting_differences(recorded, self.config.to_dict(), type(self.config).RESUME_CHANGEABLE | {"data_dir"})
        if diffs:
            listed = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in list(diffs.items())[:4])
            raise UserError(f"{path} was written with other settings ({listed}); resume it with its own settings "
                            "(pqt train --resume DIR) or start a new run with --out DIR")
        try:
            self.state = RunState(
                ck["round"], [p.numpy().copy() for p in ck["circuit_parameters"]],
                None if ck["dists"] is None else [d.numpy().copy() for d in ck["dists"]],
                ck["history"], ck["wall_seconds"], ck["plateau"], ck["simulated_evaluations"], ck.get("resumes", []),
                _recorded_attempts(self.out_dir, ck))
            self.method.load_state_dict(ck["method"])
            self.adam.load_state_dict(ck["adam"])
            self.backend.load_state_dict(ck["backend"])
            if self.circuit_adam is not None and ck["circuit_adam"] is not None:
                with torch.no_grad():
                    self.circuit_params.copy_(torch.from_numpy(np.concatenate(self.state.parameters)))
                self.circuit_adam.load_state_dict(ck["circuit_adam"])
        except UserError:
            raise  # the method's own check (e.g. a distillation run's teacher changed) says it best
        except Exception as e:  # a damaged file, or one from other settings: name it, no traceback
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(f"cannot resume from {path} ({type(e).__name__}: {detail}); it is damaged or was "
                            "written with other settings: start a new run with --out DIR") from None
        sizes = [c.n_parameters for c in self.circuits]
        if [len(p) for p in self.state.parameters] != sizes:
            raise UserError(f"{path} holds circuit parameters of sizes {[len(p) for p in self.state.parameters]}, "
                            f"the configuration's circuits take {sizes}: it was written with other settings; "
                            "start a new run with --out DIR")

    def record_resume_changes(self, changes: dict[str, Any]) -> None:
        """Note settings a resume changed (kept in the checkpoint and metrics.json) and save it at once."""
        self.state.resumes.append({"after_round": self.state.round, "changes": changes})
        self.save()

    # ---- one round -------------------------------------------------------------------------------------
    def _distributions(self, parameters: list[np.ndarray], tag: str) -> list[np.ndarray]:
        return [e.probs for e in self.backend.evaluate(self.circuits, parameters, tag)]

    def _joint_dists(self) -> list[torch.Tensor]:
        assert self.circuit_params is not None
        self.state.simulated_evaluations += len(self.circuits)
        # The backend's differentiable simulation: the ideal one, or its noise model's (noisy backend).
        return self.method.torch_distributions(self.circuit_params, self.backend.torch_distribution)

    @property
    def circuit_evaluations(self) -> int:
        """Circuits evaluated so far: by the backend, and simulated for joint training."""
        return self.backend.counters.evaluations + self.state.simulated_evaluations

    def _adam_stage(self, r: int, progress: Any) -> float:
        c, images, labels = self.config, self.train_set.images, self.train_set.labels
        joint_circuits = self.joint and self.config.uses_circuit
        per_step = self.method.fresh_distributions_per_step and not self.joint
        if not joint_circuits and not per_step and self.state.dists is None:
            self.state.dists = (self._distributions(self.state.parameters, f"r{r}/adam") if not self.joint
                                else [d.detach().cpu().numpy() for d in self._joint_dists()])
        self.method.begin_adam_stage(None if joint_circuits or per_step else self.state.dists)
        shuffle = _torch_generator(c.seed, r, _SHUFFLE)
        steps_per_epoch = math.ceil(len(images) / c.batch_size)
        losses = []
        for epoch in range(c.adam_epochs):
            order = torch.randperm(len(images), generator=shuffle)
            for step, start in enumerate(range(0, len(order), c.batch_size)):
                self._schedule_lr(((r * c.adam_epochs + epoch) * steps_per_epoch + step) /
                                  (c.rounds * c.adam_epochs * steps_per_epoch))
                idx = order[start : start + c.batch_size]
                x, y = images[idx].to(self.device), labels[idx].to(self.device)
                self.adam.zero_grad(set_to_none=True)
                if self.circuit_adam is not None:
                    self.circuit_adam.zero_grad(set_to_none=True)
                dists = (self._distributions(self.state.parameters, f"r{r}/adam/{epoch}/{step}") if per_step
                         else self.state.dists)
                loss = self.method.batch_loss(x, y, dists, self._joint_dists() if joint_circuits else None,
                                              indices=idx)
                _check_finite(loss.item(), f"Adam (round {r + 1}, epoch {epoch + 1})", self.out_dir, r, c.COMMAND)
                loss.backward()
                self.adam.step()
                if joint_circuits:
                    self.circuit_adam.step()
                losses.append(loss.item())
                progress.update(1)
        if self.joint:
            self.state.parameters = self.method.split(self.circuit_params.detach().cpu().numpy())
        return float(np.mean(losses)) if losses else float("nan")

    def _schedule_lr(self, progress: float) -> None:
        """Set the Adam learning rates for the fraction ``progress`` of the run's steps done.

        Derived from the step index (and, for "plateau", the checkpointed factor) alone, so a resumed
        run follows the same schedule.
        """
        c = self.config
        if c.lr_schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif c.lr_schedule == "plateau":
            factor = self.state.plateau["factor"]
        else:
            factor = 1.0
        for optimizer, lr in ((self.adam, c.adam_lr), (self.circuit_adam, c.phase_lr)):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor

    def _update_plateau(self, loss: float) -> None:
        """ReduceLROnPlateau's rule (mode min, relative threshold 1e-4) on the round's training loss."""
        p = self.state.plateau
        if loss < p["best"] * (1.0 - 1e-4):
            p["best"], p["bad_rounds"] = loss, 0
        else:
            p["bad_rounds"] += 1
            if p["bad_rounds"] > self.config.plateau_patience:
                p["factor"] *= self.config.plateau_factor
                p["bad_rounds"] = 0

    def _phase_batch(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Round r's fixed random batch of ``phase_batch`` training images (the optimiser's objective):
        (images, labels, their rows in the training split)."""
        c = self.config
        rng = _stream(c.seed, r, _PHASE_BATCH)
        n = min(c.phase_batch, len(self.train_set))
        idx = torch.from_numpy(rng.choice(len(self.train_set), size=n, replace=False))
        return self.train_set.images[idx].to(self.device), self.train_set.labels[idx].to(self.device), idx

    def _phase_stage(self, r: int, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> PhaseStep | None:
        c = self.config
        if self.joint or not self.circuits:
            return None  # trained with the model in the Adam stage, or a method without circuits
        loss_on_batch = self.method.batch_objective(batch[0], batch[1], indices=batch[2])
        counter = iter(range(10**12))
        bar = self.progress.stage(f"round {r + 1} {c.phase_optimizer}",
                                  c.cobyla_maxiter if c.phase_optimizer in COBYLA_OPTIMIZERS
                                  else 2 * c.spsa_iterations)

        def objective(theta: np.ndarray) -> float:
            tag = f"r{r}/{c.phase_optimizer}/{next(counter)}"
            value = loss_on_batch(self._distributions(self.method.split(theta), tag))
            _check_finite(value, f"the phase optimizer (round {r + 1})", self.out_dir, r, c.COMMAND)
            bar.update(1)
            return value

        try:
            x0 = np.concatenate(self.state.parameters)
            if c.phase_optimizer == "cobyla":
                step = run_cobyla(objective, x0, c)
            elif c.phase_optimizer == "nlopt-cobyla":
                step = run_nlopt_cobyla(objective, x0, c)
            else:
                step = run_spsa(objective, x0, c, _stream(c.seed, r, _SPSA))
        finally:
            bar.close()
        self.state.parameters = self.method.split(step.phases)
        return step

    def evaluate(self, network: Network, dataset: Dataset) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the round's network on ``dataset``."""
        return loss_and_accuracy(network.forward, dataset.images, dataset.labels, self.device)

    def run_round(self, r: int) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        self.backend.reseed(r)
        self.method.begin_round(c.seed, r)
        shots_before = self.backend.counters.shots_used
        evaluations_before = self.circuit_evaluations
        steps = c.adam_epochs * math.ceil(len(self.train_set) / c.batch_size)
        with self.progress.stage(f"round {r + 1} adam", steps) as bar:
            adam_loss = self._adam_stage(r, bar)
        batch = None if self.joint else self._phase_batch(r)
        step = self._phase_stage(r, batch) if batch is not None else None
        # The network of this round: generated once from fresh evaluations at the new parameters.
        if self.joint:
            self.state.dists = [d.detach().cpu().numpy() for d in self._joint_dists()]
        else:
            self.state.dists = self._distributions(self.state.parameters, f"r{r}/eval")
        network = self.method.network(self.state.dists)
        objective_end = None
        if step is not None:
            # The optimiser's chosen point, judged on these fresh evaluations rather than by the minimum of its
            # own (shot-noisy) ones: the improvement the log reports is then not a selection effect.
            objective_end = self.method.round_objective(network, batch[0], batch[1], indices=batch[2])
        if c.lr_schedule == "plateau":
            self._update_plateau(adam_loss)
        train_loss, train_acc = self.evaluate(network, self.train_set)
        test_loss, test_acc = self.evaluate(network, self.test_set)
        validation = {}
        if self.validation_set is not None:
            val_loss, val_acc = self.evaluate(network, self.validation_set)
            validation = {"validation_loss": val_loss, "validation_accuracy": val_acc}
        _check_finite(train_loss, f"evaluation (round {r + 1})", self.out_dir, r, c.COMMAND)
        seconds = time.perf_counter() - started
        counters = self.backend.counters
        entry = {
            "round": r + 1, "adam_loss": adam_loss,
            "phase_objective_start": step.objective_start if step else None,
            "phase_objective_end": objective_end,
            "phase_objective_best_seen": step.objective_end if step else None,
            "objective_evaluations": step.evaluations if step else 0,
            "train_loss": train_loss, "train_accuracy": train_acc,
            "test_loss": test_loss, "test_accuracy": test_acc, **validation,
            "shots_round": counters.shots_used - shots_before, "shots_used": counters.shots_used,
            "circuit_evaluations_round": self.circuit_evaluations - evaluations_before,
            "jobs_submitted": self.backend.jobs_paid, "jobs_uncertain": self.backend.accounting()["jobs_uncertain"],
            "postselection_rate": self.backend.postselection_rate, "seconds": seconds,
        }
        if c.lr_schedule == "plateau":
            entry["lr_factor"] = self.state.plateau["factor"]
        self._finish_round(network, entry, seconds)
        return entry

    def _finish_round(self, network: Network, entry: dict[str, Any], seconds: float) -> None:
        """Commit a round: model.pt, checkpoint.pt and metrics.json are replaced together, or not at all.

        All three are written to temporary files first; only then are they renamed, model.pt first (a
        checkpoint never points at a round whose model is missing). A failed write (a full disk, a
        read-only folder) leaves the previous round's files, and the round is taken back in memory too,
        so the metrics.json written when the run stops describes the checkpoint that survives.
        """
        s = self.state
        s.round += 1
        s.history.append(entry)
        s.wall_seconds += seconds
        try:
            run_files.write_together([
                (self.out_dir / run_files.MODEL, run_files.torch_writer(network.state_dict)),
                (self.out_dir / run_files.CHECKPOINT, run_files.torch_writer(self.checkpoint())),
                (self.out_dir / run_files.METRICS, run_files.json_writer(self.metrics("running")))])
        except BaseException:
            s.round -= 1
            s.history.pop()
            s.wall_seconds -= seconds
            raise

    def metrics(self, status: str, reason: str | None = None) -> dict[str, Any]:
        s, c = self.state, self.config
        last = s.history[-1] if s.history else {}
        counters = self.backend.counters
        self._clock_attempt()
        accounting = self.backend.accounting()
        return {
            "status": status, "stop_reason": reason, "notes": self.stop_notes,
            **run_files.final_results(last),
            "method": self.method.name, "generator": self.method.describe(), **self.method.metrics_fields(),
            **self.report,
            "shots": c.shots if c.shots is not None else "exact", "backend": c.backend,
            "backend_settings": self.backend.describe(),
            "phase_optimizer": c.phase_optimizer, "dataset": c.dataset,
            "fast_path": getattr(self.method, "fast_path", False),
            "channels_last": getattr(self.method, "channels_last", False),
            "threads": thread_settings(),
            "train_size": len(self.train_set), "test_size": len(self.test_set),
            "rounds_completed": s.round, "rounds_planned": c.rounds, "seed": c.seed,
            "wall_seconds": sum(a["seconds"] for a in s.attempts) if s.attempts else s.wall_seconds,
            "wall_seconds_attempt": s.attempts[-1]["seconds"] if s.attempts else s.wall_seconds,
            "rounds_seconds": s.wall_seconds, "attempts": s.attempts,
            "shots_used": counters.shots_used, "shots_charged": accounting["shots_charged"],
            "jobs_submitted": accounting["jobs_submitted"], "jobs_uncertain": accounting["jobs_uncertain"],
            "jobs_abandoned": accounting["jobs_abandoned"], "jobs_not_cancelled": accounting["jobs_not_cancelled"],
            "postselection_rate": self.backend.postselection_rate,
            "circuit_evaluations": self.circuit_evaluations,
            # distributed QNNs: shots, post-selection, jobs and retries of each processor
            **({"processors": self.backend.processor_report()} if hasattr(self.backend, "processor_report") else {}),
            "resumes": s.resumes,
            "history": s.history,
        }

    # ---- attempts: how a run starts and every way it stops ---------------------------------------------
    def _clock_attempt(self) -> None:
        """Bring the running attempt's seconds up to now (they are saved with every checkpoint)."""
        attempts = self.state.attempts
        if attempts and attempts[-1]["status"] == "running":
            attempts[-1]["seconds"] = time.monotonic() - self._attempt_clock

    def begin_attempt(self) -> None:
        """Start this process's attempt: clean what killed writes left, account for a killed attempt, record.

        The attempts live in metrics.json, which is written at once (and at every round and stop), so even
        an attempt killed in its first round is counted; the checkpoint keeps a copy as of its round.
        """
        run_files.remove_stale_temp_files(self.out_dir)
        attempts = self.state.attempts
        if attempts and attempts[-1]["status"] == "running":  # the previous process never stopped cleanly
            last = attempts[-1]
            ended = self._heartbeat.last()
            if ended is not None and last.get("started_unix") is not None:
                last["seconds"] = max(last["seconds"], ended - last["started_unix"])
            last["status"] = "killed"
            last["reason"] = "the process ended without stopping cleanly (killed, or the machine stopped)"
        attempts.append({"started": datetime.fromtimestamp(self._attempt_started, UTC).isoformat(timespec="seconds"),
                         "started_unix": self._attempt_started, "seconds": 0.0, "status": "running",
                         "reason": None, "after_round": self.state.round})
        self.stop_notes = []
        if not (self.out_dir / run_files.CHECKPOINT).exists():
            self.save()  # a round-0 checkpoint: even a run killed in its first round can be resumed
        run_files.write_json(self.out_dir / run_files.METRICS, self.metrics("running"))
        self._heartbeat.start()

    def end_attempt(self, status: str, reason: str | None) -> list[str]:
        """The one way an attempt ends; returns the backend's notes (jobs left on the cloud, ...).

        ``status``: finished, stopped (an error that names its fix), interrupted, or failed (a bug).
        Settles the backend (a cloud backend cancels the jobs it abandons and names those it cannot),
        then writes metrics.json with the status, the reason and the notes. At a stop, a metrics.json
        that cannot be written (the disk is full) keeps its previous version, which describes the last
        checkpoint; at the end of a finished run, that is an error.
        """
        self.progress.close()
        outcome = status if status in ("finished", "interrupted") else "stopped"
        try:
            notes = list(self.backend.close(outcome))
        except Exception as e:  # settling the backend must not hide why the run stopped
            notes = [f"the backend could not settle its jobs ({type(e).__name__}: {e})"]
        self._heartbeat.stop()
        self._clock_attempt()
        if self.state.attempts and self.state.attempts[-1]["status"] == "running":
            self.state.attempts[-1].update(status=status, reason=reason)
        self.stop_notes = notes
        try:
            run_files.write_json(self.out_dir / run_files.METRICS, self.metrics(status, reason))
        except run_files.RunFileError as e:
            if status == "finished":
                raise
            notes.append(f"{e}: it still describes round {self.state.round}")
        for note in notes:
            with contextlib.suppress(UserError, OSError):  # a full disk: the note is in the final message anyway
                self.log(f"note: {note}")
        return notes

    # ---- whole run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        self.begin_attempt()
        try:
            self.progress.begin(self.state.round, c.rounds)
            for r in range(self.state.round, c.rounds):
                entry = self.run_round(r)
                self.log(format_round(entry, c.rounds))
                self.progress.round_finished(entry, c.rounds)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (pqt.interrupts.Terminated)
            self.end_attempt("interrupted", "terminated (SIGTERM)" if isinstance(e, Terminated) else
                             "interrupted (Ctrl-C)")
            raise
        except UserError as e:
            reason = str(e)
            if isinstance(e, run_files.RunFileError):
                reason += (f"; the last complete checkpoint (round {self.state.round}) is kept in {self.out_dir}: "
                           f"continue with pqt train --resume {self.out_dir}")
            notes = self.end_attempt("stopped", reason)
            if reason != str(e) or notes:  # the final message also names what may still run (or bill) on the cloud
                message = "; ".join([reason, *notes])
                raise (UserError(message) if isinstance(e, run_files.RunFileError) else type(e)(message)) from None
            raise
        except BaseException as e:
            self.end_attempt("failed", f"{type(e).__name__}: {e}")
            raise
        self.end_attempt("finished", None)
        return self.metrics("finished")


def _recorded_attempts(run_dir: Path, checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's attempts: from metrics.json (written at every start, round and stop), else the checkpoint's."""
    attempts = run_files.read_metrics(run_dir).get("attempts")
    if isinstance(attempts, list) and all(isinstance(a, dict) and {"seconds", "status"} <= a.keys()
                                          for a in attempts):
        return attempts
    # A checkpoint from before attempts were recorded: its rounds' time is all that is known.
    return checkpoint.get("attempts") or [{"started": None, "started_unix": None, "seconds": checkpoint["wall_seconds"],
                                           "status": "unknown", "reason": None, "after_round": 0}]


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available to torch here; use --device cpu")
    return device
