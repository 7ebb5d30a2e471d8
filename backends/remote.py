"""Quandela cloud backend: every circuit evaluation is one Perceval sampling job.

How a request runs: the QNN's circuit (a copy, with the phases set), its input state and an
N-photon filter go to a Perceval ``RemoteProcessor``; ``Sampler(..., max_shots_per_call=shots)``
``.sample_count`` makes the job, sent with ``execute_async``. The circuits of one ``evaluate`` call
are all submitted first, then awaited together. The counts that come back (a ``BSCount``) become
frequencies over ``qnn.outcomes``; counts on bunched patterns are dropped from the distribution but
were paid for (shots sent = shots asked, shots kept = counts on collision-free patterns).

Paying once: each job id is appended to ``run_dir/jobs.jsonl`` (flushed and fsynced) *before* it
is awaited, keyed by the request tag, circuit index and a hash of the phases (plus shots, platform,
URL and circuit shape); completed counts are appended too. A later process on the same run
directory (``pqt train --resume`` replays the unfinished round with the same tags and phases) takes
the recorded counts, or resumes waiting on the recorded job (``RemoteJob.from_id``), instead of
sending a new job.

Faults (network errors, request timeouts, HTTP 5xx/408/429, jobs that fail, are cancelled or
outlive ``--job-timeout``) are retried with exponential backoff: per circuit, up to ``--max-retries``
failed requests in a row and as many lost jobs; then the run stops with one
:class:`BackendFailure` line. A rejected token or payload (HTTP 401/403/400) stops it at once.

The token comes from ``PCVL_CLOUD_TOKEN`` only (environment or ``.env``): never an option, never
recorded, and scrubbed from every message this module raises.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests

from backends.base import Backend, BackendFailure, Evaluation, Option
from pqt.errors import UserError

if TYPE_CHECKING:
    from pqt.circuits.photonic import PhotonicQNN

TOKEN_ENV = "PCVL_CLOUD_TOKEN"
URL_ENV = "PCVL_CLOUD_URL"
JOURNAL_NAME = "jobs.jsonl"
MAX_BACKOFF_S = 300.0
# HTTP answers worth asking again: request timeout, conflict, locked, too early, rate limited.
_RETRY_CODES = frozenset({408, 409, 421, 423, 425, 429})
_MAX_MESSAGE = 300


# ---- messages --------------------------------------------------------------------------------------
def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception (Perceval re-raises some without the response)."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return int(response.status_code)
    text = str(exc)
    m = re.search(r"status code (\d{3})", text) or re.search(r"\b([45]\d\d) (?:Client|Server) Error", text)
    return int(m.group(1)) if m else None


def _describe(exc: BaseException, request_timeout: float) -> str:
    """A short, token-free account of a client-side error."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {request_timeout:g} s ({type(exc).__name__})"
    text = str(exc)
    if isinstance(exc, requests.ConnectionError):
        reason = re.search(r"\[Errno -?\d+\][^'\")]*", text)
        return f"connection failed: {reason.group(0).strip() if reason else type(exc).__name__}"
    code = _http_status(exc)
    if code is not None:
        # Perceval's messages repeat the URL; keep the server's own explanation when there is one.
        detail = re.search(r"'error': '([^']*)'", text)
        return f"HTTP {code}" + (f" ({detail.group(1)})" if detail else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str, token: str | None) -> str:
    """Collapse to one line, bounded, with the token and any bearer header masked."""
    if token:
        text = text.replace(token, "***")
    text = re.sub(r"(?i)bearer\s+\S+", "Bearer ***", text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _public_url(url: str) -> str:
    """The URL without any user:password part (it is recorded and printed)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


# ---- journal -----------------------------------------------------------------------------------------
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


class JobJournal:
    """Append-only JSON-lines record of the jobs of a run (``run_dir/jobs.jsonl``).

    Events: ``submitted`` (job id, written before the job is awaited), ``result`` (the counts on
    the collision-free patterns, in ``qnn.outcomes`` order), ``abandoned`` (a job that failed, was
    cancelled or timed out: a new one replaces it). Each line is flushed and fsynced, so what was
    written survives a kill; a torn last line is ignored on reading. Without a path it only keeps
    the index in memory.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._jobs: dict[RequestKey, str] = {}  # requests whose job is sent but not consumed
        self._results: dict[RequestKey, dict[str, Any]] = {}
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
        event = rec["event"]
        if event == "submitted":
            self._jobs[key] = str(rec["job_id"])
        elif event == "result":
            if not isinstance(rec["counts"], list):
                raise TypeError("counts")
            self._results[key] = rec
            self._jobs.pop(key, None)
        elif event == "abandoned" and self._jobs.get(key) == rec["job_id"]:
            del self._jobs[key]

    def result(self, key: RequestKey) -> dict[str, Any] | None:
        return self._results.get(key)

    def job(self, key: RequestKey) -> str | None:
        return self._jobs.get(key)

    def append(self, event: str, key: RequestKey, **data: Any) -> None:
        rec = {"event": event, **key.fields(), **data,
               "time": datetime.now(UTC).isoformat(timespec="seconds")}
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
                raise BackendFailure(f"remote backend: cannot write the job journal {self.path} "
                                     f"({e.strerror or e}); job {data.get('job_id')} was not recorded") from None
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


# ---- the backend -----------------------------------------------------------------------------------------
class _Permanent(Exception):
    """Retrying cannot help (bad token, rejected payload, circuit too big for the platform)."""


class _JobLost(Exception):
    """The job failed, was cancelled, timed out or is unknown to the cloud: send a new one."""


@dataclass
class _Slot:
    """One circuit of an ``evaluate`` call, moving from submission to counts."""

    index: int
    qnn: PhotonicQNN
    phases: np.ndarray
    key: RequestKey
    job_id: str | None = None
    waiting_since: float = 0.0
    next_at: float = 0.0
    errors: int = 0  # consecutive request failures
    lost_jobs: int = 0  # jobs that failed, were cancelled or timed out
    result: Evaluation | None = None
    history: list[str] = field(default_factory=list)


class RemoteBackend(Backend):
    """Quandela cloud through Perceval's ``RemoteProcessor`` (platform ``sim:slos``, ``qpu:belenos``...)."""

    name = "remote"
    description = "Quandela cloud (Perceval RemoteProcessor): one sampling job per circuit evaluation"
    remote = True
    can_be_exact = False
    ideal = False
    options = (
        Option("platform", str, "sim:slos", "Quandela cloud platform, e.g. sim:slos or qpu:belenos"),
        Option("cloud-url", str, None,
               "cloud API base URL; unset: $PCVL_CLOUD_URL, else Quandela's endpoint "
               "(http://127.0.0.1:8765 for python -m backends.fake_cloud --port 8765)"),
        Option("max-retries", int, 5, "retries per circuit after a network error, HTTP 5xx or failed job"),
        Option("retry-backoff", float, 2.0, "first retry delay in seconds, doubled at each retry"),
        Option("job-timeout", float, 3600.0, "seconds to wait for one job before cancelling and resending it"),
        Option("poll-interval", float, 1.0, "seconds between job status checks"),
        Option("request-timeout", float, 30.0, "seconds to wait for one HTTP answer"),
    )

    def __init__(self, shots: int | None, seed: int = 0, max_shots: int | None = None,
                 run_dir: Path | None = None, **options: Any) -> None:
        super().__init__(shots, seed=seed, max_shots=max_shots, run_dir=run_dir, **options)
        s = self.settings
        self.platform = str(s["platform"] or "").strip()
        if not self.platform:
            raise UserError("remote backend: --platform must name a Quandela cloud platform, e.g. sim:slos")
        self.max_retries = self._number("max-retries", int, minimum=0)
        self.retry_backoff = self._number("retry-backoff", float, minimum=0.0)
        self.job_timeout = self._number("job-timeout", float, minimum=0.0, strict=True)
        self.poll_interval = self._number("poll-interval", float, minimum=0.0, strict=True)
        self.request_timeout = self._number("request-timeout", float, minimum=0.0, strict=True)

        from perceval.providers.quandela.remote_config import QUANDELA_CLOUD_URL

        url = str(s["cloud_url"] or os.environ.get(URL_ENV) or QUANDELA_CLOUD_URL).strip().rstrip("/")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise UserError(f"remote backend: cloud URL {_public_url(url)!r} is not an http(s) URL "
                            "(--cloud-url or PCVL_CLOUD_URL)")
        self.url = _public_url(url)

        self._token = os.environ.get(TOKEN_ENV, "").strip()
        if not self._token:
            raise UserError(f"remote backend: no Quandela cloud token: it is read from {TOKEN_ENV} (environment "
                            "or .env); copy .env.example to .env and set it there")

        from perceval.providers.quandela.rpc_handler import RPCHandler

        self._rpc = RPCHandler(self.platform, url, self._token)
        self._rpc.request_timeout = self.request_timeout
        self._samplers: dict[tuple[int, int, tuple[int, ...]], Any] = {}
        self.journal = JobJournal(None if run_dir is None else Path(run_dir) / JOURNAL_NAME)
        self._check_platform()

    # ---- settings and messages ---------------------------------------------------------------------
    def _number(self, name: str, kind: type, minimum: float, strict: bool = False) -> Any:
        raw = self.settings[name.replace("-", "_")]
        try:
            value = kind(raw)
            if isinstance(raw, bool) or value != value or (kind is int and value != float(raw)):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"remote backend: --{name} must be a number (got {raw!r})") from None
        if value < minimum or (strict and value == minimum):
            raise UserError(f"remote backend: --{name} must be {'>' if strict else '>='} {minimum:g} "
                            f"(got {raw!r})")
        return value

    def _where(self) -> str:
        return f"platform {self.platform} at {self.url}"

    def _msg(self, text: str) -> str:
        return _one_line(text, self._token)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cloud_url": self.url}

    def _backoff(self, failures: int) -> float:
        return min(self.retry_backoff * 2.0 ** max(failures - 1, 0), MAX_BACKOFF_S)

    def _classify(self, exc: BaseException) -> str:
        """``auth``, ``gone`` (404), ``permanent`` (other 4xx) or ``transient`` (worth retrying)."""
        if isinstance(exc, _Permanent):
            return "permanent"
        if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
            return "transient"
        code = _http_status(exc)
        if code in (401, 403):
            return "auth"
        if code == 404:
            return "gone"
        if code is not None and 400 <= code < 500 and code not in _RETRY_CODES:
            return "permanent"
        # 5xx, retryable 4xx and malformed answers (bad JSON, missing fields) are worth a new try.
        return "transient"

    def _auth_failure(self, exc: BaseException) -> str:
        return self._msg(f"remote backend: the cloud at {self.url} rejected the token from {TOKEN_ENV} "
                         f"({_describe(exc, self.request_timeout)}); check it in your environment or .env")

    # ---- construction-time check -------------------------------------------------------------------
    def _check_platform(self) -> None:
        """Fetch the platform details once, so a bad platform, URL or token fails before training."""
        from perceval.runtime.legacy import RemoteProcessor

        attempt = 0
        while True:
            try:
                probe = RemoteProcessor(rpc_handler=self._rpc)
                break
            except Exception as e:
                kind = self._classify(e)
                # An outage (5xx, timeout) is retried; a refused connection or a 4xx is a setting.
                retry = kind == "transient" and not (isinstance(e, requests.ConnectionError)
                                                     and not isinstance(e, requests.Timeout))
                if retry and attempt < self.max_retries:
                    attempt += 1
                    time.sleep(self._backoff(attempt))
                    continue
                if kind == "auth":
                    raise UserError(self._auth_failure(e)) from None
                hint = "; check the platform name" if kind == "gone" else ""
                raise UserError(self._msg(f"remote backend: cannot use {self._where()}: "
                                          f"{_describe(e, self.request_timeout)}{hint}")) from None
        commands = set(probe.available_commands or [])
        if commands and not commands & {"sample_count", "samples", "probs"}:
            raise UserError(self._msg(f"remote backend: {self._where()} offers no sampling command "
                                      f"(it offers {', '.join(sorted(commands))})"))

    # ---- per-circuit Perceval objects --------------------------------------------------------------
    def _sampler(self, qnn: PhotonicQNN) -> Any:
        """One RemoteProcessor + Sampler per circuit shape, reused: each job re-serializes its phases."""
        key = (qnn.modes, qnn.photons, tuple(qnn.input_modes))
        if key not in self._samplers:
            from perceval.algorithm import Sampler
            from perceval.runtime.legacy import RemoteProcessor

            processor = RemoteProcessor(rpc_handler=self._rpc, m=qnn.modes)  # network: fetches details
            try:
                # A copy: setting phases on the processor must not touch the QNN's own circuit.
                processor.set_circuit(copy.deepcopy(qnn.circuit))
                processor.with_input(qnn.input_state)
                processor.min_detected_photons_filter(qnn.photons)
            except Exception as e:
                raise _Permanent(f"cannot run {qnn!r}: {e}") from None
            sampler = Sampler(processor, max_shots_per_call=self.shots)  # network: fetches details
            self._samplers[key] = (processor, sampler)
        return self._samplers[key]

    def _submit(self, slot: _Slot, tag: str) -> None:
        processor, sampler = self._sampler(slot.qnn)
        try:  # local: the payload is built from the processor's copy of the circuit
            params = processor.get_circuit_parameters()
            for name, value in zip(slot.qnn.parameter_names, slot.phases, strict=True):
                params[name].set_value(float(value))
            sampler.default_job_name = f"pqt {tag or 'untagged'} #{slot.index}"
            job = sampler.sample_count
        except Exception as e:
            raise _Permanent(f"cannot prepare the job for {slot.qnn!r}: {e}") from None
        job.execute_async(max_samples=self.shots)  # network: create_job
        if not job.id:
            raise RuntimeError("the cloud answered without a job id")
        slot.job_id = str(job.id)
        self.counters.jobs_submitted += 1
        # Recorded before waiting: a kill from here on costs no second job.
        self.journal.append("submitted", slot.key, job_id=slot.job_id, job_name=sampler.default_job_name)

    def _poll(self, slot: _Slot) -> None:
        from perceval.runtime import RunningStatus
        from perceval.runtime.legacy import RemoteJob

        assert slot.job_id is not None
        response = self._rpc.get_job_status(slot.job_id)
        status = RunningStatus.from_server_response(str(response.get("status", "")))
        if status in (RunningStatus.ERROR, RunningStatus.CANCELED, RunningStatus.CANCEL_REQUESTED):
            reason = str(response.get("status_message") or "").strip()
            raise _JobLost(f"job {slot.job_id} {status.name.lower()}" + (f": {reason}" if reason else ""))
        if status != RunningStatus.SUCCESS:
            if time.monotonic() - slot.waiting_since > self.job_timeout:
                # Best effort: do not leave it to run (and bill) after giving up on it.
                with contextlib.suppress(Exception):
                    self._rpc.cancel_job(slot.job_id)
                raise _JobLost(f"job {slot.job_id} still {status.name.lower()} after "
                               f"--job-timeout {self.job_timeout:g} s")
            slot.errors = 0  # only a completed step clears the count: a dead result endpoint must not loop
            slot.next_at = time.monotonic() + self.poll_interval
            return
        # Perceval rebuilds the job from its id and fetches (and converts, if needed) its results.
        results = RemoteJob.from_id(slot.job_id, self._rpc).get_results()
        counts = results["results"] if isinstance(results, dict) else None
        if counts is None or not hasattr(counts, "items"):
            raise ValueError(f"job {slot.job_id} returned no counts")
        self._finish(slot, counts)

    def _finish(self, slot: _Slot, counts: Any) -> None:
        qnn = slot.qnn
        position = {o: i for i, o in enumerate(qnn.outcomes)}
        kept = np.zeros(len(qnn.outcomes), dtype=np.int64)
        other = 0
        for state, count in counts.items():
            i = position.get(tuple(int(n) for n in state))
            if i is None:
                other += int(count)  # bunched or wrong photon number: paid for, not kept
            else:
                kept[i] += int(count)
        self.journal.append("result", slot.key, job_id=slot.job_id, counts=kept.tolist(), other=other,
                            shots_sent=int(self.shots), shots_kept=int(kept.sum()))
        slot.result = self._evaluation(slot, kept)

    def _evaluation(self, slot: _Slot, kept: np.ndarray) -> Evaluation:
        total = int(kept.sum())
        if total == 0:
            raise BackendFailure(self._msg(
                f"remote backend: job {slot.job_id} on {self._where()} returned no collision-free "
                f"{slot.qnn.photons}-photon event in {self.shots:,} shots; raise --shots"))
        return Evaluation(kept / float(total), int(self.shots), total)

    # ---- the evaluation loop -------------------------------------------------------------------------
    def _run(self, qnns: Sequence[PhotonicQNN], phases: Sequence[np.ndarray], tag: str) -> list[Evaluation]:
        assert self.shots is not None
        slots = [_Slot(i, q, p, RequestKey.of(tag, i, q, p, self.shots, self.platform, self.url))
                 for i, (q, p) in enumerate(zip(qnns, phases, strict=True))]
        extra = self.counters.extra
        for slot in slots:
            if not tag:
                continue  # an untagged request cannot be recognised later: always a new job
            done = self.journal.result(slot.key)
            if done is not None and len(done["counts"]) == len(slot.qnn.outcomes):
                slot.job_id = str(done.get("job_id"))
                slot.result = self._evaluation(slot, np.asarray(done["counts"], dtype=np.int64))
                extra["results_from_journal"] = extra.get("results_from_journal", 0) + 1
            elif (job_id := self.journal.job(slot.key)) is not None:
                slot.job_id = job_id  # sent before a kill: wait for it rather than pay again
                extra["jobs_resumed"] = extra.get("jobs_resumed", 0) + 1
        now = time.monotonic()
        for slot in slots:
            slot.waiting_since = slot.next_at = now
        # Submissions come first in each pass (slots without a job are due at once), then polls.
        while pending := [s for s in slots if s.result is None]:
            now = time.monotonic()
            due = sorted((s for s in pending if s.next_at <= now), key=lambda s: s.job_id is not None)
            for slot in due:
                self._step(slot, tag)
            pending = [s for s in slots if s.result is None]
            if pending:
                delay = min(s.next_at for s in pending) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return [s.result for s in slots if s.result is not None]

    def _step(self, slot: _Slot, tag: str) -> None:
        """One action for one circuit (submit or poll); failures schedule a retry or give up."""
        extra = self.counters.extra
        try:
            if slot.job_id is None:
                self._submit(slot, tag)
                slot.errors = 0
                slot.waiting_since = time.monotonic()
                slot.next_at = slot.waiting_since + self.poll_interval
            else:
                self._poll(slot)
            return
        except BackendFailure:
            raise
        except _JobLost as e:
            lost: BaseException = e
        except Exception as e:
            kind = self._classify(e)
            if kind == "auth":
                raise BackendFailure(self._auth_failure(e)) from None
            if kind == "permanent" or (kind == "gone" and slot.job_id is None):
                raise BackendFailure(self._msg(
                    f"remote backend: {self._where()} refused request {tag or '(untagged)'} #{slot.index}: "
                    f"{e if isinstance(e, _Permanent) else _describe(e, self.request_timeout)}")) from None
            if kind == "transient":
                slot.errors += 1
                slot.history.append(_describe(e, self.request_timeout))
                extra["request_retries"] = extra.get("request_retries", 0) + 1
                if slot.errors > self.max_retries:
                    self._give_up(slot, tag, "request", slot.errors)
                slot.next_at = time.monotonic() + self._backoff(slot.errors)
                return
            lost = _JobLost(f"job {slot.job_id} is unknown to the cloud ({_describe(e, self.request_timeout)})")
        # The job is lost: record that, then send a new one after a pause.
        assert slot.job_id is not None
        self.journal.append("abandoned", slot.key, job_id=slot.job_id, reason=self._msg(str(lost)))
        slot.history.append(str(lost))
        slot.job_id, slot.errors = None, 0
        slot.lost_jobs += 1
        extra["job_retries"] = extra.get("job_retries", 0) + 1
        if slot.lost_jobs > self.max_retries:
            self._give_up(slot, tag, "job", slot.lost_jobs)
        slot.next_at = time.monotonic() + self._backoff(slot.lost_jobs)

    def _give_up(self, slot: _Slot, tag: str, what: str, failures: int) -> None:
        raise BackendFailure(self._msg(
            f"remote backend: {self._where()}: {what} for {tag or '(untagged)'} #{slot.index} failed "
            f"{failures} times (--max-retries {self.max_retries}); last error: {slot.history[-1]}; "
            "recorded jobs are reused by pqt train --resume"))

    def close(self) -> None:
        self._samplers.clear()
