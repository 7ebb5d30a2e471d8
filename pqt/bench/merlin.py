"""Bench section ``merlin``: MerLin's QuantumLayer against our photonic simulation, on the same interferometer.

MerLin (``merlinquantum``, Quandela's PyTorch photonic-QML library) accepts the very Perceval
``GenericInterferometer`` pqt builds (9 modes, 4 photons), with its outcomes and parameters in our
order. Compared: the exact distribution, the distribution plus its gradient, and a batch of 32 phase
settings (MerLin takes them as its input; our torch path takes a (32, P) batch), all in float64,
equal to 1e-10. MerLin needs torch < 2.13, so it normally runs in its own venv (see
:mod:`pqt.bench.peers`); without it the section is skipped with a note.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from pqt.bench.peers import missing_note, peer_python, run_peer

MODES, PHOTONS, BATCH = 9, 4, 32
INSTALL = "python -m venv /work/venvs/merlin && /work/venvs/merlin/bin/pip install merlinquantum"


def run(repeats: int) -> dict[str, Any]:
    from pqt.circuits.photonic import PhotonicQNN

    python = peer_python("merlin", "merlin")
    if python is None:
        return {"skipped": missing_note("merlin", "merlin", INSTALL)}
    rng = np.random.default_rng(0)
    qnn = PhotonicQNN(MODES, PHOTONS)
    phases = qnn.random_parameters(rng)
    batch = np.stack([qnn.random_parameters(rng) for _ in range(BATCH)])
    weights = rng.normal(size=qnn.n_outcomes)
    threads = torch.get_num_threads()
    spec = {"modes": MODES, "photons": PHOTONS, "phases": phases, "batch": batch, "weights": weights,
            "repeats": repeats, "threads": threads}
    try:
        peer = run_peer("merlin", python, spec)
    except Exception as e:  # a broken venv must not take the other sections down
        return {"skipped": f"merlin failed: {type(e).__name__}: {e}"}

    w = torch.from_numpy(weights)
    leaf = torch.from_numpy(phases).requires_grad_(True)
    settings = torch.from_numpy(batch).requires_grad_(True)
    (qnn.torch_distribution(leaf) * w).sum().backward()
    (qnn.torch_distribution(settings) * w).sum().backward()
    r: dict[str, Any] = {"modes": MODES, "photons": PHOTONS, "batch": BATCH, "threads": threads,
                         "merlin_version": peer["version"], "merlin_torch": peer["torch"],
                         "merlin_threads": peer["threads"],
                         "outcome_order_matches": bool(peer["outcome_order_matches"]),
                         "python": "this process" if python == sys.executable else python,
                         "timing": "ours and MerLin alternated call by call in the peer's process"}
    for key in ("forward", "forward_backward", "batch_forward", "batch_forward_backward"):
        for clock in ("", "cpu_"):  # wall-clock and CPU-time medians (one thread: CPU time ignores the load)
            r[f"{key}_{clock}ms"] = float(peer[f"ours_{key}_{clock}ms"])
            r[f"merlin_{key}_{clock}ms"] = float(peer[f"peer_{key}_{clock}ms"])
            r[f"{key}_{clock}speedup"] = r[f"merlin_{key}_{clock}ms"] / r[f"{key}_{clock}ms"]
    # Compared with this process's results (numpy and torch paths), so across two processes and torch builds.
    r["max_abs_diff_probs"] = float(np.abs(peer["probs"] - qnn.exact_distribution(phases)).max())
    r["max_abs_diff_grad"] = float(np.abs(peer["grad"] - leaf.grad.numpy()).max())
    ours_batch = np.stack([qnn.exact_distribution(p) for p in batch])
    r["max_abs_diff_batch_probs"] = float(np.abs(peer["batch_probs"] - ours_batch).max())
    r["max_abs_diff_batch_grad"] = float(np.abs(peer["batch_grad"] - settings.grad.numpy()).max())
    r["equal_to_1e-10"] = max(r[k] for k in r if k.startswith("max_abs_diff")) <= 1e-10
    return r


def table(r: dict[str, Any]) -> None:
    if "skipped" in r:
        print(f"MerLin: {r['skipped']}")
        return
    print(f"MerLin {r['merlin_version']} (torch {r['merlin_torch']}, {r['merlin_threads']} thread(s), {r['python']}) "
          f"vs ours, {r['modes']} modes / {r['photons']} photons, float64; {r['timing']}")
    print(f"{'':58} {'ours':>9} {'MerLin':>10} {'speed-up':>9} {'(CPU time)':>11}")
    rows = [("exact distribution (ours: numpy)", "forward_ms", "merlin_forward_ms"),
            ("distribution + gradient (ours: torch)", "forward_backward_ms", "merlin_forward_backward_ms"),
            (f"batch of {r['batch']}: distributions (ours: batched torch)", "batch_forward_ms",
             "merlin_batch_forward_ms"),
            (f"batch of {r['batch']}: distributions + gradients", "batch_forward_backward_ms",
             "merlin_batch_forward_backward_ms")]
    for label, ours, peer in rows:
        cpu = r[peer.replace("_ms", "_cpu_ms")] / r[ours.replace("_ms", "_cpu_ms")]
        print(f"{label:58} {r[ours]:>7.3f}ms {r[peer]:>8.3f}ms {r[peer] / r[ours]:>8.1f}x {cpu:>10.1f}x")
    print(f"max |ours - MerLin|: probs {r['max_abs_diff_probs']:.1e}, gradient {r['max_abs_diff_grad']:.1e}, batch "
          f"{r['max_abs_diff_batch_probs']:.1e} / {r['max_abs_diff_batch_grad']:.1e}; outcome order matches: "
          f"{r['outcome_order_matches']}")
