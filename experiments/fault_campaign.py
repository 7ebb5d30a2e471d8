"""A fault campaign against pqt (issue 9): cloud faults, kill -9s, a full and a read-only disk.

    python experiments/fault_campaign.py --out /tmp/pqt-campaign --report experiments/results/fault_campaign.json

What it does, all offline and with real processes:

* remote runs: ``pqt train --backend remote`` against a fake cloud (:mod:`backends.fake_cloud`, one per
  run) that fails a share of all requests at random (HTTP 503) and receives a random fault every few
  tenths of a second (lost, late or dropped requests, 5xx on one endpoint, failed, cancelled and stuck
  jobs); some runs are killed with SIGKILL at random moments and resumed, a run stopped by its backend
  is resumed too. At the end the jobs the server created are set against those the journal and
  ``metrics.json`` report, and the jobs still running on the server against those reported;
  the token is looked for in every file of the run.
* local kills: tiny local runs killed at random moments and resumed, each compared with an
  uninterrupted run (``model.pt`` byte for byte, metrics bar timing).
* a sweep killed: ``pqt sweep --jobs 2`` killed with SIGKILL while its workers train; the workers must
  stop, and the rerun finish every run.
* disks (needs ``unshare -Urm`` to mount a tmpfs): a read-only ``--out`` and a disk that fills up after
  round 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.fake_cloud import FakeCloud  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from pqt.cli import main; sys.exit(main(sys.argv[1:]))"]
TINY = ["--train-limit", "300", "--test-limit", "100", "--adam-epochs", "1", "--phase-batch", "100",
        "--threads", "1"]
FAULTS = ["lost:create", "late:create", "timeout:create", "5xx:create", "timeout:status", "5xx:status",
          "5xx:result", "timeout:result", "lost:status", "5xx:cancel", "fail", "cancel", "stuck"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def journal(run: Path) -> list[dict[str, Any]]:
    records = []
    path = run / "jobs.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line torn by a kill
                records.append(json.loads(line))
    return records


def metrics(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def run_until_done(cmd: list[str], resume: list[str], environ: dict[str, str], rng: random.Random, kills: int,
                   watch: Path) -> dict[str, Any]:
    """Start, SIGKILL up to ``kills`` times at random moments, resume after each kill or stop, until done."""
    killed = stopped = 0
    killed_when: list[str] = []  # the run's status when each kill struck (a kill can land after the last round)
    errors: list[str] = []
    argv = cmd
    for _ in range(kills + 8):
        proc = subprocess.Popen(argv, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if killed < kills:
            # kill once the run is under way: a random moment after its first journal record or round
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and not (
                    (watch / "jobs.jsonl").exists() or metrics(watch).get("rounds_completed")):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 4.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                m = metrics(watch)
                killed_when.append(f"{m.get('status', 'not started')} after round {m.get('rounds_completed', 0)}")
                argv = resume
                continue
        _, err = proc.communicate(timeout=900)
        if proc.returncode == 0:
            return {"kills": killed, "killed_when": killed_when, "stops": stopped, "errors": errors}
        lines = err.strip().splitlines()
        errors.append(lines[-1] if lines else f"exit {proc.returncode}")
        if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("pqt: error: "):
            raise RuntimeError(f"not a one-line stop (exit {proc.returncode}): {err[-2000:]}")
        stopped += 1
        argv = resume
    raise RuntimeError(f"the run never finished: {errors}")


# --------------------------------------------------------------------------- remote runs


def remote_run(index: int, out: Path, rng: random.Random, kills: int) -> dict[str, Any]:
    token = f"campaign-{uuid.uuid4().hex}"
    error_rate = rng.choice([0.1, 0.2, 0.3])
    run = out / f"remote-{index}"
    # Timeouts sized for a busy shared machine: the fake cloud simulates each job inside its create request.
    with FakeCloud(token, seed=index, error_rate=error_rate, timeout_delay=4.0) as cloud:
        stop = threading.Event()

        def inject() -> None:
            # one fault at a time, at a random moment: queued faults would otherwise pile up on the
            # slowed-down requests they cause and starve the run
            while not stop.wait(rng.uniform(0.2, 1.0)):
                if not cloud.pending_faults:
                    cloud.inject([rng.choice(FAULTS)])

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        options = ["--backend", "remote", "--cloud-url", cloud.url, "--max-retries", "8", "--retry-backoff",
                   "0.01", "--poll-interval", "0.02", "--request-timeout", "2.5", "--job-timeout", "3"]
        cmd = [*CLI, "train", *TINY, *options, "--cobyla-maxiter", "8", "--shots", "500", "--rounds", "2",
               "--out", str(run)]
        try:
            outcome = run_until_done(cmd, [*CLI, "train", "--resume", str(run)], env(PCVL_CLOUD_TOKEN=token), rng,
                                     kills, run)
        finally:
            stop.set()
            injector.join()
        time.sleep(0.5)
        statuses = cloud.statuses()
        applied = sum(cloud.faults_applied.values())
        faults = Counter(k.split(":")[0] for k in cloud.faults_applied.elements())
        created = cloud.jobs_created
    records = journal(run)
    events = Counter(r["event"] for r in records)
    m = metrics(run)
    known = events["submitted"] + events["late_reply"]
    uncertain = m["jobs_uncertain"]
    leak = [str(p) for p in run.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    checks = {
        "metrics equal the journal": m["jobs_submitted"] == known and m["jobs_abandoned"] == events["abandoned"],
        "server jobs within journal + uncertain": known <= created <= known + uncertain,
        "jobs left running on the server are reported": statuses["waiting"] + statuses["running"]
        <= len(m["jobs_not_cancelled"]) + uncertain,
        "finished": m["status"] == "finished",
        "token in no file": not leak,
    }
    return {"run": run.name, "error_rate": error_rate, "faults_injected": applied, "kills": outcome["kills"],
            "killed_when": outcome["killed_when"], "faults_by_kind": dict(faults),
            "stops_resumed": outcome["stops"], "stop_messages": outcome["errors"], "server_jobs": created,
            "server_still_running": statuses["waiting"] + statuses["running"], "journal_submitted": known,
            "journal_uncertain": uncertain, "metrics_jobs_submitted": m["jobs_submitted"],
            "metrics_jobs_uncertain": uncertain, "jobs_abandoned": m["jobs_abandoned"],
            "jobs_not_cancelled": len(m["jobs_not_cancelled"]), "attempts": [a["status"] for a in m["attempts"]],
            "checks": checks}


# --------------------------------------------------------------------------- local kills


def local_kills(out: Path, rng: random.Random, runs: int) -> list[dict[str, Any]]:
    flags = [*TINY, "--cobyla-maxiter", "20", "--shots", "1000", "--rounds", "8"]
    reference = out / "local-reference"
    subprocess.run([*CLI, "train", *flags, "--out", str(reference)], cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL)
    results = []
    for i in range(runs):
        run = out / f"local-{i}"
        outcome = run_until_done([*CLI, "train", *flags, "--out", str(run)], [*CLI, "train", "--resume", str(run)],
                                 env(), rng, rng.choice([1, 2]), run)

        def bare(m: dict[str, Any]) -> dict[str, Any]:
            timing = ("wall_seconds", "wall_seconds_attempt", "rounds_seconds", "attempts", "resumes")
            m = {k: v for k, v in m.items() if k not in timing}
            m["history"] = [{k: v for k, v in e.items() if k != "seconds"} for e in m["history"]]
            return m

        same_model = (run / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
        m = metrics(run)
        results.append({"run": run.name, "kills": outcome["kills"], "killed_when": outcome["killed_when"],
                        "attempts": [a["status"] for a in m["attempts"]],
                        "model.pt identical to the uninterrupted run's": same_model,
                        "metrics identical bar timing": bare(m) == bare(metrics(reference)),
                        "wall_seconds": round(m["wall_seconds"], 1),
                        "wall_seconds_attempt": round(m["wall_seconds_attempt"], 1),
                        "temp files left": len(list(run.glob(".*.tmp")))})
    return results


# --------------------------------------------------------------------------- a killed sweep


def killed_sweep(out: Path) -> dict[str, Any]:
    study = out / "campaign_sweep.toml"
    study.write_text('name = "campaign"\nprotocol = "fault-campaign"\n[base]\ntrain_limit = 200\ntest_limit = 100\n'
                     'rounds = 6\nadam_epochs = 1\ncobyla_maxiter = 10\nphase_batch = 50\nshots = "exact"\n'
                     '[grid]\nbond_dim = [1, 2]\n')
    runs, results = out / "sweep-runs", out / "sweep-results"
    cmd = [*CLI, "sweep", str(study), "--jobs", "2", "--out", str(runs), "--results", str(results)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dirs = [runs / "campaign" / f"bond_dim={c}" for c in (1, 2)]
    deadline = time.monotonic() + 300
    while not all(metrics(d).get("rounds_completed", 0) >= 1 for d in dirs):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the sweep's workers never trained")
        time.sleep(0.1)
    workers = [int((d / ".run.lock").read_text()) for d in dirs]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while any(alive(p) for p in workers) and time.monotonic() - killed_at < 60:
        time.sleep(0.1)
    stopped_after = time.monotonic() - killed_at
    statuses = [metrics(d).get("status") for d in dirs]
    rerun = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    return {"workers": len(workers), "workers_alive_after_kill": sum(alive(p) for p in workers),
            "seconds_until_they_stopped": round(stopped_after, 1), "their_status": statuses,
            "rerun_exit": rerun.returncode, "rerun_summary": rerun.stdout.strip().splitlines()[-1:],
            "final_status": [metrics(d).get("status") for d in dirs]}


# --------------------------------------------------------------------------- disks (inside `unshare -Urm`)


def disks(out: Path) -> dict[str, Any]:
    """Run in a private mount namespace: a read-only tmpfs --out, then a tmpfs that fills up after round 1."""
    flags = [*TINY, "--cobyla-maxiter", "40", "--shots", "exact", "--rounds", "3"]
    ro, full = out / "ro", out / "full"
    ro.mkdir(parents=True, exist_ok=True)
    full.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
    r = subprocess.run([*CLI, "train", *flags, "--out", str(ro / "run")], cwd=REPO, env=env(), capture_output=True,
                       text=True)
    result: dict[str, Any] = {"read_only": {"exit": r.returncode, "stderr": r.stderr.strip()}}
    run = full / "run"
    proc = subprocess.Popen([*CLI, "train", *flags, "--out", str(run)], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while metrics(run).get("rounds_completed") != 1:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    st = os.statvfs(full)
    with open(full / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 65536))  # metrics.json still fits, a checkpoint does not
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    import torch

    m = metrics(run)
    result["full"] = {"exit": proc.returncode, "stderr": err.strip(),
                      "checkpoint_round": torch.load(run / "checkpoint.pt", weights_only=True)["round"],
                      "metrics_rounds_completed": m["rounds_completed"], "metrics_status": m["status"],
                      "temp_files_left": [p.name for p in run.glob(".*.tmp")]}
    (full / "filler").unlink()
    r = subprocess.run([*CLI, "train", "--resume", str(run)], cwd=REPO, env=env(), capture_output=True, text=True)
    result["full"]["resume_exit"] = r.returncode
    result["full"]["final_status"] = metrics(run).get("status")
    return result


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pqt-fault-campaign"))
    parser.add_argument("--report", type=Path, help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remote-runs", type=int, default=6)
    parser.add_argument("--local-runs", type=int, default=3)
    parser.add_argument("--disks-only", action="store_true", help=argparse.SUPPRESS)  # inside unshare
    args = parser.parse_args()
    if args.disks_only:
        print(json.dumps(disks(args.out)))
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rng = random.Random(args.seed)
    started = time.monotonic()
    report: dict[str, Any] = {"seed": args.seed, "machine": f"{os.cpu_count()} cores, shared with other jobs"}
    report["remote"] = [remote_run(i, args.out, rng, kills=[0, 1, 2][i % 3]) for i in range(args.remote_runs)]
    report["local"] = local_kills(args.out, rng, args.local_runs)
    report["sweep"] = killed_sweep(args.out)
    if shutil.which("unshare"):
        done = subprocess.run(["unshare", "-Urm", sys.executable, __file__, "--disks-only", "--out",
                               str(args.out / "disks")], cwd=REPO, env=env(), capture_output=True, text=True)
        report["disks"] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}
    remote = report["remote"]
    report["totals"] = {
        "cloud faults injected": sum(r["faults_injected"] for r in remote),
        "kill -9 of remote runs": sum(r["kills"] for r in remote),
        "backend stops resumed": sum(r["stops_resumed"] for r in remote),
        "kill -9 of local runs": sum(r["kills"] for r in report["local"]),
        "faults by kind": dict(sum((Counter(r["faults_by_kind"]) for r in remote), Counter())),
        "kill -9 of sweeps": 1,
        "server jobs": sum(r["server_jobs"] for r in remote),
        "journaled (acknowledged)": sum(r["journal_submitted"] for r in remote),
        "journaled uncertain": sum(r["journal_uncertain"] for r in remote),
        "reported jobs_submitted": sum(r["metrics_jobs_submitted"] for r in remote),
        "reported jobs_uncertain": sum(r["metrics_jobs_uncertain"] for r in remote),
        "server jobs still running": sum(r["server_still_running"] for r in remote),
        "failed checks": [f"{r['run']}: {k}" for r in remote for k, ok in r["checks"].items() if not ok],
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
