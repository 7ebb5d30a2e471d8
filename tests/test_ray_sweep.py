"""`pqt sweep --executor ray` on a real local Ray cluster: runs as Ray tasks, a worker killed mid-run, the rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent

STUDY = """
name = "raytiny"
protocol = "smoke-ray"
[base]
train_limit = 200
test_limit = 100
rounds = {rounds}
adam_epochs = 1
cobyla_maxiter = 20
phase_batch = 50
shots = "exact"
threads = 1
[grid]
bond_dim = [2]
seed = {seeds}
"""


def _sweep(tmp_path: Path, study: Path, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from pqt.cli import main; sys.exit(main())", "sweep", str(study),
           "--executor", "ray", "--cpus-per-run", "1", "--out", str(tmp_path / "runs"),
           "--results", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DISABLE_USAGE_STATS": "1"}
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_study_runs_as_ray_tasks(tmp_path: Path) -> None:
    study = tmp_path / "raytiny.toml"
    study.write_text(STUDY.format(rounds=1, seeds="[0, 1]"))
    proc = _sweep(tmp_path, study)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray (local cluster)" in proc.stdout and "2 run(s) finished now" in proc.stdout
    for seed in (0, 1):
        run = tmp_path / "runs" / "raytiny" / f"bond_dim=2,seed={seed}"
        assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
        assert "Ray worker pid" in (run / "worker.log").read_text()
    assert (tmp_path / "results" / "raytiny_summary.csv").is_file()
    # a second sweep skips both, without training anything
    again = _sweep(tmp_path, study)
    assert again.returncode == 0 and "2 already finished" in again.stdout


def test_killed_ray_worker_is_resumed_by_the_rerun(tmp_path: Path) -> None:
    study = tmp_path / "raytiny.toml"
    study.write_text(STUDY.format(rounds=6, seeds="[0]"))
    run = tmp_path / "runs" / "raytiny" / "bond_dim=2,seed=0"
    proc = _sweep(tmp_path, study, wait=False)
    try:
        deadline = time.monotonic() + 180
        pid = None
        while time.monotonic() < deadline:
            log = (run / "worker.log").read_text() if (run / "worker.log").is_file() else ""
            metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
            if metrics.get("rounds_completed", 0) >= 1 and (m := re.search(r"Ray worker pid (\d+)", log)):
                pid = int(m.group(1))
                break
            time.sleep(0.2)
        assert pid is not None, "the run never finished its first round"
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-run, as a lost node would
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "Ray worker running it died" in out + err
    killed = json.loads((run / "metrics.json").read_text())
    assert 1 <= killed["rounds_completed"] < 6
    first_round = killed["history"][0]

    rerun = _sweep(tmp_path, study)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = json.loads((run / "metrics.json").read_text())
    assert final["status"] == "finished" and final["rounds_completed"] == 6
    assert final["history"][0] == first_round  # resumed from the checkpoint, not restarted
    assert "resuming after round" in (run / "train.log").read_text()
