"""The gate-based QNN: numpy (CPU) and torch (device) paths against a one-op-per-qubit reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pqt.circuits.qubit as qubit_module
from pqt.bench.qubit import reference_state
from pqt.circuits.qubit import QubitQNN


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch (the --device path)"])
@pytest.mark.parametrize(("qubits", "blocks"), [(1, 3), (3, 2), (6, 3), (11, 2)])
def test_distribution_and_gradient_equal_the_reference(monkeypatch, numpy_on_cpu: bool, qubits: int,
                                                      blocks: int) -> None:
    monkeypatch.setattr(qubit_module, "NUMPY_ON_CPU", numpy_on_cpu)
    qnn = QubitQNN(qubits, blocks)
    rng = np.random.default_rng(qubits * 10 + blocks)
    theta = qnn.random_parameters(rng)
    weights = torch.from_numpy(rng.normal(size=2**qubits))
    ref_leaf = torch.tensor(theta, requires_grad=True)
    ref = reference_state(ref_leaf, qubits, blocks) ** 2
    (ref * weights).sum().backward()
    leaf = torch.tensor(theta, requires_grad=True)
    probs = qnn.torch_distribution(leaf)
    (probs * weights).sum().backward()
    assert probs.dtype == torch.float64 and probs.shape == (2**qubits,)
    torch.testing.assert_close(probs.detach(), ref.detach(), rtol=0, atol=1e-12)
    assert ref_leaf.grad.abs().max() > 1e-3
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(qnn.exact_distribution(theta), ref.detach().numpy(), rtol=0, atol=1e-12)
