"""``pqt sweep --dry-run``: what would happen to each run of a study, and what it would cost."""

from __future__ import annotations

from pathlib import Path

from pqt.errors import UserError
from pqt.studies.sweep.runs import fraction_done, inspect_run
from pqt.studies.sweep.study_file import DEFAULT_OUT, Study, config_class

# --------------------------------------------------------------------------- dry run and CLI


def describe_plan(study: Study, out: str | Path = DEFAULT_OUT) -> list[str]:
    """One line per run (its state) and a total, without running anything."""
    root = Path(out) / study.name
    lines, counts = [], {"new": 0, "resume": 0, "finished": 0, "mismatch": 0, "invalid": 0}
    evaluations = shots = 0
    for run in study.runs:
        state, detail = inspect_run(root / run.name, study.kind, run.config)
        try:
            config = config_class(study.kind).from_dict(run.config).validate()
        except UserError as e:
            state, detail = "invalid", str(e)
        counts[state] += 1
        if state in ("new", "resume") and study.kind in ("qt", "distill"):
            from pqt.distill.accounting import plan_distill
            from pqt.training.accounting import plan_run

            plan = plan_run(config) if study.kind == "qt" else plan_distill(config)
            remaining = 1.0
            if state == "resume":
                remaining = 1 - fraction_done(root / run.name, study.kind)
            evaluations += round(plan["circuit_evaluations_total"] * remaining)
            shots += round(plan["shots_total"] * remaining)
        lines.append(f"  {run.name:<50} {state}" + (f": {detail}" if detail else ""))
    head = (f"study {study.name} ({study.kind}, protocol {study.protocol}): {len(study.runs)} runs in {root}; "
            f"{counts['new']} new, {counts['resume']} to resume, {counts['finished']} finished, "
            f"{counts['mismatch'] + counts['invalid']} refused")
    tail = []
    if study.kind in ("qt", "distill"):
        tail.append(f"circuit evaluations still to do: <= {evaluations:,}; shots: <= {shots:,} (upper bounds)")
    return [head, *lines, *tail]
