"""Photonic QNNs against independent references: Perceval's own simulators and naive permanents."""

from __future__ import annotations

import itertools
import math

import numpy as np
import perceval as pcvl
import pytest
import torch
from scipy.stats import chisquare

from pqt.circuits.photonic import PhotonicQNN, perceval_distribution
from pqt.errors import UserError

PAPER_SHAPES = [(9, 4), (8, 4)]


@pytest.fixture(scope="module")
def qnns() -> dict[tuple[int, int], PhotonicQNN]:
    return {shape: PhotonicQNN(*shape) for shape in [*PAPER_SHAPES, (3, 2), (4, 2), (5, 3)]}


def set_perceval_phases(qnn: PhotonicQNN, phases: np.ndarray) -> None:
    """Write the phases into the Perceval circuit's own parameters (get_parameters() order)."""
    params = qnn.circuit.get_parameters()
    assert len(params) == len(phases)
    for p, v in zip(params, phases, strict=True):
        p.set_value(float(v))


def perceval_unitary(qnn: PhotonicQNN, phases: np.ndarray) -> np.ndarray:
    set_perceval_phases(qnn, phases)
    return np.array(qnn.circuit.compute_unitary(), dtype=np.complex128)


def naive_permanent(a: np.ndarray) -> complex:
    n = a.shape[0]
    return sum(math.prod(a[i, s[i]] for i in range(n)) for s in itertools.permutations(range(n)))


def naive_distribution(u: np.ndarray, inputs: tuple[int, ...], photons: int) -> np.ndarray:
    """|Perm(U[S, inputs])|^2 for every N-subset S in combinations order, renormalised."""
    probs = np.array([abs(naive_permanent(u[np.ix_(s, inputs)])) ** 2
                      for s in itertools.combinations(range(u.shape[0]), photons)])
    return probs / probs.sum()


def slos_collision_free(qnn: PhotonicQNN, phases: np.ndarray) -> np.ndarray:
    """Perceval's SLOS on the Perceval circuit itself; collision-free patterns only, renormalised."""
    set_perceval_phases(qnn, phases)
    backend = pcvl.SLOSBackend()
    backend.set_circuit(qnn.circuit)
    backend.set_input_state(qnn.input_state)
    full = {tuple(state): float(p) for state, p in backend.prob_distribution().items()}
    assert math.isclose(sum(full.values()), 1.0, abs_tol=1e-9)  # lossless: all photons arrive
    patterns = []
    for subset in itertools.combinations(range(qnn.modes), qnn.photons):
        occ = [0] * qnn.modes
        for k in subset:
            occ[k] = 1
        patterns.append(tuple(occ))
    probs = np.array([full.get(p, 0.0) for p in patterns])
    # Collisions really were dropped: the kept mass is below 1 for a generic mesh.
    assert probs.sum() < 1.0 - 1e-6
    return probs / probs.sum()


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(("modes", "photons", "n_params"), [(9, 4, 72), (8, 4, 56)])
def test_parameter_counts(qnns, modes: int, photons: int, n_params: int) -> None:
    qnn = qnns[(modes, photons)]
    assert qnn.n_parameters == n_params == modes * (modes - 1)
    assert len(qnn.circuit.get_parameters()) == n_params
    assert qnn.circuit.m == modes


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_every_parameter_is_live(qnns, shape) -> None:
    """Changing any single phase changes the Perceval circuit's unitary."""
    qnn = qnns[shape]
    phases = qnn.random_parameters(np.random.default_rng(3))
    base = perceval_unitary(qnn, phases)
    for k in range(qnn.n_parameters):
        moved = phases.copy()
        moved[k] += 0.9
        assert np.abs(perceval_unitary(qnn, moved) - base).max() > 1e-3, f"phase {k} has no effect"


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_outcomes_in_combinations_order(qnns, shape) -> None:
    modes, photons = shape
    qnn = qnns[shape]
    assert len(qnn.outcomes) == qnn.n_outcomes == math.comb(modes, photons)
    assert qnn.outcomes[0] == (1,) * photons + (0,) * (modes - photons)
    assert qnn.outcomes[-1] == (0,) * (modes - photons) + (1,) * photons
    for outcome, subset in zip(qnn.outcomes, itertools.combinations(range(modes), photons), strict=True):
        assert outcome == tuple(int(k in subset) for k in range(modes))
    assert len(set(qnn.outcomes)) == len(qnn.outcomes)


def test_outcome_count_9_4(qnns) -> None:
    assert len(qnns[(9, 4)].outcomes) == 126
    assert len(qnns[(8, 4)].outcomes) == 70


@pytest.mark.parametrize(("shape", "state"), [((9, 4), [1, 0, 1, 0, 0, 1, 0, 0, 1]),
                                              ((8, 4), [1, 0, 1, 0, 1, 0, 0, 1])])
def test_default_input_states(qnns, shape, state) -> None:
    qnn = qnns[shape]
    assert list(qnn.input_state) == state
    assert qnn.input_state == pcvl.BasicState(state)
    assert qnn.input_modes == tuple(k for k, v in enumerate(state) if v)


def test_photons_more_than_modes_is_user_error() -> None:
    with pytest.raises(UserError, match="4 photons"):
        PhotonicQNN(3, 4)


def test_wrong_number_of_phases_is_user_error(qnns) -> None:
    with pytest.raises(UserError):
        qnns[(9, 4)].distribution(np.zeros(71))


# --------------------------------------------------------------------------- unitary


@pytest.mark.parametrize("shape", [*PAPER_SHAPES, (3, 2), (5, 3)])
def test_unitary_equals_perceval_compute_unitary(qnns, shape) -> None:
    qnn = qnns[shape]
    rng = np.random.default_rng(11)
    for _ in range(3):
        phases = qnn.random_parameters(rng)
        ours = qnn.unitary(phases)
        ref = perceval_unitary(qnn, phases)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours @ ours.conj().T, np.eye(qnn.modes), atol=1e-12)
        np.testing.assert_allclose(qnn.input_columns(phases), ref[:, list(qnn.input_modes)], atol=1e-12)


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_distribution_equals_perceval_processor_and_slos(qnns, shape) -> None:
    qnn = qnns[shape]
    rng = np.random.default_rng(2024 + shape[0])
    for _ in range(3):
        phases = qnn.random_parameters(rng)
        ours = qnn.distribution(phases)
        assert ours.shape == (qnn.n_outcomes,)
        assert math.isclose(ours.sum(), 1.0, abs_tol=1e-12)
        # Perceval's Processor("SLOS") + Sampler, through the library's reference helper ...
        np.testing.assert_allclose(ours, perceval_distribution(qnn, phases), rtol=0, atol=1e-10)
        # ... and Perceval's SLOS backend on the circuit, computed here.
        np.testing.assert_allclose(ours, slos_collision_free(qnn, phases), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(12, 6), (12, 5)])
def test_cifar_size_distributions_equal_perceval_slos(shape) -> None:
    """The CIFAR-10-size pair (924 x 792 patterns), numpy and torch paths, against Perceval's SLOS."""
    qnn = PhotonicQNN(*shape)
    phases = qnn.random_parameters(np.random.default_rng(99))
    ref = slos_collision_free(qnn, phases)
    np.testing.assert_allclose(qnn.distribution(phases), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(qnn.torch_distribution(torch.from_numpy(phases)).numpy(), ref, rtol=0, atol=1e-10)


def test_distribution_is_not_phase_independent(qnns) -> None:
    qnn = qnns[(9, 4)]
    rng = np.random.default_rng(5)
    a, b = (qnn.distribution(qnn.random_parameters(rng)) for _ in range(2))
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize(("shape", "inputs"), [((3, 2), None), ((4, 2), None), ((5, 3), None),
                                               ((4, 2), (1, 2)), ((5, 3), (0, 3, 4))])
def test_distribution_equals_naive_permanents(shape, inputs) -> None:
    modes, photons = shape
    qnn = PhotonicQNN(modes, photons, input_modes=inputs)
    rng = np.random.default_rng(7)
    for _ in range(4):
        phases = qnn.random_parameters(rng)
        u = perceval_unitary(qnn, phases)
        ref = naive_distribution(u, qnn.input_modes, photons)
        np.testing.assert_allclose(qnn.distribution(phases), ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- torch path


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_torch_distribution_equals_numpy(qnns, shape) -> None:
    qnn = qnns[shape]
    rng = np.random.default_rng(13)
    for _ in range(3):
        phases = qnn.random_parameters(rng)
        t = qnn.torch_distribution(torch.from_numpy(phases))
        assert t.dtype == torch.float64
        np.testing.assert_allclose(t.numpy(), qnn.distribution(phases), rtol=0, atol=1e-12)


def test_torch_distribution_of_a_batch_equals_each_setting(qnns) -> None:
    """A (B, P) batch of phase settings: each row's distribution and gradient as if computed alone."""
    qnn = qnns[(9, 4)]
    rng = np.random.default_rng(31)
    batch = torch.from_numpy(np.stack([qnn.random_parameters(rng) for _ in range(5)])).requires_grad_(True)
    weights = torch.from_numpy(rng.normal(size=qnn.n_outcomes))
    probs = qnn.torch_distribution(batch)
    assert probs.shape == (5, qnn.n_outcomes)
    (probs * weights).sum().backward()
    for i in range(5):
        np.testing.assert_allclose(probs[i].detach().numpy(), qnn.distribution(batch[i].detach().numpy()),
                                   rtol=0, atol=1e-12)
        single = batch[i].detach().clone().requires_grad_(True)
        (qnn.torch_distribution(single) * weights).sum().backward()
        torch.testing.assert_close(batch.grad[i], single.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_torch_distribution_equals_perceval(qnns, shape) -> None:
    """The differentiable simulation (exact-gradient training) against Perceval itself, to 1e-10."""
    qnn = qnns[shape]
    phases = qnn.random_parameters(np.random.default_rng(21))
    t = qnn.torch_distribution(torch.from_numpy(phases)).numpy()
    np.testing.assert_allclose(t, perceval_distribution(qnn, phases), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_torch_gradient_matches_finite_differences(qnns, shape) -> None:
    qnn = qnns[shape]
    rng = np.random.default_rng(17)
    phases = qnn.random_parameters(rng)
    weights = rng.normal(size=qnn.n_outcomes)

    def f_numpy(ph: np.ndarray) -> float:
        p = qnn.distribution(ph)
        return float(weights @ p + 10.0 * (p**2).sum())

    theta = torch.tensor(phases, requires_grad=True)
    p = qnn.torch_distribution(theta)
    value = (torch.from_numpy(weights) * p).sum() + 10.0 * (p**2).sum()
    value.backward()
    grad = theta.grad.numpy()
    assert math.isclose(value.item(), f_numpy(phases), rel_tol=1e-12)

    h = 1e-5
    fd = np.empty_like(phases)
    for k in range(len(phases)):
        plus, minus = phases.copy(), phases.copy()
        plus[k] += h
        minus[k] -= h
        fd[k] = (f_numpy(plus) - f_numpy(minus)) / (2 * h)
    scale = np.abs(fd).max()
    assert scale > 1e-3  # a meaningful gradient
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-6 * scale)


# --------------------------------------------------------------------------- shots


def pooled_bins(expected: np.ndarray, minimum: float = 5.0) -> np.ndarray:
    """Bin index per outcome: outcomes with small expected counts pooled (smallest first) to >= minimum."""
    bins = np.empty(len(expected), dtype=np.int64)
    b, acc = 0, 0.0
    for k in np.argsort(expected):
        bins[k] = b
        acc += expected[k]
        if acc >= minimum:
            b, acc = b + 1, 0.0
    if acc:  # a last, too small pool joins the previous one
        bins[bins == b] = b - 1
    return bins


def test_shot_frequencies_fit_the_exact_distribution(qnns) -> None:
    qnn = qnns[(9, 4)]
    phases = qnn.random_parameters(np.random.default_rng(19))
    exact = qnn.distribution(phases)
    shots = 20_000
    freqs = qnn.distribution(phases, shots=shots, seed=0)
    counts = np.rint(freqs * shots)
    np.testing.assert_allclose(freqs * shots, counts, rtol=0, atol=1e-6)  # multiples of 1/S
    assert counts.sum() == shots
    assert math.isclose(freqs.sum(), 1.0, abs_tol=1e-12)
    expected = exact * shots
    bins = pooled_bins(expected)
    n_bins = bins.max() + 1
    assert n_bins > 50
    exp_bins = np.bincount(bins, weights=expected, minlength=n_bins)
    assert exp_bins.min() >= 5.0
    assert chisquare(np.bincount(bins, weights=counts, minlength=n_bins), exp_bins).pvalue > 1e-3
    # The same test rejects frequencies drawn from another distribution (it can fail).
    wrong = qnn.distribution(qnn.random_parameters(np.random.default_rng(20)), shots=shots, seed=0)
    assert chisquare(np.bincount(bins, weights=wrong * shots, minlength=n_bins), exp_bins).pvalue < 1e-3


def test_shots_reproducible_and_seed_dependent(qnns) -> None:
    qnn = qnns[(8, 4)]
    phases = qnn.random_parameters(np.random.default_rng(23))
    a = qnn.distribution(phases, shots=1000, seed=0)
    b = qnn.distribution(phases, shots=1000, seed=0)
    c = qnn.distribution(phases, shots=1000, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for freqs in (a, c):
        assert math.isclose(freqs.sum(), 1.0, abs_tol=1e-12)
        np.testing.assert_allclose(freqs * 1000, np.rint(freqs * 1000), rtol=0, atol=1e-9)
    # A Generator seed is accepted as well and drawn from.
    g = np.random.default_rng(0)
    np.testing.assert_array_equal(qnn.distribution(phases, shots=1000, seed=g), a)


@pytest.mark.parametrize("shots", [0, -5, 2.5, "100", True])
def test_bad_shots_are_user_errors(qnns, shots) -> None:
    qnn = qnns[(8, 4)]
    with pytest.raises(UserError, match="shots"):
        qnn.distribution(np.zeros(qnn.n_parameters), shots=shots, seed=0)
