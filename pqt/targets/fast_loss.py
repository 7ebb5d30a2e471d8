"""Cross-entropy of the target CNN on one fixed batch, for many weight vectors (no gradient).

COBYLA calls its objective ~1,000 times on the *same* batch of images with new generated weights each
time. The plain path (``functional_forward`` + ``F.cross_entropy``) spends most of its time in conv1
(a 1-input-channel convolution oneDNN handles badly) and in ``max_pool2d`` over the 24x24 maps. For
:class:`~pqt.targets.networks.PaperCNN` :class:`FixedBatchLoss` instead:

* precomputes, once per batch, the 6x6 input window under every 2x2 pooling window of conv1
  (stride 2; a (36, B*144) matrix, ~21 MB for B=1,000). The four conv1 outputs a pool window takes
  the max of are four 5x5 sub-windows of that 6x6 window, so conv1 at all four pool phases is ONE
  GEMM with a (32, 36) matrix built from the 5x5 kernels (zeros elsewhere) -- an exact rewrite, no
  extra rounding beyond float32 summation order;
* pools conv1 by a max over the four phase blocks of that GEMM's output (contiguous, cheap) and writes
  the result straight into a preallocated NCHW buffer for conv2 (no separate pooling or transpose pass);
* runs conv2 and pool2 on oneDNN tensors (8->12 channels is a shape oneDNN handles well; keeping its
  blocked layout avoids converting the 8x8 maps back), without bias; without oneDNN, pool2 is three
  elementwise maxima of strided views (much cheaper than ``max_pool2d`` on 8x8 maps);
* without activation (the paper's network), max-pooling commutes with per-channel constants and conv2
  is linear, so conv1's and conv2's biases become one per-channel constant after pool2, which fc1 maps
  to a constant folded into fc1's bias (saves a pass over the 1.2M-value conv2 input). With an
  activation the biases are added where the model adds them (before the activation): exact for every
  activation, at the cost of that pass.

Result: ~7 ms instead of ~33 ms for B=1,000 on 2 cores (``experiments/profile_cnn.py``); what is left
is the conv1 GEMM + max (memory-bound, ~40 MB moved) and oneDNN's conv2 (~3 ms, the real FLOPs).
Memory: ~47 KB per image (window matrix, GEMM output, pooled maps), ~47 MB for B=1,000.

Any other module falls back to ``functional_forward`` under ``torch.inference_mode``. An instance owns
preallocated buffers: do not call one instance from several threads at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pqt.targets.networks import ACTIVATIONS, PaperCNN, functional_forward, unflatten

# Parameter shapes the specialised path is written for (PaperCNN, in named_parameters order).
_PAPER_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (8, 1, 5, 5),
    "conv1.bias": (8,),
    "conv2.weight": (12, 8, 5, 5),
    "conv2.bias": (12,),
    "fc1.weight": (20, 192),
    "fc1.bias": (20,),
    "fc2.weight": (10, 20),
    "fc2.bias": (10,),
}

# In-place versions of activation functions where torch has them (saves an allocation per call); keyed
# by the function itself, so a changed ACTIVATIONS entry simply loses the in-place shortcut.
_INPLACE: dict[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] = {
    F.relu: torch.relu_,
    torch.tanh: torch.tanh_,
}


def plain_loss(target: nn.Module, flat_weights: torch.Tensor, images: torch.Tensor,
               labels: torch.Tensor) -> float:
    """The straightforward reference: ``F.cross_entropy(functional_forward(...), labels)``."""
    with torch.inference_mode():
        return float(F.cross_entropy(functional_forward(target, flat_weights, images), labels).item())


def _is_paper_cnn(target: nn.Module) -> bool:
    """Only the exact PaperCNN architecture (not a subclass that may change forward) is specialised."""
    if type(target) is not PaperCNN or getattr(target, "activation", None) not in ACTIVATIONS:
        return False
    shapes = {name: tuple(p.shape) for name, p in target.named_parameters()}
    return shapes == _PAPER_SHAPES and list(shapes) == list(_PAPER_SHAPES)


def _phase_kernel_index() -> torch.Tensor:
    """Index turning conv1's 200 kernel values (+ one zero at 200) into the (32, 36) phase matrix.

    Row ``p*8 + o`` (pool phase p = 2*di + dj, output channel o), column ``a*6 + c`` (position in the
    6x6 window) holds ``w1[o, 0, a - di, c - dj]`` when that lies inside the 5x5 kernel, else 0.
    """
    idx = torch.full((4, 8, 6, 6), 200, dtype=torch.long)
    kernel = torch.arange(200).view(8, 5, 5)
    for di in range(2):
        for dj in range(2):
            idx[2 * di + dj, :, di : di + 5, dj : dj + 5] = kernel
    return idx.view(-1)


class FixedBatchLoss:
    """Cross-entropy of `target` on a fixed batch, for many weight vectors (no grad).

    ``loss = FixedBatchLoss(target, images, labels); loss(flat)`` equals
    ``plain_loss(target, flat, images, labels)`` up to float32 summation order.
    ``fast`` tells whether the specialised PaperCNN path is used.
    """

    fast: bool

    def __init__(self, target: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.target = target
        # oneDNN tensors for conv2 + pool2 when available (tests switch this off to cover the other path).
        self.mkldnn: bool = torch.backends.mkldnn.is_available()
        self.labels = labels.detach().to(torch.long).contiguous()
        # The rewrite targets CPU (oneDNN, memory traffic); on a GPU the plain path is the fast one.
        self.fast = (_is_paper_cnn(target) and images.dim() == 4 and tuple(images.shape[1:]) == (1, 28, 28)
                     and images.shape[0] > 0 and images.device.type == "cpu")
        if not self.fast:
            self.images = images.detach()
            return
        self.images = images.detach().to(torch.float32)
        act_name: str = target.activation  # type: ignore[assignment]
        self._act_name = act_name
        self._act = ACTIVATIONS[act_name]
        self._act_inplace = _INPLACE.get(self._act, self._act)
        b = self.n = int(images.shape[0])
        n = b * 144
        with torch.inference_mode():
            # 6x6 windows at stride 2 under each conv1 pooling window, as columns (b, i, j): (36, B*144).
            win = self.images[:, 0].unfold(1, 6, 2).unfold(2, 6, 2)  # (B, 12, 12, 6, 6)
            self._windows = win.permute(3, 4, 0, 1, 2).reshape(36, n).contiguous()
            self._kidx = _phase_kernel_index()
            self._kext = torch.zeros(201)  # conv1 kernel values + a trailing zero for the empty slots
            self._kmat = torch.empty(32, 36)
            self._phases = torch.empty(32, n)  # conv1 output at the 4 positions of every pool window
            self._pooled1 = torch.empty(b, 8, 12, 12)  # conv2 input, NCHW
            self._pooled2 = torch.empty(b, 12, 4, 4)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, flat_weights: torch.Tensor) -> float:
        with torch.inference_mode():
            if not self.fast:
                logits = functional_forward(self.target, flat_weights, self.images)
                return float(F.cross_entropy(logits, self.labels).item())
            return float(self._fast_loss(flat_weights.detach().to(torch.float32)).item())

    def _fast_loss(self, flat: torch.Tensor) -> torch.Tensor:
        p = unflatten(self.target, flat)
        w1, b1, w2, b2 = p["conv1.weight"], p["conv1.bias"], p["conv2.weight"], p["conv2.bias"]
        b = self.n
        linear = self._act_name == "none"

        # conv1 at all four pool phases: one (32, 36) x (36, B*144) GEMM.
        self._kext[:200].copy_(w1.reshape(-1))
        torch.index_select(self._kext, 0, self._kidx, out=self._kmat.view(-1))
        torch.mm(self._kmat, self._windows, out=self._phases)
        # pool1 = max over the 4 contiguous phase blocks, written through a permuted view straight into
        # NCHW (three elementwise maxima: cheaper than amax, which first fills its output).
        ph = self._phases.view(4, 8, b, 144)
        out = self._pooled1.view(b, 8, 144).permute(1, 0, 2)
        torch.maximum(ph[0], ph[1], out=out)
        torch.maximum(out, ph[2], out=out)
        torch.maximum(out, ph[3], out=out)
        x = self._pooled1
        if not linear:
            x.add_(b1.view(1, 8, 1, 1))
            x = self._activate(x)

        q = self._conv2_pool2(x, w2)

        if linear:
            # conv2(m + b1) = conv2(m) + sum_{c,kh,kw} w2[o,c,kh,kw] b1[c], and max commutes with a
            # per-channel constant: conv1's and conv2's biases become one constant after pool2.
            const = torch.addmv(b2, w2.sum((2, 3)), b1)
            # ... which fc1 maps to a constant too: fold it into fc1's bias (fc1 columns are c*16 + s).
            fc1_bias = torch.addmv(p["fc1.bias"], p["fc1.weight"].view(20, 12, 16).sum(2), const)
            h = torch.addmm(fc1_bias, q.view(b, 192), p["fc1.weight"].t())
        else:
            q.add_(b2.view(1, 12, 1, 1))
            y = self._activate(q).view(b, 192)
            h = self._activate(torch.addmm(p["fc1.bias"], y, p["fc1.weight"].t()))
        logits = torch.addmm(p["fc2.bias"], h, p["fc2.weight"].t())
        return F.cross_entropy(logits, self.labels)

    def _conv2_pool2(self, x: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """max_pool2d(conv2d(x, w2), 2) without bias, (B, 12, 4, 4)."""
        if self.mkldnn:
            # Staying in oneDNN's blocked layout for conv2 + pool2 skips the reorder of the 8x8 maps back
            # to NCHW that F.conv2d does; only the 4x small pooled maps are converted.
            c = torch.mkldnn_convolution(x.to_mkldnn(), w2.to_mkldnn(), None, [0, 0], [1, 1], [1, 1], 1)
            return F.max_pool2d(c, 2).to_dense()
        # Plain tensors: pool2 as three maxima of strided views (far cheaper than max_pool2d on 8x8 maps).
        c = F.conv2d(x, w2).view(self.n, 12, 4, 2, 4, 2)
        q = self._pooled2
        torch.maximum(c[:, :, :, 0, :, 0], c[:, :, :, 0, :, 1], out=q)
        torch.maximum(q, c[:, :, :, 1, :, 0], out=q)
        torch.maximum(q, c[:, :, :, 1, :, 1], out=q)
        return q

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        """The target's activation; may overwrite ``x`` (always one of this call's own buffers)."""
        return self._act_inplace(x)
