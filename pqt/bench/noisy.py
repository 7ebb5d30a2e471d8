"""Bench section ``noisy``: one exact noisy evaluation of both paper QNNs, fast path against Perceval's.

For each noise knob alone (at a typical hardware value) and all of them together: the noisy backend's
exact evaluation of the 9-mode/4-photon and 8-mode/4-photon QNNs on its fast path
(:mod:`pqt.circuits.photonic_noise`) and on Perceval's path (exqalibur SLOS on the noisy source), their
largest difference (same phase-noise draws), and the fast path's cost in units of the ideal evaluation
(the ``slos`` backend, exact). The goal of issue 14: every row within 10x of ideal.
MerLin's noisy SLOS is a peer only when ``merlinquantum`` is installed (it is not a dependency).
"""

from __future__ import annotations

import importlib.util
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
    if importlib.util.find_spec("merlin") is None:
        r["merlin"] = "skipped: merlinquantum is not installed (it is no dependency of pqt)"
    else:
        r["merlin"] = ("merlinquantum is installed, but this section has no MerLin comparison yet: it was written "
                       "where MerLin was not available to check one against")
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
    print(f"MerLin: {r['merlin']}")
