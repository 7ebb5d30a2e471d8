"""Files of a run directory, written atomically so an interrupted run never leaves half a file.

    config.json      the configuration as run
    provenance.json  what produced it: data files (SHA-256), code version and commit, packages, threads
    checkpoint.pt    everything needed to resume after the last finished round
    model.pt         the generated network's state_dict (plain torch, no quantum software)
    metrics.json     the contract read by tools (see README), rewritten after every round and at every stop
    train.log        the per-round log lines
    .heartbeat       touched every few seconds while an attempt runs: a killed attempt's end time
    .run.lock        locked (flock) by the process training the run

Each file is written to a temporary file beside it (``.<name>.<random>.tmp``), flushed, fsynced and
renamed over the old one. A write that fails (a full disk, a read-only folder) leaves the old file as
it was and raises :class:`RunFileError`, one line naming the file and the reason; a kill leaves at most a
temporary file, which :func:`remove_stale_temp_files` deletes when the run starts or resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from pqt.errors import UserError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
LOG = "train.log"
PROVENANCE = "provenance.json"
HEARTBEAT = ".heartbeat"
LOCK = ".run.lock"  # flock-ed by the process training the run (its pid inside, for people to read)
_ATOMIC = (CONFIG, CHECKPOINT, MODEL, METRICS, PROVENANCE)  # the files written through a temporary file

Writer = Callable[[IO[bytes]], Any]


_WRITE_FIXES = {
    errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota)",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "make the folder writable or choose another",
    errno.EPERM: "make the folder writable or choose another",
}


class RunFileError(UserError):
    """A run file could not be written (disk full, read-only folder, ...); the previous version is intact."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.errno = Path(path), error.errno
        fix = _WRITE_FIXES.get(error.errno or 0)
        super().__init__(f"cannot write {path} ({error.strerror or error})" + (f": {fix}" if fix else ""))


def _stage(path: Path, write: Writer) -> str:
    """Write ``path``'s new content to a temporary file beside it (flushed and fsynced); returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are ordinary user files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_together(files: Sequence[tuple[Path, Writer]]) -> None:
    """Replace several files atomically, in order, only once all of their new contents are on disk.

    A failure while writing (ENOSPC, EROFS, ...) leaves every file as it was: a round's model.pt and
    checkpoint.pt are then never from two different rounds.
    """
    staged: list[tuple[str, Path]] = []
    current = Path(files[0][0]) if files else Path(".")
    try:
        for path, write in files:
            current = Path(path)
            staged.append((_stage(current, write), current))
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
    except OSError as e:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise RunFileError(current, e) from None
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, write: Writer) -> None:
    write_together([(Path(path), write)])


def json_writer(data: Any) -> Writer:
    return lambda f: f.write((json.dumps(data, indent=2, default=_jsonable) + "\n").encode())


def torch_writer(obj: Any) -> Writer:
    import io

    import torch

    def write(f: IO[bytes]) -> None:
        # Serialised in memory first: torch.save into a file that hits a full disk raises an opaque
        # RuntimeError from its zip writer, where a plain write gives the OSError (ENOSPC) to report.
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        f.write(buffer.getbuffer())

    return write


def write_json(path: Path, data: Any) -> None:
    _atomic_write(path, json_writer(data))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_torch(path: Path, obj: Any) -> None:
    _atomic_write(path, torch_writer(obj))


def load_torch(path: Path) -> Any:
    """Load a run's .pt file with ``weights_only=True``: tensors and plain values, never pickled code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files that killed writes left in ``run_dir`` (``.checkpoint.pt.*.tmp``, ...).

    Called when a run starts or resumes, when no other process may write the run (the caller holds it).
    """
    removed = []
    for name in _ATOMIC:
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass  # not ours to worry about: a read-only folder fails on the next real write
    return removed


def final_results(last: dict[str, Any]) -> dict[str, Any]:
    """The result keys of metrics.json, from the last history entry (round or epoch)."""
    return {
        "test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
        "test_loss": last.get("test_loss"), "train_loss": last.get("train_loss"),
        "generalization_error": (last["test_loss"] - last["train_loss"]) if last else None,
        "validation_accuracy": last.get("validation_accuracy"), "validation_loss": last.get("validation_loss"),
    }


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json, or {} when it is missing or unreadable (a run killed mid-write)."""
    try:
        data = read_json(Path(run_dir) / METRICS)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def append_log(path: Path, line: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise RunFileError(path, e) from None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunLock:
    """Exclusive ownership of a run directory: an ``fcntl.flock`` on its lock file, held while the run trains
    (by ``pqt train``, or by the sweep worker training it).

    The kernel releases the lock when its holder dies, however it dies (``kill -9`` included), so there is
    no stale lock to clean and no process id to be mistaken for another after reuse. The file holds the
    holder's pid for people to read; it is removed on release while still locked, and a process that
    locked a file removed under it tries again on the new one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock: None when taken, else why not (another live process holds it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                return f"another process{who} is training this run; skipped"
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its previous holder removed it between our open and our lock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return None
        return f"could not lock {self.path}; skipped"

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
