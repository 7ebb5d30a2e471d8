"""Gradient-free optimizers for the photonic phases (the MPS is frozen meanwhile).

Each takes an objective f(theta) -> float over the concatenated phases of all QNNs and returns
the new phases: ``cobyla`` (scipy's, the paper's), ``nlopt-cobyla`` (nlopt's compiled COBYLA, optional)
and ``spsa``. ``exact-gradient`` is not here: it trains the phases together with the MPS by
backpropagation (see ``pqt.training.trainer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from pqt.errors import UserError
from pqt.training.config import TrainConfig

PHASE_OPTIMIZERS = ("cobyla", "nlopt-cobyla", "spsa", "exact-gradient")
COBYLA_OPTIMIZERS = ("cobyla", "nlopt-cobyla")  # take --cobyla-maxiter and --cobyla-rhobeg

Objective = Callable[[np.ndarray], float]


@dataclass
class PhaseStep:
    phases: np.ndarray
    evaluations: int
    objective_start: float
    objective_end: float


class _EvaluationBudgetSpent(Exception):
    pass


def run_cobyla(objective: Objective, x0: np.ndarray, config: TrainConfig) -> PhaseStep:
    """The paper's optimizer: scipy's COBYLA, ``cobyla_maxiter`` objective evaluations at most.

    scipy silently raises a ``maxiter`` below n + 2 to n + 2 (130 for the paper's 128 phases);
    we honour the user's budget instead and keep the best point seen when it runs out.
    """
    values: list[float] = []
    best_x, best_value = np.array(x0, dtype=np.float64), float("inf")

    def tracked(x: np.ndarray) -> float:
        nonlocal best_x, best_value
        if len(values) >= config.cobyla_maxiter:
            raise _EvaluationBudgetSpent
        values.append(objective(x))
        if values[-1] < best_value:
            best_x, best_value = np.array(x, dtype=np.float64), values[-1]
        return values[-1]

    maxiter = max(config.cobyla_maxiter, len(x0) + 2)
    # scipy's COBYLA (pyprima) is pure Python over small numpy arrays: BLAS threads only fight torch
    # for the cores (measured: 46 ms instead of 21 ms per evaluation on 2 cores).
    with contextlib.suppress(_EvaluationBudgetSpent), threadpool_limits(1, user_api="blas"):
        minimize(tracked, x0, method="COBYLA", options={"maxiter": maxiter, "rhobeg": config.cobyla_rhobeg})
    # COBYLA's own result is its best feasible point; with no constraints that is best_x too.
    return PhaseStep(best_x, len(values), values[0], best_value)


def run_nlopt_cobyla(objective: Objective, x0: np.ndarray, config: TrainConfig) -> PhaseStep:
    """COBYLA from nlopt (LN_COBYLA, a compiled C port of Powell's code): same budget, same initial step.

    Its iterates differ from scipy's (another port), so results do too; what it saves is scipy's
    per-evaluation Python overhead. nlopt is an optional dependency (``pip install -e ".[nlopt]"``).
    """
    nlopt = import_nlopt()
    values: list[float] = []
    best_x, best_value = np.array(x0, dtype=np.float64), float("inf")

    def tracked(x: np.ndarray, _grad: np.ndarray) -> float:
        nonlocal best_x, best_value
        values.append(objective(x))
        if values[-1] < best_value:
            best_x, best_value = np.array(x, dtype=np.float64), values[-1]
        return values[-1]

    opt = nlopt.opt(nlopt.LN_COBYLA, len(x0))
    opt.set_min_objective(tracked)
    opt.set_maxeval(config.cobyla_maxiter)  # honoured exactly, whatever the dimension
    opt.set_initial_step(config.cobyla_rhobeg)
    opt.set_xtol_abs(1e-4)  # scipy's default final trust radius (tol), so both stop alike before the budget
    # Roundoff or a stalled trust region end the call early; the best point seen is kept either way.
    with contextlib.suppress(nlopt.RoundoffLimited), threadpool_limits(1, user_api="blas"):
        opt.optimize(np.asarray(x0, dtype=np.float64))
    return PhaseStep(best_x, len(values), values[0], best_value)


def import_nlopt() -> Any:
    """The optional nlopt module, or one clear line saying how to install it."""
    try:
        import nlopt
    except ImportError:
        raise UserError('--phase-optimizer nlopt-cobyla needs the optional package nlopt: pip install -e ".[nlopt]" '
                        "(or pip install nlopt), or use --phase-optimizer cobyla") from None
    return nlopt


def run_spsa(objective: Objective, x0: np.ndarray, config: TrainConfig,
             rng: np.random.Generator) -> PhaseStep:
    """Simultaneous-perturbation stochastic approximation (Spall's gains).

    Two objective evaluations per step whatever the number of phases: the usual choice on
    shot-noisy hardware. a_k = a / (k + 1 + A)^alpha, c_k = c / (k + 1)^gamma, A = 10% of steps.
    """
    x = np.array(x0, dtype=np.float64)
    stability = 0.1 * config.spsa_iterations
    first = last = float("nan")
    for k in range(config.spsa_iterations):
        ak = config.spsa_a / (k + 1 + stability) ** config.spsa_alpha
        ck = config.spsa_c / (k + 1) ** config.spsa_gamma
        delta = rng.choice([-1.0, 1.0], size=x.shape)
        plus, minus = objective(x + ck * delta), objective(x - ck * delta)
        if k == 0:
            first = 0.5 * (plus + minus)
        last = 0.5 * (plus + minus)
        x -= ak * (plus - minus) / (2.0 * ck) * delta
    return PhaseStep(x, 2 * config.spsa_iterations, first, last)


def check_phase_optimizer(name: str) -> None:
    if name not in PHASE_OPTIMIZERS:
        raise UserError(f"unknown phase optimizer {name!r}: choose one of {', '.join(PHASE_OPTIMIZERS)}")
