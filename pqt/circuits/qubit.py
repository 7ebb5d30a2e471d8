"""Gate-based QNN of the original Quantum-Train (Liu et al. 2024): Ry layers and CNOT rings.

N qubits start in |0...0>. A block is an Ry(theta) rotation on every qubit followed by a ring of
CNOTs applied in order 0->1, 1->2, ..., N-2 -> N-1, N-1 -> 0; L blocks give L*N trainable angles,
parameter ``k * N + q`` driving qubit q in block k. The output is the distribution over the 2^N
computational basis states, basis state k (qubit 0 the most significant bit, as in PennyLane and
Qiskit's big-endian drawings) being weight k's value.

How it is simulated, exactly, in float64, without any 2^N x 2^N matrix:

* Amplitudes stay real (Ry and CNOT are real), so the state is a real vector of 2^N values.
* The Ry layer is the Kronecker product of N 2x2 rotations. The qubits are split into a few
  groups of at most 5 (13 qubits: 5, 4, 4); the state viewed as a (2^a, 2^b, 2^c) array is
  multiplied along each axis by its group's Kronecker factor, one small matmul per group
  (factors for all blocks are built at once). That is 2^N * (2^a + 2^b + 2^c) multiply-adds per
  layer instead of 4^N, in three calls instead of one per qubit.
* The CNOT ring is a fixed permutation of the basis (each CNOT XORs one bit into another), applied
  as one gather.
* Gradients (one backward pass, :class:`_Statevector`): the state's gradient is propagated back
  through the transposed layers (the gates are orthogonal), and the angle gradients follow from
  dR(theta)/dtheta = R(theta) J / 2 with J = [[0, -1], [1, 0]]: for the angle of qubit q in block
  k, dL/dtheta = 1/2 * h_k^T J_q x_k, where x_k is the block's input state and h_k the gradient
  w.r.t. it. Per group this is one contraction of h_k with x_k to a (2^n x 2^n) matrix, read at
  the entries whose row and column differ in qubit q's bit.
* On the CPU the loops call numpy (its BLAS has a few microseconds less overhead per small call
  than torch, which matters at 3 calls x hundreds of blocks); elsewhere (``--device cuda``) the
  same code runs on torch tensors.

Block inputs are kept for the backward pass while they fit in :data:`KEEP_STATES_BYTES`; beyond
that (e.g. 19 qubits x 300 blocks) they are recomputed backwards from the final state.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np

from pqt.circuits.base import Circuit
from pqt.errors import UserError

MAX_QUBITS = 26  # 2^26 float64 amplitudes = 512 MB per state vector
GROUP_QUBITS = 5  # largest Kronecker factor: 32 x 32
KEEP_STATES_BYTES = 256 * 2**20
# The CPU path runs on numpy (see the module docstring); tests switch this off to cover the torch path.
NUMPY_ON_CPU = True


def qubits_for(n_weights: int) -> int:
    """ceil(log2 m): the qubits a target of m weights needs (13 for the paper CNN's 6,690)."""
    return max(1, math.ceil(math.log2(n_weights)))


def _group_sizes(n_qubits: int) -> tuple[int, ...]:
    groups = math.ceil(n_qubits / GROUP_QUBITS)
    base, extra = divmod(n_qubits, groups)
    return tuple(base + 1 if g < extra else base for g in range(groups))


def cnot_ring_image(n_qubits: int) -> np.ndarray:
    """f(i): the basis state the CNOT ring sends basis state i to (qubit 0 = most significant bit)."""
    i = np.arange(2**n_qubits, dtype=np.int64)
    bits = [(i >> (n_qubits - 1 - q)) & 1 for q in range(n_qubits)]
    if n_qubits > 1:
        for control in range(n_qubits):
            target = (control + 1) % n_qubits
            bits[target] = bits[target] ^ bits[control]
    return sum(b << (n_qubits - 1 - q) for q, b in enumerate(bits))


class _Backend:
    """The few array operations the simulation needs, for numpy or torch."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.numpy = xp is np

    def take(self, x: Any, index: Any) -> Any:
        return x[index] if self.numpy else self.xp.index_select(x, 0, index)

    def transpose(self, x: Any) -> Any:  # last two axes
        return x.swapaxes(-1, -2) if self.numpy else x.transpose(-1, -2)


class QubitQNN(Circuit):
    """N qubits, L blocks of (Ry on every qubit, CNOT ring); L * N trainable angles.

    >>> qnn = QubitQNN(qubits=13, blocks=16)
    >>> qnn.n_parameters, qnn.n_outcomes
    (208, 8192)
    """

    kind = "qubit"

    def __init__(self, qubits: int, blocks: int) -> None:
        for name, value, low, high in (("qubits", qubits, 1, MAX_QUBITS), ("blocks", blocks, 1, None)):
            if isinstance(value, bool) or int(value) != value or value < low or (high and value > high):
                upper = f" and <= {high}" if high else ""
                raise UserError(f"a gate-based QNN needs {name} >= {low}{upper} (got {value!r})")
        self.n_qubits = int(qubits)
        self.blocks = int(blocks)
        self.group_sizes = _group_sizes(self.n_qubits)
        image = cnot_ring_image(self.n_qubits)
        # After the ring, new[image[i]] = old[i]: new = old[source] with source = image^-1.
        self.source = np.argsort(image)
        self.source_inverse = image  # for the transposed (backward) permutation
        self._device_cache: dict[str, tuple[Any, Any, list[tuple[Any, Any]]]] = {}

    def __repr__(self) -> str:
        return f"QubitQNN(qubits={self.n_qubits}, blocks={self.blocks})"

    @property
    def n_parameters(self) -> int:
        return self.blocks * self.n_qubits

    @property
    def n_outcomes(self) -> int:
        return 2**self.n_qubits

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "qubits": self.n_qubits, "blocks": self.blocks,
                "parameters": self.n_parameters, "outcomes": self.n_outcomes}

    @cached_property
    def _gradient_tables(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group: flat (row * d + col) indices and signs turning its contraction into angle gradients."""
        tables = []
        for n in self.group_sizes:
            d = 2**n
            rows = np.arange(d)
            index, sign = [], []
            for b in range(n):
                mask = 1 << (n - 1 - b)
                index.append(rows * d + (rows ^ mask))
                sign.append(np.where(rows & mask, 0.5, -0.5))
            tables.append((np.stack(index), np.stack(sign)))
        return tables

    # ---- the simulation -------------------------------------------------------------------------------
    def _factors(self, theta: Any, ops: _Backend) -> list[Any]:
        """Kronecker factor of every group for every block: (L, 2^n, 2^n) arrays, first qubit outermost."""
        xp = ops.xp
        c, s = xp.cos(theta / 2), xp.sin(theta / 2)
        # R(theta) = [[c, -s], [s, c]] per (block, qubit): (L, N, 2, 2)
        rot = xp.stack([xp.stack([c, -s], -1), xp.stack([s, c], -1)], -2)
        factors, first = [], 0
        for n in self.group_sizes:
            m = rot[:, first]
            for q in range(first + 1, first + n):
                r = rot[:, q]
                size = m.shape[-1] * 2
                m = (m[:, :, None, :, None] * r[:, None, :, None, :]).reshape(-1, size, size)
            factors.append(m)
            first += n
        return factors

    def _layer_operators(self, factors: list[Any], ops: _Backend, transposed: bool) -> list[list[Any]]:
        """Per block, the matrices :meth:`_rotate` multiplies by, oriented and contiguous once for all blocks.

        Every group but the last multiplies from the left (by R, or R^T for the transposed layer);
        the last one multiplies a (2^(N-n), 2^n) view from the right (by R^T, or R).
        """
        xp, oriented = ops.xp, []
        for i, f in enumerate(factors):
            last = i == len(factors) - 1 and len(factors) > 1
            flip = transposed != last  # left: R or R^T; right: R^T or R
            m = ops.transpose(f) if flip else f
            oriented.append(xp.ascontiguousarray(m) if ops.numpy else m.contiguous())
        return [list(block) for block in zip(*oriented, strict=True)]

    def _rotate(self, x: Any, mats: list[Any], ops: _Backend) -> Any:
        """Apply one Ry layer (or its transpose), given by its oriented group matrices, to x (2^N,)."""
        pre, total, matmul = 1, x.shape[0], ops.xp.matmul
        last = len(mats) - 1
        for i, m in enumerate(mats):
            d = m.shape[-1]
            if i == last and i > 0:
                x = matmul(x.reshape(pre, d), m)
            elif pre == 1:
                x = matmul(m, x.reshape(d, total // d))
            else:
                x = matmul(m, x.reshape(pre, d, total // (pre * d)))
            pre *= d
        return x.reshape(total)

    def _contract(self, h: Any, x: Any, ops: _Backend, out: list[Any], k: int) -> None:
        """Per group, the (2^n x 2^n) contraction of block k's input gradient h with its input x."""
        pre, total, xp = 1, x.shape[0], ops.xp
        for i, n in enumerate(self.group_sizes):
            d = 2**n
            post = total // (pre * d)
            hv, xv = h.reshape(pre, d, post), x.reshape(pre, d, post)
            if pre == 1:
                out[i][k] = xp.matmul(hv[0], ops.transpose(xv[0]))
            elif post == 1:
                out[i][k] = xp.matmul(ops.transpose(hv[..., 0]), xv[..., 0])
            else:
                out[i][k] = xp.tensordot(hv, xv, ([0, 2], [0, 2]))
            pre *= d

    def _angle_gradients(self, contractions: list[Any], ops: _Backend, like: Any) -> Any:
        """dL/dtheta (L, N): each angle reads its group's contraction where row and column differ in its bit."""
        tables = self._gradient_tables if ops.numpy else self._device_constants(like)[2]
        parts = [(c.reshape(self.blocks, -1)[:, index] * sign).sum(-1)
                 for c, (index, sign) in zip(contractions, tables, strict=True)]
        return ops.xp.concatenate(parts, 1) if ops.numpy else ops.xp.cat(parts, 1)

    def _initial_state(self, ops: _Backend, like: Any) -> Any:
        if ops.numpy:
            x = np.zeros(self.n_outcomes)
        else:
            x = ops.xp.zeros(self.n_outcomes, dtype=like.dtype, device=like.device)
        x[0] = 1.0
        return x

    def _indices(self, ops: _Backend, like: Any) -> tuple[Any, Any]:
        if ops.numpy:
            return self.source, self.source_inverse
        return self._device_constants(like)[:2]

    def _device_constants(self, like: Any) -> tuple[Any, Any, list[tuple[Any, Any]]]:
        """The permutations and gradient tables as torch tensors on ``like``'s device (cached)."""
        key = str(like.device)
        if key not in self._device_cache:
            import torch

            device = like.device
            tables = [(torch.as_tensor(i, device=device), torch.as_tensor(s, dtype=like.dtype, device=device))
                      for i, s in self._gradient_tables]
            self._device_cache[key] = (torch.as_tensor(self.source, device=device),
                                       torch.as_tensor(self.source_inverse, device=device), tables)
        return self._device_cache[key]

    def _forward(self, theta: Any, ops: _Backend, keep: bool) -> tuple[Any, list[Any], list[Any]]:
        """Final state, the block inputs (when ``keep``) and the factors, for angles theta (L, N)."""
        factors = self._factors(theta, ops)
        source, _ = self._indices(ops, theta)
        x = self._initial_state(ops, theta)
        inputs = []
        for mats in self._layer_operators(factors, ops, transposed=False):
            if keep:
                inputs.append(x)
            x = ops.take(self._rotate(x, mats, ops), source)
        return x, inputs, factors

    def _backward(self, theta: Any, grad_state: Any, final: Any, inputs: list[Any], factors: list[Any],
                  ops: _Backend) -> Any:
        """dL/dtheta (L, N) from dL/d(final state), block by block from the last."""
        _, inverse = self._indices(ops, theta)
        xp = ops.xp
        contractions = [xp.empty((self.blocks, 2**n, 2**n)) if ops.numpy else
                        xp.empty((self.blocks, 2**n, 2**n), dtype=theta.dtype, device=theta.device)
                        for n in self.group_sizes]
        g, x = grad_state, final
        layers = self._layer_operators(factors, ops, transposed=True)
        for k in reversed(range(self.blocks)):
            g = self._rotate(ops.take(g, inverse), layers[k], ops)  # gradient w.r.t. block k's input
            x = inputs[k] if inputs else self._rotate(ops.take(x, inverse), layers[k], ops)
            self._contract(g, x, ops, contractions, k)
        return self._angle_gradients(contractions, ops, theta)

    def _angles(self, parameters: Any, xp: Any) -> Any:
        self.check_parameters(parameters)
        return parameters.reshape(self.blocks, self.n_qubits)

    def state(self, parameters: Any) -> np.ndarray:
        """Final real amplitudes (2^N,) for the angles ``parameters`` (numpy)."""
        theta = self._angles(np.asarray(parameters, dtype=np.float64), np)
        return self._forward(theta, _Backend(np), keep=False)[0]

    def exact_distribution(self, parameters: Any) -> np.ndarray:
        probs = self.state(parameters) ** 2
        return probs / probs.sum()

    def torch_distribution(self, parameters: Any) -> Any:
        """Differentiable distribution from a float64 tensor of L * N angles (any device)."""
        return _statevector(self, parameters) ** 2

    def keeps_states(self) -> bool:
        return self.blocks * self.n_outcomes * 8 <= KEEP_STATES_BYTES


_STATEVECTOR: Any = None


def _statevector(qnn: QubitQNN, parameters: Any) -> Any:
    """The final state as a differentiable torch tensor (the autograd Function is built on first use)."""
    global _STATEVECTOR
    import torch

    if _STATEVECTOR is None:

        class Statevector(torch.autograd.Function):
            """Final state from the angles, with the hand-written backward of the module docstring."""

            @staticmethod
            def forward(ctx: Any, angles: Any, circuit: QubitQNN) -> Any:
                on_cpu = angles.device.type == "cpu" and NUMPY_ON_CPU
                ops = _Backend(np if on_cpu else torch)
                theta = circuit._angles(angles.detach().numpy() if on_cpu else angles.detach(), ops.xp)
                final, inputs, factors = circuit._forward(theta, ops, keep=circuit.keeps_states())
                ctx.saved = (circuit, ops, theta, final, inputs, factors)
                return torch.as_tensor(final, device=angles.device)

            @staticmethod
            def backward(ctx: Any, grad_output: Any) -> Any:
                circuit, ops, theta, final, inputs, factors = ctx.saved
                del ctx.saved  # the kept states can be large: free them with the graph
                g = grad_output.detach().numpy() if ops.numpy else grad_output.detach()
                grad = circuit._backward(theta, g, final, inputs, factors, ops)
                return torch.as_tensor(grad, device=grad_output.device).reshape(-1), None

        _STATEVECTOR = Statevector
    if parameters.dtype != torch.float64:
        raise UserError("QubitQNN.torch_distribution needs float64 angles")
    return _STATEVECTOR.apply(parameters, qnn)
