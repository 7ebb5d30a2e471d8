"""Combining the two QNN distributions, outcome capacity, the target CNN and parameter accounting."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from pqt.circuits.photonic import PhotonicQNN
from pqt.distributions.combine import check_outcome_capacity, combine_distributions
from pqt.errors import UserError
from pqt.generator import QuantumTrainGenerator, build_generator
from pqt.mappers import MPSMapper
from pqt.targets import PaperCNN, functional_forward, n_parameters, unflatten
from pqt.training.accounting import parameter_report
from pqt.training.config import TrainConfig

PAPER_COUNTS = [223, 316, 471, 688, 967, 1308, 1711, 2176, 2703, 3292]


def random_distribution(n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).uniform(0.0, 1.0, n)
    return p / p.sum()


# --------------------------------------------------------------------------- combination


def test_combine_is_row_major_outer_product_of_mean_scaled_vectors() -> None:
    p1, p2 = random_distribution(126, 1), random_distribution(70, 2)
    out = combine_distributions([p1, p2], 6690)
    assert out.shape == (6690,) and out.dtype == torch.float32
    a, b = p1 / p1.mean(), p2 / p2.mean()  # = p * C(M, N) for a normalised distribution
    np.testing.assert_allclose(a, p1 * 126, rtol=1e-12)
    for i, j in [(0, 0), (0, 69), (1, 0), (3, 17), (95, 39), (95, 40)]:
        k = 70 * i + j
        if k < 6690:
            assert math.isclose(out[k].item(), a[i] * b[j], rel_tol=1e-6), (i, j)
    expected = np.array([a[k // 70] * b[k % 70] for k in range(6690)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # 6690 = 95 * 70 + 40: the last weight is (i, j) = (95, 39)
    assert math.isclose(out[-1].item(), a[95] * b[39], rel_tol=1e-6)


def test_combine_torch_and_numpy_inputs_agree() -> None:
    p1, p2 = random_distribution(126, 3), random_distribution(70, 4)
    from_numpy = combine_distributions([p1, p2], 6690)
    from_torch = combine_distributions([torch.from_numpy(p1), torch.from_numpy(p2)], 6690)
    assert torch.equal(from_numpy, from_torch)


def test_combine_is_differentiable_for_torch_inputs() -> None:
    p1 = torch.from_numpy(random_distribution(126, 5)).requires_grad_()
    p2 = torch.from_numpy(random_distribution(70, 6)).requires_grad_()
    combine_distributions([p1, p2], 6690).sum().backward()
    assert p1.grad is not None and p2.grad is not None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_combine_scaling_cancels_normalisation_and_none_is_raw() -> None:
    p1, p2 = random_distribution(126, 7), random_distribution(70, 8)
    # mean scaling: any overall factor of either vector cancels
    torch.testing.assert_close(combine_distributions([3.0 * p1, 0.2 * p2], 6690),
                               combine_distributions([p1, p2], 6690))
    raw = combine_distributions([p1, p2], 6690, scaling="none")
    np.testing.assert_allclose(raw.numpy(), np.outer(p1, p2).ravel()[:6690], rtol=1e-6)


def test_combine_errors() -> None:
    p1, p2 = random_distribution(10, 9), random_distribution(6, 10)
    with pytest.raises(UserError, match="scaling"):
        combine_distributions([p1, p2], 50, scaling="max")
    with pytest.raises(UserError, match="60"):
        combine_distributions([p1, p2], 61)
    assert combine_distributions([p1, p2], 60).shape == (60,)


# --------------------------------------------------------------------------- capacity


def test_too_few_outcomes_names_configurations_that_fit() -> None:
    with pytest.raises(UserError) as e:
        check_outcome_capacity([(5, 2), (4, 2)], 6690)
    msg = str(e.value)
    assert "\n" not in msg
    assert "60" in msg and "6,690" in msg  # C(5,2) * C(4,2) = 60 patterns for 6,690 weights
    assert "configurations that fit" in msg
    fits = re.findall(r"(\d+) modes/(\d+) photons x (\d+) modes/(\d+) photons", msg)
    assert fits, msg
    for m1, n1, m2, n2 in fits:
        assert (int(n1), int(n2)) == (2, 2)
        assert math.comb(int(m1), 2) * math.comb(int(m2), 2) >= 6690, (m1, m2)


def test_paper_shapes_have_enough_outcomes() -> None:
    check_outcome_capacity([(9, 4), (8, 4)], 6690)  # 126 * 70 = 8,820
    check_outcome_capacity([(9, 4), (8, 4)], 8820)
    with pytest.raises(UserError):
        check_outcome_capacity([(9, 4), (8, 4)], 8821)


# --------------------------------------------------------------------------- target network


def test_paper_cnn_has_6690_parameters() -> None:
    cnn = PaperCNN()
    # conv1 8*1*5*5+8, conv2 12*8*5*5+12, fc1 192*20+20, fc2 20*10+10
    assert n_parameters(cnn) == 208 + 2412 + 3860 + 210 == 6690
    assert [n for n, _ in cnn.named_parameters()] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_functional_forward_with_own_parameters_equals_module(activation: str) -> None:
    torch.manual_seed(0)
    cnn = PaperCNN(activation)
    x = torch.rand(7, 1, 28, 28)
    flat = torch.cat([p.detach().reshape(-1) for p in cnn.parameters()])
    assert flat.numel() == 6690
    torch.testing.assert_close(functional_forward(cnn, flat, x), cnn(x), rtol=1e-6, atol=1e-6)
    # the flat vector really is used (the module's own parameters are not)
    other = torch.randn(6690)
    assert not torch.allclose(functional_forward(cnn, other, x), cnn(x))


def test_unflatten_order_and_size_check() -> None:
    cnn = PaperCNN()
    flat = torch.arange(6690, dtype=torch.float32)
    parts = unflatten(cnn, flat)
    assert parts["conv1.weight"].shape == (8, 1, 5, 5) and parts["conv1.weight"].flatten()[0] == 0
    assert parts["conv1.bias"][0] == 200
    assert parts["fc2.bias"][-1] == 6689
    with pytest.raises(ValueError):
        unflatten(cnn, torch.zeros(6691))


# --------------------------------------------------------------------------- parameter accounting


@pytest.fixture(scope="module")
def paper_qnns() -> list[PhotonicQNN]:
    return [PhotonicQNN(9, 4), PhotonicQNN(8, 4)]


@pytest.mark.parametrize("chi", range(1, 11))
def test_parameter_report(paper_qnns, chi: int) -> None:
    report = parameter_report(QuantumTrainGenerator(paper_qnns, MPSMapper(6690, chi)), PaperCNN())
    assert report["paper_count_parameters"] == PAPER_COUNTS[chi - 1]
    assert report["mps_parameters"] == 31 * chi**2
    assert report["photonic_parameters"] == 72 + 56
    assert report["trainable_parameters"] == 31 * chi**2 + 128
    assert report["target_parameters"] == 6690
    assert math.isclose(report["compression_ratio"], 6690 / (31 * chi**2 + 128))


def test_parameter_report_matches_the_built_models(paper_qnns) -> None:
    """The reported MPS count is the size of the generator actually built for the target."""
    for chi in (1, 4):
        gen = build_generator(TrainConfig(bond_dim=chi), 6690)
        report = parameter_report(gen, PaperCNN())
        assert report["mps_parameters"] == sum(p.numel() for p in gen.parameters()) == 31 * chi**2
        assert report["photonic_parameters"] == sum(q.n_parameters for q in paper_qnns)
