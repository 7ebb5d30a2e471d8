"""pqt: the Quantum-Train toolkit.

Quantum circuits (photonic interferometers or gate-based QNNs) generate, through a small mapping
model, every weight of a classical network; only the circuits' parameters and the mapping model are
trained, and the trained network runs with plain torch. The pipeline, one folder each:

    circuits -> distributions -> mappers -> generator -> targets -> training -> studies -> cli

A second method on the same training loop, photonic quantum-enhanced knowledge distillation
(``pqt.distill``), conditions a small dictionary-convolution student on a circuit's shot-limited output
distribution while it distils a classical teacher.

See README.md. Everything below is imported lazily: deployment (``pqt evaluate`` / ``predict``)
must run without Perceval, and ``pqt --help`` without torch.
"""

import importlib
import os
import sys
from typing import Any

# numpy's BLAS threads only compete with torch for the cores (the phase optimizers also limit them
# with threadpoolctl, which works even when numpy was imported first).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# OpenMP threads that wait for work sleep instead of spinning. Spinning (libgomp's default) makes torch's
# 2 threads 5-27x slower than 1 whenever another process wants a core (pqt bench --only threads: Adam
# step 2,787 ms spinning vs 102 ms passive on a loaded 2-core machine; passive 2 threads is as fast as
# 1 thread there and faster under extra load). Read when the OpenMP runtime starts: it only takes
# effect if pqt is imported before torch (the pqt command always is); set OMP_WAIT_POLICY to override.
_TORCH_FIRST = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pqt.errors import UserError  # noqa: E402

__version__ = "0.2.0"

# public name -> module that defines it
_PUBLIC = {
    "PhotonicQNN": "pqt.circuits.photonic",
    "QubitQNN": "pqt.circuits.qubit",
    "Circuit": "pqt.circuits.base",
    "MPSMapper": "pqt.mappers",
    "MLPMapper": "pqt.mappers",
    "create_mapper": "pqt.mappers",
    "QuantumTrainGenerator": "pqt.generator",
    "build_generator": "pqt.generator",
    "combine_distributions": "pqt.distributions.combine",
    "PaperCNN": "pqt.targets",
    "CifarCNN": "pqt.targets",
    "SmallMLP": "pqt.targets",
    "create_target": "pqt.targets",
    "register_target": "pqt.targets",
    "functional_forward": "pqt.targets",
    "TrainConfig": "pqt.training.config",
    "DistillConfig": "pqt.distill.config",
    "DictionaryStudent": "pqt.distill.student",
    "StudentCNN": "pqt.targets.students",
    "TeacherCNN": "pqt.targets.teachers",
    "TeacherResNet": "pqt.targets.teachers",
    "Trainer": "pqt.training.trainer",
    "load_dataset": "pqt.data",
    "load_model": "pqt.deploy",
}

__all__ = ["UserError", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pqt' has no attribute {name!r}")
