"""FixedBatchLoss (the specialised PaperCNN loss on a fixed batch) against the plain reference path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pqt.targets import ACTIVATIONS, PaperCNN, n_parameters
from pqt.targets.paper_cnn_fast import FixedBatchLoss, plain_loss

REL = 1e-5  # float32 summation-order differences only


def _images(n: int, seed: int = 0, digit_like: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels k/255 in [0, 1]; ``digit_like`` keeps a black border as in MNIST (exercises zero windows)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    if digit_like:
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., 5:23, 6:22] = 1.0
        images = images * mask * (torch.rand(n, 1, 28, 28, generator=g) < 0.4)
    return images, torch.randint(0, 10, (n,), generator=g)


def _weights(target: nn.Module, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(n_parameters(target), generator=g) * scale


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * abs(b) + 1e-6


@pytest.fixture(scope="module")
def batch1000() -> tuple[torch.Tensor, torch.Tensor]:
    return _images(1000, seed=1)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("mkldnn", [True, False])
def test_small_batches_match_plain(activation: str, n: int, mkldnn: bool) -> None:
    target = PaperCNN(activation)
    images, labels = _images(n, seed=n)
    loss = FixedBatchLoss(target, images, labels)
    assert loss.fast
    loss.mkldnn = mkldnn and loss.mkldnn  # False: the plain-tensor conv2/pool2 path
    for seed in range(3):
        w = _weights(target, seed)
        assert _close(loss(w), plain_loss(target, w, images, labels))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("mkldnn", [True, False])
def test_batch_1000_matches_plain(activation: str, mkldnn: bool,
                                  batch1000: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = batch1000
    target = PaperCNN(activation)
    loss = FixedBatchLoss(target, images, labels)
    assert loss.fast
    loss.mkldnn = mkldnn and loss.mkldnn
    for seed in range(2 if mkldnn else 1):
        w = _weights(target, seed)
        assert _close(loss(w), plain_loss(target, w, images, labels))


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_large_weights_and_digit_like_images(activation: str, scale: float) -> None:
    # Large logits (losses far from log 10) and black borders (all-zero conv1 windows).
    target = PaperCNN(activation)
    images, labels = _images(64, seed=5, digit_like=True)
    loss = FixedBatchLoss(target, images, labels)
    for seed in range(2):
        w = _weights(target, seed, scale)
        assert _close(loss(w), plain_loss(target, w, images, labels))


def test_buffers_do_not_leak_between_calls() -> None:
    # The instance reuses preallocated buffers: a call must not depend on the previous one.
    target = PaperCNN("relu")
    images, labels = _images(20, seed=3)
    loss = FixedBatchLoss(target, images, labels)
    w1, w2 = _weights(target, 1), _weights(target, 2)
    first = loss(w1)
    assert loss(w2) != first
    assert loss(w1) == first


def test_accepts_generator_style_weights() -> None:
    # Weights that require grad, in float64, or from inference mode: no grad is built, result is a float.
    target = PaperCNN()
    images, labels = _images(7, seed=4)
    loss = FixedBatchLoss(target, images, labels)
    w = _weights(target, 0)
    ref = plain_loss(target, w, images, labels)
    out = loss(w.clone().requires_grad_(True))
    assert isinstance(out, float) and _close(out, ref)
    assert _close(loss(w.double()), ref)
    with torch.inference_mode():
        assert _close(loss(w.clone()), ref)


def test_other_modules_fall_back() -> None:
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    images, labels = _images(7)
    loss = FixedBatchLoss(other, images, labels)
    assert not loss.fast
    w = _weights(other, 0)
    assert loss(w) == pytest.approx(plain_loss(other, w, images, labels), rel=REL)


def test_subclass_of_paper_cnn_falls_back() -> None:
    # A subclass may change forward(): only the exact PaperCNN class is specialised.
    class Changed(PaperCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    target = Changed()
    images, labels = _images(7)
    loss = FixedBatchLoss(target, images, labels)
    assert not loss.fast
    w = _weights(target, 0)
    assert loss(w) == pytest.approx(plain_loss(target, w, images, labels), rel=REL)


def test_cifar_cnn_runs_channels_last_with_the_plain_loss_and_gradients() -> None:
    """The CIFAR-10 CNN: channels-last images, same loss and weight gradients as the plain NCHW path."""
    from pqt.targets import CifarCNN
    from pqt.targets.paper_cnn_fast import training_forward

    target = CifarCNN()
    g = torch.Generator().manual_seed(3)
    images, labels = torch.rand(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    w = _weights(target, 3, scale=0.05)
    loss = FixedBatchLoss(target, images, labels)
    assert not loss.fast and loss.channels_last and loss.images.is_contiguous(memory_format=torch.channels_last)
    assert loss(w) == pytest.approx(plain_loss(target, w, images, labels), rel=REL)
    assert not FixedBatchLoss(target, images, labels, enabled=False).channels_last
    grads = []
    for enabled in (True, False):
        leaf = w.clone().requires_grad_(True)
        nn.functional.cross_entropy(training_forward(target, leaf, images, enabled), labels).backward()
        grads.append(leaf.grad)
    assert grads[1].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6 * grads[1].abs().max().item())
