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
the circuits are simulated exactly and differentiably, and Adam trains their parameters together
with the mapper at every step (``phase_lr``); rounds are then plain epochs.

Reproducibility and resume: every random choice of round r (shuffling, the phase batch, shot
sampling, SPSA perturbations) is drawn from streams seeded by (seed, r), and a checkpoint is
written after every finished round, so ``--resume`` replays an interrupted round exactly and ends
with the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import backends
from backends.base import Backend
from pqt.data import Dataset, training_splits
from pqt.errors import UserError
from pqt.targets import loss_and_accuracy
from pqt.training import run_files
from pqt.training.config import TrainConfig
from pqt.training.method import Method, Network, create_method
from pqt.training.phase_optimizers import PhaseStep, run_cobyla, run_spsa

# Salts that keep the per-round random streams independent of one another.
_SHUFFLE, _PHASE_BATCH, _SPSA = 1, 2, 3


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
    TrainConfig, distillation for a DistillConfig) unless ``method`` is given."""

    def __init__(self, config: TrainConfig, out_dir: Path, log: Callable[[str], None] = print,
                 method: Callable[[TrainConfig, tuple[int, ...], torch.device], Method] | None = None) -> None:
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.log = log
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = _device(config.device)
        self.train_set, self.validation_set, self.test_set = training_splits(
            config.dataset, config.data_dir, config.train_limit, config.test_limit, config.validation_size)
        self.backend: Backend = backends.create_backend(
            config.backend, shots=config.shots, seed=config.seed, max_shots=config.max_shots,
            run_dir=self.out_dir, options=config.backend_options)
        self.joint = config.phase_optimizer == "exact-gradient"
        if self.joint and not self.backend.supports_exact_gradient:
            raise UserError(
                "--phase-optimizer exact-gradient needs exact ideal simulation: use --backend slos --shots exact "
                f"(got backend {config.backend!r}, shots {config.shots or 'exact'}); on shot-based, noisy or "
                "remote backends use cobyla or spsa")
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
    def save(self) -> None:
        """Write checkpoint.pt: tensors and plain Python values only, loadable with weights_only=True."""
        s = self.state
        checkpoint = {
            "round": s.round, "circuit_parameters": [torch.from_numpy(np.asarray(p)) for p in s.parameters],
            "dists": None if s.dists is None else [torch.from_numpy(np.asarray(d)) for d in s.dists],
            "history": s.history, "wall_seconds": s.wall_seconds, "plateau": dict(s.plateau),
            "simulated_evaluations": s.simulated_evaluations, "resumes": s.resumes,
            "method": self.method.state_dict(), "adam": self.adam.state_dict(),
            "backend": self.backend.state_dict(),
            "circuit_adam": self.circuit_adam.state_dict() if self.circuit_adam else None,
            "config": self.config.to_dict(),
        }
        run_files.save_torch(self.out_dir / run_files.CHECKPOINT, checkpoint)

    def load(self) -> None:
        path = self.out_dir / run_files.CHECKPOINT
        try:
            ck = run_files.load_torch(path)
            self.state = RunState(
                ck["round"], [p.numpy().copy() for p in ck["circuit_parameters"]],
                None if ck["dists"] is None else [d.numpy().copy() for d in ck["dists"]],
                ck["history"], ck["wall_seconds"], ck["plateau"], ck["simulated_evaluations"], ck["resumes"])
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
        return self.method.torch_distributions(self.circuit_params)

    @property
    def circuit_evaluations(self) -> int:
        """Circuits evaluated so far: by the backend, and simulated for joint training."""
        return self.backend.counters.evaluations + self.state.simulated_evaluations

    def _adam_stage(self, r: int, progress: tqdm) -> float:
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
        bar = tqdm(total=c.cobyla_maxiter if c.phase_optimizer == "cobyla" else 2 * c.spsa_iterations,
                   desc=f"round {r + 1} {c.phase_optimizer}", leave=False, disable=None, file=sys.stderr)

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
        with tqdm(total=steps, desc=f"round {r + 1} adam", leave=False, disable=None, file=sys.stderr) as bar:
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
            "jobs_submitted": self.backend.jobs_paid, "postselection_rate": self.backend.postselection_rate,
            "seconds": seconds,
        }
        if c.lr_schedule == "plateau":
            entry["lr_factor"] = self.state.plateau["factor"]
        self._finish_round(network, entry, seconds)
        return entry

    def _finish_round(self, network: Network, entry: dict[str, Any], seconds: float) -> None:
        s = self.state
        s.round += 1
        s.history.append(entry)
        s.wall_seconds += seconds
        # model.pt first: a checkpoint never points at a round whose model is missing.
        run_files.save_torch(self.out_dir / run_files.MODEL, network.state_dict)
        self.save()
        run_files.write_json(self.out_dir / run_files.METRICS, self.metrics("running"))

    def metrics(self, status: str) -> dict[str, Any]:
        s, c = self.state, self.config
        last = s.history[-1] if s.history else {}
        counters = self.backend.counters
        return {
            "status": status,
            **run_files.final_results(last),
            "method": self.method.name, "generator": self.method.describe(), **self.method.metrics_fields(),
            **self.report,
            "shots": c.shots if c.shots is not None else "exact", "backend": c.backend,
            "backend_settings": self.backend.describe(),
            "phase_optimizer": c.phase_optimizer, "dataset": c.dataset,
            "fast_path": getattr(self.method, "fast_path", False),
            "train_size": len(self.train_set), "test_size": len(self.test_set),
            "rounds_completed": s.round, "rounds_planned": c.rounds, "seed": c.seed,
            "wall_seconds": s.wall_seconds, "shots_used": counters.shots_used,
            "jobs_submitted": self.backend.jobs_paid, "postselection_rate": self.backend.postselection_rate,
            "circuit_evaluations": self.circuit_evaluations,
            "resumes": s.resumes,
            "history": s.history,
        }

    # ---- whole run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        status = "running"
        try:
            for r in range(self.state.round, c.rounds):
                entry = self.run_round(r)
                self.log(format_round(entry, c.rounds))
            status = "finished"
        except (UserError, KeyboardInterrupt) as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped: {e}"
            raise
        finally:
            if self.state.round:
                run_files.write_json(self.out_dir / run_files.METRICS, self.metrics(status))
            self.backend.close()
        return self.metrics(status)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available to torch here; use --device cpu")
    return device


def format_round(e: dict[str, Any], rounds: int) -> str:
    parts = [f"round {e['round']}/{rounds}", f"adam loss {e['adam_loss']:.4f}"]
    if e["phase_objective_start"] is not None:
        parts.append(f"phase obj {e['phase_objective_start']:.4f}->{e['phase_objective_end']:.4f} "
                     f"({e['objective_evaluations']} evals)")
    parts.append(f"train {e['train_loss']:.4f}/{100 * e['train_accuracy']:.2f}%")
    if "validation_accuracy" in e:
        parts.append(f"val {e['validation_loss']:.4f}/{100 * e['validation_accuracy']:.2f}%")
    parts += [f"test {e['test_loss']:.4f}/{100 * e['test_accuracy']:.2f}%", f"shots {e['shots_used']:,}"]
    if e["postselection_rate"] is not None and e["postselection_rate"] < 1:
        parts.append(f"post-sel {100 * e['postselection_rate']:.1f}%")
    if e["jobs_submitted"]:
        parts.append(f"jobs {e['jobs_submitted']}")
    parts.append(f"{e['seconds']:.1f}s")
    return " | ".join(parts)
