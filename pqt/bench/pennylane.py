"""Bench section ``pennylane``: PennyLane against our gate-based QNN, 13 qubits, 16 and 121 blocks.

PennyLane's ``default.qubit`` with the torch interface and backprop, and ``lightning.qubit`` with
adjoint differentiation (both optional: ``pip install -e ".[peers]"``, or a venv found as in
:mod:`pqt.bench.peers`). Forward: the 2^13 probabilities. Forward+backward: the gradient of
sum_q <Z_q>, the same function of the probabilities on our side (adjoint differentiation handles
expectation values only). Probabilities and gradients are compared with ours; lightning's
expectation values carry errors of order 1e-10 of its own (its probabilities agree with ours and
default.qubit's to 1e-16, so its gradients differ from both by up to ~1e-8): reported as measured.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from pqt.bench.peers import missing_note, peer_python, run_peer

QUBITS, BLOCKS = 13, (16, 121)
DEVICES = ("default", "lightning")
INSTALL = 'pip install -e ".[peers]"'


def z_sum_weights(n: int) -> np.ndarray:
    """sum_q <Z_q> as weights on the 2^n probabilities (qubit 0 the most significant bit)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n - 1, -1, -1)) & 1
    return (1 - 2 * bits).sum(1).astype(np.float64)


def run(repeats: int) -> dict[str, Any]:
    from pqt.circuits.qubit import QubitQNN

    python = peer_python("pennylane", "pennylane")
    if python is None:
        return {"skipped": missing_note("pennylane", "pennylane", INSTALL)}
    threads = torch.get_num_threads()
    thetas = {b: np.random.default_rng(b).uniform(0, 2 * np.pi, QUBITS * b) for b in BLOCKS}
    few = max(3, repeats // 5)  # default.qubit takes seconds at 121 blocks
    z = torch.from_numpy(z_sum_weights(QUBITS))
    spec = {"qubits": QUBITS, "blocks": list(BLOCKS), "devices": list(DEVICES), "repeats": few, "threads": threads,
            "z_weights": z.numpy(), **{f"theta_{b}": t for b, t in thetas.items()}}
    try:
        peer = run_peer("pennylane", python, spec)
    except Exception as e:
        return {"skipped": f"pennylane failed: {type(e).__name__}: {e}"}
    r: dict[str, Any] = {"qubits": QUBITS, "threads": threads, "pennylane_version": peer["version"],
                         "peer_threads": peer["threads"],
                         "python": "this process" if python == sys.executable else python,
                         "note": "forward+backward = gradient of sum_q <Z_q>; ours and PennyLane alternated call "
                                 "by call in one process"}
    for key in ("default_note", "lightning_note"):
        if key in peer:
            r[key] = peer[key]
    for b in BLOCKS:
        qnn = QubitQNN(QUBITS, b)
        leaf = torch.from_numpy(thetas[b]).requires_grad_(True)
        (qnn.torch_distribution(leaf) * z).sum().backward()
        probs = qnn.exact_distribution(thetas[b])
        for d in DEVICES:
            if f"{d}_L{b}_probs" not in peer:
                continue
            for kind in ("forward", "forward_backward", "forward_cpu", "forward_backward_cpu"):
                ours, theirs = float(peer[f"ours_{d}_L{b}_{kind}_ms"]), float(peer[f"peer_{d}_L{b}_{kind}_ms"])
                r[f"{d}_L{b}_ours_{kind}_ms"], r[f"{d}_L{b}_{kind}_ms"] = ours, theirs
                r[f"{d}_L{b}_{kind}_speedup"] = theirs / ours
            r[f"{d}_L{b}_max_abs_diff_probs"] = float(np.abs(peer[f"{d}_L{b}_probs"] - probs).max())
            r[f"{d}_L{b}_max_abs_diff_grad"] = float(np.abs(peer[f"{d}_L{b}_grad"] - leaf.grad.numpy()).max())
    return r


def table(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"PennyLane: {r['skipped']}")
        return
    print(f"PennyLane {r['pennylane_version']} ({r['peer_threads']} thread(s), {r['python']}) vs our gate-based QNN, "
          f"{r['qubits']} qubits; {r['note']}")
    print(f"{'':58} {'ours':>9} {'PennyLane':>10} {'speed-up':>9} {'(CPU time)':>11}")
    for b in BLOCKS:
        for d, label in (("default", "default.qubit backprop"), ("lightning", "lightning.qubit adjoint")):
            if f"{d}_L{b}_forward_ms" not in r:
                continue
            for kind in ("forward", "forward_backward"):
                text = f"{b} blocks, {kind.replace('_', '+')}, {label}"
                print(f"{text:58} {r[f'{d}_L{b}_ours_{kind}_ms']:>7.2f}ms {r[f'{d}_L{b}_{kind}_ms']:>8.1f}ms "
                      f"{r[f'{d}_L{b}_{kind}_speedup']:>8.1f}x {r[f'{d}_L{b}_{kind}_cpu_speedup']:>10.1f}x")
            print(f"{'':4}max |ours - {label}|: probs {r[f'{d}_L{b}_max_abs_diff_probs']:.1e}, gradient "
                  f"{r[f'{d}_L{b}_max_abs_diff_grad']:.1e}")
    for key in ("default_note", "lightning_note"):
        if key in r:
            print(r[key])
