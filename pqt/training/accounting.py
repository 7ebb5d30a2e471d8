"""Accounting: trainable parameters against the target's, and the circuit evaluations a run needs.

Counts come from the built circuits and modules, never from a formula. Our photonic count is honest:
every phase we count enters its circuit (M(M-1) per GenericInterferometer of MZIs: 72 + 56 = 128
for the paper's pair). The photonic paper counts 3M(M-1)/2 per mesh (108 + 84 = 192), of which only
171 reach its hand-built circuits; ``paper_count_parameters`` reproduces its totals (223, 316, ...,
3292 for chi = 1..10) so tables compare like for like. The gate-based paper counts exactly what is
trained (L * N angles + the mapping model: 457 for QT-16), so there the two counts agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from pqt.generator import QuantumTrainGenerator
    from pqt.training.config import TrainConfig


def paper_phase_count(modes: list[int]) -> int:
    return sum(3 * m * (m - 1) // 2 for m in modes)


def parameter_report(generator: QuantumTrainGenerator, target: nn.Module) -> dict[str, Any]:
    from pqt.targets import n_parameters

    target_parameters = n_parameters(target)
    mapper = generator.n_mapper_parameters
    circuit = generator.n_circuit_parameters
    photonic = [c for c in generator.circuits if c.kind == "photonic"]
    paper_circuit = paper_phase_count([c.modes for c in photonic]) + sum(  # type: ignore[attr-defined]
        c.n_parameters for c in generator.circuits if c.kind != "photonic")
    report = {
        "mapper_parameters": mapper,
        "circuit_parameters": circuit,
        "trainable_parameters": mapper + circuit,
        "target_parameters": target_parameters,
        "compression_ratio": target_parameters / (mapper + circuit),
        "paper_count_parameters": mapper + paper_circuit,
        "parameter_counting": (
            "trainable_parameters counts every circuit parameter that enters its circuit (M(M-1) phases per "
            "photonic mesh, L*N angles per gate-based QNN) plus the mapping model's; paper_count_parameters "
            "uses the photonic paper's 3M(M-1)/2 per mesh"
        ),
    }
    # The names of the photonic pipeline's tables, kept where they apply.
    if generator.mapper.kind == "mps":
        report["mps_parameters"] = mapper
    if photonic:
        report["photonic_parameters"] = sum(c.n_parameters for c in photonic)
    return report


def plan_run(config: TrainConfig) -> dict[str, Any]:
    """Circuit evaluations, jobs and shots a run will need (upper bounds: COBYLA may stop early)."""
    import backends

    n_circuits = len(config.qnn_modes) if config.generator == "photonic" else 1
    if config.phase_optimizer in ("cobyla", "nlopt-cobyla"):
        objective_calls = config.cobyla_maxiter
    elif config.phase_optimizer == "spsa":
        objective_calls = 2 * config.spsa_iterations
    else:
        objective_calls = 0
    simulated = config.phase_optimizer == "exact-gradient"
    per_round = 0 if simulated else n_circuits * (objective_calls + 1)  # + the end-of-round evaluation
    first = 0 if simulated else n_circuits  # round 1's Adam stage needs one evaluation first
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
        # exact-gradient simulates the circuits itself (recorded as circuit_evaluations after the run)
        "simulated_circuits_per_adam_step": n_circuits if simulated and config.uses_circuit else 0,
    }
