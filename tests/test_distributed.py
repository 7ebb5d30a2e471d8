"""Distributed QNNs: each circuit on its own processor (two fake clouds, or local + cloud), submitted
concurrently, journaled and accounted per processor, one shot budget for the run."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from backends.base import BudgetExhausted
from backends.distributed import DistributedBackend, parse_spec, processor_label
from backends.fake_cloud import FakeCloud
from pqt.circuits.photonic import PhotonicQNN
from pqt.errors import UserError
from pqt.training.config import TrainConfig

TOKEN = f"pqt-dist-token-{uuid.uuid4().hex}"
FAST = {"max_retries": 3, "retry_backoff": 0.01, "poll_interval": 0.01, "request_timeout": 2.0, "job_timeout": 30.0}
Q1, Q2 = PhotonicQNN(4, 2), PhotonicQNN(5, 2)
_rng = np.random.default_rng(7)
P1, P2 = Q1.random_parameters(_rng), Q2.random_parameters(_rng)


@pytest.fixture(scope="module")
def clouds():
    with FakeCloud(TOKEN, seed=1, timeout_delay=1.0) as a, FakeCloud(TOKEN, seed=2, timeout_delay=1.0) as b:
        yield a, b


@pytest.fixture(autouse=True)
def _env(monkeypatch, clouds):
    monkeypatch.setenv("PCVL_CLOUD_TOKEN", TOKEN)
    monkeypatch.delenv("PCVL_CLOUD_URL", raising=False)
    for c in clouds:
        c.clear_faults()
    yield
    for c in clouds:
        c.clear_faults()
        c.release()


def two_clouds(clouds, run_dir: Path, **kwargs) -> DistributedBackend:
    a, b = clouds
    specs = [f"remote:sim:slos@{a.url}", f"remote:qpu:belenos@{b.url}"]
    return DistributedBackend(specs, shots=kwargs.pop("shots", 2000), run_dir=run_dir, options=dict(FAST),
                              **kwargs)


def test_spec_parsing() -> None:
    assert parse_spec("slos") == ("slos", {})
    assert parse_spec("remote") == ("remote", {})
    assert parse_spec("remote:qpu:belenos") == ("remote", {"platform": "qpu:belenos"})
    assert parse_spec("remote:sim:ascella@http://h:1") == ("remote", {"platform": "sim:ascella",
                                                                      "cloud_url": "http://h:1"})
    assert processor_label("remote:qpu:belenos") == "remote_qpu_belenos"
    assert processor_label("remote:x@http://a") == processor_label("remote:x@http://a") != processor_label(
        "remote:x@http://b")
    with pytest.raises(UserError, match="not a backend spec"):
        parse_spec("quantum-magic")


def test_two_cloud_processors_with_a_fault_on_one(clouds, tmp_path) -> None:
    a, b = clouds
    backend = two_clouds(clouds, tmp_path)
    before = (a.jobs_created, b.jobs_created)
    b.inject(["fail"])  # only the second processor's job fails (and is retried there)
    evs = backend.evaluate([Q1, Q2], [P1, P2], tag="r0/cobyla/0")
    for qnn, ev in zip([Q1, Q2], evs, strict=True):
        assert ev.probs.shape == (len(qnn.outcomes),) and ev.probs.sum() == pytest.approx(1.0)
    assert (a.jobs_created - before[0], b.jobs_created - before[1]) == (1, 2)
    report = {p["processor"].split("@")[0]: p for p in backend.processor_report()}
    first, second = report["remote:sim:slos"], report["remote:qpu:belenos"]
    assert first["circuits"] == [0] and second["circuits"] == [1]
    assert first["jobs_submitted"] == 1 and second["jobs_submitted"] == 2
    assert first["job_retries"] == 0 and second["job_retries"] == 1
    assert first["shots_used"] == 2000 and second["shots_used"] == 2000
    assert backend.jobs_paid == 3 and backend.counters.shots_used == 4000
    journals = sorted(p.name for p in tmp_path.glob("jobs-*.jsonl"))
    assert len(journals) == 2  # one journal per processor
    assert all(0 < p["postselection_rate"] <= 1 for p in report.values())


def test_processors_are_submitted_concurrently(clouds, tmp_path) -> None:
    """While the first processor's job is held on its cloud, the second one's is created and finished."""
    a, b = clouds
    backend = two_clouds(clouds, tmp_path)
    a.inject(["hold"])
    b_before = b.jobs_created
    result: list = []
    worker = threading.Thread(target=lambda: result.append(backend.evaluate([Q1, Q2], [P1, P2], tag="t")))
    worker.start()
    deadline = time.monotonic() + 30
    while b.jobs_created == b_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.jobs_created == b_before + 1 and worker.is_alive()  # the second went ahead of the held first
    a.release()
    worker.join(timeout=60)
    assert len(result) == 1 and len(result[0]) == 2


def test_one_shot_budget_over_all_processors(clouds, tmp_path) -> None:
    backend = two_clouds(clouds, tmp_path, shots=1000, max_shots=3000)
    backend.evaluate([Q1, Q2], [P1, P2], tag="one")  # 2,000 charged
    with pytest.raises(BudgetExhausted, match="over all processors"):
        backend.evaluate([Q1, Q2], [P1, P2], tag="two")  # the second processor's job would exceed 3,000
    assert backend.shots_charged <= 3000


def test_local_and_cloud_processors_train(clouds, tmp_path, tiny_config, make_trainer) -> None:
    a, _ = clouds
    before = a.jobs_created
    config = tiny_config(rounds=1, shots=500,
                         cobyla_maxiter=6, circuit_backends=("slos", f"remote:sim:slos@{a.url}"),
                         backend_options={"poll_interval": 0.01, "retry_backoff": 0.01})
    metrics = make_trainer(config, tmp_path / "run").run()
    assert metrics["status"] == "finished"
    local, cloud = metrics["processors"]
    assert local["processor"] == "slos" and local["circuits"] == [0] and local["jobs_submitted"] == 0
    assert cloud["circuits"] == [1] and cloud["jobs_submitted"] == a.jobs_created - before > 0
    assert local["evaluations"] == cloud["evaluations"] == metrics["circuit_evaluations"] // 2
    assert metrics["jobs_submitted"] == cloud["jobs_submitted"]
    assert metrics["backend_settings"]["backend"] == "distributed"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["processors"][1]["shots_used"] > 0


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"circuit_backends": ("slos",)}, "one per circuit"),
    ({"circuit_backends": ("slos", "slos"), "backend": "noisy"}, "not both"),
    ({"circuit_backends": ("slos", "warp-drive")}, "not a backend spec"),
    ({"generator": "qubit", "circuit_backends": ("remote",)}, "local simulator only"),
])
def test_bad_circuit_backends_are_one_line(overrides, needle) -> None:
    with pytest.raises(UserError, match=needle):
        TrainConfig(**overrides).validate()
