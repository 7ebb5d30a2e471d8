"""Optional peer libraries for ``pqt bench``: run in this interpreter, or in their own venv through a subprocess.

A peer is never a dependency of pqt. Its measurement function lives in :mod:`pqt.bench.peer_drivers`
and imports the peer itself. :func:`run_peer` calls it here when the peer imports in this
interpreter; otherwise it looks for a Python with the peer installed (``PQT_<NAME>_PYTHON``, else
``$PQT_PEER_VENVS/<name>/bin/python``, default root ``/work/venvs``) and runs the same function
there as ``python -m pqt.bench.peer_drivers``, with this repository on its path. Peers that need
other versions of torch or numpy than pqt (MerLin needs torch < 2.13) live in such a venv. When
neither is there the section records a note and skips.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENVS = "/work/venvs"


def peer_python(module: str, name: str) -> str | None:
    """A Python that imports ``module``: this one, a configured one, or the venv ``name``; None if none."""
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    explicit = os.environ.get(f"PQT_{name.upper()}_PYTHON")
    candidates = [explicit] if explicit else []
    candidates.append(str(Path(os.environ.get("PQT_PEER_VENVS", DEFAULT_VENVS)) / name / "bin" / "python"))
    for python in candidates:
        if python and Path(python).is_file():
            return python
    return None


def missing_note(module: str, name: str, install: str) -> str:
    return (f"{name} not installed: skipped. Install it ({install}) or point PQT_{name.upper()}_PYTHON (or "
            f"PQT_PEER_VENVS/{name}) at a Python that has it")


def run_peer(driver: str, python: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``peer_drivers.<driver>(spec)`` in ``python`` (in-process when it is this interpreter)."""
    from pqt.bench import peer_drivers

    if python == sys.executable:
        return peer_drivers.DRIVERS[driver](spec)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.npz", Path(tmp) / "out.npz"
        peer_drivers.save(spec_path, spec)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        threads = str(spec.get("threads", 1))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
        done = subprocess.run([python, "-m", "pqt.bench.peer_drivers", driver, str(spec_path), str(out_path)],
                              env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{driver} in {python} failed: {tail[0]}")
        return peer_drivers.load(out_path)
