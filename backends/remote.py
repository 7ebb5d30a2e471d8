"""Quandela cloud backend: every circuit evaluation is one Perceval sampling job.

How a request runs: the QNN's circuit (a copy, with the phases set), its input state and an
N-photon filter go to a Perceval ``RemoteProcessor``; ``Sampler(..., max_shots_per_call=shots)``
``.sample_count`` builds the job's request, which is sent in its own thread (see below). The
circuits of one ``evaluate`` call are all submitted first, then awaited together. The counts that
come back (a ``BSCount``) become frequencies over ``qnn.outcomes``; counts on bunched patterns are
dropped from the distribution but were paid for (shots sent = shots asked, shots kept = counts on
collision-free patterns).

Paying once, and counting everything paid: every job creation is journaled in ``run_dir/jobs.jsonl``
(:mod:`backends.journal`, flushed and fsynced) *before* it is sent, its job id as soon as the cloud
answers, and the counts when they come back, keyed by the request tag, circuit index and a hash of
the phases (plus shots, platform, URL and circuit shape). A later process on the same run directory
(``pqt train --resume`` replays the unfinished round with the same tags and phases) takes the
recorded counts, or resumes waiting on the recorded job, instead of sending a new job. The job
counters of ``metrics.json`` and the ``--max-shots`` check come from the journal, over all attempts.

A creation that gets no answer within ``--request-timeout`` may still have made a job (Perceval's
API has no idempotency key and no job listing): it is journaled as *uncertain*, its shots are
charged against ``--max-shots`` (the budget holds in the worst case), and a replacement is sent. The
request itself keeps waiting ``LATE_REPLY_FACTOR`` times longer in its thread: if the answer comes
after all, the orphan's id is journaled and the job cancelled. Jobs the run abandons (timed out,
orphaned, left unused by a finished run) are cancelled; those that cannot be are named in the final
message, as are uncertain creations (their job names make them findable in the cloud's job list).

Faults (network errors, request timeouts, HTTP 5xx/408/429, jobs that fail, are cancelled or
outlive ``--job-timeout``) are retried with exponential backoff: each request (a creation, a status
check, a result fetch) up to ``--max-retries`` times in a row, its count restarting when it
succeeds, and up to as many lost jobs per circuit; then the run stops with one
:class:`BackendFailure` line. A rejected token or payload (HTTP 401/403/400) stops it at once.

The token comes from ``PCVL_CLOUD_TOKEN`` only (environment or ``.env``): never an option, never
recorded, and scrubbed from every message this module raises.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
from urllib3.exceptions import NewConnectionError

from backends.base import Backend, BackendFailure, BudgetExhausted, Evaluation, Option
from backends.journal import JOURNAL_NAME, JobJournal, RequestKey
from pqt.errors import UserError

if TYPE_CHECKING:
    from pqt.circuits.photonic import PhotonicQNN

TOKEN_ENV = "PCVL_CLOUD_TOKEN"
URL_ENV = "PCVL_CLOUD_URL"
MAX_BACKOFF_S = 300.0
# A job creation may take this many --request-timeout on the wire, after the loop stopped waiting for it.
LATE_REPLY_FACTOR = 4
_CREATE_CHECK_S = 0.01  # how often the loop looks at a creation in flight
_CANCEL_RETRIES = 2  # at most this many retries of a cancel request (bounded: it runs inside the loop)
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


# ---- job creation ---------------------------------------------------------------------------------------
class _Permanent(Exception):
    """Retrying cannot help (bad token, rejected payload, circuit too big for the platform)."""


class _JobLost(Exception):
    """The job failed, was cancelled, timed out or is unknown to the cloud: send a new one."""


class _Unanswered(Exception):
    """A job creation got no answer in time: the cloud may or may not have made the job."""


def _certainly_no_job(exc: BaseException) -> bool:
    """Whether a failed job creation certainly made no job (else its outcome is unknown).

    Certain: we never connected, or the cloud answered with a 4xx or a 503 (it refused or did not
    process the request). Unknown: no answer, a connection dropped mid-request, a reply without a
    job id, and other 5xx (a 500, 502 or 504 may come after the job was made).
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.Timeout):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, NewConnectionError)
    code = _http_status(exc)
    return code is not None and (400 <= code < 500 or code == 503)


class _CreateCall:
    """One job-creation request, run in a daemon thread.

    The training loop stops waiting after ``--request-timeout``, but the request itself may take
    ``LATE_REPLY_FACTOR`` times longer: an answer that arrives after we gave up still tells us the
    id of the job it made, so that job can be cancelled instead of running unseen.
    """

    def __init__(self, rpc: Any, payload: dict[str, Any], key: RequestKey, intent: str, name: str) -> None:
        self.key, self.intent, self.name = key, intent, name
        self.started = time.monotonic()
        self.lost = False  # recorded as create_lost: the loop stopped waiting for it
        self.job_id: str | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._rpc, self._payload = rpc, payload
        threading.Thread(target=self._call, name=f"pqt-create-{intent[:8]}", daemon=True).start()

    def _call(self) -> None:
        try:
            job_id = self._rpc.create_job(self._payload)
            if not job_id:
                raise ValueError("the cloud answered without a job id")
            self.job_id = str(job_id)
        except BaseException as e:  # reported to the loop, which classifies it
            self.error = e
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, seconds: float) -> bool:
        return self._done.wait(max(seconds, 0.0))


@dataclass
class _Slot:
    """One circuit of an ``evaluate`` call, moving from submission to counts."""

    index: int
    qnn: PhotonicQNN
    phases: np.ndarray
    key: RequestKey
    job_id: str | None = None
    creating: _CreateCall | None = None
    waiting_since: float = 0.0
    next_at: float = 0.0
    request: str = "create"  # the request being made: create, status or result
    failures: dict[str, int] = field(default_factory=dict)  # request -> its consecutive failures
    lost_jobs: int = 0  # jobs that failed, were cancelled or timed out
    result: Evaluation | None = None
    history: list[str] = field(default_factory=list)


# ---- the backend -----------------------------------------------------------------------------------------
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
        Option("max-retries", int, 5,
               "retries of each failing cloud request (a job creation, a status check, a result fetch), counted "
               "per request and reset when it succeeds; also the number of lost jobs resent per circuit",
               low=0),
        Option("retry-backoff", float, 2.0, "first retry delay in seconds, doubled at each retry", low=0),
        Option("job-timeout", float, 3600.0, "seconds to wait for one job before cancelling and resending it",
               low=0, low_open=True),
        Option("poll-interval", float, 1.0, "seconds between job status checks", low=0, low_open=True),
        Option("request-timeout", float, 30.0,
               "seconds to wait for one HTTP answer (a job creation unanswered by then counts as uncertain)",
               low=0, low_open=True),
    )

    def __init__(self, shots: int | None, seed: int = 0, max_shots: int | None = None,
                 run_dir: Path | None = None, journal_name: str = JOURNAL_NAME, **options: Any) -> None:
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
        # Job creations wait longer on the wire than the loop waits for them (see _CreateCall).
        self._create_rpc = copy.copy(self._rpc)
        self._create_rpc.request_timeout = LATE_REPLY_FACTOR * self.request_timeout
        self._strays: list[_CreateCall] = []  # creations the loop stopped waiting for, or left behind
        self._samplers: dict[tuple[int, int, tuple[int, ...]], Any] = {}
        # (a distributed run gives each cloud processor its own journal: jobs-<processor>.jsonl)
        self.journal = JobJournal(None if run_dir is None else Path(run_dir) / journal_name)
        self._sync_counters()
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
        if isinstance(exc, (requests.Timeout, requests.ConnectionError, _Unanswered)):
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

    def _describe(self, exc: BaseException) -> str:
        return str(exc) if isinstance(exc, (_Permanent, _Unanswered)) else _describe(exc, self.request_timeout)

    def _auth_failure(self, exc: BaseException) -> str:
        return self._msg(f"remote backend: the cloud at {self.url} rejected the token from {TOKEN_ENV} "
                         f"({_describe(exc, self.request_timeout)}); check it in your environment or .env")

    # ---- accounting: the journal is the one source -------------------------------------------------
    def _sync_counters(self) -> None:
        self.counters.jobs_submitted = self.journal.account.jobs_submitted

    @property
    def shots_charged(self) -> int:
        return self.journal.account.shots_charged

    def accounting(self) -> dict[str, Any]:
        return self.journal.account.summary()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sync_counters()  # a checkpoint predates the jobs of a killed round; the journal does not

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

    # ---- one circuit's requests ----------------------------------------------------------------------
    def _start_create(self, slot: _Slot, tag: str) -> None:
        """Journal the intent, then send the creation in its own thread (the loop checks on it)."""
        assert self.shots is not None
        self.check_budget(self.shots, f"a job for {tag or '(untagged)'} #{slot.index}")
        processor, sampler = self._sampler(slot.qnn)
        intent = uuid.uuid4().hex
        name = f"pqt {tag or 'untagged'} #{slot.index} {intent[:8]}"  # findable in the cloud's job list
        try:  # local: the payload is built from the processor's copy of the circuit
            params = processor.get_circuit_parameters()
            for pname, value in zip(slot.qnn.parameter_names, slot.phases, strict=True):
                params[pname].set_value(float(value))
            sampler.default_job_name = name
            # Perceval 1.3.1 (pinned) builds the request body here; execute_async would send it with the
            # processor's own timeout, and the creation must outlive the loop's wait (see _CreateCall).
            payload = sampler.sample_count._create_payload_data(max_samples=self.shots)
        except Exception as e:
            raise _Permanent(f"cannot prepare the job for {slot.qnn!r}: {e}") from None
        # Recorded before it is sent: a kill from here on still leaves the creation counted.
        self.journal.append("creating", slot.key, intent=intent, shots=int(self.shots), job_name=name)
        slot.creating = _CreateCall(self._create_rpc, payload, slot.key, intent, name)
        slot.next_at = time.monotonic() + _CREATE_CHECK_S

    def _check_create(self, slot: _Slot) -> None:
        call = slot.creating
        assert call is not None
        if not call.done:
            if time.monotonic() - call.started < self.request_timeout:
                slot.next_at = time.monotonic() + _CREATE_CHECK_S
                return
            # Given up on, not forgotten: a late answer still names the job (see _harvest).
            call.lost = True
            self.journal.append("create_lost", call.key, intent=call.intent,
                                reason=f"no answer within --request-timeout {self.request_timeout:g} s")
            self._strays.append(call)
            slot.creating = None
            raise _Unanswered(f"job creation got no answer within {self.request_timeout:g} s (the cloud may have "
                              "made the job: counted as uncertain)")
        slot.creating = None
        if call.job_id is None:
            assert call.error is not None
            certain = _certainly_no_job(call.error)
            self.journal.append("create_failed" if certain else "create_lost", call.key, intent=call.intent,
                                reason=self._msg(self._describe(call.error)))
            raise call.error
        self.journal.append("submitted", call.key, job_id=call.job_id, intent=call.intent, job_name=call.name)
        self._sync_counters()
        slot.failures.pop("create", None)
        slot.job_id = call.job_id
        slot.waiting_since = time.monotonic()
        slot.next_at = slot.waiting_since + self.poll_interval

    def _poll(self, slot: _Slot) -> None:
        from perceval.runtime import RunningStatus

        assert slot.job_id is not None
        slot.request = "status"
        response = self._rpc.get_job_status(slot.job_id)
        status = RunningStatus.from_server_response(str(response.get("status", "")))
        if status in (RunningStatus.ERROR, RunningStatus.CANCELED, RunningStatus.CANCEL_REQUESTED):
            reason = str(response.get("status_message") or "").strip()
            raise _JobLost(f"job {slot.job_id} {status.name.lower()}" + (f": {reason}" if reason else ""))
        if status != RunningStatus.SUCCESS:
            if time.monotonic() - slot.waiting_since > self.job_timeout:
                lost = _JobLost(f"job {slot.job_id} still {status.name.lower()} after "
                                f"--job-timeout {self.job_timeout:g} s")
                # Do not leave it to run (and bill) after giving up on it.
                self._abandon(slot.key, slot.job_id, str(lost), running=True)
                raise lost
            slot.failures.pop("status", None)
            slot.next_at = time.monotonic() + self.poll_interval
            return
        slot.failures.pop("status", None)
        slot.request = "result"
        self._finish(slot, self._fetch_counts(slot.job_id))

    def _fetch_counts(self, job_id: str) -> Any:
        """The job's counts, in one request (Perceval's own result conversion applied)."""
        from perceval.runtime.legacy import RemoteJob

        job = RemoteJob(None, self._rpc, "pqt")
        # Perceval 1.3.1 (pinned): _get_results is the one results request plus Perceval's conversion;
        # RemoteJob.from_id(...).get_results() would add a status request that can fail on its own.
        job._id = job_id
        results = job._get_results()
        counts = results["results"] if isinstance(results, dict) else None
        if counts is None or not hasattr(counts, "items"):
            raise ValueError(f"job {job_id} returned no counts")
        return counts

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

    # ---- abandoning and cancelling -----------------------------------------------------------------------
    def _abandon(self, key: RequestKey, job_id: str, reason: str, running: bool) -> None:
        """Stop waiting for a job for good; one that may still run is cancelled (or reported)."""
        self.journal.append("abandoned", key, job_id=job_id, reason=self._msg(reason), running=running)
        if running:
            self._cancel(key, job_id)

    def _cancel(self, key: RequestKey, job_id: str) -> None:
        attempts = 1 + min(self.max_retries, _CANCEL_RETRIES)
        error: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self._backoff(attempt))
            try:
                self._rpc.cancel_job(job_id)
                self.journal.append("cancelled", key, job_id=job_id)
                return
            except Exception as e:
                error = e
                kind = self._classify(e)
                if kind in ("permanent", "gone"):  # the cloud says no: the job has already ended
                    self.journal.append("cancel_refused", key, job_id=job_id, reason=self._msg(self._describe(e)))
                    return
                if kind == "auth":
                    break
        assert error is not None
        self.journal.append("cancel_failed", key, job_id=job_id, reason=self._msg(self._describe(error)))

    def _harvest(self, wait: float = 0.0) -> None:
        """Settle the creations the loop stopped waiting for, waiting at most ``wait`` seconds in all."""
        deadline = time.monotonic() + wait
        for call in list(self._strays):
            if not call.wait(deadline - time.monotonic()):
                continue
            self._strays.remove(call)
            if call.job_id is not None:
                if call.lost:  # a replacement was sent: this job is an orphan
                    self.journal.append("late_reply", call.key, job_id=call.job_id, intent=call.intent,
                                        job_name=call.name)
                    self._abandon(call.key, call.job_id, "the answer to its creation came after the run had "
                                  "sent a replacement", running=True)
                else:  # left behind by a stop: an ordinary job, which a resume can collect
                    self.journal.append("submitted", call.key, job_id=call.job_id, intent=call.intent,
                                        job_name=call.name)
            elif call.error is not None and _certainly_no_job(call.error):
                self.journal.append("create_failed", call.key, intent=call.intent,
                                    reason=self._msg(self._describe(call.error)))
            elif not call.lost:
                self.journal.append("create_lost", call.key, intent=call.intent,
                                    reason=self._msg(self._describe(call.error) if call.error else "no answer"))
        self._sync_counters()

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
        new_jobs = sum(s.result is None and s.job_id is None for s in slots)
        self.check_budget(new_jobs * self.shots, f"the next evaluation ({new_jobs} job(s) of {self.shots:,} shots)")
        now = time.monotonic()
        for slot in slots:
            slot.waiting_since = slot.next_at = now
        try:
            # Submissions come first in each pass (slots without a job are due at once), then polls.
            while pending := [s for s in slots if s.result is None]:
                self._harvest()
                now = time.monotonic()
                due = sorted((s for s in pending if s.next_at <= now), key=lambda s: s.job_id is not None)
                for slot in due:
                    self._step(slot, tag)
                pending = [s for s in slots if s.result is None]
                if pending:
                    delay = min(s.next_at for s in pending) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        except KeyboardInterrupt:
            # The user wants out now: creations in flight stay journaled as intents (close() settles them).
            self._strays.extend(s.creating for s in slots if s.creating is not None)
            raise
        except BaseException:
            # Stopping on a failure: give creations in flight their answer, so that a resume finds their jobs.
            self._strays.extend(s.creating for s in slots if s.creating is not None)
            self._harvest(wait=self.request_timeout)
            raise
        return [s.result for s in slots if s.result is not None]

    def _step(self, slot: _Slot, tag: str) -> None:
        """One action for one circuit (create, check a creation, poll); failures schedule a retry or give up.

        Retries are counted per request (``slot.request``: create, status or result): a failing request
        may be retried ``--max-retries`` times in a row, and its count restarts when it succeeds.
        """
        extra = self.counters.extra
        try:
            if slot.creating is not None:
                slot.request = "create"
                self._check_create(slot)
            elif slot.job_id is None:
                slot.request = "create"
                self._start_create(slot, tag)
            else:
                self._poll(slot)
            return
        except (BackendFailure, BudgetExhausted):
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
                    f"{self._describe(e)}")) from None
            if kind == "transient":
                count = slot.failures[slot.request] = slot.failures.get(slot.request, 0) + 1
                slot.history.append(f"{slot.request} request: {self._describe(e)}")
                extra["request_retries"] = extra.get("request_retries", 0) + 1
                if count > self.max_retries:
                    self._give_up(slot, tag, f"the {slot.request} request", count)
                slot.next_at = time.monotonic() + self._backoff(count)
                return
            lost = _JobLost(f"job {slot.job_id} is unknown to the cloud ({self._describe(e)})")
        # The job is lost: record that (a timed-out one was already abandoned and cancelled), then send a new one.
        assert slot.job_id is not None
        if slot.job_id not in self.journal.account.abandoned:
            self._abandon(slot.key, slot.job_id, str(lost), running=False)
        slot.history.append(str(lost))
        slot.job_id = None
        slot.failures.clear()
        slot.lost_jobs += 1
        extra["job_retries"] = extra.get("job_retries", 0) + 1
        if slot.lost_jobs > self.max_retries:
            self._give_up(slot, tag, "the job", slot.lost_jobs)
        slot.next_at = time.monotonic() + self._backoff(slot.lost_jobs)

    def _give_up(self, slot: _Slot, tag: str, what: str, failures: int) -> None:
        raise BackendFailure(self._msg(
            f"remote backend: {self._where()}: {what} for {tag or '(untagged)'} #{slot.index} failed "
            f"{failures} times in a row (--max-retries {self.max_retries}); last error: {slot.history[-1]}; "
            "recorded jobs are reused by pqt train --resume"))

    # ---- the end of an attempt -------------------------------------------------------------------------------
    def close(self, outcome: str = "stopped") -> list[str]:
        """Settle unanswered creations, cancel abandoned jobs, and say what may still run on the cloud.

        A finished run has no use for jobs it never consumed (a resume that changed a setting replays
        other requests): they are abandoned and cancelled. A stopped run keeps them for its resume.
        """
        interrupted = outcome == "interrupted"
        self._harvest(wait=0.0 if interrupted else self.request_timeout * LATE_REPLY_FACTOR)
        account = self.journal.account
        if not interrupted:
            # Cancels that failed earlier (in this attempt or a killed one) get one more try.
            for job_id in account.not_cancelled():
                if (key := self.journal.key_of(job_id)) is not None:
                    self._cancel(key, job_id)
            if outcome == "finished":
                for job_id in account.pending():
                    if (key := self.journal.key_of(job_id)) is not None:
                        self._abandon(key, job_id, "the run finished without needing it", running=True)
        self._samplers.clear()
        return self._notes(outcome)

    def _notes(self, outcome: str) -> list[str]:
        account = self.journal.account
        notes = []
        if account.jobs_uncertain:
            names = account.uncertain_names()
            shown = ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")
            notes.append(f"{account.jobs_uncertain} job creation(s) got no answer: the cloud may hold unused "
                         f"job(s) for them (charged against --max-shots; job names {shown})")
        left = account.not_cancelled()
        if left:
            notes.append(f"{len(left)} abandoned job(s) could not be cancelled and may still be running: "
                         f"{', '.join(left)}")
        pending = account.pending()
        if pending and outcome != "finished":
            notes.append(f"{len(pending)} job(s) still on the cloud are kept for pqt train --resume, which "
                         f"collects their results: {', '.join(pending)}")
        return [self._msg(n) for n in notes]
