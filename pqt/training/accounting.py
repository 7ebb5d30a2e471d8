"""Accounting: trainable parameters against the target's, and the circuit evaluations a run needs.

Counts come from the built circuits and modules, never from a formula. Our photonic count is honest:
every phase we count enters its circuit (M(M-1) per GenericInterferometer of MZIs: 72 + 56 = 128
for the paper's pair). The photonic paper counts 3M(M-1)/2 per mesh (108 + 84 = 192), of which only
171 reach its hand-built circuits; ``paper_count_parameters`` reproduces its totals (223, 316, ...,
3292 for chi = 1..10) so tables compare like for like. The gate-based paper counts exactly what is
trained (L * N angles + the mapping model: 457 for QT-16), so there the two counts agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pqt.errors import UserError

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


def spent_so_far(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """What a run has spent: rounds done and shots used (its checkpoint), jobs and worst-case shots (its journal)."""
    from backends.journal import JobJournal
    from pqt.training import run_files

    run_dir = Path(run_dir)
    try:
        ck = run_files.load_torch(run_dir / run_files.CHECKPOINT)
        rounds, shots_used = int(ck["round"]), int(ck["backend"]["shots_used"])
    except Exception as e:  # damaged: name it (the resume itself would refuse it too)
        raise UserError(f"cannot read {run_dir / run_files.CHECKPOINT} ({type(e).__name__}); the run directory is "
                        "damaged: start a new run with --out DIR") from None
    cloud = _remote_share(config) > 0
    accounts = [JobJournal(run_dir / name).account for name in _journal_names(config)] if cloud else []
    return {
        "run_dir": str(run_dir), "rounds_completed": rounds, "shots_used": shots_used, "cloud": cloud,
        "jobs_submitted": sum(a.jobs_submitted for a in accounts),
        "jobs_uncertain": sum(a.jobs_uncertain for a in accounts),
        "jobs_abandoned": sum(a.jobs_abandoned for a in accounts),
        "jobs_not_cancelled": [j for a in accounts for j in a.not_cancelled()],
        # a killed round's jobs are in the journal, not in the checkpoint: the larger is the true charge
        "shots_charged": max(shots_used, sum(a.shots_charged for a in accounts)),
    }


def _remote_share(config: TrainConfig) -> float:
    """The fraction of a run's circuit evaluations sent to the cloud (one job each)."""
    import backends

    if config.circuit_backends:
        from backends.distributed import parse_spec

        names = [parse_spec(spec)[0] for spec in config.circuit_backends]
        return sum(backends.backend_class(n).remote for n in names) / len(names)
    return 1.0 if backends.backend_class(config.backend).remote else 0.0


def _journal_names(config: TrainConfig) -> list[str]:
    """The job journals of a run: jobs.jsonl, or one per cloud processor of a distributed run."""
    from backends.journal import JOURNAL_NAME

    if not config.circuit_backends:
        return [JOURNAL_NAME]
    from backends.distributed import parse_spec, processor_label

    specs = dict.fromkeys(s.strip() for s in config.circuit_backends)
    return [f"jobs-{processor_label(s)}.jsonl" for s in specs if parse_spec(s)[0] == "remote"]


def plan_run(config: TrainConfig, done_rounds: int = 0) -> dict[str, Any]:
    """Circuit evaluations, jobs and shots a run will need (upper bounds: COBYLA may stop early).

    ``done_rounds``: rounds already finished (a resume): the totals are then what finishing needs.
    """

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
    per_call_shots = 0 if config.shots is None else config.shots
    remote_share = _remote_share(config)  # the fraction of circuit evaluations that are cloud jobs

    def jobs(n: int) -> int:
        return round(n * remote_share)

    remaining = max(config.rounds - done_rounds, 0)
    # round 1's Adam stage evaluates the circuits first; a resumed run has that round's distributions
    total_evals = (first if done_rounds == 0 else 0) + per_round * remaining
    return {
        "rounds": config.rounds, "circuit_evaluations_per_round": per_round,
        "circuit_evaluations_total": total_evals,
        "jobs_per_round": jobs(per_round), "jobs_total": jobs(total_evals),
        "shots_per_round": per_round * per_call_shots, "shots_total": total_evals * per_call_shots,
        "max_shots": config.max_shots,
        # exact-gradient simulates the circuits itself (recorded as circuit_evaluations after the run)
        "simulated_circuits_per_adam_step": n_circuits if simulated and config.uses_circuit else 0,
    }
