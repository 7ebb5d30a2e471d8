"""The job journal of a cloud run: every job a run asked for, written down before it can cost anything.

``run_dir/jobs.jsonl`` holds one JSON object per line, flushed and fsynced, so what was written
survives a kill; a line torn by a kill is ignored on reading. Every record names the request it
belongs to (:class:`RequestKey`: tag, circuit slot, phases hash, shots, platform, URL, circuit shape),
so a later process on the same run recognises a request it already paid for.

Events, in the order a job lives them:

``creating``       a job creation is about to be sent (``intent`` id, ``shots``, ``job_name``):
                   written *before* the request, so a kill while it is in flight is still counted
``submitted``      the cloud answered the creation with ``job_id``
``create_failed``  the cloud refused the creation for sure (no job exists)
``create_lost``    no answer came: the cloud may hold a job for it, whose id we do not know
``late_reply``     the answer to a creation we had given up on arrived after all: ``job_id`` exists,
                   is an orphan (a replacement was sent) and is cancelled
``result``         a job's counts (on the collision-free patterns, in ``qnn.outcomes`` order)
``abandoned``      the run stopped waiting for ``job_id`` (it failed, was cancelled by the platform,
                   outlived ``--job-timeout``, or is an orphan); ``running`` says whether it may still run
``cancelled``      a cancel request for ``job_id`` was accepted
``cancel_refused`` the cloud would not cancel it (it had already ended)
``cancel_failed``  the cancel request kept failing; the job may still be running

:class:`JobAccount` is what the journal says a run has spent, over all its attempts: it is the only
source of the job counters in ``metrics.json`` (so they equal the journal's after any kill and
resume) and of the worst-case shot charge the ``--max-shots`` budget is checked against.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import BackendFailure
from pqt.errors import UserError

if TYPE_CHECKING:
    from pqt.circuits.photonic import PhotonicQNN

JOURNAL_NAME = "jobs.jsonl"


@dataclass(frozen=True)
class RequestKey:
    """What makes two requests the same job: same tag, circuit slot, phases, shots, target and shape."""

    tag: str
    index: int
    phases_sha256: str
    shots: int
    platform: str
    url: str
    circuit: str  # "MxN:input modes"

    @staticmethod
    def of(tag: str, index: int, qnn: PhotonicQNN, phases: np.ndarray, shots: int, platform: str,
           url: str) -> RequestKey:
        digest = hashlib.sha256(np.ascontiguousarray(phases, dtype="<f8").tobytes()).hexdigest()
        circuit = f"{qnn.modes}x{qnn.photons}:{','.join(map(str, qnn.input_modes))}"
        return RequestKey(tag, index, digest, int(shots), platform, url, circuit)

    def fields(self) -> dict[str, Any]:
        return {"tag": self.tag, "index": self.index, "phases_sha256": self.phases_sha256, "shots": self.shots,
                "platform": self.platform, "url": self.url, "circuit": self.circuit}

    @staticmethod
    def from_record(rec: dict[str, Any]) -> RequestKey:
        return RequestKey(str(rec["tag"]), int(rec["index"]), str(rec["phases_sha256"]), int(rec["shots"]),
                          str(rec["platform"]), str(rec["url"]), str(rec["circuit"]))


@dataclass
class JobAccount:
    """What a run's journal says it has spent (all attempts together)."""

    submitted: dict[str, RequestKey] = field(default_factory=dict)  # job id -> request (incl. late replies)
    open_intents: dict[str, tuple[RequestKey, int, str]] = field(default_factory=dict)  # intent -> (key, shots, name)
    lost_intents: dict[str, tuple[RequestKey, int, str]] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)  # jobs whose result was recorded
    abandoned: dict[str, bool] = field(default_factory=dict)  # job id -> may still be running
    cancel_state: dict[str, str] = field(default_factory=dict)  # job id -> cancelled / cancel_refused / cancel_failed

    @property
    def jobs_submitted(self) -> int:
        return len(self.submitted)

    @property
    def jobs_uncertain(self) -> int:
        """Creations whose outcome is unknown: no answer, or a kill while the request was in flight."""
        return len(self.open_intents) + len(self.lost_intents)

    @property
    def jobs_abandoned(self) -> int:
        return len(self.abandoned)

    def not_cancelled(self) -> list[str]:
        """Abandoned jobs that may still be running on the cloud: never cancelled, or the cancel failed."""
        return [job for job, running in self.abandoned.items()
                if running and self.cancel_state.get(job) not in ("cancelled", "cancel_refused")]

    def pending(self) -> list[str]:
        """Jobs sent and neither consumed nor abandoned: a resume waits for them instead of paying again."""
        return [job for job in self.submitted if job not in self.consumed and job not in self.abandoned]

    @property
    def shots_charged(self) -> int:
        """The worst case: every job the cloud acknowledged, and every creation that may have made one."""
        return (sum(key.shots for key in self.submitted.values())
                + sum(shots for _, shots, _ in self.open_intents.values())
                + sum(shots for _, shots, _ in self.lost_intents.values()))

    def uncertain_names(self) -> list[str]:
        return [name for _, _, name in (*self.open_intents.values(), *self.lost_intents.values())]

    def summary(self) -> dict[str, Any]:
        return {"jobs_submitted": self.jobs_submitted, "jobs_uncertain": self.jobs_uncertain,
                "jobs_abandoned": self.jobs_abandoned, "jobs_not_cancelled": self.not_cancelled(),
                "shots_charged": self.shots_charged}


class JobJournal:
    """Append-only JSON-lines record of the jobs of a run (``run_dir/jobs.jsonl``); without a path, memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.account = JobAccount()
        self._jobs: dict[RequestKey, str] = {}  # requests whose job is sent but not consumed
        self._results: dict[RequestKey, dict[str, Any]] = {}
        self._keys: dict[str, RequestKey] = {}  # job id -> request
        self._needs_newline = False
        if path is not None and path.exists():
            try:
                data = path.read_bytes()
            except OSError as e:
                raise UserError(f"remote backend: cannot read the job journal {path} ({e.strerror or e})") from None
            self._needs_newline = bool(data) and not data.endswith(b"\n")
            for line in data.splitlines():
                try:
                    self._index(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill, or not ours

    def _index(self, rec: dict[str, Any]) -> None:
        key = RequestKey.from_record(rec)
        event, a = rec["event"], self.account
        if event == "creating":
            a.open_intents[str(rec["intent"])] = (key, int(rec["shots"]), str(rec.get("job_name", "")))
        elif event in ("submitted", "late_reply"):
            job = str(rec["job_id"])
            a.submitted[job] = key
            self._keys[job] = key
            intent = rec.get("intent")
            a.open_intents.pop(intent, None)
            a.lost_intents.pop(intent, None)
            if event == "submitted":
                self._jobs[key] = job
        elif event == "create_failed":
            a.open_intents.pop(rec["intent"], None)
            a.lost_intents.pop(rec["intent"], None)
        elif event == "create_lost":
            intent = str(rec["intent"])
            entry = a.open_intents.pop(intent, None)
            if entry is not None:
                a.lost_intents[intent] = entry
        elif event == "result":
            if not isinstance(rec["counts"], list):
                raise TypeError("counts")
            self._results[key] = rec
            self._jobs.pop(key, None)
            a.consumed.add(str(rec.get("job_id")))
        elif event == "abandoned":
            job = str(rec["job_id"])
            a.abandoned[job] = bool(rec.get("running", False))
            if self._jobs.get(key) == job:
                del self._jobs[key]
        elif event in ("cancelled", "cancel_refused", "cancel_failed"):
            a.cancel_state[str(rec["job_id"])] = event

    def result(self, key: RequestKey) -> dict[str, Any] | None:
        return self._results.get(key)

    def job(self, key: RequestKey) -> str | None:
        return self._jobs.get(key)

    def key_of(self, job_id: str) -> RequestKey | None:
        return self._keys.get(job_id)

    def append(self, event: str, key: RequestKey, **data: Any) -> None:
        rec = {"event": event, **key.fields(), **data, "time": datetime.now(UTC).isoformat(timespec="seconds")}
        if self.path is not None:
            line = json.dumps(rec, separators=(",", ":")) + "\n"
            if self._needs_newline:
                line = "\n" + line  # never glue a record onto a torn line
            try:
                created = not self.path.exists()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                if created:
                    _fsync_dir(self.path.parent)  # the file's name must survive a crash too
            except OSError as e:
                # Never retried: a job that cannot be recorded could be paid for twice.
                what = f"job {data['job_id']}" if data.get("job_id") else f"the {event} record of {key.tag}"
                raise BackendFailure(f"remote backend: cannot write the job journal {self.path} "
                                     f"({e.strerror or e}); {what} was not recorded") from None
            self._needs_newline = False
        self._index(rec)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
