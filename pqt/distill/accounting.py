"""Accounting for a PQKD configuration without training it: parameters (``pqt distill --params``) and the
circuit evaluations, cloud jobs and shots a run needs (``pqt distill --dry-run``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from pqt.distill.config import DistillConfig


def distill_parameter_report(config: DistillConfig) -> dict[str, Any]:
    """The parameter report of the run ``config`` describes (built modules, no data, no training)."""
    from pqt.data import input_shape_of
    from pqt.distill.method import DistillMethod

    method = DistillMethod(config, input_shape_of(config.dataset), torch.device("cpu"))
    return {"student": method.describe()["student"], "circuits": method.describe()["circuits"],
            **method.parameter_report()}


def plan_distill(config: DistillConfig) -> dict[str, Any]:
    """Circuit evaluations, jobs and shots a run will need (upper bounds: COBYLA may stop early).

    With shots every student step evaluates the circuits afresh; with exact probabilities one evaluation
    serves the first round's student epochs and each round's end-of-round evaluation serves the next.
    """
    import backends
    from pqt.data import training_splits

    circuits = len(config.qnn_modes) if config.student == "dictionary" else 0  # ablations still evaluate them
    train, _, _ = training_splits(config.dataset, config.data_dir, config.train_limit, config.test_limit,
                                  config.validation_size)
    steps = config.adam_epochs * math.ceil(len(train) / config.batch_size)
    objective = config.cobyla_maxiter if config.phase_optimizer == "cobyla" else 2 * config.spsa_iterations
    per_step = config.shots is not None
    per_round = circuits * ((steps if per_step else 0) + objective + 1)
    first = 0 if per_step else circuits
    total = first + per_round * config.rounds
    remote = backends.backend_class(config.backend).remote
    shots = 0 if config.shots is None else config.shots
    return {"rounds": config.rounds, "student_steps_per_round": steps,
            "circuit_evaluations_per_round": per_round, "circuit_evaluations_total": total,
            "jobs_per_round": per_round if remote else 0, "jobs_total": total if remote else 0,
            "shots_per_round": per_round * shots, "shots_total": total * shots, "max_shots": config.max_shots}
