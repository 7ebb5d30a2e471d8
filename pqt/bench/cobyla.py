"""Bench section ``cobyla``: scipy's COBYLA (pure-Python PRIMA port) against nlopt's compiled LN_COBYLA.

Over the paper's 128 phases, each optimiser alternated with the other: a call of 200 (the reduced
protocol) and of 1,000 (the paper's) evaluations of a free objective (a quadratic), i.e. what the
optimiser itself costs per evaluation, in CPU time (single-threaded: robust to other processes on a
shared machine) and wall time; beside it the paper's objective alone (both QNNs exact, MPS at
chi = 10, the CNN loss on 1,000 images), so the optimiser's share of a round shows. Both spend most
of that on COBYLA's own linear algebra (O(n^2) per step and more for the simplex), not on Python.

nlopt is optional; without it the section says so.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Any

import numpy as np
import torch

EVALUATIONS = 200


def run(repeats: int) -> dict[str, Any]:
    from pqt.bench.photonic_qt import BENCH_CHI, _bench_images
    from pqt.circuits.photonic import PhotonicQNN
    from pqt.distributions.combine import combine_distributions
    from pqt.generator import QuantumTrainGenerator
    from pqt.mappers import MPSMapper
    from pqt.targets import PaperCNN, n_parameters
    from pqt.targets.paper_cnn_fast import FixedBatchLoss
    from pqt.training.config import TrainConfig
    from pqt.training.phase_optimizers import run_cobyla, run_nlopt_cobyla

    if importlib.util.find_spec("nlopt") is None:
        return {"skipped": 'nlopt not installed: skipped (pip install -e ".[nlopt]")'}
    rng = np.random.default_rng(0)
    qnns = [PhotonicQNN(9, 4), PhotonicQNN(8, 4)]
    x0 = np.concatenate([q.random_parameters(rng) for q in qnns])
    target = np.linspace(0.0, 2 * np.pi, len(x0))
    optimisers = {"scipy": run_cobyla, "nlopt": run_nlopt_cobyla}
    r: dict[str, Any] = {"phases": len(x0), "evaluations": EVALUATIONS}

    def free(x: np.ndarray) -> float:
        return float(((x - target) ** 2).sum())

    for budget in (EVALUATIONS, 1000):
        config = TrainConfig(cobyla_maxiter=budget)
        cpu: dict[str, list[float]] = {k: [] for k in optimisers}
        wall: dict[str, list[float]] = {k: [] for k in optimisers}
        for _ in range(max(2, repeats // 5)):
            for name, optimise in optimisers.items():
                w, c = time.perf_counter(), time.process_time()
                step = optimise(free, x0, config)
                cpu[name].append((time.process_time() - c) * 1e3 / step.evaluations)
                wall[name].append((time.perf_counter() - w) * 1e3 / step.evaluations)
        for name in optimisers:
            r[f"{name}_{budget}_cpu_ms"] = statistics.median(cpu[name])
            r[f"{name}_{budget}_wall_ms"] = statistics.median(wall[name])
        r[f"ratio_{budget}"] = r[f"scipy_{budget}_cpu_ms"] / r[f"nlopt_{budget}_cpu_ms"]

    m = n_parameters(PaperCNN())
    torch.manual_seed(0)
    generator = QuantumTrainGenerator(qnns, MPSMapper(m, BENCH_CHI, init_std=0.05))
    images, labels, source = _bench_images()
    loss = FixedBatchLoss(PaperCNN(), images, labels)
    split = np.cumsum([q.n_parameters for q in qnns])[:-1]

    def objective() -> float:
        dists = [q.exact_distribution(p) for q, p in zip(qnns, np.split(x0, split), strict=True)]
        with torch.inference_mode():
            return loss(generator(combine_distributions(dists, m)))

    r["images"] = source
    objective()
    cpu_times, wall_times = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        objective()
        cpu_times.append((time.process_time() - c) * 1e3)
        wall_times.append((time.perf_counter() - w) * 1e3)
    r["objective_cpu_ms"], r["objective_wall_ms"] = statistics.median(cpu_times), statistics.median(wall_times)
    r["threads"] = torch.get_num_threads()
    return r


def table(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"COBYLA: {r['skipped']}")
        return
    print(f"COBYLA over {r['phases']} phases: scipy (PRIMA, Python + numpy) vs nlopt (LN_COBYLA, C); the "
          f"optimiser's own cost per evaluation (free objective), CPU time (wall in brackets)")
    print(f"{'':58} {'nlopt':>9} {'scipy':>10} {'nlopt/scipy':>12}")
    for budget in (EVALUATIONS, 1000):
        label = f"{budget}-evaluation call, per evaluation"
        print(f"{label:58} {r[f'nlopt_{budget}_cpu_ms']:>7.2f}ms {r[f'scipy_{budget}_cpu_ms']:>8.2f}ms "
              f"{1 / r[f'ratio_{budget}']:>11.2f}x   ({r[f'nlopt_{budget}_wall_ms']:.2f} / "
              f"{r[f'scipy_{budget}_wall_ms']:.2f} ms)")
    print(f"the paper objective itself (chi=10, 1,000 images, {r['threads']} thread(s)): "
          f"{r['objective_cpu_ms']:.2f} ms CPU, {r['objective_wall_ms']:.2f} ms wall")
