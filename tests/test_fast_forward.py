"""training_forward (the specialised differentiable PaperCNN forward) against the plain functional_forward path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pqt.targets import ACTIVATIONS, PaperCNN, functional_forward, n_parameters, unflatten
from pqt.targets.paper_cnn_fast import _max4, _route4, fast_path_applies, training_forward

LOGITS_REL = 1e-5  # max |difference| / max |plain logit|
GRAD_RTOL = 1e-4  # per gradient entry, plus an absolute slack relative to the largest entry:
GRAD_ATOL_REL = 2e-5  # entries that nearly cancel carry float32 summation-order noise of the largest terms


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Correctness only: one torch thread keeps these small problems fast on a loaded machine (OpenMP
    barriers of a second thread competing for the CPU cost far more than the work here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Pixels k/255. ``dense``: random everywhere (exact max-pool ties practically absent); ``digit``: black
    borders and sparse strokes as in MNIST (many all-zero windows: exact ties in both pools); ``blocks``:
    black background with saturated 1.0 blocks (ties between identical non-zero windows) and a gray band."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    if kind == "digit":
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., 5:23, 6:22] = 1.0
        images = images * mask * (torch.rand(n, 1, 28, 28, generator=g) < 0.4)
    elif kind == "blocks":
        band = images[:, :, 10:14, 4:26].clone()
        images = torch.zeros(n, 1, 28, 28)
        images[:, :, 6:20, 8:18] = 1.0
        images[:, :, 10:14, 4:26] = band
    return images


def _weights(target: nn.Module, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.randn(n_parameters(target), generator=g) * scale).requires_grad_(True)


def _near_tie_gap(c: torch.Tensor) -> float:
    """Smallest NON-zero gap between the two largest values of a 2x2 pooling window of ``c``, relative to
    max |c| (exact ties, from identical windows, do not count)."""
    v = c.unfold(2, 2, 2).unfold(3, 2, 2).reshape(*c.shape[:2], c.shape[2] // 2, c.shape[3] // 2, 4)
    top2 = v.topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]) / c.abs().max()
    gap = gap[gap > 0]
    return float(gap.min()) if gap.numel() else float("inf")


def _min_near_tie_gap(target: PaperCNN, w: torch.Tensor, images: torch.Tensor) -> float:
    """:func:`_near_tie_gap` of both pooling layers' inputs, computed in float64 (PaperCNN's forward)."""
    p = unflatten(target, w.detach().double())
    act = ACTIVATIONS[target.activation]
    c1 = F.conv2d(images.double(), p["conv1.weight"], p["conv1.bias"])
    c2 = F.conv2d(act(F.max_pool2d(c1, 2)), p["conv2.weight"], p["conv2.bias"])
    return min(_near_tie_gap(c1), _near_tie_gap(c2))


def _inputs(target: PaperCNN, n: int, kind: str, seed: int, scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and images whose max-pool windows have no NEAR-ties (two different values within 1e-6 of the
    map's scale): there the float32 rounding of either path, not the model, decides which element gets the
    gradient (with B=128 roughly one batch in 50 has such a window, and then either path may disagree with
    exact arithmetic). Exact ties -- zero and saturated regions, plentiful in ``digit`` and ``blocks`` --
    are kept: those must be, and are, resolved alike. Deterministic: redraws with derived seeds."""
    for attempt in range(20):
        s = seed + 7919 * attempt
        w, images = _weights(target, s, scale), _images(n, kind, seed=s)
        if _min_near_tie_gap(target, w, images) > 1e-6:
            return w, images
    raise AssertionError("no near-tie-free draw found")


def _logits_and_grad(forward, target: nn.Module, w: torch.Tensor, images: torch.Tensor,  # noqa: ANN001
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = forward(target, w, images)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), w)
    return logits.detach(), grad


def _assert_matches_plain(target: nn.Module, w: torch.Tensor, images: torch.Tensor) -> None:
    labels = torch.arange(images.shape[0]) % 10
    ref_logits, ref_grad = _logits_and_grad(functional_forward, target, w, images, labels)
    logits, grad = _logits_and_grad(training_forward, target, w, images, labels)
    assert logits.shape == ref_logits.shape and logits.dtype == ref_logits.dtype
    assert (logits - ref_logits).abs().max() <= LOGITS_REL * ref_logits.abs().max()
    torch.testing.assert_close(grad, ref_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL_REL * float(ref_grad.abs().max()))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("n", [1, 7, 128])
@pytest.mark.parametrize("kind", ["dense", "digit"])
def test_logits_and_gradients_match_plain(activation: str, n: int, kind: str) -> None:
    target = PaperCNN(activation)
    w, images = _inputs(target, n, kind, seed=n)
    assert fast_path_applies(target, w, images)
    _assert_matches_plain(target, w, images)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_saturated_regions_and_large_weights(activation: str) -> None:
    # Ties between identical non-zero windows, and large logits (losses far from log 10).
    target = PaperCNN(activation)
    for seed, scale in ((0, 0.1), (1, 0.5)):
        _assert_matches_plain(target, *_inputs(target, 32, "blocks", seed, scale))


def test_ties_route_to_the_first_maximum_like_max_pool2d() -> None:
    # _max4 / _route4 on 4 phase blocks == max_pool2d over 2x2 windows whose elements are the phases in
    # row-major order, including its backward on exact ties (2, 3 and 4 equal values).
    g = torch.Generator().manual_seed(0)
    rows, n = 3, 50
    vals = torch.randint(0, 3, (4, rows, n), generator=g).float()  # many exact ties
    grad = torch.randn(rows, n, generator=g)
    maps = vals.view(2, 2, rows, n).permute(2, 3, 0, 1).reshape(1, rows * n, 2, 2).requires_grad_(True)
    pooled = F.max_pool2d(maps, 2)
    pooled.backward(grad.reshape(1, rows * n, 1, 1))
    expected = maps.grad.reshape(rows, n, 2, 2).permute(2, 3, 0, 1).reshape(4 * rows, n)

    p = vals.reshape(4 * rows, n)
    m = _max4(p, rows)
    assert torch.equal(m.reshape(-1), pooled.detach().reshape(-1))
    routed = _route4(p, m, grad, torch.empty_like(p))
    assert torch.equal(routed, expected)


def test_gradient_reaches_a_generator() -> None:
    # As in training: the flat weights are an intermediate result, the leaves are upstream.
    target = PaperCNN("tanh")
    base, images = _inputs(target, 16, "digit", seed=7)
    scale = torch.tensor(1.0, requires_grad=True)  # 1.0: base * scale == base exactly (the checked draw)
    labels = torch.arange(16) % 10
    grads = []
    for forward in (functional_forward, training_forward):
        loss = F.cross_entropy(forward(target, base * scale, images), labels)
        grads.append(torch.autograd.grad(loss, (base, scale)))
    for fast, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fast, ref, rtol=GRAD_RTOL, atol=GRAD_ATOL_REL * float(ref.abs().max()))


def test_no_grad_inference_mode_and_strided_images() -> None:
    target = PaperCNN("relu")
    w, images = _inputs(target, 14, "dense", seed=2)
    images = images[::2]  # a non-contiguous batch
    ref = functional_forward(target, w, images).detach()
    with torch.no_grad():
        out = training_forward(target, w, images)
    assert not out.requires_grad
    assert (out - ref).abs().max() <= LOGITS_REL * ref.abs().max()
    with torch.inference_mode():
        out = training_forward(target, w.detach(), images)
    assert (out - ref).abs().max() <= LOGITS_REL * ref.abs().max()
    _assert_matches_plain(target, w, images)  # and differentiable again after inference mode
    strided = torch.stack([w.detach(), -w.detach()], 1)[:, 0].requires_grad_(True)  # non-contiguous weights
    _assert_matches_plain(target, strided, images)


def test_first_order_only() -> None:
    target = PaperCNN("tanh")
    w, images = _inputs(target, 3, "digit", seed=4)
    loss = F.cross_entropy(training_forward(target, w, images), torch.arange(3))
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.square().sum(), w)


def test_repeated_forwards_before_backward() -> None:
    # Two graphs alive at once (scratch buffers are only used inside one call).
    target = PaperCNN("gelu")
    w, both = _inputs(target, 18, "digit", seed=3)
    images = [both[:9], both[9:]]
    labels = torch.arange(9) % 10
    losses = [F.cross_entropy(training_forward(target, w, x), labels) for x in images]
    (g_fast,) = torch.autograd.grad(losses[0] + 2 * losses[1], w)
    ref = [F.cross_entropy(functional_forward(target, w, x), labels) for x in images]
    (g_ref,) = torch.autograd.grad(ref[0] + 2 * ref[1], w)
    torch.testing.assert_close(g_fast, g_ref, rtol=GRAD_RTOL, atol=GRAD_ATOL_REL * float(g_ref.abs().max()))


def test_other_modules_and_inputs_fall_back() -> None:
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    images = _images(5, "dense")
    w = _weights(other, 0)
    assert not fast_path_applies(other, w, images)
    labels = torch.arange(5)
    ref_logits, ref_grad = _logits_and_grad(functional_forward, other, w, images, labels)
    logits, grad = _logits_and_grad(training_forward, other, w, images, labels)
    assert torch.equal(logits, ref_logits) and torch.equal(grad, ref_grad)

    class Changed(PaperCNN):  # a subclass may change forward(): only the exact class is specialised
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    changed = Changed()
    w = _weights(changed, 1)
    assert not fast_path_applies(changed, w, images)
    torch.testing.assert_close(training_forward(changed, w, images), functional_forward(changed, w, images))

    target = PaperCNN()
    w = _weights(target, 1)
    assert not fast_path_applies(target, w.double(), images.double())
    assert not fast_path_applies(target, w, images.clone().requires_grad_(True))
    assert not fast_path_applies(target, w, images[:, :, :27])
    out = training_forward(target, w.detach().double(), images.double())
    assert out.dtype == torch.float64
