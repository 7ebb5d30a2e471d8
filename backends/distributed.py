"""Distributed QNNs: each circuit of a generator on its own backend and platform.

``--circuit-backends SPEC [SPEC ...]`` gives one spec per circuit, in the generator's order:

    slos                      local simulation
    noisy                     local noisy simulation (the run's noise settings)
    remote                    Quandela's cloud, the run's --platform and --cloud-url
    remote:qpu:belenos        the cloud, this platform
    remote:sim:ascella@URL    this platform at another endpoint (e.g. a second server)

Circuits with the same spec share one backend (a "processor"); each processor is a backend of its
own, with its own job journal (``jobs-<processor>.jsonl`` for remote ones), retries and counters.
An evaluation submits every processor's circuits concurrently (one thread each) and waits for all;
a processor that fails stops the run only after the others have finished their jobs (so none is
left unjournaled). ``--max-shots`` is one budget for the whole run: every processor checks its jobs
against the shots all processors may have spent (:meth:`DistributedBackend.check_total`), and a whole
evaluation is checked before any of its jobs is sent.
Shots, post-selection rates, jobs and retries are reported per processor (``processors`` in
metrics.json) and in total.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import Backend, BudgetExhausted, Counters, Evaluation
from pqt.errors import UserError

if TYPE_CHECKING:
    from pqt.circuits.base import Circuit

LOCAL = ("slos", "noisy")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'remote:qpu:belenos@http://host:8765' -> ('remote', {'platform': 'qpu:belenos', 'cloud_url': ...})."""
    text = str(spec).strip()
    name, _, rest = text.partition(":")
    if name in LOCAL and not rest:
        return name, {}
    if name != "remote":
        raise UserError(f"--circuit-backends: {spec!r} is not a backend spec: use slos, noisy, remote, "
                        "remote:PLATFORM or remote:PLATFORM@URL")
    platform, _, url = rest.partition("@")
    overrides: dict[str, Any] = {}
    if platform:
        overrides["platform"] = platform
    if url:
        overrides["cloud_url"] = url
    return name, overrides


def processor_label(spec: str) -> str:
    """A file-name-safe label of a spec (its journal is jobs-<label>.jsonl)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("@")[0]).strip("_")
    if "@" not in spec:
        return base
    # the endpoint enters as a stable digest: the same spec must find the same journal on a resume
    return f"{base}-{hashlib.sha256(spec.split('@', 1)[1].encode()).hexdigest()[:8]}"


class DistributedBackend(Backend):
    """Routes each circuit to its processor's backend and merges their answers in circuit order."""

    name = "distributed"
    description = "each circuit on its own backend and platform (--circuit-backends)"

    def __init__(self, specs: Sequence[str], shots: int | None, seed: int = 0, max_shots: int | None = None,
                 run_dir: Path | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__(shots=shots, seed=seed, max_shots=max_shots, run_dir=run_dir)
        import backends

        self.specs = [str(s).strip() for s in specs]
        self.labels = list(dict.fromkeys(self.specs))  # processors, in first-use order
        self.route = [self.labels.index(s) for s in self.specs]
        self.processors: list[Backend] = []
        for i, spec in enumerate(self.labels):
            name, overrides = parse_spec(spec)
            takes = {o.key for o in backends.backend_class(name).options}
            kwargs: dict[str, Any] = {k: v for k, v in (options or {}).items() if k in takes} | overrides
            if name == "remote":
                kwargs["journal_name"] = f"jobs-{processor_label(spec)}.jsonl"
            backend = backends.create_backend(name, shots=shots, seed=seed * 1000 + i, max_shots=None,
                                              run_dir=run_dir, options=kwargs)
            backend.check_budget = self._checker(backend)  # type: ignore[method-assign]
            self.processors.append(backend)
        self.remote = any(p.remote for p in self.processors)  # type: ignore[misc]
        self.ideal = all(p.ideal for p in self.processors)  # type: ignore[misc]
        self.can_be_exact = all(p.can_be_exact for p in self.processors)  # type: ignore[misc]

    # ---- one budget for all processors ------------------------------------------------------------
    def _checker(self, backend: Backend) -> Any:
        def check(needed: int, what: str) -> None:
            self.check_total(needed, f"{what} on {self.labels[self.processors.index(backend)]}")

        return check

    def check_total(self, needed: int, what: str) -> None:
        if self.max_shots is None or not needed or self.shots_charged + needed <= self.max_shots:
            return
        raise BudgetExhausted(
            f"shot budget reached: {self.shots_charged:,} of --max-shots {self.max_shots:,} charged over all "
            f"processors and {what} needs {needed:,}; raise it to continue (pqt train --resume DIR --max-shots N)")

    def check_budget(self, needed: int, what: str) -> None:
        self.check_total(needed, what)

    @property
    def shots_charged(self) -> int:
        return sum(p.shots_charged for p in self.processors)

    # ---- evaluation ---------------------------------------------------------------------------------
    def reseed(self, *key: int) -> None:
        super().reseed(*key)
        for i, p in enumerate(self.processors):
            p.reseed(*key, i)

    def _run(self, qnns: Sequence[Circuit], phases: Sequence[np.ndarray], tag: str) -> list[Evaluation]:
        if len(qnns) != len(self.route):
            raise UserError(f"--circuit-backends gives {len(self.route)} backend(s) for {len(qnns)} circuit(s): "
                            "give one per circuit")
        groups = [[i for i, r in enumerate(self.route) if r == p] for p in range(len(self.processors))]
        # The whole evaluation is checked before any processor sends a job (they then run concurrently and
        # could each pass a check the other's jobs would fail); retries are checked as they come.
        self.check_total(0 if self.shots is None else self.shots * len(qnns), "the next evaluation")

        def submit(p: int) -> list[Evaluation]:
            idx = groups[p]
            return self.processors[p].evaluate([qnns[i] for i in idx], [phases[i] for i in idx],
                                               f"{tag}@{self.labels[p]}" if tag else "")

        results: list[Evaluation | None] = [None] * len(qnns)
        with ThreadPoolExecutor(max_workers=len(self.processors), thread_name_prefix="pqt-processor") as pool:
            futures = [pool.submit(submit, p) for p in range(len(self.processors)) if groups[p]]
            errors = []
            for p, future in zip([p for p in range(len(self.processors)) if groups[p]], futures, strict=True):
                try:  # wait for every processor before raising: their jobs are journaled and counted
                    for i, ev in zip(groups[p], future.result(), strict=True):
                        results[i] = ev
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            if errors:
                raise errors[0]
        return [r for r in results if r is not None]

    # ---- accounting ---------------------------------------------------------------------------------
    @property
    def jobs_paid(self) -> int:
        return sum(p.jobs_paid for p in self.processors)

    def accounting(self) -> dict[str, Any]:
        parts = [p.accounting() for p in self.processors]
        return {"jobs_submitted": sum(a["jobs_submitted"] for a in parts),
                "jobs_uncertain": sum(a["jobs_uncertain"] for a in parts),
                "jobs_abandoned": sum(a["jobs_abandoned"] for a in parts),
                "jobs_not_cancelled": [j for a in parts for j in a["jobs_not_cancelled"]],
                "shots_charged": self.shots_charged}

    def processor_report(self) -> list[dict[str, Any]]:
        """Per processor: its circuits, shots, post-selection rate, jobs and retries."""
        report = []
        for p, (label, backend) in enumerate(zip(self.labels, self.processors, strict=True)):
            c = backend.counters
            report.append({"processor": label, "backend": backend.name,
                           "circuits": [i for i, r in enumerate(self.route) if r == p],
                           "evaluations": c.evaluations, "shots_used": c.shots_used, "shots_kept": c.shots_kept,
                           "postselection_rate": backend.postselection_rate,
                           "request_retries": c.extra.get("request_retries", 0),
                           "job_retries": c.extra.get("job_retries", 0), **backend.accounting()})
        return report

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "shots": self.shots if self.shots is not None else "exact",
                "processors": [{"spec": label, "circuits": [i for i, r in enumerate(self.route) if r == p],
                                **p_backend.describe()}
                               for p, (label, p_backend) in enumerate(zip(self.labels, self.processors,
                                                                          strict=True))]}

    def plan(self, evaluations: int) -> dict[str, int]:
        per_circuit = evaluations / max(1, len(self.route))
        remote_circuits = sum(self.processors[r].remote for r in self.route)
        shots = 0 if self.shots is None else self.shots * evaluations
        return {"jobs": round(per_circuit * remote_circuits), "shots": shots}

    # ---- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "processors": [p.state_dict() for p in self.processors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        processors = state.pop("processors", None)
        if processors is None or len(processors) != len(self.processors):
            raise UserError("the checkpoint was written with other --circuit-backends; start a new run")
        self.counters = Counters(**state)
        for p, s in zip(self.processors, processors, strict=True):
            p.load_state_dict(s)

    def close(self, outcome: str = "stopped") -> list[str]:
        notes: list[str] = []
        for label, p in zip(self.labels, self.processors, strict=True):
            notes += [f"{label}: {note}" for note in p.close(outcome)]
        return notes
