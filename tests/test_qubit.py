"""The gate-based QNN against independent references: dense Kronecker matrices, analytic states, finite
differences, the torch path, and the paper's parameter counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import pqt.circuits.qubit as qubit_module
from pqt.circuits.qubit import QubitQNN, cnot_ring_image
from pqt.errors import UserError


def ry(theta: float) -> np.ndarray:
    c, s = np.cos(theta / 2), np.sin(theta / 2)
    return np.array([[c, -s], [s, c]])


def cnot_matrix(n: int, control: int, target: int) -> np.ndarray:
    """Dense CNOT on n qubits, qubit 0 the most significant bit, built from basis states one by one."""
    dim = 2**n
    m = np.zeros((dim, dim))
    for i in range(dim):
        bits = [(i >> (n - 1 - q)) & 1 for q in range(n)]
        if bits[control]:
            bits[target] ^= 1
        j = sum(b << (n - 1 - q) for q, b in enumerate(bits))
        m[j, i] = 1.0
    return m


def dense_state(n: int, blocks: int, theta: np.ndarray) -> np.ndarray:
    """The circuit as 2^n x 2^n matrices: kron of the Ry's, then each CNOT of the ring in order."""
    state = np.zeros(2**n)
    state[0] = 1.0
    angles = theta.reshape(blocks, n)
    ring = np.eye(2**n)
    if n > 1:
        for control in range(n):
            ring = cnot_matrix(n, control, (control + 1) % n) @ ring
    for k in range(blocks):
        layer = np.array([[1.0]])
        for q in range(n):
            layer = np.kron(layer, ry(angles[k, q]))
        state = ring @ (layer @ state)
    return state


@pytest.mark.parametrize(("n", "blocks"), [(1, 3), (2, 2), (3, 4), (4, 3), (5, 2), (6, 5)])
def test_state_equals_dense_kronecker_reference(n: int, blocks: int) -> None:
    qnn = QubitQNN(n, blocks)
    theta = np.random.default_rng(n * 10 + blocks).uniform(0, 2 * np.pi, qnn.n_parameters)
    np.testing.assert_allclose(qnn.state(theta), dense_state(n, blocks, theta), atol=1e-12, rtol=0)
    probs = qnn.exact_distribution(theta)
    assert probs.shape == (2**n,) and abs(probs.sum() - 1.0) < 1e-12


def test_one_block_is_a_product_state_permuted_by_the_ring() -> None:
    """Analytic: after one Ry layer the amplitude of bits b is prod_q (cos or sin)(theta_q / 2); the ring maps
    b to (b1^b0... ) by XORing each qubit into the next, in order."""
    n = 4
    theta = np.array([0.3, 1.1, 2.0, 2.9])
    qnn = QubitQNN(n, 1)
    expected = np.zeros(2**n)
    for bits in itertools.product((0, 1), repeat=n):
        amp = np.prod([np.sin(t / 2) if b else np.cos(t / 2) for t, b in zip(theta, bits, strict=True)])
        out = list(bits)
        for control in range(n):  # 0->1, 1->2, 2->3, 3->0, each on the already updated bits
            out[(control + 1) % n] ^= out[control]
        expected[int("".join(map(str, out)), 2)] = amp
    np.testing.assert_allclose(qnn.state(theta), expected, atol=1e-12, rtol=0)


def test_special_angles() -> None:
    n = 3
    # theta = 0 everywhere: |000> stays |000> through Ry = I and the ring (no control set).
    assert QubitQNN(n, 2).exact_distribution(np.zeros(6))[0] == pytest.approx(1.0, abs=1e-15)
    # theta = pi on qubit 0 only: Ry(pi)|0> = |1>, then the ring: 100 -> 110 -> 111 -> 011 (qubit 2 into 0).
    probs = QubitQNN(n, 1).exact_distribution(np.array([np.pi, 0.0, 0.0]))
    assert probs[0b011] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_ring_is_a_permutation(n: int) -> None:
    image = cnot_ring_image(n)
    assert sorted(image.tolist()) == list(range(2**n))


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
@pytest.mark.parametrize(("n", "blocks"), [(3, 2), (6, 3), (11, 2)])
def test_gradient_equals_finite_differences(monkeypatch, numpy_on_cpu: bool, n: int, blocks: int) -> None:
    """The hand-written backward (numpy path, and the torch path used off the CPU) against central differences."""
    monkeypatch.setattr(qubit_module, "NUMPY_ON_CPU", numpy_on_cpu)
    qnn = QubitQNN(n, blocks)
    theta = np.random.default_rng(n).uniform(0, 2 * np.pi, qnn.n_parameters)
    w = np.random.default_rng(n + 1).normal(size=2**n)
    leaf = torch.tensor(theta, requires_grad=True)
    probs = qnn.torch_distribution(leaf)
    np.testing.assert_allclose(probs.detach().numpy(), qnn.exact_distribution(theta), atol=1e-13)
    (probs * torch.from_numpy(w)).sum().backward()
    eps = 1e-6
    numeric = np.array([((qnn.exact_distribution(theta + eps * e) - qnn.exact_distribution(theta - eps * e)) @ w)
                        / (2 * eps) for e in np.eye(qnn.n_parameters)])
    np.testing.assert_allclose(leaf.grad.numpy(), numeric, atol=1e-8)


def test_backward_without_kept_states_matches(monkeypatch) -> None:
    """Large circuits recompute block inputs backwards instead of keeping them: same gradient."""
    qnn = QubitQNN(7, 6)
    theta = torch.tensor(np.random.default_rng(0).uniform(0, 6, qnn.n_parameters), requires_grad=True)
    w = torch.randn(2**7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (qnn.torch_distribution(theta) * w).sum().backward()
    kept = theta.grad.clone()
    theta.grad = None
    monkeypatch.setattr(qubit_module, "KEEP_STATES_BYTES", 0)
    assert not qnn.keeps_states()
    (qnn.torch_distribution(theta) * w).sum().backward()
    torch.testing.assert_close(theta.grad, kept, rtol=0, atol=1e-12)


def test_shots_are_a_multinomial_draw() -> None:
    qnn = QubitQNN(3, 2)
    theta = np.random.default_rng(3).uniform(0, 6, 6)
    exact = qnn.exact_distribution(theta)
    freqs = qnn.distribution(theta, shots=200_000, seed=1)
    assert np.all(np.abs(freqs * 200_000 - np.rint(freqs * 200_000)) < 1e-6)
    # chi-square against the exact distribution (7 dof): far below the 0.1% critical value 24.3
    expected = exact * 200_000
    assert ((freqs * 200_000 - expected) ** 2 / expected).sum() < 24.3
    np.testing.assert_array_equal(freqs, qnn.distribution(theta, shots=200_000, seed=1))


@pytest.mark.parametrize(("qubits", "blocks"), [(0, 1), (3, 0), (27, 1), (2.5, 1), (True, 1)])
def test_bad_shapes_are_user_errors(qubits, blocks) -> None:
    with pytest.raises(UserError):
        QubitQNN(qubits, blocks)


def test_wrong_parameter_count_is_user_error() -> None:
    with pytest.raises(UserError, match="takes 6 parameters"):
        QubitQNN(3, 2).exact_distribution(np.zeros(5))
