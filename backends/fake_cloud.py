"""A local stand-in for the Quandela cloud: the HTTP API that Perceval's ``RPCHandler`` speaks.

It lets users and CI run the ``remote`` backend end to end without credits or network::

    python -m backends.fake_cloud --port 8765 --token my-test-token
    PCVL_CLOUD_TOKEN=my-test-token pqt train --backend remote --cloud-url http://127.0.0.1:8765

Endpoints (those of ``perceval/providers/quandela/rpc_handler.py``)::

    GET  /api/platforms/<name>/processor     platform details (specs, status, type)
    GET  /api/platform/<name>                the same (older endpoint)
    POST /api/job                            create a job -> {"job_id": ...}
    GET  /api/job/status/<id>                waiting | running | completed | error | canceled
    GET  /api/job/result/<id>                {"results": json(serialize({"results": BSCount, ...}))}
    POST /api/job/cancel/<id>, POST /api/job/rerun/<id>, GET /api/jobs/availability

Every request must carry ``Authorization: Bearer <token>`` (401 otherwise). A job's payload (the
serialized Perceval experiment: circuit with its phases, input state, photon filter, plus the
command and shot limits) is deserialized and simulated with local SLOS: exact probabilities, then a
seeded multinomial draw of the requested shots. The simulation is ideal, so every shot detects all
photons, but bunched (non collision-free) outcomes do occur.

Fault injection (:meth:`FakeCloud.inject`) queues faults for the next requests or jobs, and
``error_rate`` makes any request fail with HTTP 503 at that (seeded) probability:

* ``"5xx"`` / ``"timeout"``: the next request answers HTTP 503 / is held ``timeout_delay`` seconds
  and then dropped unanswered (it has no effect).
* ``"lost"``: the next request takes effect (a ``create`` makes its job), then its reply is held
  ``timeout_delay`` seconds and dropped: the client cannot know what happened. ``"late"``: the same,
  but the reply is sent after the delay (a client that stopped waiting may still read it).
* ``"5xx:create"``, ``"timeout:status"``, ``"lost:create"``, ... aim at one endpoint (``platform``,
  ``create``, ``status``, ``result``, ``cancel``, ``rerun``, ``availability``).
* ``"fail"`` / ``"cancel"``: the next created job ends in error / is cancelled remotely.
* ``"stuck"``: the next created job stays running until cancelled; ``"hold"``: it stays running
  until :meth:`FakeCloud.release` is called.

The server binds to 127.0.0.1 only, and every request is bounded in time (socket timeout, capped
body size, capped fault delay).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import numpy as np

HOST = "127.0.0.1"  # never any other address: this server accepts a token, not real users
MAX_BODY_BYTES = 16 * 2**20
MAX_FAULT_DELAY_S = 30.0
SOCKET_TIMEOUT_S = 15.0
# Kept small so that one SLOS simulation inside a request stays fast (C(25, 6) output states at most).
MAX_MODES = 20
MAX_PHOTONS = 6
DEFAULT_PLATFORMS = ("sim:slos", "sim:belenos", "qpu:belenos", "qpu:ascella")

REQUEST_FAULTS = ("5xx", "timeout", "lost", "late")
JOB_FAULTS = ("fail", "cancel", "stuck", "hold")
ENDPOINTS = ("platform", "create", "status", "result", "cancel", "rerun", "availability")

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"/api/platforms/(?P<arg>[^/]+)/processor"), "platform"),
    ("GET", re.compile(r"/api/platform/(?P<arg>[^/]+)"), "platform"),
    ("POST", re.compile(r"/api/job"), "create"),
    ("GET", re.compile(r"/api/job/status/(?P<arg>[^/]+)"), "status"),
    ("GET", re.compile(r"/api/job/result/(?P<arg>[^/]+)"), "result"),
    ("POST", re.compile(r"/api/job/cancel/(?P<arg>[^/]+)"), "cancel"),
    ("POST", re.compile(r"/api/job/rerun/(?P<arg>[^/]+)"), "rerun"),
    ("GET", re.compile(r"/api/jobs/availability"), "availability"),
)


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Job:
    id: str
    platform: str
    name: str
    payload: dict[str, Any]
    key: str  # hash of what was asked (experiment, command, shots): counts duplicates
    created: float
    fault: str | None
    status: str = "waiting"
    message: str = ""
    results: str | None = None  # the JSON text the result endpoint returns
    started: float | None = None
    finished: float | None = None


@dataclass
class _Faults:
    requests: deque[tuple[str, str | None]] = field(default_factory=deque)  # (kind, endpoint or None)
    jobs: deque[str] = field(default_factory=deque)


def payload_key(payload: dict[str, Any], platform: str) -> str:
    """What identifies a job request: the same experiment, command and shots on the same platform."""
    what = {k: payload.get(k) for k in ("command", "experiment", "max_shots", "max_samples")}
    what["platform"] = platform
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def simulate(payload: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Run one job payload locally: SLOS probabilities, then a multinomial draw of the shots."""
    import perceval as pcvl
    from perceval.runtime.legacy import Processor
    from perceval.serialization import deserialize

    command = payload.get("command")
    if command not in ("sample_count", "probs"):
        raise _ApiError(400, f"command {command!r} is not available on this platform")
    if payload.get("iterator"):
        raise _ApiError(400, "iterated jobs are not supported by the fake cloud")
    try:
        experiment = deserialize(payload["experiment"])
    except Exception as e:  # any decoding problem is the client's payload
        raise _ApiError(400, f"cannot deserialize the experiment: {e}") from None
    if not isinstance(experiment, pcvl.Experiment):
        raise _ApiError(400, "payload 'experiment' is not a Perceval Experiment")
    if experiment.input_state is None:
        raise _ApiError(400, "the experiment has no input state")
    if experiment.m > MAX_MODES or experiment.input_state.n > MAX_PHOTONS:
        raise _ApiError(400, f"too large for the fake cloud ({experiment.m} modes, "
                             f"{experiment.input_state.n} photons; max {MAX_MODES} and {MAX_PHOTONS})")
    try:
        computed = Processor("SLOS", experiment).probs()
    except Exception as e:
        raise _ApiError(400, f"cannot simulate the experiment: {e}") from None
    dist = computed["results"]
    out: dict[str, Any] = {"physical_perf": float(computed.get("physical_perf", 1.0)),
                           "logical_perf": float(computed.get("logical_perf", 1.0))}
    if command == "probs":
        out["results"] = dist
    else:
        try:
            max_shots = int(payload["max_shots"])
            max_samples = int(payload.get("max_samples") or max_shots)
        except (KeyError, TypeError, ValueError):
            raise _ApiError(400, "sample_count needs integer 'max_shots'") from None
        if max_shots < 1 or max_samples < 1:
            raise _ApiError(400, "'max_shots' and 'max_samples' must be >= 1")
        states = list(dist.keys())
        p = np.clip(np.array([float(dist[s]) for s in states]), 0.0, None)
        # Ideal and lossless: every shot passes the photon filter, so shots = samples.
        counts = rng.multinomial(min(max_shots, max_samples), p / p.sum()) if states else []
        bsc = pcvl.BSCount()
        for s, c in zip(states, counts, strict=False):
            if c:
                bsc[s] = int(c)
        out["results"] = bsc
    if payload.get("job_context"):
        out["job_context"] = payload["job_context"]  # the client converts results with it
    return out


def _specs(platform: str) -> dict[str, Any]:
    import perceval as pcvl
    from perceval.serialization import serialize

    specs = {
        "constraints": {"max_mode_count": MAX_MODES, "min_mode_count": 1, "max_photon_count": MAX_PHOTONS,
                        "min_photon_count": 1, "support_multi_photon": False},
        "available_commands": ["sample_count", "probs"],
        "parameters": {},
        "description": f"fake {platform} (local SLOS, ideal)",
        "architecture": pcvl.Experiment(MAX_MODES),
    }
    return serialize(specs)


class FakeCloud:
    """The fake cloud server: start it, point the remote backend at :attr:`url`, stop it.

    >>> with FakeCloud(token="t") as cloud:  # doctest: +SKIP
    ...     cloud.inject(["5xx:create", "fail"])
    """

    def __init__(self, token: str, *, port: int = 0, seed: int = 0, job_duration: float = 0.0,
                 timeout_delay: float = 2.0, platforms: Iterable[str] = DEFAULT_PLATFORMS,
                 verbose: bool = False, error_rate: float = 0.0) -> None:
        if not token:
            raise ValueError("the fake cloud needs a token")
        self._token = token
        self._port = int(port)
        self.seed = int(seed)
        self.job_duration = float(job_duration)  # seconds a job stays running before it completes
        self.timeout_delay = min(float(timeout_delay), MAX_FAULT_DELAY_S)
        self.platforms = tuple(platforms)
        self.verbose = verbose
        if not 0.0 <= error_rate < 1.0:
            raise ValueError(f"error_rate must be in [0, 1) (got {error_rate})")
        # Every authenticated request fails with HTTP 503 with this probability (seeded), beside queued faults.
        self.error_rate = float(error_rate)
        self._error_rng = np.random.default_rng([self.seed, 0xE77])
        self.random_errors = 0  # requests failed by error_rate
        self.faults_applied: Counter[str] = Counter()  # "<fault>:<endpoint>" or job fault -> times it struck
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults = _Faults()
        self._jobs: dict[str, _Job] = {}
        self._serial = 0
        self.job_counts: Counter[str] = Counter()  # payload_key -> jobs created with that payload
        self.requests: Counter[str] = Counter()  # endpoint -> authenticated requests received
        self.unauthorized = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeCloud:
        handler = type("_BoundHandler", (_Handler,), {"cloud": self})
        self._httpd = ThreadingHTTPServer((HOST, self._port), handler)
        self._httpd.daemon_threads = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-cloud", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping on a "timeout" fault
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake cloud is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # ---- controls for tests ----------------------------------------------------------------------
    def inject(self, faults: Iterable[str]) -> None:
        """Queue faults: request faults hit the next matching requests, job faults the next jobs."""
        with self._lock:
            for fault in faults:
                kind, _, endpoint = fault.partition(":")
                if kind in REQUEST_FAULTS and (not endpoint or endpoint in ENDPOINTS):
                    self._faults.requests.append((kind, endpoint or None))
                elif kind in JOB_FAULTS and not endpoint:
                    self._faults.jobs.append(kind)
                else:
                    raise ValueError(f"unknown fault {fault!r}: use one of {REQUEST_FAULTS + JOB_FAULTS}, "
                                     f"request faults optionally as '<fault>:<endpoint>' with {ENDPOINTS}")

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    @property
    def pending_faults(self) -> list[str]:
        with self._lock:
            reqs = [k if e is None else f"{k}:{e}" for k, e in self._faults.requests]
            return reqs + list(self._faults.jobs)

    def release(self) -> None:
        """Let the jobs held so far by a "hold" fault complete."""
        with self._lock:
            for job in self._jobs.values():
                if job.fault == "hold":
                    job.fault = None

    @property
    def jobs_created(self) -> int:
        with self._lock:
            return len(self._jobs)

    def job_status(self, job_id: str) -> str:
        with self._lock:
            return self._jobs[job_id].status

    def statuses(self) -> Counter[str]:
        with self._lock:
            return Counter(j.status for j in self._jobs.values())

    # ---- request handling (called from handler threads) ------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self._token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def _take_request_fault(self, endpoint: str) -> str | None:
        with self._lock:
            for i, (kind, target) in enumerate(self._faults.requests):
                if target is None or target == endpoint:
                    del self._faults.requests[i]
                    self.faults_applied[f"{kind}:{endpoint}"] += 1
                    return kind
            if self.error_rate and self._error_rng.random() < self.error_rate:
                self.random_errors += 1
                self.faults_applied[f"random 5xx:{endpoint}"] += 1
                return "5xx"
        return None

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(min(seconds, MAX_FAULT_DELAY_S))

    def handle(self, method: str, path: str, body: dict[str, Any] | None, endpoint: str,
               arg: str | None) -> dict[str, Any]:
        if endpoint == "platform":
            name = unquote_plus(arg or "")
            if name not in self.platforms:
                raise _ApiError(404, f"platform {name!r} not found")
            return {"name": name, "status": "available",
                    "type": "physical" if name.startswith("qpu:") else "simulator", "specs": _specs(name)}
        if endpoint == "availability":
            with self._lock:
                queued = sum(j.status in ("waiting", "running") for j in self._jobs.values())
            return {"max_jobs_in_queue": 1000, "num_jobs_in_queue": queued}
        if endpoint == "create":
            return {"job_id": self._create(body)}
        job = self._job(arg)
        if endpoint == "status":
            return self._status(job)
        if endpoint == "result":
            self._advance(job)
            if job.status != "completed" or job.results is None:
                raise _ApiError(400, f"job {job.id} has no results (status {job.status})")
            return {"results": job.results}
        if endpoint == "cancel":
            with self._lock:
                if job.status in ("waiting", "running"):
                    job.status, job.message, job.finished = "canceled", "cancelled by user", time.time()
            return {}
        if endpoint == "rerun":
            if job.status not in ("error", "canceled"):
                raise _ApiError(400, f"job {job.id} cannot be rerun (status {job.status})")
            return {"job_id": self._create({"platform_name": job.platform, "job_name": job.name,
                                            "payload": job.payload})}
        raise _ApiError(404, f"no route for {method} {path}")

    def _job(self, job_id: str | None) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id or "")
        if job is None:
            raise _ApiError(404, f"job {job_id!r} not found")
        return job

    def _create(self, body: dict[str, Any] | None) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
            raise _ApiError(400, "a job needs a JSON body with a 'payload' object")
        platform = body.get("platform_name")
        if platform not in self.platforms:
            raise _ApiError(400, f"unknown platform {platform!r}")
        payload = body["payload"]
        from perceval.serialization import serialize

        with self._lock:
            self._serial += 1
            serial = self._serial
        # Simulated now (a bad payload is answered at once, as a validating cloud would); the
        # results are only shown once the job has "run".
        results = json.dumps(serialize(simulate(payload, np.random.default_rng([self.seed, serial]))))
        with self._lock:
            fault = self._faults.jobs.popleft() if self._faults.jobs else None
            if fault is not None:
                self.faults_applied[fault] += 1
        job = _Job(id=str(uuid.uuid4()), platform=platform, name=str(body.get("job_name", "")),
                   payload=payload, key=payload_key(payload, platform), created=time.time(), fault=fault,
                   results=None if fault == "fail" else results)
        with self._lock:
            self._jobs[job.id] = job
            self.job_counts[job.key] += 1
        return job.id

    def _advance(self, job: _Job) -> None:
        """Move a job along its lifecycle; the clock is the job's age."""
        with self._lock:
            if job.status not in ("waiting", "running"):
                return
            now = time.time()
            if job.started is None:
                job.status, job.started = "running", now
            if job.fault in ("stuck", "hold") or now - job.created < self.job_duration:
                return
            job.finished = now
            if job.fault == "fail":
                job.status, job.message = "error", "simulated failure of the job on the platform"
            elif job.fault == "cancel":
                job.status, job.message = "canceled", "simulated cancellation by the platform"
            else:
                job.status = "completed"

    def _status(self, job: _Job) -> dict[str, Any]:
        self._advance(job)
        with self._lock:
            done = job.status not in ("waiting", "running")
            return {"status": job.status, "status_message": job.message,
                    "progress": 1.0 if done else 0.5, "progress_message": job.status,
                    "creation_datetime": job.created, "start_time": job.started or job.created,
                    "duration": int((job.finished or time.time()) - (job.started or job.created))}


class _Handler(BaseHTTPRequestHandler):
    cloud: FakeCloud  # set on the bound subclass
    timeout = SOCKET_TIMEOUT_S  # a stalled client cannot hold a thread forever
    server_version = "pqt-fake-cloud/1"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        # Only method, path and status are ever logged: never headers (they hold the token).
        if self.cloud.verbose:
            sys.stderr.write(f"fake-cloud: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def do_GET(self) -> None:  # stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _send(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _ApiError(413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw or raw == b"null":
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _ApiError(400, "request body is not JSON") from None

    def _dispatch(self, method: str) -> None:
        try:
            self._answer(method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client stopped waiting: nothing to answer

    def _answer(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            route = next(((name, m) for meth, pat, name in _ROUTES if meth == method
                          and (m := pat.fullmatch(path))), None)
            if route is None:
                raise _ApiError(404, f"no route for {method} {path}")
            endpoint, match = route
            body = self._read_body() if method == "POST" else None  # read first: clean 401 replies
            if not self.cloud._authorized(self.headers.get("Authorization")):
                with self.cloud._lock:
                    self.cloud.unauthorized += 1
                raise _ApiError(401, "invalid or missing token")
            with self.cloud._lock:
                self.cloud.requests[endpoint] += 1
            fault = self.cloud._take_request_fault(endpoint)
            if fault == "timeout":
                self.cloud._sleep(self.cloud.timeout_delay)
                self.close_connection = True  # dropped unanswered: the request had no effect
                return
            if fault == "5xx":
                raise _ApiError(503, "simulated service unavailability")
            arg = match.groupdict().get("arg")
            if fault in ("lost", "late"):  # the request takes effect; its reply is late, or never comes
                try:
                    code, reply = 200, self.cloud.handle(method, path, body, endpoint, arg)
                except _ApiError as e:
                    code, reply = e.code, {"error": str(e)}
                self.cloud._sleep(self.cloud.timeout_delay)
                if fault == "lost":
                    self.close_connection = True
                    return
                self._send(code, reply)
                return
            self._send(200, self.cloud.handle(method, path, body, endpoint, arg))
        except _ApiError as e:
            self._send(e.code, {"error": str(e)})
        except Exception as e:  # a bug here must answer 500, not hang the client
            self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backends.fake_cloud",
        description="Local fake of the Quandela cloud API (binds 127.0.0.1 only) for the pqt remote backend.")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--token", default=None,
                        help="bearer token clients must send (default: $PCVL_CLOUD_TOKEN)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shot sampling")
    parser.add_argument("--job-duration", type=float, default=0.0, help="seconds each job stays running")
    parser.add_argument("--timeout-delay", type=float, default=2.0,
                        help="seconds a request is held by an injected 'timeout' fault")
    parser.add_argument("--fault", action="append", default=[],
                        help="queue a fault at start (repeatable): 5xx, timeout, lost, late, 5xx:create, lost:create, "
                             "fail, ...")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="probability that any request fails with HTTP 503 (default: 0)")
    parser.add_argument("--verbose", action="store_true", help="log each request (method, path, status)")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("PCVL_CLOUD_TOKEN", "")
    if not token:
        parser.error("give --token T (or set PCVL_CLOUD_TOKEN): clients must send it as their cloud token")
    import perceval.serialization  # noqa: F401  (imported before serving: the first requests must not wait for it)

    try:
        cloud = FakeCloud(token, port=args.port, seed=args.seed, job_duration=args.job_duration,
                          timeout_delay=args.timeout_delay, verbose=args.verbose, error_rate=args.error_rate)
        cloud.inject(args.fault)
        cloud.start()
    except (OSError, ValueError) as e:
        parser.error(str(e))
    print(f"fake Quandela cloud on {cloud.url} (platforms: {', '.join(cloud.platforms)}); Ctrl-C stops it")
    print(f"  PCVL_CLOUD_TOKEN=<your token> pqt train --backend remote --cloud-url {cloud.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
