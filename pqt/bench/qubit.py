"""Bench section ``qubit``: the gate-based QNN's statevector simulation, forward and forward+backward.

13 qubits (the paper CNN's 6,690 weights) at 16 and 121 blocks; the straightforward reference is a torch
simulation with one operation per qubit per block (as a direct implementation writes it), checked equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pqt.bench.timing import median_ms

QUBITS = 13
BLOCKS = (16, 121)


def reference_state(theta: torch.Tensor, qubits: int, blocks: int) -> torch.Tensor:
    """Straightforward statevector: per block, one 2x2 rotation per qubit, then the CNOTs one by one."""
    state = torch.zeros((2,) * qubits, dtype=torch.float64)
    state[(0,) * qubits] = 1.0
    th = theta.reshape(blocks, qubits)
    for k in range(blocks):
        for q in range(qubits):
            c, s = torch.cos(th[k, q] / 2), torch.sin(th[k, q] / 2)
            rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
            state = torch.movedim(torch.tensordot(rot, state, dims=([1], [q])), 0, q)
        for q in range(qubits if qubits > 1 else 0):
            control, target = q, (q + 1) % qubits
            flipped = state.flip(target)  # where the control is 1, swap the target's 0 and 1 amplitudes
            index = [slice(None)] * qubits
            index[control] = 1
            state = state.clone()
            state[tuple(index)] = flipped[tuple(index)]
    return state.reshape(-1)


def run(repeats: int) -> dict[str, Any]:
    from pqt.circuits.qubit import QubitQNN

    r: dict[str, Any] = {"qubits": QUBITS}
    weights = torch.randn(2**QUBITS, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for blocks in BLOCKS:
        qnn = QubitQNN(QUBITS, blocks)
        theta = np.random.default_rng(blocks).uniform(0, 2 * np.pi, qnn.n_parameters)
        leaf = torch.tensor(theta, requires_grad=True)

        def forward_backward(circuit: Any = qnn, p: torch.Tensor = leaf) -> None:
            p.grad = None
            (circuit.torch_distribution(p) * weights).sum().backward()

        def reference_forward_backward(p: torch.Tensor = leaf, b: int = blocks) -> None:
            p.grad = None
            (reference_state(p, QUBITS, b) ** 2 * weights).sum().backward()

        r[f"L{blocks}_forward_ms"] = median_ms(lambda c=qnn, t=theta: c.exact_distribution(t), repeats)
        r[f"L{blocks}_forward_backward_ms"] = median_ms(forward_backward, repeats)
        few = max(3, repeats // 5)  # the reference is slow
        r[f"L{blocks}_reference_forward_backward_ms"] = median_ms(reference_forward_backward, few, warmup=1)
        with torch.no_grad():
            ref = reference_state(torch.from_numpy(theta), QUBITS, blocks) ** 2
        r[f"L{blocks}_max_abs_diff"] = float(np.abs(qnn.exact_distribution(theta) - ref.numpy()).max())
    return r


def table(r: dict[str, Any]) -> None:
    print(f"gate-based QNN, {r['qubits']} qubits")
    print(f"{'':58} {'ours':>9} {'reference':>10} {'speed-up':>9}")
    for blocks in BLOCKS:
        ours, ref = r[f"L{blocks}_forward_backward_ms"], r[f"L{blocks}_reference_forward_backward_ms"]
        print(f"{f'{blocks} blocks, forward':58} {r[f'L{blocks}_forward_ms']:>7.3f}ms")
        print(f"{f'{blocks} blocks, forward+backward (one op per qubit reference)':58} {ours:>7.3f}ms "
              f"{ref:>8.3f}ms {ref / ours:>8.1f}x")
    print(f"max |ours - reference| = {max(r[f'L{b}_max_abs_diff'] for b in BLOCKS):.1e}")
