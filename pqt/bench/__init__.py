"""``pqt bench``: our paths against the straightforward ones and the peers, side by side in one process.

Every figure is a median over ``repeats`` timed calls after a warm-up; compare paths as ratios within
one run (this machine is shared). A section is a module with ``run(repeats) -> dict`` and
``table(results)``; ``--only`` picks sections. Optional peers (libraries not installed) are skipped by
their section with a note in its results.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from typing import Any

# section name -> module
SECTIONS = {
    "photonic-qt": "pqt.bench.photonic_qt",
    "qubit": "pqt.bench.qubit",
    "cifar": "pqt.bench.cifar",
    "merlin": "pqt.bench.merlin",
    "pennylane": "pqt.bench.pennylane",
    "cobyla": "pqt.bench.cobyla",
    "threads": "pqt.bench.threads",
    "noisy": "pqt.bench.noisy",
}


def run_bench(as_json: bool = False, repeats: int = 15, only: list[str] | None = None) -> dict[str, Any]:
    import torch

    from pqt.errors import UserError

    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise UserError(f"unknown bench section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    from pqt.threads import thread_settings

    result: dict[str, Any] = {
        "machine": {**thread_settings(), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "repeats": repeats,
    }
    if not as_json:
        m = result["machine"]
        print(f"pqt bench: medians over {repeats} runs; torch {m['torch']} with {m['torch_threads']} thread(s) "
              f"(OMP_WAIT_POLICY {m['omp_wait_policy']}) on {m['cpus']} CPU(s), load average {m['load_average']:.1f}")
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        result[name] = module.run(repeats)
        if not as_json:
            print()
            module.table(result[name])
    if as_json:
        print(json.dumps(result, indent=2))
    return result
