"""The execution layer: where the photonic QNNs run.

Training code only ever calls :meth:`Backend.evaluate` with the QNNs and their phases; every
backend (exact SLOS, shot sampling, noisy simulation, Quandela's cloud) returns one
:class:`Evaluation` per circuit over the QNN's collision-free patterns, in ``qnn.outcomes``
order. Shot accounting, the shot budget and the counters checkpointed with a run live here, so
that a new backend only implements :meth:`Backend._run`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pqt.errors import UserError

if TYPE_CHECKING:
    from pqt.circuits.base import Circuit
    from pqt.circuits.photonic import PhotonicQNN


@dataclass
class Evaluation:
    """One circuit's output: probabilities over ``qnn.outcomes`` and what it cost."""

    probs: np.ndarray
    shots_sent: int = 0  # shots (detection attempts) spent; 0 for exact probabilities
    shots_kept: int = 0  # of those, events with N clicks (post-selected)


@dataclass(frozen=True)
class Option:
    """A backend setting: becomes the CLI flag ``--<name>`` and the config key ``backend_options.<key>``."""

    name: str
    type: Any
    default: Any
    help: str
    secret: bool = False  # never a flag, never recorded (tokens come from the environment)
    # allowed range of a numeric option, checked when the flag is parsed (as TrainConfig's settings are)
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None  # the allowed values, when there is a fixed list

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def metadata(self) -> dict[str, Any]:
        """The option as a setting's metadata (:func:`pqt.training.config.check_value` reads it)."""
        return {"help": self.help, "flag": f"--{self.name}", "choices": self.choices, "low": self.low,
                "high": self.high, "low_open": self.low_open, "high_open": self.high_open, "hint": "",
                "label": self.name.replace("-", " ")}


class BudgetExhausted(UserError):
    """The next job would spend more shots than ``--max-shots`` allows."""


class BackendFailure(UserError):
    """A backend gave up (after its retries); the run stops with its last checkpoint kept."""


@dataclass
class Counters:
    evaluations: int = 0  # circuits evaluated
    jobs_submitted: int = 0  # cloud jobs the run created, all attempts (a cloud backend: its journal's count)
    shots_used: int = 0  # shots sent
    shots_kept: int = 0  # post-selected events among them
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """Base class for photonic backends.

    ``shots=None`` asks for exact probabilities (where the backend can give them); an int asks
    for the empirical frequencies of that many shots per circuit.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    can_be_exact: ClassVar[bool] = True
    ideal: ClassVar[bool] = True  # noiseless: the exact-gradient optimizer may use its simulation

    def __init__(self, shots: int | None, seed: int = 0, max_shots: int | None = None,
                 run_dir: Path | None = None, **options: Any) -> None:
        if shots is not None and (isinstance(shots, bool) or int(shots) != shots or shots < 1):
            raise UserError(f"shots must be a whole number >= 1 (got {shots!r}); use --shots exact for "
                            "exact probabilities")
        if shots is None and not self.can_be_exact:
            raise UserError(f"backend {self.name!r} only samples: give --shots N")
        if max_shots is not None and max_shots < 1:
            raise UserError(f"--max-shots must be >= 1 (got {max_shots})")
        self.shots = None if shots is None else int(shots)
        self.seed = int(seed)
        self.max_shots = max_shots
        self.run_dir = run_dir
        self.settings = {opt.key: options.get(opt.key, opt.default) for opt in self.options}
        self.counters = Counters()
        self.rng = np.random.default_rng(self.seed)

    # ---- what training code calls --------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.shots is None

    @property
    def supports_exact_gradient(self) -> bool:
        """Whether phases may be trained by backpropagating through :meth:`torch_distribution`."""
        return self.exact_gradient_obstacle is None

    @property
    def exact_gradient_obstacle(self) -> str | None:
        """Why this backend cannot give differentiable exact distributions (None when it can)."""
        if not self.exact:
            return "shots are sampled (use --shots exact)"
        if not self.ideal:
            return f"backend {self.name!r} has no differentiable simulation"
        return None

    def torch_distribution(self, circuit: Circuit, parameters: Any) -> Any:
        """The exact distribution this backend gives ``circuit``, differentiable in ``parameters``.

        For joint training (``exact-gradient``): ``parameters`` is a float64 torch tensor. The ideal
        simulation here; a backend with a differentiable noise model overrides it.
        """
        obstacle = self.exact_gradient_obstacle
        if obstacle is not None:
            raise UserError(f"backend {self.name!r} cannot give differentiable distributions: {obstacle}")
        return circuit.torch_distribution(parameters)

    def reseed(self, *key: int) -> None:
        """Restart the sampling stream from (seed, *key): a resumed round replays the same shots."""
        self.rng = np.random.default_rng([self.seed, *key])

    def evaluate(self, qnns: Sequence[PhotonicQNN], phases: Sequence[np.ndarray],
                 tag: str = "") -> list[Evaluation]:
        """Output distributions of several circuits (submitted together where that helps).

        ``tag`` names the request deterministically within a run (e.g. ``"r3/cobyla/17"``), so a
        backend that pays per job can recognise a request it already sent before a restart.
        """
        if len(qnns) != len(phases):
            raise ValueError("one phase vector per QNN")
        if not self.remote:  # a cloud backend checks each job it creates (retries may need more)
            self.check_budget(0 if self.shots is None else self.shots * len(qnns), "the next evaluation")
        results = self._run(qnns, [np.asarray(p, dtype=np.float64) for p in phases], tag)
        self.counters.evaluations += len(results)
        for r in results:
            self.counters.shots_used += r.shots_sent
            self.counters.shots_kept += r.shots_kept
        return results

    def check_budget(self, needed: int, what: str) -> None:
        """Raise :class:`BudgetExhausted` if spending ``needed`` more shots could exceed ``--max-shots``.

        The budget holds in the worst case: it is checked against :attr:`shots_charged`, which for a
        cloud backend also counts lost jobs and job creations whose outcome is unknown.
        """
        if self.max_shots is None or not needed or self.shots_charged + needed <= self.max_shots:
            return
        at_risk = self.shots_charged - self.counters.shots_used
        detail = f" ({at_risk:,} of them in lost jobs or unanswered job creations)" if at_risk > 0 else ""
        where = f" {self.run_dir}" if self.run_dir is not None else ""
        raise BudgetExhausted(
            f"shot budget reached: {self.shots_charged:,} of --max-shots {self.max_shots:,} charged{detail} and "
            f"{what} needs {needed:,}; raise it to continue (pqt train --resume{where} --max-shots N)")

    @property
    def shots_charged(self) -> int:
        """Shots the run may have spent, in the worst case (what ``--max-shots`` is checked against)."""
        return self.counters.shots_used

    def accounting(self) -> dict[str, Any]:
        """The job counters of ``metrics.json`` (a cloud backend takes them from its job journal)."""
        return {"jobs_submitted": self.jobs_paid, "jobs_uncertain": 0, "jobs_abandoned": 0,
                "jobs_not_cancelled": [], "shots_charged": self.shots_charged}

    @abc.abstractmethod
    def _run(self, qnns: Sequence[PhotonicQNN], phases: Sequence[np.ndarray], tag: str) -> list[Evaluation]:
        """Evaluate the circuits; the base class does the accounting."""

    @property
    def jobs_paid(self) -> int:
        """Cloud jobs this run has paid for, over all its attempts (0 for local backends)."""
        return self.counters.jobs_submitted

    @property
    def postselection_rate(self) -> float | None:
        """Fraction of the shots sent that gave N clicks (None when nothing was sampled)."""
        c = self.counters
        return c.shots_kept / c.shots_used if c.shots_used else None

    def plan(self, evaluations: int) -> dict[str, int]:
        """Jobs and shots that ``evaluations`` circuit evaluations will need."""
        shots = 0 if self.shots is None else self.shots * evaluations
        return {"jobs": evaluations if self.remote else 0, "shots": shots}

    remote: ClassVar[bool] = False

    def describe(self) -> dict[str, Any]:
        """Settings to record with a run (never secrets)."""
        public = {o.key for o in self.options if not o.secret}
        return {"backend": self.name, "shots": self.shots if self.shots is not None else "exact",
                **{k: v for k, v in self.settings.items() if k in public}}

    # ---- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        c = self.counters
        return {"evaluations": c.evaluations, "jobs_submitted": c.jobs_submitted,
                "shots_used": c.shots_used, "shots_kept": c.shots_kept, "extra": dict(c.extra)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = Counters(**state)

    def close(self, outcome: str = "stopped") -> list[str]:
        """Release connections or pools at the end of an attempt; returns notes for the final message.

        ``outcome`` is how the attempt ends: ``finished`` (nothing will resume it), ``stopped`` (an
        error; a resume may follow) or ``interrupted`` (Ctrl-C: the user wants out now). A cloud
        backend cancels the jobs it abandons and names those it could not cancel.
        """
        return []
