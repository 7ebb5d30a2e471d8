"""Tests for backends.noisy: each noise knob moves the distribution the way the physics says.

References are computed independently here: brute-force permanents of the unitary Perceval's own
circuit gives (``circuit.compute_unitary()``), the classical formula for distinguishable photons,
Hong-Ou-Mandel, and the full Perceval ``Experiment`` + ``SimulatedComputer`` path.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import perceval as pcvl
import pytest
from perceval.components import Experiment
from perceval.runtime import SimulatedComputer

from backends import create_backend
from backends.noisy import NoisyBackend
from pqt.circuits.photonic import PhotonicQNN
from pqt.errors import UserError

# --------------------------------------------------------------------------- helpers


def permanent(a: np.ndarray) -> complex:
    """Brute force over permutations (the matrices here are at most 3 x 3)."""
    n = a.shape[0]
    return sum(math.prod(a[i, s[i]] for i in range(n)) for s in itertools.permutations(range(n)))


def perceval_unitary(qnn: PhotonicQNN, phases: np.ndarray) -> np.ndarray:
    """The unitary from Perceval's circuit itself, not the backend's vectorised mesh."""
    for p, v in zip(qnn.parameters, phases, strict=True):
        p.set_value(float(v))
    return np.array(qnn.circuit.compute_unitary(), dtype=np.complex128)


def ideal_reference(qnn: PhotonicQNN, phases: np.ndarray) -> tuple[np.ndarray, float]:
    """Collision-free probabilities (qnn.outcomes order) and their sum, from all N-photon outputs."""
    u = perceval_unitary(qnn, phases)[:, list(qnn.input_modes)]
    total, free = 0.0, {}
    for modes in itertools.combinations_with_replacement(range(qnn.modes), qnn.photons):
        occupation = np.bincount(modes, minlength=qnn.modes)
        p = abs(permanent(u[list(modes), :])) ** 2 / math.prod(math.factorial(k) for k in occupation)
        total += p
        if occupation.max() == 1:
            free[tuple(occupation)] = p
    assert total == pytest.approx(1.0, abs=1e-12)  # every output pattern accounted for
    probs = np.array([free[o] for o in qnn.outcomes])
    return probs, float(probs.sum())


def classical_reference(qnn: PhotonicQNN, phases: np.ndarray) -> np.ndarray:
    """Fully distinguishable photons: P(S) = Perm(|U[S, inputs]|^2) (unnormalised)."""
    u2 = np.abs(perceval_unitary(qnn, phases)[:, list(qnn.input_modes)]) ** 2
    return np.array([permanent(u2[list(s), :]).real for s in qnn.output_modes])


def exact(qnn: PhotonicQNN, phases: np.ndarray, **noise: float) -> tuple[np.ndarray, float, float]:
    """(post-selected probs, P(N clicks), P(N clicks | >= 1 click)) from the backend in exact mode."""
    backend = create_backend("noisy", None, options=noise)
    (ev,) = backend.evaluate([qnn], [phases])
    assert ev.shots_sent == ev.shots_kept == 0
    # The physics checks run on the default, fast path (Perceval's pruned simulation when a precision is set).
    assert backend.describe()["simulation"] == ("perceval" if noise.get("simulation_precision") else "fast")
    extra = backend.counters.extra
    return ev.probs, extra["last_n_click_probability"], extra["last_postselection_probability"]


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@pytest.fixture(scope="module")
def qnn53() -> tuple[PhotonicQNN, np.ndarray]:
    qnn = PhotonicQNN(5, 3)
    return qnn, qnn.random_parameters(np.random.default_rng(7))


# --------------------------------------------------------------------------- ideal limit


@pytest.mark.parametrize("modes,photons,seed", [(4, 2, 0), (5, 3, 1), (6, 3, 2)])
def test_perfect_settings_reproduce_the_ideal_backend(modes: int, photons: int, seed: int) -> None:
    qnn = PhotonicQNN(modes, photons)
    phases = qnn.random_parameters(np.random.default_rng(seed))
    probs, p_n, p_shot = exact(qnn, phases)
    np.testing.assert_allclose(probs, qnn.exact_distribution(phases), atol=1e-10, rtol=0)
    ref_probs, ref_free = ideal_reference(qnn, phases)
    np.testing.assert_allclose(probs, ref_probs / ref_free, atol=1e-10, rtol=0)
    assert p_n == pytest.approx(ref_free, abs=1e-10)
    assert p_shot == pytest.approx(ref_free, abs=1e-10)  # no loss: every pulse is detected


def test_defaults_are_perceval_defaults_and_ideal() -> None:
    backend = NoisyBackend(shots=None)
    assert backend.noise == pcvl.NoiseModel()
    assert backend.ideal and backend.supports_exact_gradient
    # Source and loss noise is differentiable on the fast path (joint training); phase noise, shots and
    # Perceval's simulation are not.
    noisy = NoisyBackend(shots=None, transmittance=0.9)
    assert not noisy.ideal and noisy.supports_exact_gradient
    for refused in ({"phase_error": 0.1}, {"phase_imprecision": 0.1},
                    {"transmittance": 0.9, "noise_simulation": "perceval"},
                    {"transmittance": 0.9, "simulation_precision": 1e-9}):
        assert not NoisyBackend(shots=None, **refused).supports_exact_gradient
    assert not NoisyBackend(shots=100, transmittance=0.9).supports_exact_gradient
    assert [o.name for o in NoisyBackend.options] == [
        "indistinguishability", "transmittance", "brightness", "g2", "phase-imprecision", "phase-error",
        "simulation-precision", "noise-simulation"]
    assert NoisyBackend(shots=None).settings["simulation_precision"] == 0.0  # exact by default


# --------------------------------------------------------------------------- source and losses


def test_transmittance_only_scales_the_postselection_rate(qnn53) -> None:
    qnn, phases = qnn53
    eta, n = 0.7, qnn.photons
    probs, p_n, p_shot = exact(qnn, phases, transmittance=eta)
    ideal, ideal_free = ideal_reference(qnn, phases)
    np.testing.assert_allclose(probs, ideal / ideal_free, atol=1e-10, rtol=0)
    assert p_n == pytest.approx(eta**n * ideal_free, abs=1e-10)
    # A shot needs >= 1 click: the vacuum (all photons lost) has probability (1 - eta)^N.
    assert p_shot == pytest.approx(eta**n * ideal_free / (1 - (1 - eta) ** n), abs=1e-10)


def test_brightness_only_scales_the_n_click_rate_by_b_to_the_n(qnn53) -> None:
    qnn, phases = qnn53
    b, n = 0.6, qnn.photons
    probs, p_n, p_shot = exact(qnn, phases, brightness=b)
    ideal, ideal_free = ideal_reference(qnn, phases)
    np.testing.assert_allclose(probs, ideal / ideal_free, atol=1e-10, rtol=0)
    assert p_n == pytest.approx(b**n * ideal_free, abs=1e-10)
    assert p_shot == pytest.approx(b**n * ideal_free / (1 - (1 - b) ** n), abs=1e-10)


def test_hong_ou_mandel_on_a_50_50_beam_splitter() -> None:
    qnn = PhotonicQNN(2, 2)  # one MZI; internal phase pi/2 makes it a 50:50 splitter
    phases = np.array([np.pi / 2, 0.3])
    u = perceval_unitary(qnn, phases)
    np.testing.assert_allclose(np.abs(u) ** 2, 0.5, atol=1e-12)
    # Indistinguishable photons never leave on different ports (HOM dip) ...
    probs, p_n, _ = exact(qnn, phases)
    assert p_n < 1e-12
    # ... distinguishable ones do half of the time; in between, Perceval's indistinguishability x is
    # the HOM visibility: coincidences (1 - x) / 2.
    for x in (0.0, 0.6):
        probs, p_n, _ = exact(qnn, phases, indistinguishability=x)
        assert p_n == pytest.approx((1 - x) / 2, abs=1e-10)
        np.testing.assert_allclose(probs, [1.0])


def test_distinguishable_photons_follow_the_classical_formula(qnn53) -> None:
    qnn, phases = qnn53
    probs, p_n, _ = exact(qnn, phases, indistinguishability=0.0)
    classical = classical_reference(qnn, phases)
    np.testing.assert_allclose(probs, classical / classical.sum(), atol=1e-10, rtol=0)
    assert p_n == pytest.approx(classical.sum(), abs=1e-10)
    # Partial indistinguishability lies in between the quantum and classical distributions.
    quantum = qnn.exact_distribution(phases)
    middle, _, _ = exact(qnn, phases, indistinguishability=0.5)
    assert tv(middle, quantum) < tv(classical / classical.sum(), quantum)
    assert tv(middle, classical / classical.sum()) < tv(classical / classical.sum(), quantum)


def test_multiphoton_emission_adds_clicks_one_photon_case() -> None:
    # One photon in, threshold detectors: ideally exactly one click. With g2 > 0 the source sometimes
    # sends a second (distinguishable) photon, which clicks elsewhere with prob 1 - sum_j p_j^2.
    qnn = PhotonicQNN(3, 1)
    phases = qnn.random_parameters(np.random.default_rng(3))
    p = np.abs(perceval_unitary(qnn, phases)[:, 0]) ** 2
    g2 = 0.1
    source = pcvl.Source(multiphoton_component=g2).probability_distribution()
    p2 = sum(prob for sv, prob in source.items() if sv[0].n == 2)
    assert 0 < p2 < g2
    probs, p_n, _ = exact(qnn, phases, g2=g2)
    assert p_n == pytest.approx(1 - p2 * (1 - (p**2).sum()), abs=1e-10)
    expected = (1 - p2) * p + p2 * p**2
    np.testing.assert_allclose(probs, expected / expected.sum(), atol=1e-10, rtol=0)


def test_multiphoton_emission_perturbs_more_with_larger_g2(qnn53) -> None:
    qnn, phases = qnn53
    ideal = qnn.exact_distribution(phases)
    _, ideal_free = ideal_reference(qnn, phases)
    small, p_small, _ = exact(qnn, phases, g2=0.02)
    large, p_large, _ = exact(qnn, phases, g2=0.1)
    assert 0 < tv(small, ideal) < tv(large, ideal)
    # The N-click rate moves too, but not in a fixed direction: an extra photon turns an N-click
    # event into an N+1-click one, or fills the empty detector of a bunched event (here it grows).
    assert 0 < abs(p_small - ideal_free) < abs(p_large - ideal_free)


# --------------------------------------------------------------------------- phase noise


def test_phase_imprecision_rounds_the_phases(qnn53) -> None:
    qnn, phases = qnn53
    step = 0.2
    probs, _, _ = exact(qnn, phases, phase_imprecision=step)
    np.testing.assert_allclose(probs, qnn.exact_distribution(step * np.round(phases / step)), atol=1e-10)
    assert tv(probs, qnn.exact_distribution(phases)) > 1e-4


def test_phase_error_is_random_bounded_and_replayed_from_the_backend_rng(qnn53) -> None:
    qnn, phases = qnn53
    backend = create_backend("noisy", None, seed=5, options={"phase_error": 0.05})
    backend.reseed(3)
    first = [ev.probs for ev in backend.evaluate([qnn, qnn], [phases, phases])]
    assert tv(first[0], first[1]) > 1e-6  # a new miscalibration per evaluation
    backend.reseed(3)
    again = [ev.probs for ev in backend.evaluate([qnn, qnn], [phases, phases])]
    np.testing.assert_array_equal(first, again)  # a resumed round replays the same noise
    ideal = qnn.exact_distribution(phases)
    assert all(0 < tv(p, ideal) < 0.1 for p in first)  # small errors, small (nonzero) change
    rough = create_backend("noisy", None, seed=5, options={"phase_error": 0.5})
    rough.reseed(3)
    assert tv(rough.evaluate([qnn], [phases])[0].probs, ideal) > tv(first[0], ideal)


def test_matches_the_full_perceval_experiment_path() -> None:
    """All knobs at once, against Experiment + SimulatedComputer with the same phase-noise seed."""
    qnn = PhotonicQNN(4, 2)
    phases = qnn.random_parameters(np.random.default_rng(11))
    noise = {"indistinguishability": 0.85, "transmittance": 0.6, "brightness": 0.9, "g2": 0.05,
             "phase_imprecision": 0.05, "phase_error": 0.1}
    backend = create_backend("noisy", None, seed=4, options=noise)
    backend.reseed(9)
    patterns, p_n, p_any = backend.click_probabilities(qnn, phases)
    # The backend seeds Perceval's phase-noise RNG with one draw from its own stream.
    compilation_seed = int(np.random.default_rng([4, 9]).integers(2**63))

    model = pcvl.NoiseModel(**noise)
    perceval_unitary(qnn, phases)  # sets the circuit's parameter values
    experiment = Experiment(qnn.circuit, noise=model)
    for mode in range(qnn.modes):
        experiment.add(mode, pcvl.Detector.threshold())
    experiment.with_input(qnn.input_state)
    experiment.min_detected_photons_filter(0)
    computer = SimulatedComputer("SLOS")
    computer.noise = model  # SimulatedComputer takes phase noise from its own noise model only
    dist = computer.probs(experiment, precision=0.0, compilation_seed=compilation_seed)["results"]
    reference = np.array([dist.get(pcvl.BasicState(list(o)), 0.0) for o in qnn.outcomes])
    np.testing.assert_allclose(patterns, reference, atol=1e-10, rtol=0)
    assert p_n == pytest.approx(reference.sum(), abs=1e-10)
    assert p_any == pytest.approx(1 - dist.get(pcvl.BasicState([0] * qnn.modes), 0.0), abs=1e-10)


# --------------------------------------------------------------------------- shots


def test_shots_count_sent_not_kept_and_converge(qnn53) -> None:
    qnn, phases = qnn53
    noise = {"indistinguishability": 0.8, "transmittance": 0.7}
    probs, _, p_shot = exact(qnn, phases, **noise)
    shots = 40_000
    backend = create_backend("noisy", shots, seed=1, options=noise)
    evs = backend.evaluate([qnn, qnn], [phases, phases])
    for ev in evs:
        assert ev.shots_sent == shots
        assert 0 < ev.shots_kept < shots
        # kept ~ Binomial(S, p_shot): within 5 sigma
        assert abs(ev.shots_kept - shots * p_shot) < 5 * math.sqrt(shots * p_shot * (1 - p_shot))
        assert ev.probs.sum() == pytest.approx(1.0)
        # TV of an empirical distribution over K outcomes is ~ sqrt(K / (2 pi n)); allow 2x.
        assert tv(ev.probs, probs) < 2 * math.sqrt(len(probs) / (2 * math.pi * ev.shots_kept))
    counters = backend.counters
    assert counters.shots_used == 2 * shots
    assert counters.shots_kept == sum(ev.shots_kept for ev in evs)
    assert backend.postselection_rate == pytest.approx(p_shot, abs=0.01)


def test_same_seed_same_frequencies(qnn53) -> None:
    qnn, phases = qnn53
    noise = {"transmittance": 0.5, "phase_error": 0.05}
    runs = []
    for _ in range(2):
        backend = create_backend("noisy", 500, seed=3, options=noise)
        backend.reseed(2, 7)
        runs.append([(ev.probs, ev.shots_kept) for ev in backend.evaluate([qnn], [phases])])
    np.testing.assert_array_equal(runs[0][0][0], runs[1][0][0])
    assert runs[0][0][1] == runs[1][0][1]
    other = create_backend("noisy", 500, seed=4, options=noise).evaluate([qnn], [phases])[0]
    assert not np.array_equal(other.probs, runs[0][0][0])


def test_no_kept_shot_gives_uniform_and_is_counted() -> None:
    qnn = PhotonicQNN(2, 2)
    hom = np.array([np.pi / 2, 0.0])  # perfect HOM: two clicks are impossible
    backend = create_backend("noisy", 100, seed=0)
    (ev,) = backend.evaluate([qnn], [hom])
    assert (ev.shots_sent, ev.shots_kept) == (100, 0)
    np.testing.assert_allclose(ev.probs, [1.0])
    assert backend.counters.extra["evaluations_without_events"] == 1
    assert backend.postselection_rate == 0.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("key,value", [
    ("indistinguishability", 1.5), ("indistinguishability", -0.1), ("transmittance", 0.0),
    ("transmittance", 1.01), ("brightness", 0.0), ("brightness", float("nan")), ("g2", -0.01),
    ("g2", 1.5), ("phase_imprecision", -0.1), ("phase_imprecision", float("inf")),
    ("phase_error", -0.2), ("phase_error", 4.0), ("transmittance", "high"), ("g2", True),
])
def test_bad_values_raise_one_line_user_errors(key: str, value: object) -> None:
    with pytest.raises(UserError) as info:
        create_backend("noisy", None, options={key: value})
    message = str(info.value)
    assert "\n" not in message
    assert f"--{key.replace('_', '-')}" in message and repr(value) in message
    assert "[" in message or "(" in message or ">=" in message  # the allowed range is named


def test_edge_values_are_accepted() -> None:
    # g2 = 1 is accepted at brightness 0.5; Perceval's source model needs brightness x g2 <= 0.5.
    backend = create_backend("noisy", None, options={
        "indistinguishability": 0.0, "transmittance": 1.0, "brightness": 0.5, "g2": 1.0,
        "phase_imprecision": 0.0, "phase_error": math.pi})
    assert backend.settings["phase_error"] == math.pi
    assert create_backend("noisy", None, options={"g2": 0.5}).settings["g2"] == 0.5
    assert create_backend("noisy", None, options={"transmittance": "0.5"}).settings["transmittance"] == 0.5


def test_g2_beyond_the_source_model_is_one_user_error() -> None:
    # Perceval itself cannot build that source (it raised a ValueError at the first evaluation).
    with pytest.raises(ValueError, match="0.5"):
        pcvl.Source(emission_probability=1.0, multiphoton_component=0.6)
    with pytest.raises(UserError, match="--g2 0.6 with --brightness 1: .*<= 0.5") as info:
        create_backend("noisy", None, options={"g2": 0.6})
    assert "\n" not in str(info.value)


def test_simulation_precision_trades_exactness_for_speed(qnn53) -> None:
    qnn, phases = qnn53
    noise = {"g2": 0.05, "indistinguishability": 0.9}
    exact_probs, exact_p_n, _ = exact(qnn, phases, **noise)
    pruned, pruned_p_n, _ = exact(qnn, phases, simulation_precision=1e-9, **noise)
    np.testing.assert_allclose(pruned, exact_probs, atol=1e-5, rtol=0)
    assert pruned_p_n == pytest.approx(exact_p_n, abs=1e-5)
    for bad in (-1e-9, 0.5):
        with pytest.raises(UserError, match="--simulation-precision"):
            create_backend("noisy", None, options={"simulation_precision": bad})
