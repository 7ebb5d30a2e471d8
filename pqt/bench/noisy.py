"""Bench section ``noisy``: one exact noisy evaluation of both paper QNNs, fast path against Perceval's.

For each noise knob alone (at a typical hardware value) and all of them together: the noisy backend's
exact evaluation of the 9-mode/4-photon and 8-mode/4-photon QNNs on its fast path
(:mod:`pqt.circuits.photonic_noise`) and on Perceval's path (exqalibur SLOS on the noisy source), their
largest difference (same phase-noise draws), and the fast path's cost in units of the ideal evaluation
(the ``slos`` backend, exact). The goal of issue 14: every row within 10x of ideal.
MerLin's noisy SLOS (``merlinquantum``, never a dependency: in this interpreter or its own venv, see
:mod:`pqt.bench.peers`) is timed against the fast path on the source and loss knobs, alternated call by
call in its process, and its N-click probabilities compared with ours. Its g2 simulation takes minutes
per evaluation (about 6 minutes for 9 modes / 4 photons at g2 0.01 on this machine under load), so the
g2 rows run only with ``PQT_BENCH_MERLIN_G2=1``; MerLin 0.4.1 agrees with Perceval on g2 only with partial
distinguishability and brightness 1. Phase noise is drawn by each library from its own random numbers:
no MerLin row.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pqt.bench.timing import median_ms

# One typical near-term value per knob (g2 0.01, 90% indistinguishability, ...), then all together.
KNOBS: dict[str, dict[str, float]] = {
    "indistinguishability 0.9": {"indistinguishability": 0.9},
    "transmittance 0.8": {"transmittance": 0.8},
    "brightness 0.9": {"brightness": 0.9},
    "g2 0.01": {"g2": 0.01},
    "phase imprecision 0.01": {"phase_imprecision": 0.01},
    "phase error 0.01": {"phase_error": 0.01},
    "all together": {"indistinguishability": 0.9, "transmittance": 0.8, "brightness": 0.9, "g2": 0.01,
                     "phase_imprecision": 0.01, "phase_error": 0.01},
}
GOAL_RATIO = 10.0
# MerLin rows: source and loss knobs (phase noise is drawn from each library's own random numbers).
MERLIN_KNOBS = {name: KNOBS[name] for name in ("indistinguishability 0.9", "transmittance 0.8", "brightness 0.9")}
# With PQT_BENCH_MERLIN_G2=1 only: minutes per MerLin evaluation. MerLin 0.4.1 agrees with Perceval on g2
# with partial distinguishability and brightness 1 only (the README's Speed section says how it differs).
MERLIN_G2_KNOBS = {"g2 0.01": {"g2": 0.01},
                   "indist. 0.9, transmittance 0.8, g2 0.01": {
                       "indistinguishability": 0.9, "transmittance": 0.8, "g2": 0.01}}
MERLIN_INSTALL = "python -m venv /work/venvs/merlin && /work/venvs/merlin/bin/pip install merlinquantum"


def run(repeats: int) -> dict[str, Any]:
    from backends import create_backend
    from pqt.circuits.photonic import PhotonicQNN

    rng = np.random.default_rng(0)
    qnns = [PhotonicQNN(9, 4), PhotonicQNN(8, 4)]
    phases = [q.random_parameters(rng) for q in qnns]
    ideal = create_backend("slos", None)
    r: dict[str, Any] = {"circuits": "9 modes/4 photons + 8 modes/4 photons, exact",
                         "ideal_ms": median_ms(lambda: ideal.evaluate(qnns, phases), repeats), "knobs": {}}
    for label, noise in KNOBS.items():
        fast = create_backend("noisy", None, seed=1, options={**noise, "noise_simulation": "fast"})
        perceval = create_backend("noisy", None, seed=1, options={**noise, "noise_simulation": "perceval"})
        row = {"fast_ms": median_ms(lambda b=fast: b.evaluate(qnns, phases), repeats),
               "perceval_ms": _slow_median_ms(lambda b=perceval: b.evaluate(qnns, phases), repeats)}
        for backend in (fast, perceval):
            backend.reseed(7)  # the same phase-noise draws on both paths
        pairs = zip(fast.evaluate(qnns, phases), perceval.evaluate(qnns, phases), strict=True)
        row["max_abs_diff"] = max(float(np.abs(a.probs - b.probs).max()) for a, b in pairs)
        row["ratio_to_ideal"] = row["fast_ms"] / r["ideal_ms"]
        r["knobs"][label] = row
    r["worst_ratio_to_ideal"] = max(row["ratio_to_ideal"] for row in r["knobs"].values())
    r["within_goal"] = r["worst_ratio_to_ideal"] <= GOAL_RATIO
    r["merlin"] = _merlin(qnns, phases, repeats)
    return r


def _merlin(qnns: list[Any], phases: list[np.ndarray], repeats: int) -> dict[str, Any]:
    """MerLin's noisy SLOS against the fast path (see the module docstring), or why it was skipped."""
    import torch

    from backends import create_backend
    from pqt.bench.peers import missing_note, peer_python, run_peer

    python = peer_python("merlin", "merlin")
    if python is None:
        return {"skipped": missing_note("merlin", "merlin", MERLIN_INSTALL)}
    chosen = {**MERLIN_KNOBS, **(MERLIN_G2_KNOBS if os.environ.get("PQT_BENCH_MERLIN_G2") == "1" else {})}
    labels, settings = list(chosen), list(chosen.values())
    spec: dict[str, Any] = {"modes": [q.modes for q in qnns], "photons": [q.photons for q in qnns],
                            "labels": labels, "repeats": max(2, repeats // 5), "threads": torch.get_num_threads()}
    for i, ph in enumerate(phases):
        spec[f"phases_{i}"] = ph
    for k, noise in enumerate(settings):
        spec[f"names_{k}"], spec[f"values_{k}"] = list(noise), list(noise.values())
    try:
        peer = run_peer("merlin_noisy", python, spec)
    except Exception as e:  # a broken venv must not take the other sections down
        return {"skipped": f"merlin failed: {type(e).__name__}: {e}"}
    r: dict[str, Any] = {"version": peer["version"], "torch": peer["torch"], "threads": peer["threads"],
                         "python": "this process" if python == sys.executable else python,
                         "timing": "ours and MerLin alternated call by call in MerLin's process", "knobs": {}}
    for k, (label, noise) in enumerate(zip(labels, settings, strict=True)):
        ours = create_backend("noisy", None, options={**noise, "noise_simulation": "fast"})
        diffs = [float(np.abs(peer[f"{k}_{q.modes}_{q.photons}_patterns"] - ours.click_probabilities(q, ph)[0]).max())
                 for q, ph in zip(qnns, phases, strict=True)]
        row = {clock: {"ours_ms": float(peer[f"{k}_ours_{clock}ms"]), "merlin_ms": float(peer[f"{k}_peer_{clock}ms"])}
               for clock in ("", "cpu_")}
        r["knobs"][label] = {"ours_ms": row[""]["ours_ms"], "merlin_ms": row[""]["merlin_ms"],
                             "ours_cpu_ms": row["cpu_"]["ours_ms"], "merlin_cpu_ms": row["cpu_"]["merlin_ms"],
                             "max_abs_diff": max(diffs)}
    if os.environ.get("PQT_BENCH_MERLIN_G2") != "1":
        r["note"] = "g2 rows skipped (minutes per MerLin evaluation): set PQT_BENCH_MERLIN_G2=1 to run them"
    return r


def _slow_median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Perceval's path: a fifth of the repeats, and a single one when a call takes seconds (g2)."""
    start = time.perf_counter()
    fn()  # warm-up (builds the simulator)
    few = 1 if time.perf_counter() - start > 0.5 else max(2, repeats // 5)
    return median_ms(fn, few, warmup=0)


def table(r: dict[str, Any]) -> None:
    print(f"noisy simulation: one exact evaluation of both paper QNNs ({r['circuits']})")
    print(f"{'':28} {'fast':>9} {'Perceval':>10} {'speed-up':>9} {'x ideal':>8} {'max |diff|':>11}")
    print(f"{'ideal (slos backend)':28} {r['ideal_ms']:>7.3f}ms")
    for label, row in r["knobs"].items():
        speedup = row["perceval_ms"] / row["fast_ms"]
        print(f"{label:28} {row['fast_ms']:>7.3f}ms {row['perceval_ms']:>8.1f}ms {speedup:>8.0f}x "
              f"{row['ratio_to_ideal']:>7.1f}x {row['max_abs_diff']:>11.1e}")
    verdict = "within" if r["within_goal"] else "NOT within"
    print(f"worst fast/ideal ratio {r['worst_ratio_to_ideal']:.1f}x: {verdict} the {GOAL_RATIO:g}x goal")
    m = r["merlin"]
    if "skipped" in m:
        print(f"MerLin: {m['skipped']}")
        return
    print(f"MerLin {m['version']} noisy SLOS (torch {m['torch']}, {m['threads']} thread(s), {m['python']}); "
          f"{m['timing']}")
    print(f"{'':34} {'fast':>9} {'MerLin':>10} {'speed-up':>9} {'(CPU time)':>11} {'max |diff|':>11}")
    for label, row in m["knobs"].items():
        speedup, cpu = row["merlin_ms"] / row["ours_ms"], row["merlin_cpu_ms"] / row["ours_cpu_ms"]
        print(f"{label:34} {row['ours_ms']:>7.3f}ms {row['merlin_ms']:>8.1f}ms {speedup:>8.0f}x {cpu:>10.0f}x "
              f"{row['max_abs_diff']:>11.1e}")
    if "note" in m:
        print(m["note"])
