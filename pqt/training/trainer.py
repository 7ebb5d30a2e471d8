"""The Quantum-Train loop, as the paper trains it.

Each round: ``adam_epochs`` epochs of Adam on the MPS with the phases fixed (one pair of circuit
evaluations serves the whole stage), then one call of the phase optimizer (COBYLA by default) on
the phases with the MPS frozen, its objective the cross-entropy on a random batch of
``phase_batch`` training images kept fixed for that call. After the round the network is
generated once more from fresh circuit evaluations at the new phases: that network is evaluated,
saved as ``model.pt``, and its distributions feed the next round's Adam stage.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import backends
from backends.base import Backend
from pqt.circuits.photonic import PhotonicQNN
from pqt.data import Dataset, training_splits
from pqt.distributions.combine import WeightGenerator, check_outcome_capacity, combine_distributions
from pqt.distributions.sources import DistributionSource
from pqt.errors import UserError
from pqt.targets.fast_forward import training_forward
from pqt.targets.fast_loss import FixedBatchLoss
from pqt.targets.networks import build_target, functional_forward, loss_and_accuracy, n_parameters, unflatten
from pqt.training import run_files
from pqt.training.accounting import parameter_report
from pqt.training.config import TrainConfig
from pqt.training.phase_optimizers import PhaseStep, check_phase_optimizer, run_cobyla, run_spsa

# Salts that keep the per-round random streams independent of one another.
_SHUFFLE, _PHASE_BATCH, _SPSA = 1, 2, 3


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class RunState:
    round: int  # rounds finished
    phases: list[np.ndarray]
    dists: list[np.ndarray] | None  # distributions at ``phases`` (feed the next Adam stage)
    history: list[dict[str, Any]]
    wall_seconds: float


def _stream(seed: int, round_index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_index, salt])


def _torch_generator(seed: int, round_index: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(_stream(seed, round_index, salt).integers(2**62)))
    return g


def _check_finite(value: float, where: str, out_dir: Path, finished: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"loss became {value} during {where}; stopped. The last good checkpoint (round {finished}) is "
            f"kept in {out_dir}: try a lower --adam-lr or --phase-lr, then pqt train --resume {out_dir}"
        )


class Trainer:
    def __init__(self, config: TrainConfig, out_dir: Path, log: Callable[[str], None] = print) -> None:
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.log = log
        check_phase_optimizer(config.phase_optimizer)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(config.device)
        self.train_set, self.validation_set, self.test_set = training_splits(
            config.dataset, config.data_dir, config.train_limit, config.test_limit, config.validation_size)
        self.target = build_target(config.target, config.activation).to(self.device)
        self.n_weights = n_parameters(self.target)
        check_outcome_capacity(list(zip(config.qnn_modes, config.qnn_photons, strict=True)), self.n_weights)
        self.qnns = [PhotonicQNN(m, n) for m, n in zip(config.qnn_modes, config.qnn_photons, strict=True)]
        self.backend: Backend = backends.create_backend(
            config.backend, shots=config.shots, seed=config.seed, max_shots=config.max_shots,
            run_dir=self.out_dir, options=config.backend_options)
        if config.phase_optimizer == "exact-gradient" and not self.backend.supports_exact_gradient:
            raise UserError(
                "--phase-optimizer exact-gradient needs exact ideal simulation: use --backend slos --shots exact "
                f"(got backend {config.backend!r}, shots {config.shots or 'exact'}); on shot-based, noisy or "
                "remote backends use cobyla or spsa")
        torch.manual_seed(config.seed)
        self.generator = WeightGenerator(self.n_weights, config.bond_dim, config.mps_init_std).to(self.device)
        self.adam = torch.optim.Adam(self.generator.parameters(), lr=config.adam_lr)
        init_rng = np.random.default_rng([config.seed, 0xC0FFEE])
        phases = [q.random_phases(init_rng) for q in self.qnns]
        self.phase_params: torch.Tensor | None = None
        self.phase_adam: torch.optim.Optimizer | None = None
        if config.phase_optimizer == "exact-gradient":
            self.phase_params = torch.nn.Parameter(torch.from_numpy(np.concatenate(phases)))
            self.phase_adam = torch.optim.Adam([self.phase_params], lr=config.phase_lr)
        self.source = DistributionSource(config.distribution_source, [q.n_outcomes for q in self.qnns],
                                         config.seed)
        if config.distribution_source != "photonic" and config.phase_optimizer == "exact-gradient":
            raise UserError("ablations replace the photonic distributions: use --phase-optimizer cobyla or spsa")
        self.state = RunState(0, phases, None, [], 0.0)
        self.report = parameter_report(config, self.qnns, self.target)

    # ---- setup -------------------------------------------------------------------------------------
    @property
    def _split_sizes(self) -> list[int]:
        return [q.n_parameters for q in self.qnns]

    def _split(self, theta: np.ndarray) -> list[np.ndarray]:
        return list(np.split(np.asarray(theta, dtype=np.float64), np.cumsum(self._split_sizes)[:-1]))

    # ---- checkpointing --------------------------------------------------------------------------------
    def save(self) -> None:
        s = self.state
        checkpoint = {
            "round": s.round, "phases": s.phases, "dists": s.dists, "history": s.history,
            "wall_seconds": s.wall_seconds, "generator": self.generator.state_dict(),
            "adam": self.adam.state_dict(), "backend": self.backend.state_dict(),
            "phase_adam": self.phase_adam.state_dict() if self.phase_adam else None,
            "config": self.config.to_dict(),
        }
        run_files.save_torch(self.out_dir / run_files.CHECKPOINT, checkpoint)

    def load(self) -> None:
        path = self.out_dir / run_files.CHECKPOINT
        try:
            ck = run_files.load_torch(path)
        except Exception as e:  # a damaged file: name it, no traceback
            raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); it is damaged: start a new run "
                            "with --out DIR") from None
        self.state = RunState(ck["round"], [np.asarray(p) for p in ck["phases"]],
                              None if ck["dists"] is None else [np.asarray(d) for d in ck["dists"]],
                              ck["history"], ck["wall_seconds"])
        self.generator.load_state_dict(ck["generator"])
        self.adam.load_state_dict(ck["adam"])
        self.backend.load_state_dict(ck["backend"])
        if self.phase_adam is not None and ck["phase_adam"] is not None:
            with torch.no_grad():
                self.phase_params.copy_(torch.from_numpy(np.concatenate(self.state.phases)))
            self.phase_adam.load_state_dict(ck["phase_adam"])

    # ---- one round -------------------------------------------------------------------------------------
    def _distributions(self, tag: str) -> list[np.ndarray]:
        return [e.probs for e in self.backend.evaluate(self.qnns, self.state.phases, tag)]

    def _combined(self, dists: list[Any]) -> torch.Tensor:
        dists = dists if self.phase_params is not None else self.source.replace(dists)
        return combine_distributions(dists, self.n_weights, self.config.scaling).to(self.device)

    def _generate(self, dists: list[Any]) -> torch.Tensor:
        return self.generator(self._combined(dists))

    def _torch_dists(self) -> list[torch.Tensor]:
        assert self.phase_params is not None
        parts = torch.split(self.phase_params, self._split_sizes)
        return [q.torch_distribution(p) for q, p in zip(self.qnns, parts, strict=True)]

    def _adam_stage(self, r: int, progress: tqdm) -> float:
        c, images, labels = self.config, self.train_set.images, self.train_set.labels
        exact_gradient = self.phase_params is not None
        if not exact_gradient and self.state.dists is None:
            self.state.dists = self._distributions(f"r{r}/adam")
        combined = None if exact_gradient else self._combined(self.state.dists)
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
                if exact_gradient:
                    self.phase_adam.zero_grad(set_to_none=True)
                    weights = self._generate(self._torch_dists())
                elif self.config.distribution_source == "random-redraw":
                    weights = self._generate(self.state.dists)  # a fresh vector every forward pass
                else:
                    weights = self.generator(combined)
                loss = F.cross_entropy(training_forward(self.target, weights, x), y)
                _check_finite(loss.item(), f"Adam (round {r + 1}, epoch {epoch + 1})", self.out_dir, r)
                loss.backward()
                self.adam.step()
                if exact_gradient:
                    self.phase_adam.step()
                losses.append(loss.item())
                progress.update(1)
        if exact_gradient:
            self.state.phases = self._split(self.phase_params.detach().numpy())
        return float(np.mean(losses)) if losses else float("nan")

    def _schedule_lr(self, progress: float) -> None:
        """Set the Adam learning rates for the fraction ``progress`` of the run's steps done.

        Derived from the step index alone, so a resumed run follows the same schedule.
        """
        factor = 1.0 if self.config.lr_schedule == "constant" else 0.5 * (1.0 + math.cos(math.pi * progress))
        for optimizer, lr in ((self.adam, self.config.adam_lr), (self.phase_adam, self.config.phase_lr)):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor

    def _phase_stage(self, r: int) -> PhaseStep | None:
        c = self.config
        if c.phase_optimizer == "exact-gradient":
            return None  # the phases trained with the MPS in the Adam stage
        rng = _stream(c.seed, r, _PHASE_BATCH)
        n = min(c.phase_batch, len(self.train_set))
        idx = torch.from_numpy(rng.choice(len(self.train_set), size=n, replace=False))
        loss_on_batch = FixedBatchLoss(self.target, self.train_set.images[idx].to(self.device),
                                       self.train_set.labels[idx].to(self.device))
        counter = iter(range(10**12))
        bar = tqdm(total=c.cobyla_maxiter if c.phase_optimizer == "cobyla" else 2 * c.spsa_iterations,
                   desc=f"round {r + 1} {c.phase_optimizer}", leave=False, disable=None, file=sys.stderr)

        def objective(theta: np.ndarray) -> float:
            tag = f"r{r}/{c.phase_optimizer}/{next(counter)}"
            dists = [e.probs for e in self.backend.evaluate(self.qnns, self._split(theta), tag)]
            with torch.inference_mode():
                value = loss_on_batch(self._generate(dists))
            _check_finite(value, f"the phase optimizer (round {r + 1})", self.out_dir, r)
            bar.update(1)
            return value

        try:
            x0 = np.concatenate(self.state.phases)
            if c.phase_optimizer == "cobyla":
                step = run_cobyla(objective, x0, c)
            else:
                step = run_spsa(objective, x0, c, _stream(c.seed, r, _SPSA))
        finally:
            bar.close()
        self.state.phases = self._split(step.phases)
        return step

    def evaluate(self, weights: torch.Tensor, dataset: Dataset) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the generated network on ``dataset``."""
        return loss_and_accuracy(lambda x: functional_forward(self.target, weights, x), dataset.images,
                                 dataset.labels, self.device)

    def run_round(self, r: int) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        self.backend.reseed(r)
        self.source.reseed(c.seed, r)
        shots_before = self.backend.counters.shots_used
        steps = c.adam_epochs * math.ceil(len(self.train_set) / c.batch_size)
        with tqdm(total=steps, desc=f"round {r + 1} adam", leave=False, disable=None, file=sys.stderr) as bar:
            adam_loss = self._adam_stage(r, bar)
        step = self._phase_stage(r)
        # The network of this round: generated once from fresh evaluations at the new phases.
        if self.phase_params is not None:
            self.state.dists = [d.detach().numpy() for d in self._torch_dists()]
        else:
            self.state.dists = self._distributions(f"r{r}/eval")
        with torch.no_grad():
            weights = self._generate(self.state.dists)
        train_loss, train_acc = self.evaluate(weights, self.train_set)
        test_loss, test_acc = self.evaluate(weights, self.test_set)
        validation = {}
        if self.validation_set is not None:
            val_loss, val_acc = self.evaluate(weights, self.validation_set)
            validation = {"validation_loss": val_loss, "validation_accuracy": val_acc}
        _check_finite(train_loss, f"evaluation (round {r + 1})", self.out_dir, r)
        seconds = time.perf_counter() - started
        counters = self.backend.counters
        entry = {
            "round": r + 1, "adam_loss": adam_loss,
            "phase_objective_start": step.objective_start if step else None,
            "phase_objective_end": step.objective_end if step else None,
            "objective_evaluations": step.evaluations if step else 0,
            "train_loss": train_loss, "train_accuracy": train_acc,
            "test_loss": test_loss, "test_accuracy": test_acc, **validation,
            "shots_round": counters.shots_used - shots_before, "shots_used": counters.shots_used,
            "jobs_submitted": self.backend.jobs_paid, "postselection_rate": self.backend.postselection_rate,
            "seconds": seconds,
        }
        self._finish_round(weights, entry, seconds)
        return entry

    def _finish_round(self, weights: torch.Tensor, entry: dict[str, Any], seconds: float) -> None:
        s = self.state
        s.round += 1
        s.history.append(entry)
        s.wall_seconds += seconds
        # model.pt first: a checkpoint never points at a round whose model is missing.
        state_dict = {k: v.detach().clone().cpu() for k, v in unflatten(self.target, weights).items()}
        run_files.save_torch(self.out_dir / run_files.MODEL, state_dict)
        self.save()
        run_files.write_json(self.out_dir / run_files.METRICS, self.metrics("running"))

    def metrics(self, status: str) -> dict[str, Any]:
        s, c = self.state, self.config
        last = s.history[-1] if s.history else {}
        counters = self.backend.counters
        return {
            "status": status,
            **run_files.final_results(last),
            "bond_dim": c.bond_dim, **self.report,
            "shots": c.shots if c.shots is not None else "exact", "backend": c.backend,
            "backend_settings": self.backend.describe(),
            "phase_optimizer": c.phase_optimizer, "dataset": c.dataset,
            "train_size": len(self.train_set), "test_size": len(self.test_set),
            "rounds_completed": s.round, "rounds_planned": c.rounds, "seed": c.seed,
            "wall_seconds": s.wall_seconds, "shots_used": counters.shots_used,
            "jobs_submitted": self.backend.jobs_paid, "postselection_rate": self.backend.postselection_rate,
            "circuit_evaluations": counters.evaluations,
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


def plan_run(config: TrainConfig) -> dict[str, Any]:
    """Circuit evaluations, jobs and shots a run will need (upper bounds: COBYLA may stop early)."""
    n_qnn = len(config.qnn_modes)
    if config.phase_optimizer == "cobyla":
        objective_calls = config.cobyla_maxiter
    elif config.phase_optimizer == "spsa":
        objective_calls = 2 * config.spsa_iterations
    else:
        objective_calls = 0
    simulated = config.phase_optimizer == "exact-gradient"
    per_round = 0 if simulated else n_qnn * (objective_calls + 1)  # + the end-of-round evaluation
    first = 0 if simulated else n_qnn  # round 1's Adam stage needs one evaluation first
    backend_cls = backends.backend_class(config.backend)
    per_call_shots = 0 if config.shots is None else config.shots
    jobs = (lambda n: n) if backend_cls.remote else (lambda n: 0)
    total_evals = first + per_round * config.rounds
    return {
        "rounds": config.rounds, "circuit_evaluations_per_round": per_round,
        "circuit_evaluations_total": total_evals,
        "jobs_per_round": jobs(per_round), "jobs_total": jobs(total_evals),
        "shots_per_round": per_round * per_call_shots, "shots_total": total_evals * per_call_shots,
        "max_shots": config.max_shots,
    }
