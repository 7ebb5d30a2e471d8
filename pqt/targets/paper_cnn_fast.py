"""Fast paths of the paper CNN on the CPU: the COBYLA loss on a fixed batch, and the Adam step's forward.

Both are exact rewrites (float32 summation order aside) of ``functional_forward`` for the exact
:class:`PaperCNN` architecture (any activation) on float32 CPU tensors of 1x28x28 images; they are
engaged only for those shapes (:func:`fast_path_applies`, ``FixedBatchLoss.fast``) and can be turned
off with ``--no-fast-path`` (recorded as ``fast_path`` in metrics.json). Any other module, shape or
device takes ``functional_forward``. They share the key idea: the four conv1 outputs a 2x2 pooling
window takes the max of are the four 5x5 sub-windows of one 6x6 image window (stride 2), so conv1 at
all four "pooling phases" is ONE GEMM with a (32, 36) matrix holding each kernel at the four phase
offsets (:data:`_K1`, built by one gather), and the pool is a max over four row blocks.

**Fixed-batch loss (COBYLA's objective, no gradient)**: :class:`FixedBatchLoss`
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

**Training forward (Adam, differentiable)**: :func:`training_forward`
Every Adam step runs the target CNN with freshly generated weights on a batch and back-propagates to those
weights. :func:`training_forward` gives the same logits and the same gradients w.r.t. the flat weight vector
as :func:`functional_forward` (float32 rounding aside), but for :class:`PaperCNN`
(the exact class, any activation, float32 CPU tensors) it replaces the F.conv2d / F.max_pool2d pipeline --
whose cost is oneDNN's conv backward, its poor handling of the 1-channel conv1 and max_pool2d on the 24x24
maps -- by plain GEMMs over "pooling-phase" windows, in the spirit of :mod:`pqt.targets.fast_loss`:

* conv1 + pool1. The four conv1 outputs a 2x2 pooling window takes the max of are the four 5x5
  sub-windows of one 6x6 image window (stride 2). With the (36, 144*B) matrix of those windows (one
  strided copy of the batch) and a (32, 36) matrix holding each 5x5 kernel at the four phase offsets (zeros
  elsewhere), conv1 at all four phases is ONE GEMM; pool1 is a max (amax) over its four contiguous row
  blocks. The images need no gradient, so the backward is one more GEMM (dK1 = dP1 @ windows^T), mapped
  back onto the 200 kernel values by one index_add_.
* conv2 + pool2, the same idea one level up: the 6x6x8 window under each pool2 window (a (288, 16*B)
  strided copy of the pooled maps) times a (48, 288) phase matrix of conv2's kernels, then a max over four
  row blocks. Backward: dK2 = dP2 @ windows^T and d(windows) = K2^T @ dP2, summed back onto the maps by
  nine shifted adds. No oneDNN anywhere: MKL GEMMs plus a few elementwise passes.
* Layout: everything is kept "batch innermost" ((channel, position..., b), b contiguous), so the window
  copies and the nine adds run over contiguous runs of 4*B floats, and the pooled features become the
  (B, 192) fc1 input by a free transpose (fc1 columns stay in PaperCNN's (c, h, w) order).
* Max-pool backward (:func:`_route4`) sends the whole gradient to the FIRST maximal element of each
  window in max_pool2d's scan order (row-major in the 2x2 window), so exact ties -- all-zero or saturated
  image regions, plentiful in MNIST -- are resolved as F.max_pool2d resolves them. Caveat, inherent to
  float32: the GEMMs sum in another order than oneDNN, so two DIFFERENT values within ~1 ulp of each
  other can compare the other way round in the two paths and the gradient then goes to the other element
  (exactly as it may between float32 and float64, or two BLAS builds); for B=128 roughly one batch in 50
  has such a window. Exact ties between identical windows give the same gradient whichever is chosen.
* Biases: without activation (the paper's network) conv1's and conv2's biases commute with both max-pools
  and conv2, so they fold into fc1's bias, exactly as in :mod:`pqt.targets.fast_loss`; with an activation they are
  added where the model adds them (before the activation): exact for every activation.
* The whole network is ONE autograd node with a hand-written backward (activations differentiated by the
  aten kernels autograd itself uses): ~30 fewer graph nodes (unflatten's slices, views, fc layers, bias
  folding), whose bookkeeping would cost as much as a GEMM here.

Speed (``experiments/profile_train_step.py``: forward + cross-entropy + backward to a leaf weight vector,
B=128 partial-MNIST, both paths alternated, on a 2-core VM kept busy by other jobs, load average ~3):
8.3 vs 14.3 ms with 1 thread (ratio 0.58-0.64 for the four activations), 11.7 vs 18.0 ms with 2 threads
and OMP_WAIT_POLICY=passive (0.65); ~0.5 at lighter load. Where other processes occupy the cores and
OpenMP spin-waits (its default) every parallel region costs a scheduler time slice: both paths then take
~200 ms a step and this one, with a few more parallel regions (~32 vs ~27), is slower (270 vs 220 ms) --
use OMP_WAIT_POLICY=passive or fewer threads on such a machine.

Memory kept for the backward: ~66 KB per image (window matrices and phase outputs; ~8.5 MB for B=128;
~75 KB with an activation; the plain path keeps ~40 KB), plus per-thread scratch buffers for the
backward's temporaries (~45 KB per image of the largest batch seen), reused across calls: fresh multi-MB
tensors every step cost page faults, as glibc hands freed memory back to the OS between steps.

Limitations: first-order gradients only (a double backward raises), images must not require grad, and
only float32 CPU tensors take the fast path; anything else -- and any other module -- falls back to
``functional_forward``. ``experiments/profile_train_step.py`` times both paths.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from pqt.targets.functional import channels_last_applies, functional_forward, unflatten
from pqt.targets.networks import ACTIVATIONS, PaperCNN

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


# Pool-phase p = 2*di + dj is the (di, dj) element of a 2x2 pooling window, in max_pool2d's scan order.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class _Workspace(threading.local):
    """Per-thread scratch buffers reused across calls, for tensors that never outlive the call filling them."""

    def __init__(self) -> None:
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):  # a normal tensor even if first used under inference_mode
                buf = self.bufs[name] = torch.empty(n)
        return buf[:n].view(shape)


_WS = _Workspace()


# ----------------------------------------------------------------------------- phase matrices
def _padded_phases(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 5, 5) kernels -> (4, O, C, 6, 6): phase p = (di, dj) holds them at offset (di, dj), zeros elsewhere."""
    out = w.new_zeros((4, *w.shape[:2], 6, 6))
    for p, (di, dj) in enumerate(_PHASES):
        out[p, :, :, di : di + 5, dj : dj + 5] = w
    return out


def _conv1_layout(w1: torch.Tensor) -> torch.Tensor:
    """(8, 1, 5, 5) -> (32, 36) phase matrix: row p*8 + o, column a*6 + c (position in the 6x6 window)."""
    return _padded_phases(w1).view(32, 36)


def _conv2_layout(w2: torch.Tensor) -> torch.Tensor:
    """(12, 8, 5, 5) -> (48, 288) phase matrix: row p*12 + o; column ((((s*3 + s2)*2 + t)*2 + u)*8 + c) for
    input channel c at window row a = 2*s + t and column d = 2*s2 + u (the order of _Conv2Pool.windows)."""
    k = _padded_phases(w2).view(4, 12, 8, 3, 2, 3, 2)  # [p, o, c, s, t, s2, u]
    return k.permute(0, 1, 3, 5, 4, 6, 2).reshape(48, 288)


def _layout_index(layout: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """For each entry of ``layout(w)``, its position in ``w.reshape(-1)``, or ``w.numel()`` (a zero slot)."""
    n = math.prod(shape)
    src = layout(torch.arange(1, n + 1, dtype=torch.float64).view(shape)).reshape(-1).long() - 1
    return torch.where(src < 0, n, src)


class _PhaseMatrix:
    """A kernel's phase matrix by one index_select (and its adjoint by one index_add_): far fewer and
    cheaper small ops than assembling it from slices, and no autograd nodes (used inside the Functions)."""

    def __init__(self, layout: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.n = math.prod(shape)
        self.index = _layout_index(layout, shape)
        self.out_shape = tuple(layout(torch.zeros(shape)).shape)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        ext = torch.cat([w.reshape(-1), w.new_zeros(1)])
        return ext.index_select(0, self.index).view(self.out_shape)

    def adjoint(self, dk: torch.Tensor) -> torch.Tensor:
        d = dk.new_zeros(self.n + 1).index_add_(0, self.index, dk.reshape(-1))
        return d[: self.n].view(self.shape)


_K1 = _PhaseMatrix(_conv1_layout, (8, 1, 5, 5))
_K2 = _PhaseMatrix(_conv2_layout, (12, 8, 5, 5))


# ----------------------------------------------------------------------------- the fixed-batch loss
class FixedBatchLoss:
    """Cross-entropy of `target` on a fixed batch, for many weight vectors (no grad).

    ``loss = FixedBatchLoss(target, images, labels); loss(flat)`` equals
    ``plain_loss(target, flat, images, labels)`` up to float32 summation order.
    ``fast`` tells whether the specialised PaperCNN path is used, ``channels_last`` whether another
    convolutional target gets its images in channels-last layout.
    """

    fast: bool

    def __init__(self, target: nn.Module, images: torch.Tensor, labels: torch.Tensor, enabled: bool = True) -> None:
        self.target = target
        # oneDNN tensors for conv2 + pool2 when available (tests switch this off to cover the other path).
        self.mkldnn: bool = torch.backends.mkldnn.is_available()
        self.labels = labels.detach().to(torch.long).contiguous()
        # The rewrite targets CPU (oneDNN, memory traffic); on a GPU the plain path is the fast one.
        self.fast = (enabled and _is_paper_cnn(target) and images.dim() == 4 and tuple(images.shape[1:]) == (1, 28, 28)
                     and images.shape[0] > 0 and images.device.type == "cpu")
        if not self.fast:
            # Other convolutional targets: the same images in channels-last layout, once per batch.
            self.channels_last = enabled and channels_last_applies(target, images)
            self.images = (images.detach().contiguous(memory_format=torch.channels_last) if self.channels_last
                           else images.detach())
            return
        self.channels_last = False
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
        torch.mm(_K1(w1), self._windows, out=self._phases)
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



# ----------------------------------------------------------------------------- max over 4 phases
def _max4(p: torch.Tensor, rows: int) -> torch.Tensor:
    """Max over the 4 contiguous row blocks (the pool phases) of ``p`` (4*rows, n) -> (rows, n)."""
    return torch.amax(p.view(4, rows, -1), 0)


def _route4(p: torch.Tensor, m: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Backward of :func:`_max4` into ``out`` (p's shape): all of ``g`` goes to the FIRST block holding the max
    (max_pool2d's choice on ties), zeros elsewhere. Arithmetic on 0/1 masks: faster here than bool ops."""
    rows = m.shape[0]
    d4 = out.view(4, rows, -1)
    torch.eq(p.view(4, rows, -1)[:3], m, out=d4[:3])  # 1.0 where block k holds the max
    rest = d4[3]  # gradient not yet routed; what is left after blocks 0-2 belongs to block 3
    rest.copy_(g)
    for k in range(3):
        d4[k].mul_(rest)
        rest.sub_(d4[k])  # exact: rest - rest = 0, rest - 0 = rest
    return out


# ----------------------------------------------------------------------------- the two conv + pool stages
def _image_windows(images: torch.Tensor) -> torch.Tensor:
    """(36, 144*B): the 6x6 window under each pool1 window; row a*6 + c, column (t, u, Y, Z, b) for pooled
    position (2*Y + t, 2*Z + u) of image b: pixel (4*Y + 2*t + a, 4*Z + 2*u + c)."""
    b = images.shape[0]
    img = _WS.get("img", 784, b)  # pixel-major, batch innermost
    img.copy_(images.detach().reshape(b, 784).t())
    r = 28 * b
    wins = torch.empty(6, 6, 2, 2, 6, 6, b)  # a fresh tensor: it is kept for the backward
    wins.copy_(img.as_strided(wins.shape, (r, b, 2 * r, 2 * b, 4 * r, 4 * b, 1)))
    return wins.view(36, 144 * b)


def _map_windows(x: torch.Tensor) -> torch.Tensor:
    """(288, 16*B): the 6x6x8 window of the pooled maps x (8, 144*B) [c, t, u, Y, Z, b] under each pool2
    window (i, j): row (s, s2, t, u, c) holds x[c, t, u, i + s, j + s2, b] (map row 2*(i + s) + t),
    column (i, j, b)."""
    b = x.shape[1] // 144
    wins = torch.empty(3, 3, 2, 2, 8, 4, 4, b)
    wins.copy_(x.contiguous().as_strided(wins.shape, (6 * b, b, 72 * b, 36 * b, 144 * b, 6 * b, b, 1)))
    return wins.view(288, 16 * b)


def _conv1_pool(w1: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """max_pool2d(conv2d(images, w1), 2) without bias, (8, 144*B) [c, t, u, Y, Z, b]; and what its
    backward needs."""
    wins = _image_windows(images)
    p = torch.mm(_K1(w1), wins)  # conv1 at the 4 pool phases: (32, 144*B)
    m = _max4(p, 8)
    return m, (p, m, wins)


def _conv1_pool_backward(saved: tuple[torch.Tensor, ...], g: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. w1 (the images need none)."""
    p, m, wins = saved
    dp = _route4(p, m, g, _WS.get("dp1", *p.shape))
    dk = torch.mm(wins, dp.t()).t()  # this orientation is the faster GEMM for the long reduction
    return _K1.adjoint(dk)


def _conv2_pool(x: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """max_pool2d(conv2d(x, w2), 2) without bias for x laid out as _conv1_pool's output: (12, 16*B)
    [o, i, j, b] (``.view(192, B).t()`` is PaperCNN's flattened fc1 input); and what its backward needs."""
    wins = _map_windows(x)
    k2 = _K2(w2)
    p = torch.mm(k2, wins)  # conv2 at the 4 pool phases: (48, 16*B)
    m = _max4(p, 12)
    return m, (p, m, wins, k2)


def _conv2_pool_backward(saved: tuple[torch.Tensor, ...], g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. x and w2."""
    p, m, wins, k2 = saved
    b = wins.shape[1] // 16
    dp = _route4(p, m, g, _WS.get("dp2", *p.shape))
    dw2 = _K2.adjoint(torch.mm(dp, wins.t()))
    # Gradient w.r.t. the windows, summed back onto x: window row (s, s2) of pool2 window (i, j) is x's map
    # position (i + s, j + s2) (in units of 2x2 cells): nine shifted adds.
    dwin = torch.mm(k2.t(), dp, out=_WS.get("dwin", 288, 16 * b))  # rows (s, s2, t, u, c), columns (i, j, b)
    dx = torch.zeros(8, 144 * b)  # [c, t, u, Y, Z, b]
    shape = (8, 2, 2, 4, 4, b)  # [c, t, u, i, j, b] (as_strided: one op per view, not seven)
    src_strides = (16 * b, 256 * b, 128 * b, 4 * b, b, 1)  # row (s, s2, t, u, c): s*96 + s2*32 + t*16 + ...
    dst_strides = (144 * b, 72 * b, 36 * b, 6 * b, b, 1)
    for s in range(3):
        for s2 in range(3):
            dst = dx.as_strided(shape, dst_strides, (s * 6 + s2) * b)  # map position (i + s, j + s2)
            dst += dwin.as_strided(shape, src_strides, dwin.storage_offset() + (s * 3 + s2) * 512 * b)
    return dx, dw2


# ----------------------------------------------------------------------------- the whole network
def _relu_backward(grad: torch.Tensor, _inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _tanh_backward(grad: torch.Tensor, _inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.tanh_backward(grad, out)


def _gelu_backward(grad: torch.Tensor, inp: torch.Tensor, _out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, inp)


# The activations the fast path knows, as (function, backward(grad, input, output)): the kernels autograd
# itself uses for them. A changed ACTIVATIONS entry simply falls back to the plain path.
_ACTIVATION_GRADS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]]] = {
    "relu": (F.relu, _relu_backward),
    "tanh": (torch.tanh, _tanh_backward),
    "gelu": (F.gelu, _gelu_backward),
}

# PaperCNN's parameter sizes in named_parameters (= flat vector) order.
_SIZES = tuple(math.prod(shape) for shape in _PAPER_SHAPES.values())


def _split(flat: torch.Tensor) -> list[torch.Tensor]:
    w1, b1, w2, b2, fw, fb, f2w, f2b = torch.split(flat, _SIZES)
    return [w1.reshape(8, 1, 5, 5), b1, w2.reshape(12, 8, 5, 5), b2, fw.reshape(20, 192), fb, f2w.reshape(10, 20), f2b]


class _PaperCNNForward(torch.autograd.Function):
    """PaperCNN's logits from the flat weight vector (and the activation's name), with a hand-written
    backward w.r.t. that vector."""

    @staticmethod
    def forward(ctx: FunctionCtx, flat: torch.Tensor, images: torch.Tensor, activation: str) -> torch.Tensor:
        w1, b1, w2, b2, fw, fb, f2w, f2b = _split(flat)
        b = images.shape[0]
        m1, saved1 = _conv1_pool(w1, images)
        ctx.activation = activation
        if activation == "none":
            # conv2(m + b1) = conv2(m) + sum_{c,kh,kw} w2[o,c,kh,kw] b1[c], and max-pooling commutes with a
            # per-channel constant: both conv biases become one constant per channel after pool2, which fc1
            # (columns c*16 + s) maps to a constant -- folded into fc1's bias.
            m2, saved2 = _conv2_pool(m1, w2)
            w2s, fws = w2.sum((2, 3)), fw.view(20, 12, 16).sum(2)
            const = torch.addmv(b2, w2s, b1)
            h = torch.addmm(torch.addmv(fb, fws, const), m2.view(192, b).t(), fw.t())
            ctx.save_for_backward(flat, h, *saved1, *saved2, w2s, fws, const)
        else:
            act = _ACTIVATION_GRADS[activation][0]
            z1 = m1 + b1.view(8, 1)
            x1 = act(z1)
            m2, saved2 = _conv2_pool(x1, w2)
            z2 = m2 + b2.view(12, 1)
            x2 = act(z2)
            z3 = torch.addmm(fb, x2.view(192, b).t(), fw.t())
            h = act(z3)
            ctx.save_for_backward(flat, h, *saved1, *saved2, z1, x1, z2, x2, z3)
        return torch.addmm(f2b, h, f2w.t())

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, gl: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        flat, h, *rest = ctx.saved_tensors
        saved1, saved2, extra = tuple(rest[:3]), tuple(rest[3:7]), rest[7:]
        w1, b1, w2, b2, fw, fb, f2w, f2b = _split(flat)
        b = gl.shape[0]
        d_f2w, d_f2b, dh = torch.mm(gl.t(), h), gl.sum(0), torch.mm(gl, f2w)
        if ctx.activation == "none":
            w2s, fws, const = extra
            m2 = saved2[1]
            d_fw = torch.mm(dh.t(), m2.view(192, b).t())
            d_fb = dh.sum(0)  # = d(folded fc1 bias)
            d_fw.view(20, 12, 16).add_(torch.outer(d_fb, const).unsqueeze(2))
            d_const = torch.mv(fws.t(), d_fb)
            d_b2 = d_const
            d_b1 = torch.mv(w2s.t(), d_const)
            dm2 = torch.mm(dh, fw).t().contiguous().view(12, 16 * b)
            dx1, d_w2 = _conv2_pool_backward(saved2, dm2)
            d_w2.add_(torch.outer(d_const, b1).view(12, 8, 1, 1))
            d_w1 = _conv1_pool_backward(saved1, dx1)
        else:
            act_grad = _ACTIVATION_GRADS[ctx.activation][1]
            z1, x1, z2, x2, z3 = extra
            dz3 = act_grad(dh, z3, h)
            d_fw, d_fb = torch.mm(dz3.t(), x2.view(192, b).t()), dz3.sum(0)
            dz2 = act_grad(torch.mm(dz3, fw).t().contiguous().view(12, 16 * b), z2, x2)
            d_b2 = dz2.sum(1)
            dx1, d_w2 = _conv2_pool_backward(saved2, dz2)
            dz1 = act_grad(dx1, z1, x1)
            d_b1 = dz1.sum(1)
            d_w1 = _conv1_pool_backward(saved1, dz1)
        grads = (d_w1, d_b1, d_w2, d_b2, d_fw, d_fb, d_f2w, d_f2b)
        return torch.cat([g.reshape(-1) for g in grads]), None, None


# ----------------------------------------------------------------------------- entry point
def fast_path_applies(target: nn.Module, flat_weights: torch.Tensor, images: torch.Tensor) -> bool:
    """Whether :func:`training_forward` uses the specialised PaperCNN path for these arguments."""
    act = getattr(target, "activation", None)
    known = act == "none" or (act in _ACTIVATION_GRADS and ACTIVATIONS.get(act) is _ACTIVATION_GRADS[act][0])
    return (_is_paper_cnn(target) and known and images.dim() == 4 and tuple(images.shape[1:]) == (1, 28, 28)
            and images.shape[0] > 0 and images.device.type == "cpu" and flat_weights.device.type == "cpu"
            and images.dtype == torch.float32 and flat_weights.dtype == torch.float32
            and flat_weights.shape == (sum(_SIZES),) and not images.requires_grad)


def training_forward(target: nn.Module, flat_weights: torch.Tensor, images: torch.Tensor,
                     enabled: bool = True) -> torch.Tensor:
    """Logits of `target` with the generated weights, differentiable w.r.t. flat_weights; equal to
    functional_forward(target, flat_weights, images) (values AND gradients, to float32 rounding).

    PaperCNN on float32 CPU tensors takes the GEMM formulation described in the module docstring (first-order
    gradients only); anything else is ``functional_forward`` itself, other convolutional targets on the CPU
    with their images in channels-last layout (:func:`~pqt.targets.functional.channels_last_applies`).
    """
    if not (enabled and fast_path_applies(target, flat_weights, images)):
        if enabled and channels_last_applies(target, images):
            images = images.contiguous(memory_format=torch.channels_last)
        return functional_forward(target, flat_weights, images)
    return _PaperCNNForward.apply(flat_weights, images, target.activation)
