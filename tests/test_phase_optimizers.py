"""The gradient-free phase optimisers on a known objective: budgets, best point, the optional nlopt one."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from pqt.errors import UserError
from pqt.training.config import TrainConfig
from pqt.training.phase_optimizers import run_cobyla, run_nlopt_cobyla

needs_nlopt = pytest.mark.skipif(importlib.util.find_spec("nlopt") is None,
                                 reason="optional nlopt not installed (pip install nlopt)")
TARGET = np.linspace(-1.0, 1.0, 12)


def quadratic(x: np.ndarray) -> float:
    return float(((x - TARGET) ** 2).sum())


@pytest.mark.parametrize("run", [run_cobyla, pytest.param(run_nlopt_cobyla, marks=needs_nlopt)])
@pytest.mark.parametrize("budget", [5, 40, 400])
def test_budget_is_honoured_exactly_and_the_best_point_kept(run, budget: int) -> None:
    calls: list[float] = []

    def objective(x: np.ndarray) -> float:
        calls.append(quadratic(x))
        return calls[-1]

    x0 = np.zeros(12)
    step = run(objective, x0, TrainConfig(cobyla_maxiter=budget, cobyla_rhobeg=0.5))
    assert step.evaluations == len(calls) <= budget
    if budget < 100:
        assert step.evaluations == budget  # nothing converges this early
    assert step.objective_start == calls[0] == quadratic(x0)
    assert step.objective_end == min(calls) == quadratic(step.phases)
    if budget == 400:
        assert step.objective_end < 1e-3 * step.objective_start  # it does minimise


@needs_nlopt
def test_nlopt_and_scipy_differ_in_iterates_but_both_minimise() -> None:
    config = TrainConfig(cobyla_maxiter=300, cobyla_rhobeg=0.5)
    a, b = run_cobyla(quadratic, np.zeros(12), config), run_nlopt_cobyla(quadratic, np.zeros(12), config)
    assert a.objective_end < 1e-2 and b.objective_end < 1e-2
    assert not np.array_equal(a.phases, b.phases)


def test_missing_nlopt_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    from pqt.cli import main

    monkeypatch.setitem(sys.modules, "nlopt", None)  # import nlopt -> ImportError, installed or not
    with pytest.raises(UserError, match="nlopt"):
        run_nlopt_cobyla(quadratic, np.zeros(12), TrainConfig())
    out = tmp_path / "run"
    rc = main(["train", "--phase-optimizer", "nlopt-cobyla", "--rounds", "1", "--train-limit", "50",
               "--test-limit", "20", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("pqt: error: ") and "pip install" in err[0], err
    assert not out.exists(), "a refused run must not leave a run directory"
