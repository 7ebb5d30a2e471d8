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
    "noisy": "pqt.bench.noisy",
}


def run_bench(as_json: bool = False, repeats: int = 15, only: list[str] | None = None) -> dict[str, Any]:
    import torch

    from pqt.errors import UserError

    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise UserError(f"unknown bench section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    result: dict[str, Any] = {
        "machine": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "repeats": repeats,
    }
    if not as_json:
        m = result["machine"]
        print(f"pqt bench: medians over {repeats} runs; torch {m['torch']} with {m['torch_threads']} thread(s) "
              f"on {m['cpus']} CPU(s)")
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        result[name] = module.run(repeats)
        if not as_json:
            print()
            module.table(result[name])
    if as_json:
        print(json.dumps(result, indent=2))
    return result
