"""Noisy local simulation: Perceval's noise model, threshold detectors, N-click post-selection.

What one evaluation does (per QNN and phase vector):

1. Phase noise (``--phase-error``, ``--phase-imprecision``) is Perceval's ``PS.apply_phase_noise`` on each
   phase shifter in circuit order, with one ``random.Random`` seeded from ``self.rng``: the same noise
   ``Experiment.use_phase_noise(noise, seed)`` applies, reproducible when the training loop reseeds
   ``self.rng``. One miscalibrated circuit is drawn per evaluation (a job's shots share it, as on a chip).
2. The source (``--brightness``, ``--g2``, ``--indistinguishability``) and losses (``--transmittance``) are
   Perceval's ``Source.from_noise_model``; the result is the exact distribution over the click patterns of
   threshold detectors on every mode. Two simulations compute it (``--noise-simulation``):

   - ``fast`` (the default where it applies: up to 8 photons, ``--simulation-precision 0``): the closed
     form of :mod:`pqt.circuits.photonic_noise`, one N x N permanent per subset of at most N modes
     (~0.5 ms for 9 modes / 4 photons whatever the knobs), with the phase noise drawn by a vectorised
     copy of Perceval's (same random numbers, same wrapping and rounding). Differentiable: joint
     training (``exact-gradient``) works under every source and loss knob.
   - ``perceval`` (the reference, and the fallback beyond the fast path): Perceval's exqalibur strong
     simulator (SLOS) on every annotated source state, phase noise by ``PS.apply_phase_noise`` itself.
     Perceval prunes source states and partial results below ``precision`` times the largest probability
     (its default 1e-6 moves probabilities by ~1e-4 with --g2); here the default is 0, exact up to
     Perceval's absolute floor of 1e-16. Exact is ~5 ms for indistinguishability, losses and brightness
     but seconds with --g2 (every extra distinguishable photon multiplies the states to simulate);
     ``--simulation-precision 1e-9`` (Perceval's path only) brings that to ~0.1 s at ~1e-6 accuracy.

   The two agree to 1e-10 (tests/test_photonic_noise.py). ``describe()`` (``backend_settings`` in
   metrics.json) records which one ran (``simulation``).
3. Post-selection as on hardware: only patterns with exactly N clicks are kept; those are the
   C(M, N) collision-free patterns, returned in ``qnn.outcomes`` order.

Shot accounting (``shots=S``): a shot is a detection event with at least one click, which is
Quandela's (and Perceval's ``max_shots``) definition; a pulse in which nothing is detected never
reaches the user and is not counted. The S shots are drawn (multinomially, with ``self.rng``) from
the exact click distribution conditioned on at least one click; the N-click ones are kept. So
``shots_sent == S`` and ``shots_kept`` is the number of N-click events; ``probs`` are the
frequencies among the kept events. If no shot was kept (or, in exact mode, the N-click probability
is exactly 0, e.g. perfect Hong-Ou-Mandel suppression) the evaluation carries no information: it
returns the uniform distribution (so training does not crash on 0/0) and counts the event in
``counters.extra["evaluations_without_events"]``. Transmittance or brightness 0 are refused.

Exact mode (``shots=None``): ``probs`` is the exact noisy distribution normalised over the N-click
patterns, ``shots_sent == shots_kept == 0``, and ``counters.extra`` records for the last evaluation

- ``last_postselection_probability``: P(N clicks | at least one click), what ``shots_kept /
  shots_sent`` estimates in shot mode (the base class's ``postselection_rate``);
- ``last_n_click_probability``: P(N clicks) per source pulse, vacuum included (scales as
  transmittance^N and brightness^N).

Without noise both equal the ideal collision-free probability.
"""

from __future__ import annotations

import math
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import Backend, Evaluation, Option
from pqt.circuits.photonic_noise import MAX_FAST_PHOTONS, SourceNoise, ThresholdClicks, any_click_probability
from pqt.errors import UserError

if TYPE_CHECKING:
    import perceval as pcvl
    from perceval.components import Source
    from perceval.simulators import ExqaliburSimulator

    from pqt.circuits.base import Circuit
    from pqt.circuits.photonic import PhotonicQNN

# Perceval's defaults, which mean "no noise": no flag given = an ideal simulation.
# (Literal so that building the CLI's flags does not import Perceval; a test checks them against it.)
IDEAL = {"indistinguishability": 1.0, "transmittance": 1.0, "brightness": 1.0, "g2": 0.0,
         "phase_imprecision": 0.0, "phase_error": 0.0}

# name -> (low, high, what it is, whether low itself is allowed); a high of None is open. Perceval
# itself caps phase_error at pi. A transmittance or brightness of 0 never detects a photon, so every
# evaluation would be empty: refuse it up front rather than train on nothing.
_RANGES: dict[str, tuple[float, float | None, str, bool]] = {
    "indistinguishability": (0.0, 1.0, "a probability", True),
    "transmittance": (0.0, 1.0, "a probability", False),
    "brightness": (0.0, 1.0, "a probability", False),
    "g2": (0.0, 1.0, "the source's g2(0)", True),
    "phase_imprecision": (0.0, None, "a phase step in radians", True),
    "phase_error": (0.0, math.pi, "a phase in radians", True),
    "simulation_precision": (0.0, 0.01, "a relative pruning threshold", True),
}


def _range(key: str) -> dict[str, Any]:
    """An option's allowed range, from ``_RANGES`` (the flag is checked when parsed, a config file here)."""
    low, high, _, low_ok = _RANGES[key]
    return {"low": low, "high": high, "low_open": not low_ok}


_NOISE_KEYS = ("indistinguishability", "transmittance", "brightness", "g2", "phase_imprecision", "phase_error")
SIMULATIONS = ("auto", "fast", "perceval")
_TWO_PI = 2.0 * math.pi


@dataclass
class _PercevalSimulation:
    """What Perceval's path builds once per QNN and reuses for every evaluation."""

    simulator: ExqaliburSimulator
    source: Source
    detectors: list[pcvl.Detector]
    outcome_states: list[pcvl.BasicState]  # qnn.outcomes as Perceval states
    vacuum: pcvl.BasicState
    ps_order: np.ndarray  # phase index of each phase shifter, in circuit order


@dataclass
class _FastSimulation:
    """What the fast path builds once per QNN."""

    clicks: ThresholdClicks
    ps_order: np.ndarray


class NoisyBackend(Backend):
    """Local simulation with Perceval's noise model and threshold-detector post-selection."""

    name = "noisy"
    description = ("local noisy simulation (Perceval NoiseModel: source, losses, phase noise), threshold "
                   "detectors, post-selection on N clicks")
    options = (
        Option("indistinguishability", float, IDEAL["indistinguishability"],
               "source indistinguishability (2-photon overlap) in [0, 1]; 1 = ideal", **_range("indistinguishability")),
        Option("transmittance", float, IDEAL["transmittance"],
               "system-wide transmittance in (0, 1] (1 - photon loss); 1 = ideal", **_range("transmittance")),
        Option("brightness", float, IDEAL["brightness"],
               "source brightness (probability to emit) in (0, 1]; 1 = ideal", **_range("brightness")),
        Option("g2", float, IDEAL["g2"], "multi-photon emission g2(0) in [0, 1]; 0 = ideal", **_range("g2")),
        Option("phase-imprecision", float, IDEAL["phase_imprecision"],
               "phase-shifter resolution in radians (phases rounded to multiples); 0 = ideal",
               **_range("phase_imprecision")),
        Option("phase-error", float, IDEAL["phase_error"],
               "maximum random phase error in radians, in [0, pi], drawn per evaluation; 0 = ideal",
               **_range("phase_error")),
        Option("simulation-precision", float, 0.0,
               "Perceval's path: drop source states/partial results below this x the largest probability "
               "(its default is 1e-6); 0 = exact, slow with --g2 (1e-9: ~1e-6 accurate, fast)",
               **_range("simulation_precision")),
        Option("noise-simulation", str, "auto",
               "fast = closed-form permanents (exact, differentiable, up to 8 photons); perceval = Perceval's "
               "SLOS on the noisy source (the reference); auto = fast where it applies, else perceval",
               choices=SIMULATIONS),
    )

    def __init__(self, shots: int | None, seed: int = 0, max_shots: int | None = None,
                 run_dir: Path | None = None, **options: Any) -> None:
        super().__init__(shots=shots, seed=seed, max_shots=max_shots, run_dir=run_dir, **options)
        for key, (low, high, what, low_ok) in _RANGES.items():
            self.settings[key] = _checked(key, self.settings[key], low, high, what, low_ok)
        if self.settings["brightness"] * self.settings["g2"] > 0.5:
            # Perceval's source model has no solution there (its Source raises at the first evaluation).
            raise UserError(f"--g2 {self.settings['g2']:g} with --brightness {self.settings['brightness']:g}: the "
                            "source model needs brightness x g2 <= 0.5; lower --g2 or --brightness")
        simulation = self.settings["noise_simulation"]
        if simulation not in SIMULATIONS:
            raise UserError(f"--noise-simulation must be one of {', '.join(SIMULATIONS)} (got {simulation!r})")
        if simulation == "fast" and self.settings["simulation_precision"]:
            raise UserError("--simulation-precision prunes Perceval's simulation; the fast one is exact: drop "
                            "--simulation-precision, or use --noise-simulation perceval")
        import perceval as pcvl

        self.noise = pcvl.NoiseModel(**{key: self.settings[key] for key in _NOISE_KEYS})
        self.source_noise = SourceNoise(brightness=self.noise.brightness, transmittance=self.noise.transmittance,
                                        indistinguishability=self.noise.indistinguishability, g2=self.noise.g2)
        self.mixture = self.source_noise.mode_mixture()
        # With every knob at its default this is the ideal backend.
        self.ideal = all(self.settings[key] == IDEAL[key] for key in _NOISE_KEYS)
        self.phase_noise = bool(self.noise.phase_error or self.noise.phase_imprecision)
        self.simulations_run: set[str] = set()  # "fast" / "perceval": recorded by describe()
        self._perceval: weakref.WeakKeyDictionary[PhotonicQNN, _PercevalSimulation] = weakref.WeakKeyDictionary()
        self._fast: weakref.WeakKeyDictionary[PhotonicQNN, _FastSimulation] = weakref.WeakKeyDictionary()

    # ---- which simulation ------------------------------------------------------------------------
    def simulation_for(self, qnn: PhotonicQNN) -> str:
        """"fast" or "perceval": the simulation this backend uses for ``qnn``."""
        setting = self.settings["noise_simulation"]
        if setting == "perceval" or (setting == "auto" and self.settings["simulation_precision"]):
            return "perceval"
        if qnn.photons > MAX_FAST_PHOTONS:
            if setting == "fast":
                raise UserError(f"--noise-simulation fast handles up to {MAX_FAST_PHOTONS} photons (got "
                                f"{qnn.photons}): use --noise-simulation auto or perceval")
            return "perceval"
        return "fast"

    def describe(self) -> dict[str, Any]:
        """The settings, and which simulation ran ("fast", "perceval", or both for mixed circuits)."""
        used = self.simulations_run or {"perceval" if self.settings["noise_simulation"] == "perceval"
                                        or self.settings["simulation_precision"] else "fast"}
        return {**super().describe(), "simulation": "+".join(sorted(used))}

    # ---- differentiable distributions (joint training) ---------------------------------------------
    @property
    def exact_gradient_obstacle(self) -> str | None:
        if not self.exact or self.ideal:
            return super().exact_gradient_obstacle  # shots refused; the ideal simulation as the slos backend's
        if self.phase_noise:
            return ("phase noise has no useful gradient (--phase-error draws a new circuit at every evaluation, "
                    "--phase-imprecision rounds the phases); set both to 0")
        if self.settings["noise_simulation"] == "perceval" or self.settings["simulation_precision"]:
            return "Perceval's noisy simulation is not differentiable (use --noise-simulation auto or fast)"
        return None

    def torch_distribution(self, circuit: Circuit, parameters: Any) -> Any:
        """The post-selected noisy distribution, differentiable in the phases (the fast path in torch)."""
        obstacle = self.exact_gradient_obstacle
        if obstacle is not None:
            raise UserError(f"backend 'noisy' cannot give differentiable distributions: {obstacle}")
        if self.ideal:
            return circuit.torch_distribution(parameters)
        qnn: PhotonicQNN = circuit  # type: ignore[assignment]  (the noisy backend runs photonic circuits)
        if self.simulation_for(qnn) != "fast":
            raise UserError(f"{qnn!r} is beyond the differentiable simulation ({MAX_FAST_PHOTONS} photons at most)")
        import torch

        self.simulations_run.add("fast")
        patterns = self._fast_simulation(qnn).clicks.probabilities(qnn.torch_input_columns(parameters),
                                                                  self.mixture, torch)
        return patterns / patterns.sum()

    # ---- evaluation ------------------------------------------------------------------------------
    def _run(self, qnns: Sequence[PhotonicQNN], phases: Sequence[np.ndarray], tag: str) -> list[Evaluation]:
        return [self._evaluate(qnn, ph) for qnn, ph in zip(qnns, phases, strict=True)]

    def _evaluate(self, qnn: PhotonicQNN, phases: np.ndarray) -> Evaluation:
        patterns, p_n, p_any = self.click_probabilities(qnn, phases)
        extra = self.counters.extra
        if self.shots is None:
            extra["last_postselection_probability"] = p_n / p_any if p_any > 0 else 0.0
            extra["last_n_click_probability"] = p_n
            if p_n > 0:
                return Evaluation(patterns / p_n)
            return self._empty(qnn, 0)
        # One multinomial draw over the N-click patterns plus one bucket for every other event
        # (1..N-1 clicks, or more than N with multi-photon emission), conditioned on >= 1 click.
        kept_p = patterns / p_any if p_any > 0 else np.zeros_like(patterns)
        pvals = np.append(kept_p, max(0.0, 1.0 - kept_p.sum()))
        counts = self.rng.multinomial(self.shots, pvals / pvals.sum())[:-1]
        kept = int(counts.sum())
        if kept == 0:
            return self._empty(qnn, self.shots)
        return Evaluation(counts / kept, self.shots, kept)

    def _empty(self, qnn: PhotonicQNN, shots: int) -> Evaluation:
        """No N-click event (none drawn, or probability 0): uniform, and counted so it shows."""
        extra = self.counters.extra
        extra["evaluations_without_events"] = extra.get("evaluations_without_events", 0) + 1
        return Evaluation(np.full(qnn.n_outcomes, 1.0 / qnn.n_outcomes), shots, 0)

    def click_probabilities(self, qnn: PhotonicQNN, phases: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Exact noisy detection statistics of one circuit (draws the phase noise from ``self.rng``).

        Returns (P(pattern) for each N-click pattern in ``qnn.outcomes`` order, P(exactly N clicks),
        P(at least one click)), all per source pulse.
        """
        simulation = self.simulation_for(qnn)
        self.simulations_run.add(simulation)
        phases = np.asarray(phases, dtype=np.float64)
        if simulation == "perceval":
            return self.perceval_click_probabilities(qnn, phases)
        fast = self._fast_simulation(qnn)
        noisy = self._noisy_phases_fast(fast.ps_order, phases)
        patterns = fast.clicks.probabilities(qnn.input_columns(noisy), self.mixture)
        return patterns, float(patterns.sum()), any_click_probability(self.mixture, qnn.photons)

    def perceval_click_probabilities(self, qnn: PhotonicQNN, phases: np.ndarray) -> tuple[np.ndarray, float, float]:
        """:meth:`click_probabilities` by Perceval's own simulation and phase noise (the reference)."""
        import perceval as pcvl

        sim = self._perceval_simulation(qnn)
        noisy = self._noisy_phases_perceval(sim.ps_order, phases)
        # qnn.unitary is the vectorised product of the mesh, equal to circuit.compute_unitary()
        # (checked in the photonics tests) and much faster than Perceval's symbolic path.
        sim.simulator.set_circuit(pcvl.Unitary(pcvl.Matrix(qnn.unitary(noisy))))
        dist = sim.simulator.probs_svd((sim.source, qnn.input_state), sim.detectors)["results"]
        total = float(sum(dist.values()))  # 1 up to rounding: nothing is filtered (see _perceval_simulation)
        patterns = np.array([dist.get(s, 0.0) for s in sim.outcome_states], dtype=np.float64) / total
        p_any = 1.0 - float(dist.get(sim.vacuum, 0.0)) / total
        return patterns, float(patterns.sum()), p_any

    # ---- phase noise -------------------------------------------------------------------------------
    def _phase_noise_rng(self) -> random.Random:
        # Only the random error needs randomness (one draw from the backend's stream); rounding is deterministic.
        return random.Random(int(self.rng.integers(2**63)) if self.noise.phase_error else 0)

    def _noisy_phases_perceval(self, ps_order: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """Perceval's phase noise on each phase shifter, in circuit order (as Experiment does)."""
        error, step = self.noise.phase_error, self.noise.phase_imprecision
        if not error and not step:
            return phases
        import perceval as pcvl

        rng = self._phase_noise_rng()
        noisy = phases.copy()
        for index in ps_order:
            ps = pcvl.PS(float(phases[index]))
            ps.apply_phase_noise(error, step, rng)
            noisy[index] = float(ps.param("phi"))
        return noisy

    def _noisy_phases_fast(self, ps_order: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """The same noise as :meth:`_noisy_phases_perceval`, the same random numbers, vectorised.

        Per phase shifter Perceval stores the phase wrapped into [0, 2 pi) (``Parameter._check_value``),
        draws ``max_error * U(-1, 1)`` (max_error is 0: the draw is discarded) and ``phase_error * U(-1, 1)``,
        adds the latter, rounds to a multiple of ``phase_imprecision`` and stores the result wrapped again.
        """
        error, step = self.noise.phase_error, self.noise.phase_imprecision
        if not error and not step:
            return phases
        noisy = _wrap_phases(phases[ps_order])
        if error:
            rng = self._phase_noise_rng()
            # random.uniform(-1, 1) is -1 + 2 * random(): the same arithmetic, done once on the array.
            draw = rng.random
            draws = -1.0 + 2.0 * np.array([draw() for _ in range(2 * len(ps_order))])
            noisy = noisy + error * draws[1::2]
        if step:
            noisy = step * np.round(noisy / step)
        out = phases.copy()
        out[ps_order] = _wrap_phases(noisy)
        return out

    # ---- per-QNN setup -----------------------------------------------------------------------------
    def _fast_simulation(self, qnn: PhotonicQNN) -> _FastSimulation:
        if qnn not in self._fast:
            self._fast[qnn] = _FastSimulation(ThresholdClicks(qnn), _phase_shifter_order(qnn))
        return self._fast[qnn]

    def _perceval_simulation(self, qnn: PhotonicQNN) -> _PercevalSimulation:
        if qnn not in self._perceval:
            import perceval as pcvl
            from perceval.backends import SLOSExqaliburBackend
            from perceval.components import Source
            from perceval.simulators import ExqaliburSimulator

            simulator = ExqaliburSimulator(SLOSExqaliburBackend())
            # Keep every click pattern (vacuum included): the post-selection is done here, and its
            # probability reported. By default nothing is pruned but Perceval's 1e-16 floor.
            simulator.set_selection(min_detected_photons_filter=0)
            simulator.set_precision(self.settings["simulation_precision"])
            simulator.keep_heralds(False)
            self._perceval[qnn] = _PercevalSimulation(
                simulator=simulator,
                source=Source.from_noise_model(self.noise),
                detectors=[pcvl.Detector.threshold() for _ in range(qnn.modes)],
                outcome_states=[pcvl.BasicState(list(o)) for o in qnn.outcomes],
                vacuum=pcvl.BasicState([0] * qnn.modes),
                ps_order=_phase_shifter_order(qnn),
            )
        return self._perceval[qnn]


def _phase_shifter_order(qnn: PhotonicQNN) -> np.ndarray:
    """The phase index of each phase shifter, in circuit order (the order phase noise is drawn in)."""
    import perceval as pcvl

    index = {name: i for i, name in enumerate(qnn.parameter_names)}
    order = [index[c.get_parameters()[0].name] for _, c in qnn.circuit if isinstance(c, pcvl.PS)]
    if sorted(order) != list(range(qnn.n_parameters)):
        raise ValueError("every phase parameter must drive exactly one phase shifter")
    return np.array(order, dtype=np.int64)


def _wrap_phases(v: np.ndarray) -> np.ndarray:
    """Perceval's ``Parameter._check_value`` on [0, 2 pi], periodic, elementwise and with the same arithmetic."""
    if v.min() >= 0.0 and v.max() <= _TWO_PI:
        return v  # the common case, nothing to wrap
    above = v - (np.floor((v - _TWO_PI) / _TWO_PI) + 1.0) * _TWO_PI
    below = v + (np.floor((0.0 - v) / _TWO_PI) + 1.0) * _TWO_PI
    return np.where(v > _TWO_PI, above, np.where(v < 0.0, below, v))


def _checked(key: str, value: Any, low: float, high: float | None, what: str, low_ok: bool) -> float:
    """The setting as a float, or a one-line UserError naming the flag, the value and the range."""
    flag = "--" + key.replace("_", "-")
    if high is None:
        allowed = f"{'>=' if low_ok else '>'} {low:g}"
    else:
        allowed = f"in {'[' if low_ok else '('}{low:g}, {'pi' if high == math.pi else f'{high:g}'}]"
    message = f"{flag} must be {what} {allowed} (got {value!r})"
    if isinstance(value, bool):
        raise UserError(message)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(message) from None
    above_low = low <= number if low_ok else low < number
    # NaN fails every comparison; infinities are no setting either.
    if not (math.isfinite(number) and above_low and (high is None or number <= high)):
        raise UserError(message)
    return number
