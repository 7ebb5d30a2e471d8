"""The MLP mapping model: layer counts, the composed fast forward against layer-by-layer, gradients."""

from __future__ import annotations

import pytest
import torch

from pqt.errors import UserError
from pqt.mappers import MLPMapper


def test_paper_parameter_counts() -> None:
    assert MLPMapper(6690).n_parameters == 249  # 13 bits + value -> 4 -> 20 -> 4 -> 1
    assert MLPMapper(285_226, (40, 200, 40)).n_parameters == 17_121  # 19 bits: the CIFAR-10 model


@pytest.mark.parametrize("activation", ["none", "tanh", "tanh-all"])
@pytest.mark.parametrize(("n_weights", "widths"), [(6690, (4, 20, 4)), (3000, (40, 200, 40)), (500, (3, 50, 2))])
def test_forward_and_gradients_equal_layer_by_layer(activation: str, n_weights: int, widths: tuple[int, ...]) -> None:
    """The composed affine runs give the same outputs and parameter gradients (float64, to rounding)."""
    torch.manual_seed(0)
    mapper = MLPMapper(n_weights, widths, activation).double()
    values = torch.rand(n_weights, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(n_weights, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for forward in (mapper, mapper.reference_forward):
        mapper.zero_grad()
        out = forward(values)
        (out * target).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in mapper.parameters()]))
    (fast, fast_grads), (ref, ref_grads) = results
    assert ref.std().item() > 1e-6  # a weight-dependent output
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_activation_changes_the_function() -> None:
    torch.manual_seed(0)
    values = torch.rand(300, dtype=torch.float64)
    outs = {}
    for activation in ("none", "tanh"):
        torch.manual_seed(0)
        outs[activation] = MLPMapper(300, (4, 20, 4), activation).double()(values)
    assert (outs["none"] - outs["tanh"]).abs().max() > 1e-3


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="activation"):
        MLPMapper(100, (4,), "relu6")
    with pytest.raises(UserError, match="widths"):
        MLPMapper(100, (4, 0))
