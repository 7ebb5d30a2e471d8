"""pqt: photonic Quantum-Train.

Two photonic QNNs (Perceval interferometers) generate, through an MPS mapper, every weight of a
classical network; only the phases and the MPS are trained, and the trained network runs with
plain torch. See README.md.
"""

import os
from typing import Any

# numpy's BLAS threads only compete with torch for the cores (the phase optimizers also limit them
# with threadpoolctl, which works even when numpy was imported first).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pqt.errors import UserError  # noqa: E402

__all__ = ["PhotonicQNN", "UserError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: deployment commands (pqt evaluate / predict) must run without importing perceval.
    if name == "PhotonicQNN":
        from pqt.circuits.photonic import PhotonicQNN

        return PhotonicQNN
    raise AttributeError(f"module 'pqt' has no attribute {name!r}")
