"""The remote (Quandela cloud) backend, driven through the real Perceval client against the fake cloud.

Everything is offline: ``backends.fake_cloud`` serves the cloud API on 127.0.0.1 and simulates
each job with SLOS. Faults are injected on the server; the backend must retry them, never pay
twice for a request after a kill, and never leak the token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from backends import create_backend
from backends.base import BackendFailure, BudgetExhausted
from backends.fake_cloud import FakeCloud
from backends.local import SLOSBackend
from backends.remote import JOURNAL_NAME, RemoteBackend
from pqt.circuits.photonic import PhotonicQNN
from pqt.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TOKEN = f"pqt-test-token-{uuid.uuid4().hex}"
FAST = {"max_retries": 3, "retry_backoff": 0.01, "poll_interval": 0.01, "request_timeout": 0.75,
        "job_timeout": 20.0}
Q1, Q2 = PhotonicQNN(4, 2), PhotonicQNN(5, 2)
_rng = np.random.default_rng(2024)
P1, P2 = Q1.random_parameters(_rng), Q2.random_parameters(_rng)


@pytest.fixture(scope="module")
def cloud():
    # A short hold for "timeout" faults: longer than the client's request timeout, bounded.
    with FakeCloud(TOKEN, seed=11, timeout_delay=1.5) as server:
        yield server


@pytest.fixture(autouse=True)
def _env(monkeypatch, cloud):
    monkeypatch.setenv("PCVL_CLOUD_TOKEN", TOKEN)
    monkeypatch.delenv("PCVL_CLOUD_URL", raising=False)
    cloud.clear_faults()
    yield
    cloud.clear_faults()


def make(cloud: FakeCloud, run_dir: Path | None, shots: int = 2000, **options) -> RemoteBackend:
    return RemoteBackend(shots=shots, run_dir=run_dir, cloud_url=cloud.url, **{**FAST, **options})


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def tv_bound(outcomes: int, kept: int) -> float:
    # E[TV] <= sqrt(K / n) / 2 for an empirical distribution of n draws over K outcomes; x2 margin.
    return float(np.sqrt(outcomes / kept))


def journal(run_dir: Path) -> list[dict]:
    path = run_dir / JOURNAL_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn line (see test_torn_journal_line_is_ignored)
    return records


def assert_valid(ev, qnn: PhotonicQNN, shots: int) -> None:
    assert ev.probs.shape == (len(qnn.outcomes),)
    assert np.all(ev.probs >= 0) and ev.probs.sum() == pytest.approx(1.0)
    assert ev.shots_sent == shots and 0 < ev.shots_kept <= shots


# ---- results ---------------------------------------------------------------------------------------
def test_frequencies_match_exact_and_local_sampling(cloud, tmp_path):
    shots = 20_000
    backend = make(cloud, tmp_path, shots=shots)
    before = cloud.jobs_created
    remote = backend.evaluate([Q1, Q2], [P1, P2], tag="r0/cobyla/0")
    local = SLOSBackend(shots=shots, seed=3).evaluate([Q1, Q2], [P1, P2])
    assert cloud.jobs_created - before == 2 and backend.counters.jobs_submitted == 2
    for qnn, ph, ev, loc in zip([Q1, Q2], [P1, P2], remote, local, strict=True):
        assert_valid(ev, qnn, shots)
        exact = qnn.exact_distribution(ph)
        bound = tv_bound(len(qnn.outcomes), ev.shots_kept)
        assert tv(ev.probs, exact) < bound
        assert tv(loc.probs, exact) < tv_bound(len(qnn.outcomes), shots)
        assert tv(ev.probs, loc.probs) < 2 * bound
    # Bunched events are paid for but not kept (4 modes / 2 photons bunch often).
    assert remote[0].shots_kept < shots
    c = backend.counters
    assert c.shots_used == 2 * shots and c.shots_kept == remote[0].shots_kept + remote[1].shots_kept
    assert backend.plan(10) == {"jobs": 10, "shots": 10 * shots}


def test_default_pair_9_4_and_8_4(cloud, tmp_path):
    q9, q8 = PhotonicQNN(9, 4), PhotonicQNN(8, 4)
    rng = np.random.default_rng(5)
    p9, p8 = q9.random_parameters(rng), q8.random_parameters(rng)
    backend = create_backend("remote", shots=20_000, run_dir=tmp_path, options={"cloud_url": cloud.url, **FAST})
    out = backend.evaluate([q9, q8], [p9, p8], tag="r0/eval")
    assert [len(e.probs) for e in out] == [126, 70]
    for qnn, ph, ev in zip([q9, q8], [p9, p8], out, strict=True):
        assert_valid(ev, qnn, 20_000)
        assert tv(ev.probs, qnn.exact_distribution(ph)) < tv_bound(len(qnn.outcomes), ev.shots_kept)


def test_qnn_circuit_is_left_untouched_and_qpu_names_accepted(cloud):
    q = PhotonicQNN(4, 2)
    out = make(cloud, None, platform="qpu:belenos").evaluate([q, q], [P1, P1 + 1.0], tag="r0/eval")
    assert not any(p.defined for p in q.parameters)  # phases go to the processor's copy
    # Two circuits of one shape share a processor; each job still carries its own phases.
    assert tv(out[1].probs, q.exact_distribution(P1 + 1.0)) < tv_bound(len(q.outcomes), out[1].shots_kept)


# ---- faults ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("faults", "extra_jobs"), [
    (["timeout:create"], 0),  # dropped unanswered: nothing was created
    (["timeout:status"], 0),
    (["5xx:create"], 0),
    (["5xx:status", "5xx:status"], 0),
    (["5xx:result"], 0),
    (["fail"], 1),
    (["cancel"], 1),
    (["fail", "cancel", "5xx:create", "timeout:result"], 2),
])
def test_faults_are_retried(cloud, tmp_path, faults, extra_jobs):
    backend = make(cloud, tmp_path)
    before = cloud.jobs_created
    cloud.inject(faults)
    out = backend.evaluate([Q1, Q2], [P1, P2], tag="r1/cobyla/3")
    assert cloud.pending_faults == []
    assert cloud.jobs_created - before == 2 + extra_jobs
    assert backend.counters.jobs_submitted == 2 + extra_jobs
    for qnn, ph, ev in zip([Q1, Q2], [P1, P2], out, strict=True):
        assert_valid(ev, qnn, 2000)
        assert tv(ev.probs, qnn.exact_distribution(ph)) < tv_bound(len(qnn.outcomes), ev.shots_kept)
    extra = backend.counters.extra
    assert extra.get("request_retries", 0) + extra.get("job_retries", 0) >= 1
    abandoned = [r for r in journal(tmp_path) if r["event"] == "abandoned"]
    assert len(abandoned) == extra_jobs


def test_stuck_job_is_cancelled_and_resent_after_job_timeout(cloud, tmp_path):
    backend = make(cloud, tmp_path, job_timeout=0.3)
    cancelled = cloud.statuses()["canceled"]
    cloud.inject(["stuck"])
    out = backend.evaluate([Q1], [P1], tag="r2/eval")
    assert_valid(out[0], Q1, 2000)
    assert cloud.statuses()["canceled"] == cancelled + 1  # the stuck job was cancelled on the cloud
    assert backend.counters.jobs_submitted == 2


@pytest.mark.parametrize("fault", ["5xx:create", "timeout:status", "5xx:result", "fail", "cancel"])
def test_too_many_faults_stop_with_one_line(cloud, tmp_path, fault):
    backend = make(cloud, tmp_path, max_retries=2)
    cloud.inject([fault] * 3)
    with pytest.raises(BackendFailure) as err:
        backend.evaluate([Q1], [P1], tag="r3/cobyla/1")
    msg = str(err.value)
    assert "\n" not in msg and TOKEN not in msg
    assert "sim:slos" in msg and cloud.url in msg and "--max-retries 2" in msg
    cloud.clear_faults()
    # The run can go on (pqt train --resume): failed jobs are not reused, a good one is made.
    out = make(cloud, tmp_path).evaluate([Q1], [P1], tag="r3/cobyla/1")
    assert_valid(out[0], Q1, 2000)


def test_rejected_token_mid_run_is_not_retried(cloud, tmp_path, monkeypatch):
    backend = make(cloud, tmp_path)
    backend._rpc.headers = {"Authorization": "Bearer not-the-token"}  # e.g. a token revoked mid-run
    with pytest.raises(BackendFailure, match="rejected the token") as err:
        backend.evaluate([Q1], [P1], tag="r0/eval")
    assert TOKEN not in str(err.value) and "not-the-token" not in str(err.value)


# ---- paying once ------------------------------------------------------------------------------------------
def test_failure_while_waiting_then_resume_reuses_the_jobs(cloud, tmp_path):
    first = make(cloud, tmp_path, max_retries=0)
    before = cloud.jobs_created
    cloud.inject(["5xx:status"])
    with pytest.raises(BackendFailure):
        first.evaluate([Q1, Q2], [P1, P2], tag="r4/cobyla/7")
    assert cloud.jobs_created - before == 2
    submitted = [r for r in journal(tmp_path) if r["event"] == "submitted"]
    assert [(r["tag"], r["index"]) for r in submitted] == [("r4/cobyla/7", 0), ("r4/cobyla/7", 1)]
    del first

    second = make(cloud, tmp_path)
    out = second.evaluate([Q1, Q2], [P1, P2], tag="r4/cobyla/7")
    assert cloud.jobs_created - before == 2  # no new job
    # The counters are the journal's (all attempts): the two jobs, paid once, waited for by this process.
    assert second.counters.jobs_submitted == 2 and second.counters.extra["jobs_resumed"] == 2
    for qnn, ev in zip([Q1, Q2], out, strict=True):
        assert_valid(ev, qnn, 2000)


def test_kill_while_waiting_then_resume_creates_no_job(cloud, tmp_path):
    """A real kill (SIGKILL) of a process waiting on its jobs; a new process picks them up."""
    script = textwrap.dedent(f"""
        import numpy as np
        from backends.remote import RemoteBackend
        from pqt.circuits.photonic import PhotonicQNN
        q1, q2 = PhotonicQNN(4, 2), PhotonicQNN(5, 2)
        b = RemoteBackend(shots=2000, run_dir={str(tmp_path)!r}, cloud_url={cloud.url!r}, poll_interval=0.01)
        b.evaluate([q1, q2], [np.array({P1.tolist()!r}), np.array({P2.tolist()!r})], tag="r5/cobyla/2")
        print("finished", flush=True)
    """)
    before, per_payload = cloud.jobs_created, cloud.job_counts.copy()
    cloud.inject(["hold", "hold"])  # both jobs stay running until released
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while sum(r["event"] == "submitted" for r in journal(tmp_path)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never submitted its jobs"
            time.sleep(0.05)
        time.sleep(0.1)  # let it poll a little
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert cloud.jobs_created - before == 2
    cloud.release()

    backend = make(cloud, tmp_path)
    out = backend.evaluate([Q1, Q2], [P1, P2], tag="r5/cobyla/2")
    assert cloud.jobs_created - before == 2  # resumed, not resent
    assert sorted((cloud.job_counts - per_payload).values()) == [1, 1]  # one job per circuit payload
    assert backend.counters.jobs_submitted == 2  # the journal's count: the killed process's two jobs
    for qnn, ph, ev in zip([Q1, Q2], [P1, P2], out, strict=True):
        assert_valid(ev, qnn, 2000)
        assert tv(ev.probs, qnn.exact_distribution(ph)) < tv_bound(len(qnn.outcomes), ev.shots_kept)


def test_completed_results_come_from_the_journal(cloud, tmp_path):
    first = make(cloud, tmp_path)
    out1 = first.evaluate([Q1, Q2], [P1, P2], tag="r6/cobyla/0")
    requests_before, jobs_before = sum(cloud.requests.values()), cloud.jobs_created

    second = make(cloud, tmp_path)
    platform_requests = sum(cloud.requests.values()) - requests_before  # the construction check only
    out2 = second.evaluate([Q1, Q2], [P1, P2], tag="r6/cobyla/0")
    assert sum(cloud.requests.values()) - requests_before == platform_requests  # nothing refetched
    assert cloud.jobs_created == jobs_before
    for a, b in zip(out1, out2, strict=True):
        np.testing.assert_array_equal(a.probs, b.probs)
        assert (a.shots_sent, a.shots_kept) == (b.shots_sent, b.shots_kept)
    assert second.counters.extra["results_from_journal"] == 2
    assert second.counters.shots_used == 2 * 2000  # still counted: they were paid for in this run

    # Other phases, shots or an untagged request under the same name are new requests.
    second.evaluate([Q1, Q2], [P1 + 0.1, P2], tag="r6/cobyla/0")
    assert cloud.jobs_created == jobs_before + 1
    make(cloud, tmp_path, shots=1000).evaluate([Q1], [P1], tag="r6/cobyla/0")
    assert cloud.jobs_created == jobs_before + 2
    second.evaluate([Q1], [P1], tag="")
    second.evaluate([Q1], [P1], tag="")
    assert cloud.jobs_created == jobs_before + 4


def test_torn_journal_line_is_ignored(cloud, tmp_path):
    make(cloud, tmp_path).evaluate([Q1], [P1], tag="r7/eval")
    path = tmp_path / JOURNAL_NAME
    with open(path, "a") as f:
        f.write('{"event":"submitted","tag":"r7/eva')  # a write cut by a kill
    jobs = cloud.jobs_created
    backend = make(cloud, tmp_path)
    backend.evaluate([Q1], [P1], tag="r7/eval")
    assert cloud.jobs_created == jobs
    backend.evaluate([Q2], [P2], tag="r7/other")
    lines = path.read_text().splitlines()
    # the torn line is kept as it was, and the new job's records (creating, submitted, result) go on below it
    assert lines[-4].endswith('"tag":"r7/eva')
    assert [(json.loads(x)["tag"], json.loads(x)["event"]) for x in lines[-3:]] == [
        ("r7/other", "creating"), ("r7/other", "submitted"), ("r7/other", "result")]


def test_unwritable_journal_stops_without_a_second_job(cloud, tmp_path):
    backend = make(cloud, tmp_path)
    (tmp_path / JOURNAL_NAME).mkdir()  # appending to it now fails
    jobs = cloud.jobs_created
    with pytest.raises(BackendFailure, match="cannot write the job journal"):
        backend.evaluate([Q1], [P1], tag="r7/eval")
    # The creation is journaled before it is sent: one that cannot be recorded is never sent.
    assert cloud.jobs_created == jobs
    with pytest.raises(UserError, match="cannot read the job journal"):
        make(cloud, tmp_path)


# ---- budget and bad input --------------------------------------------------------------------------------
def test_budget_is_enforced_before_any_job(cloud, tmp_path):
    backend = make(cloud, tmp_path, shots=1000)
    backend.max_shots = 3000
    backend.evaluate([Q1, Q2], [P1, P2], tag="r8/cobyla/0")
    jobs = cloud.jobs_created
    with pytest.raises(BudgetExhausted, match="--max-shots"):
        backend.evaluate([Q1, Q2], [P1, P2], tag="r8/cobyla/1")
    assert cloud.jobs_created == jobs
    limited = RemoteBackend(shots=1000, max_shots=2000, run_dir=tmp_path, cloud_url=cloud.url, **FAST)
    limited.evaluate([Q1, Q2], [P1, P2], tag="r8/cobyla/0")  # exactly the budget (from the journal)
    with pytest.raises(BudgetExhausted):
        limited.evaluate([Q1], [P1], tag="r8/cobyla/2")


def test_missing_token_message(cloud, monkeypatch):
    monkeypatch.delenv("PCVL_CLOUD_TOKEN")
    with pytest.raises(UserError) as err:
        make(cloud, None)
    msg = str(err.value)
    assert "PCVL_CLOUD_TOKEN" in msg and ".env.example" in msg and ".env" in msg and "\n" not in msg


def test_wrong_token_fails_at_construction(cloud, monkeypatch):
    monkeypatch.setenv("PCVL_CLOUD_TOKEN", "definitely-wrong")
    rejected = cloud.unauthorized
    with pytest.raises(UserError, match="rejected the token") as err:
        make(cloud, None)
    assert "definitely-wrong" not in str(err.value) and "401" in str(err.value)
    assert cloud.unauthorized > rejected


def test_unreachable_url_fails_fast_with_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        RemoteBackend(shots=100, cloud_url=url, **FAST)
    msg = str(err.value)
    assert url in msg and "sim:slos" in msg and "connection" in msg.lower() and "\n" not in msg
    assert TOKEN not in msg and time.monotonic() - start < 5


def test_unknown_platform_fails_at_construction(cloud):
    with pytest.raises(UserError) as err:
        make(cloud, None, platform="sim:nowhere")
    assert "sim:nowhere" in str(err.value) and "404" in str(err.value)


def test_cloud_url_from_environment(cloud, monkeypatch):
    monkeypatch.setenv("PCVL_CLOUD_URL", cloud.url)
    backend = RemoteBackend(shots=100, **FAST)
    assert backend.url == cloud.url and backend.describe()["cloud_url"] == cloud.url


@pytest.mark.parametrize(("option", "value"), [("max_retries", -1), ("poll_interval", 0), ("job_timeout", "x"),
                                               ("platform", "")])
def test_bad_options(cloud, option, value):
    with pytest.raises(UserError):
        make(cloud, None, **{option: value})


def test_options_and_flags():
    opts = {o.name: o for o in RemoteBackend.options}
    assert opts["platform"].default == "sim:slos" and opts["cloud-url"].default is None
    assert (opts["max-retries"].default, opts["retry-backoff"].default) == (5, 2.0)
    assert (opts["job-timeout"].default, opts["poll-interval"].default) == (3600.0, 1.0)
    assert not any("token" in name for name in opts)
    assert RemoteBackend.remote and not RemoteBackend.can_be_exact and not RemoteBackend.ideal
    with pytest.raises(UserError):
        RemoteBackend(shots=None)


# ---- the token never lands on disk ------------------------------------------------------------------------
def test_token_is_in_no_file_under_run_dir(cloud, tmp_path):
    backend = make(cloud, tmp_path, max_retries=1)
    cloud.inject(["fail", "5xx:status", "timeout:create"])
    backend.evaluate([Q1, Q2], [P1, P2], tag="r9/cobyla/0")
    cloud.inject(["5xx:create"] * 2)
    with pytest.raises(BackendFailure):
        backend.evaluate([Q1], [P1], tag="r9/cobyla/1")
    (tmp_path / "state.json").write_text(json.dumps({"backend": backend.describe(), "counters":
                                                     backend.state_dict()}))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == JOURNAL_NAME for p in files)
    for p in files:
        assert TOKEN.encode() not in p.read_bytes(), p


# ---- the fake cloud itself ----------------------------------------------------------------------------------
def test_fake_cloud_checks_the_token_and_binds_localhost(cloud):
    assert cloud.url.startswith("http://127.0.0.1:")
    url = f"{cloud.url}/api/platforms/sim%3Aslos/processor"
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert requests.get(url, timeout=5).status_code == 401
    ok = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["name"] == "sim:slos"
    with pytest.raises(ValueError, match="unknown fault"):
        cloud.inject(["meteor"])


def test_fake_cloud_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PCVL_CLOUD_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "backends.fake_cloud", "--port", "0", "--token", "cli-token"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        # generous: the server's first answer imports Perceval, which takes seconds on a loaded machine
        r = requests.get(f"{url}/api/platform/sim%3Aslos", headers={"Authorization": "Bearer cli-token"}, timeout=60)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # Without a token it refuses to start.
    done = subprocess.run([sys.executable, "-m", "backends.fake_cloud", "--port", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "--token" in done.stderr


# ---- every job accounted for (issue 9) ------------------------------------------------------------------
def events(run_dir: Path, event: str) -> list[dict]:
    return [r for r in journal(run_dir) if r["event"] == event]


def test_lost_create_reply_is_journaled_uncertain_and_charged(cloud, tmp_path):
    """The cloud makes the job but the reply never comes: the journal and the counters say so."""
    backend = make(cloud, tmp_path, shots=1000)
    before = cloud.jobs_created
    cloud.inject(["lost:create"])
    out = backend.evaluate([Q1, Q2], [P1, P2], tag="r1/cobyla/0")
    assert [len(e.probs) for e in out] == [len(Q1.outcomes), len(Q2.outcomes)]
    assert cloud.jobs_created - before == 3  # the lost one exists on the cloud, unseen by the client
    assert len(events(tmp_path, "creating")) == 3 and len(events(tmp_path, "create_lost")) == 1
    account = backend.accounting()
    assert account["jobs_submitted"] == 2 and account["jobs_uncertain"] == 1
    assert account["shots_charged"] == 3 * 1000  # the worst case: the unanswered creation made a job
    assert backend.counters.shots_used == 2 * 1000  # what the results used
    notes = backend.close()
    assert len(notes) == 1 and "1 job creation(s) got no answer" in notes[0] and "'pqt r1/cobyla/0 #" in notes[0]
    # A new process on the run reads the same account from the journal.
    assert make(cloud, tmp_path).accounting() == {**account, "jobs_not_cancelled": []}


def test_late_create_reply_names_the_orphan_which_is_cancelled(cloud, tmp_path):
    backend = make(cloud, tmp_path, shots=1000)
    before, cancelled = cloud.jobs_created, cloud.statuses()["canceled"]
    cloud.inject(["late:create"])  # the reply comes after --request-timeout (0.75 s): a replacement is sent
    backend.evaluate([Q1], [P1], tag="r2/cobyla/0")
    assert cloud.jobs_created - before == 2
    assert backend.close("finished") == []  # waits for the late reply, then cancels its job
    (late,) = events(tmp_path, "late_reply")
    assert [r["job_id"] for r in events(tmp_path, "cancelled")] == [late["job_id"]]
    assert cloud.job_status(late["job_id"]) == "canceled" and cloud.statuses()["canceled"] == cancelled + 1
    account = backend.accounting()
    assert (account["jobs_submitted"], account["jobs_uncertain"], account["jobs_abandoned"]) == (2, 0, 1)
    assert account["jobs_not_cancelled"] == [] and account["shots_charged"] == 2000


def test_budget_holds_in_the_worst_case(cloud, tmp_path):
    """Shots the cloud may bill never exceed --max-shots, even when a creation's reply is lost."""
    backend = make(cloud, tmp_path, shots=1000, max_shots=2500)
    backend.max_shots = 2500
    before = cloud.jobs_created
    cloud.inject(["lost:create"])
    with pytest.raises(BudgetExhausted) as err:
        backend.evaluate([Q1, Q2], [P1, P2], tag="r3/cobyla/0")
    assert "unanswered job creations" in str(err.value) and "\n" not in str(err.value)
    assert (cloud.jobs_created - before) * 1000 <= 2500  # a replacement would have made it 3,000
    assert backend.shots_charged == 2000


def test_retries_are_counted_per_request_not_per_job(cloud, tmp_path):
    """Each request (creation, status, result) may fail --max-retries times; a success restarts its count."""
    backend = make(cloud, tmp_path, max_retries=1)
    cloud.inject(["5xx:create", "5xx:status", "5xx:result"])
    out = backend.evaluate([Q1], [P1], tag="r4/cobyla/0")  # three failures in all, one per request
    assert_valid(out[0], Q1, 2000)
    assert backend.counters.extra["request_retries"] == 3


def test_a_high_error_rate_does_not_defeat_max_retries(tmp_path, monkeypatch):
    """40% of all requests fail: --max-retries 8 per request still gets every job through."""
    with FakeCloud(TOKEN, seed=5, error_rate=0.4) as flaky:
        backend = make(flaky, tmp_path, max_retries=8, shots=500)
        for k in range(3):
            out = backend.evaluate([Q1, Q2], [P1, P2], tag=f"r5/cobyla/{k}")
            assert [e.shots_sent for e in out] == [500, 500]
        assert flaky.random_errors >= 5
        assert backend.accounting()["jobs_submitted"] == flaky.jobs_created == 6


def test_a_job_whose_cancel_fails_is_named_then_cancelled_later(cloud, tmp_path):
    backend = make(cloud, tmp_path, job_timeout=0.3)
    cloud.inject(["stuck"] + ["5xx:cancel"] * 6)  # the loop's 3 cancel attempts and close()'s 3 all fail
    out = backend.evaluate([Q1], [P1], tag="r6/eval")
    assert_valid(out[0], Q1, 2000)
    (stuck,) = events(tmp_path, "abandoned")
    assert stuck["running"] and cloud.job_status(stuck["job_id"]) == "running"
    notes = backend.close("stopped")
    assert any("could not be cancelled" in n and stuck["job_id"] in n for n in notes)
    assert backend.accounting()["jobs_not_cancelled"] == [stuck["job_id"]]
    # The next attempt on the run (pqt train --resume) tries again, and succeeds.
    assert make(cloud, tmp_path).close("stopped") == []
    assert cloud.job_status(stuck["job_id"]) == "canceled"


def test_a_finished_run_cancels_the_jobs_it_never_used(cloud, tmp_path):
    first = make(cloud, tmp_path, max_retries=0)
    cloud.inject(["hold", "hold", "5xx:status"])
    with pytest.raises(BackendFailure):
        first.evaluate([Q1, Q2], [P1, P2], tag="r7/cobyla/0")
    notes = first.close("stopped")
    held = [r["job_id"] for r in events(tmp_path, "submitted")]
    assert len(held) == 2 and any("kept for pqt train --resume" in n for n in notes)
    assert {cloud.job_status(j) for j in held} <= {"waiting", "running"}
    # A resume that replays other requests (say, a changed --adam-lr) finishes without them: they are cancelled.
    second = make(cloud, tmp_path)
    second.evaluate([Q1, Q2], [P1 + 0.5, P2 + 0.5], tag="r7/cobyla/0")
    assert second.close("finished") == []
    assert {cloud.job_status(j) for j in held} == {"canceled"}
    assert second.accounting()["jobs_abandoned"] == 2


def test_counters_after_a_restart_equal_the_journal(cloud, tmp_path):
    """Jobs that failed before a kill stay counted: the checkpoint predates them, the journal does not."""
    first = make(cloud, tmp_path)
    checkpointed = first.state_dict()  # the last checkpoint, written before this evaluation
    before = cloud.jobs_created
    cloud.inject(["fail", "cancel"])
    first.evaluate([Q1, Q2], [P1, P2], tag="r8/cobyla/0")
    created = cloud.jobs_created - before
    assert created == 4
    second = make(cloud, tmp_path)  # the resumed process
    second.load_state_dict(checkpointed)
    assert second.counters.jobs_submitted == created == len(events(tmp_path, "submitted"))
    assert second.accounting()["jobs_abandoned"] == 2


def test_max_retries_help_says_per_request():
    help_text = {o.name: o.help for o in RemoteBackend.options}["max-retries"]
    assert "per request" in help_text


# ---- a whole run's accounting through the trainer ---------------------------------------------------------
def _remote_config(cloud: FakeCloud, **overrides):
    from pqt.training.config import TrainConfig

    base = {"train_limit": 300, "test_limit": 100, "adam_epochs": 1, "cobyla_maxiter": 3, "phase_batch": 100,
            "rounds": 2, "shots": 500, "backend": "remote", "threads": 1,
            "backend_options": {**FAST, "cloud_url": cloud.url}}
    return TrainConfig.from_dict({**base, **overrides})


def test_a_remote_run_reports_uncertain_and_abandoned_jobs(cloud, tmp_path, capsys):
    from pqt.cli import main
    from pqt.training.trainer import Trainer

    lines: list[str] = []
    before = cloud.jobs_created
    cloud.inject(["lost:create", "fail"])
    trainer = Trainer(_remote_config(cloud), tmp_path, log=lines.append)
    metrics = trainer.run()
    assert metrics["status"] == "finished"
    # The bill, the journal and the server agree. (On a busy machine an ordinary creation can outlast
    # --request-timeout too: its late answer is then journaled, and its job counted, abandoned, cancelled.)
    created = cloud.jobs_created - before
    known = len(events(tmp_path, "submitted")) + len(events(tmp_path, "late_reply"))
    uncertain = len(events(tmp_path, "create_lost")) - len(events(tmp_path, "late_reply"))
    assert metrics["jobs_submitted"] == known and metrics["jobs_uncertain"] == uncertain >= 1
    assert created == known + uncertain  # every unanswered creation did make a job here: the bill says "up to"
    # the failed job (unless the fault hit the lost job, which nobody saw fail) and any late reply's orphan
    assert metrics["jobs_abandoned"] == len(events(tmp_path, "abandoned"))
    assert metrics["jobs_not_cancelled"] == []
    assert metrics["shots_charged"] == 500 * created
    assert metrics["shots_used"] == 500 * len(events(tmp_path, "result"))
    assert any(f"uncertain {uncertain}" in line for line in lines if line.startswith("round 1/2"))
    assert any(line.startswith(f"note: {uncertain} job creation(s) got no answer") for line in lines)
    assert metrics["notes"] and "got no answer" in metrics["notes"][0]
    capsys.readouterr()
    assert main(["plan", "--resume", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{known} submitted, {uncertain} uncertain" in out and "0 not cancelled" in out


def test_counters_after_a_killed_run_equal_the_journal_and_the_server(cloud, tmp_path, capsys):
    """kill -9 of `pqt train --backend remote` after failed jobs; the resume's counters are the journal's."""
    from pqt.cli import main

    run = tmp_path / "run"
    before = cloud.jobs_created
    cloud.inject(["fail", "cancel"])
    options = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    code = "import sys; from pqt.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, "train", "--backend", "remote", "--cloud-url", cloud.url,
                             *options, "--train-limit", "300", "--test-limit", "100", "--adam-epochs", "1",
                             "--cobyla-maxiter", "30", "--phase-batch", "100", "--shots", "500", "--rounds", "3",
                             "--threads", "1", "--out", str(run)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # two jobs were lost (and resent) before the kill, in round 1: the checkpoint (round 0) predates them
        while len(events(run, "abandoned")) < 2 or len(events(run, "result")) < 8:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run never got there"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_files_round(run) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--rounds", "1"]) == 0, capsys.readouterr().err
    m = json.loads((run / "metrics.json").read_text())
    known = len(events(run, "submitted")) + len(events(run, "late_reply"))
    assert m["jobs_submitted"] == known and m["jobs_abandoned"] == len(events(run, "abandoned")) >= 2
    created = cloud.jobs_created - before
    assert known <= created <= known + m["jobs_uncertain"]  # a kill during a creation leaves it uncertain
    assert [a["status"] for a in m["attempts"]] == ["killed", "finished"]


def run_files_round(run: Path) -> int:
    import torch

    return int(torch.load(run / "checkpoint.pt", weights_only=True)["round"])
