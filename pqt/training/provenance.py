"""Provenance of a run: what produced its results, beside the settings (``provenance.json``).

``config.json`` holds the settings, reusable with ``--config`` and compared by sweeps; this record
holds what a result also depends on but is not a setting: the data files actually read (resolved
folder, sizes, SHA-256), the code (pqt's version and git commit, whether the checkout had local
changes), the package versions and the thread counts. Each start and each resume of a run appends one
entry to ``attempts``, so a run continued on another machine or with other code says so.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pqt.training import run_files

PACKAGES = ("pqt", "torch", "perceval-quandela", "numpy", "scipy")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a replaced file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_record(dataset: str, data_dir: str | None) -> dict[str, Any]:
    """The data folder a run read (resolved, and where it came from) and each file's size and SHA-256."""
    from pqt.data import locate_dataset

    source = locate_dataset(dataset, data_dir, download=False)  # the run has loaded it: the files are there
    files = []
    for path in source.files:
        st = path.stat()
        files.append({"path": str(path), "bytes": st.st_size, "sha256": _sha256(str(path), st.st_size, st.st_mtime_ns)})
    return {"dataset": source.name, "folder": str(source.folder) if source.folder else None,
            "folder_from": source.folder_from, "files": files}


def _git(args: list[str], where: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_record() -> dict[str, Any]:
    """pqt's version, where it was imported from, and the git commit of that checkout (if it is one)."""
    source = Path(__file__).resolve().parents[1]
    commit = _git(["rev-parse", "HEAD"], source)
    changes = _git(["status", "--porcelain", "--untracked-files=no"], source) if commit else None
    return {"source": str(source), "git_commit": commit,
            "git_local_changes": None if changes is None else bool(changes)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def thread_record(configured: int | None) -> dict[str, Any]:
    record: dict[str, Any] = {"configured": configured, "cpu_count": os.cpu_count()}
    if "torch" in sys.modules:  # never import torch just for this record
        torch = sys.modules["torch"]
        record["torch"] = torch.get_num_threads()
        record["torch_interop"] = torch.get_num_interop_threads()
    record.update({name: os.environ.get(name) for name in THREAD_VARIABLES})
    return record


def collect(dataset: str, data_dir: str | None, threads: int | None, device: str, event: str) -> dict[str, Any]:
    """One attempt's record (``event``: "start" or "resume")."""
    return {
        "event": event,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "code": code_record(),
        "packages": package_versions(),
        "machine": {"platform": platform.platform(), "device": device},
        "threads": thread_record(threads),
        "data": data_record(dataset, data_dir),
    }


def record(run_dir: Path, dataset: str, data_dir: str | None, threads: int | None, device: str,
           event: str) -> dict[str, Any]:
    """Append this attempt to ``run_dir/provenance.json`` (written atomically) and return it."""
    path = Path(run_dir) / run_files.PROVENANCE
    attempts: list[dict[str, Any]] = []
    damaged = False
    if path.is_file():
        try:
            attempts = list(run_files.read_json(path)["attempts"])
        except (OSError, ValueError, TypeError, KeyError):
            damaged = True  # a damaged record must not stop a run; the new one says what runs now
    entry = collect(dataset, data_dir, threads, device, event)
    if damaged:
        entry["note"] = "the earlier provenance.json was unreadable and has been replaced"
    run_files.write_json(path, {"attempts": [*attempts, entry]})
    return entry
