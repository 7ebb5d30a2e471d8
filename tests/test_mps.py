"""The MPS mapper: parameter count, planned vs per-weight contraction, the documented formula, bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pqt.circuits.photonic import PhotonicQNN
from pqt.errors import UserError
from pqt.generator import QuantumTrainGenerator
from pqt.mappers import MPS, MPSMapper, index_bits, mps_parameter_count

PAPER_QNNS = [PhotonicQNN(9, 4), PhotonicQNN(8, 4)]

def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomised(n_inputs: int, chi: int, seed: int, std: float = 0.3) -> MPS:
    """An MPS far from its identity initialisation: random cores, biases and output core."""
    torch.manual_seed(seed)
    mps = MPS(n_inputs, chi, init_std=std)
    with torch.no_grad():
        for p in (mps.left_bias, mps.right_bias, mps.output_core):
            p.add_(torch.randn_like(p) * std)
    return mps


def reference_contraction(mps: MPS, x: np.ndarray) -> float:
    """The module docstring's formula, contracted naively in float64 for one input row.

    A_s(x) = W_s[0] x + W_s[1] (1 - x) + B_half;  y = e0^T A_1 ... A_{n/2} O A_{n/2+1} ... A_n e0
    """
    left = mps.left_cores.detach().double().numpy()
    right = mps.right_cores.detach().double().numpy()
    lb = mps.left_bias.detach().double().numpy()
    rb = mps.right_bias.detach().double().numpy()
    out = mps.output_core.detach().double().numpy()
    chi = mps.bond_dim
    n_left = mps.n_inputs // 2
    m = np.eye(chi)
    for s in range(n_left):
        m = m @ (left[s, 0] * x[s] + left[s, 1] * (1 - x[s]) + lb)
    m = m @ out
    for s in range(mps.n_inputs - n_left):
        v = x[n_left + s]
        m = m @ (right[s, 0] * v + right[s, 1] * (1 - v) + rb)
    return float(m[0, 0])


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("chi", range(1, 11))
def test_parameter_count_paper(chi: int) -> None:
    mps = MPS(14, chi)
    assert count(mps) == 31 * chi**2 == mps_parameter_count(14, chi)


@pytest.mark.parametrize(("n", "chi"), [(2, 3), (3, 2), (5, 4), (8, 1), (13, 5)])
def test_parameter_count_general(n: int, chi: int) -> None:
    assert count(MPS(n, chi)) == (2 * n + 3) * chi**2 == mps_parameter_count(n, chi)


@pytest.mark.parametrize("chi", [0, -1, 1.5, True])
def test_bad_bond_dimension_is_user_error(chi) -> None:
    with pytest.raises(UserError, match="bond dimension"):
        MPS(14, chi)


def test_too_few_features_is_user_error() -> None:
    with pytest.raises(UserError):
        MPS(0, 2)


def test_value_only_mapper_is_an_affine_map_of_the_value() -> None:
    """Without index bits the MPS has one site: y = a x + b, so the weights are a scaled copy of the centred values."""
    mapper = MPSMapper(50, 3, init_std=0.3, inputs="value")
    assert mapper.n_features == 1 and count(mapper) == 5 * 9
    x = torch.rand(50, generator=torch.Generator().manual_seed(0))
    y = mapper(x).detach()
    slope = (y[1] - y[0]) / (x[1] - x[0])
    torch.testing.assert_close(y, y[0] + slope * (x - x[0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, mapper.reference_forward(x).detach(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- contraction


@pytest.mark.parametrize("chi", [1, 2, 4, 7])
def test_forward_matches_documented_formula(chi: int) -> None:
    mps = randomised(14, chi, seed=chi)
    rng = np.random.default_rng(chi)
    x = rng.uniform(-1.0, 2.0, size=(6, 14))
    y = mps(torch.from_numpy(x).float()).detach().double().numpy()
    ref = np.array([reference_contraction(mps, row) for row in x])
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("chi", [1, 3, 4, 8])
def test_forward_planned_equals_per_weight_forward(chi: int) -> None:
    mps = randomised(14, chi, seed=100 + chi)
    bits = index_bits(6690)
    last = torch.rand(6690, generator=torch.Generator().manual_seed(chi)) * 3.0
    ref = mps(torch.cat([bits, last[:, None]], dim=1))
    planned = mps.forward_planned(mps.plan_fixed(bits), last)
    assert planned.shape == ref.shape == (6690,)
    scale = ref.abs().max().item()
    assert scale > 0 and ref.std().item() > 1e-3 * scale  # a non-trivial, weight-dependent output
    torch.testing.assert_close(planned, ref, rtol=1e-4, atol=1e-5 * scale)


def test_forward_planned_with_continuous_fixed_features() -> None:
    mps = randomised(9, 3, seed=5)
    g = torch.Generator().manual_seed(5)
    fixed = torch.rand(50, 8, generator=g)
    fixed[25:] = fixed[:25]  # repeated rows exercise the unique/gather path
    last = torch.rand(50, generator=g)
    ref = mps(torch.cat([fixed, last[:, None]], dim=1))
    planned = mps.forward_planned(mps.plan_fixed(fixed), last)
    torch.testing.assert_close(planned, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_mapper_planned_equals_reference_forward() -> None:
    gen = MPSMapper(6690, 4, init_std=0.3)
    with torch.no_grad():
        for p in (gen.mps.left_bias, gen.mps.right_bias, gen.mps.output_core):
            p.add_(torch.randn_like(p) * 0.3)
    combined = torch.rand(6690, generator=torch.Generator().manual_seed(1)) * 2.0
    fast, ref = gen(combined), gen.reference_forward(combined)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_mapper_planned_equals_reference_at_cifar_size_in_float64() -> None:
    """285,226 weights (19 bits): the sliced-table path, values and gradients, to float64 rounding."""
    torch.manual_seed(0)
    gen = MPSMapper(285_226, 3, init_std=0.3).double()
    assert gen.plan_pair_is_range  # index order: pair k = k, read by a slice
    combined = torch.rand(285_226, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2.0
    target = torch.randn(285_226, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for forward in (gen, gen.reference_forward):
        gen.zero_grad()
        out = forward(combined)
        (out * target).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in gen.parameters()]))
    (fast, fast_grads), (ref, ref_grads) = grads
    assert ref.std().item() > 1e-3 * ref.abs().max().item()
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_mapper_gathers_when_pairs_are_not_in_index_order() -> None:
    """Continuous fixed features with repeated rows: pair != arange, the gather path."""
    mps = randomised(5, 2, seed=7)
    g = torch.Generator().manual_seed(7)
    fixed = torch.rand(40, 4, generator=g)
    fixed[20:] = fixed[:20].flip(0)
    plan = mps.plan_fixed(fixed)
    assert not plan.pair_is_range
    last = torch.rand(40, generator=g)
    torch.testing.assert_close(mps.forward_planned(plan, last), mps(torch.cat([fixed, last[:, None]], 1)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chi", [1, 4, 10])
def test_default_init_generates_zero_weights(chi: int) -> None:
    torch.manual_seed(0)
    gen = QuantumTrainGenerator(PAPER_QNNS, MPSMapper(6690, chi))
    combined = torch.rand(6690, generator=torch.Generator().manual_seed(2)) * 2.0
    weights = gen(combined)
    assert weights.shape == (6690,)
    assert weights.abs().max().item() < 1e-5
    # Raw outputs all start at the same value (identity init): 1 with e0 boundaries.
    raw = gen.mapper(combined)
    torch.testing.assert_close(raw, torch.ones_like(raw), rtol=0, atol=1e-5)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    gen = QuantumTrainGenerator(PAPER_QNNS, MPSMapper(6690, 3, init_std=0.3))
    combined = torch.rand(6690, generator=torch.Generator().manual_seed(3)) * 2.0
    target = torch.randn(6690, generator=torch.Generator().manual_seed(4))
    loss = ((gen(combined) - target) ** 2).mean()
    loss.backward()
    mps = gen.mapper.mps
    for name, p in mps.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum().item() > 0, name
    # every site's core takes part, on both halves
    for cores in (mps.left_cores, mps.right_cores):
        per_site = cores.grad.abs().flatten(1).sum(1)
        assert (per_site > 0).all(), per_site


def test_gradient_at_default_init() -> None:
    """Training starts from the default init: the gradient must already reach all parameters."""
    torch.manual_seed(0)
    gen = QuantumTrainGenerator(PAPER_QNNS, MPSMapper(6690, 2))
    combined = torch.rand(6690, generator=torch.Generator().manual_seed(3)) * 2.0
    target = torch.randn(6690, generator=torch.Generator().manual_seed(4))
    (gen(combined) * target).sum().backward()
    for name, p in gen.mapper.mps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name


# --------------------------------------------------------------------------- index bits


def test_index_bits_6690() -> None:
    bits = index_bits(6690)
    assert bits.shape == (6690, 13)
    assert set(bits.unique().tolist()) == {-1.0, 1.0}
    for k in (0, 1, 2, 5, 4095, 4096, 6689):
        expected = [1.0 if c == "1" else -1.0 for c in np.binary_repr(k, width=13)]
        assert bits[k].tolist() == expected, k
    # MSB first: decoding every row gives back its index
    weights = 2 ** torch.arange(12, -1, -1)
    decoded = (((bits + 1) / 2).long() * weights).sum(1)
    assert torch.equal(decoded, torch.arange(6690))


@pytest.mark.parametrize(("m", "n_bits"), [(2, 1), (8, 3), (9, 4), (4096, 12), (4097, 13), (8192, 13)])
def test_index_bits_width(m: int, n_bits: int) -> None:
    bits = index_bits(m)
    assert bits.shape == (m, n_bits)
    assert len({tuple(r) for r in bits.tolist()}) == m  # every weight has its own code
