"""Thread settings: what pqt sets by default (see ``pqt/__init__.py``) and what runs and the bench record.

Results depend on the torch thread count (float32 reductions are summed in another order), so every
run records it beside the OpenMP wait policy and numpy's BLAS threads.
"""

from __future__ import annotations

import os
from typing import Any


def thread_settings() -> dict[str, Any]:
    """torch's intra-op threads, OpenMP's wait policy (and whether it reached torch), numpy's BLAS threads."""
    import torch

    import pqt

    return {
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        # Set after torch was imported, the policy never reached its OpenMP runtime.
        "omp_wait_policy_in_effect": not pqt._TORCH_FIRST,
        "numpy_blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
    }
