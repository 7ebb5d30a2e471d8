"""Shared fixtures for the core suite: tiny training configurations and trained run directories.

The trained runs are session-scoped (each costs a few seconds) and must be treated as read-only by
the tests that use them; a test that needs to change a run copies it into its own ``tmp_path``.
``pqt.training.trainer`` and ``pqt.cli`` are imported inside the fixtures only, so that the photonics, MPS and
generator tests still run (and report) if the training layer cannot be imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# The tiny run every training test uses (real partial-mnist data, found automatically).
TINY = {
    "train_limit": 300,
    "test_limit": 100,
    "rounds": 2,
    "adam_epochs": 1,
    "cobyla_maxiter": 20,
    "phase_batch": 100,
    "shots": 1000,
    # Fixed: torch's thread count changes summation order, and other tests set it process-wide, so a run
    # compared bit for bit with a session fixture must not depend on which tests ran before it.
    "threads": 1,
}

# The same settings as ``pqt train`` flags (rounds left out: each test chooses).
TINY_FLAGS = [
    "--train-limit", "300", "--test-limit", "100", "--adam-epochs", "1", "--cobyla-maxiter", "20",
    "--phase-batch", "100", "--shots", "1000", "--threads", "1",
]


def _quiet(_line: str) -> None:
    pass


class RunTools:
    """Readers and comparisons for run directories (the ``runs`` fixture)."""

    @staticmethod
    def read_metrics(run: Path) -> dict[str, Any]:
        return json.loads((Path(run) / "metrics.json").read_text())

    @staticmethod
    def load_checkpoint(run: Path) -> dict[str, Any]:
        import torch

        # weights_only=True: a run folder someone sent you must load without running pickled code
        return torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=True)

    @staticmethod
    def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
        # timing (total, this attempt, the rounds', each attempt's), and the record of how the run was resumed:
        # what was computed must still match
        m = {k: v for k, v in metrics.items()
             if k not in ("wall_seconds", "wall_seconds_attempt", "rounds_seconds", "attempts", "resumes")}
        m["history"] = [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["history"]]
        return m

    @classmethod
    def assert_same_run(cls, a: Path, b: Path) -> None:
        """Same final state: MPS, Adam, phases, distributions, counters, model.pt, metrics (bar timing)."""
        import torch

        ca, cb = cls.load_checkpoint(a), cls.load_checkpoint(b)
        assert ca["round"] == cb["round"]
        assert ca["method"].keys() == cb["method"].keys()
        for key in ca["method"]:
            assert torch.equal(ca["method"][key], cb["method"][key]), key
        adam_a, adam_b = ca["adam"]["state"], cb["adam"]["state"]
        assert adam_a.keys() == adam_b.keys()
        for k in adam_a:
            for name in adam_a[k]:
                assert torch.equal(adam_a[k][name], adam_b[k][name]), (k, name)
        assert len(ca["circuit_parameters"]) == len(cb["circuit_parameters"])
        for pa, pb in zip(ca["circuit_parameters"], cb["circuit_parameters"], strict=True):
            np.testing.assert_array_equal(pa, pb)
        for da, db in zip(ca["dists"], cb["dists"], strict=True):
            np.testing.assert_array_equal(da, db)
        assert ca["backend"] == cb["backend"]
        ma = torch.load(Path(a) / "model.pt", weights_only=True)
        mb = torch.load(Path(b) / "model.pt", weights_only=True)
        assert ma.keys() == mb.keys()
        for key in ma:
            assert torch.equal(ma[key], mb[key]), key
        assert cls.without_timing(cls.read_metrics(a)) == cls.without_timing(cls.read_metrics(b))


@pytest.fixture(scope="session")
def runs() -> type[RunTools]:
    return RunTools


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """The tiny settings as ``pqt train`` flags (add ``--rounds``)."""
    return list(TINY_FLAGS)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """Factory: ``tiny_config(rounds=1, ...)`` -> a TrainConfig with the tiny settings + overrides."""
    from pqt.training.config import TrainConfig

    def make(**overrides: Any) -> TrainConfig:
        return TrainConfig(**{**TINY, **overrides})

    return make


@pytest.fixture(scope="session")
def make_trainer() -> Callable[..., Any]:
    """Factory: ``make_trainer(config, out_dir)`` -> a silent Trainer."""
    from pqt.training.trainer import Trainer

    def make(config: Any, out_dir: Path) -> Any:
        return Trainer(config, Path(out_dir), log=_quiet)

    return make


@pytest.fixture(scope="session")
def two_round_run(tmp_path_factory: pytest.TempPathFactory, tiny_config, make_trainer) -> dict[str, Any]:
    """An uninterrupted 2-round run (Trainer API): {'dir': Path, 'metrics': dict}. Read-only."""
    out = tmp_path_factory.mktemp("run_two_rounds")
    metrics = make_trainer(tiny_config(rounds=2), out).run()
    return {"dir": out, "metrics": metrics}


@pytest.fixture(scope="session")
def one_round_run(tmp_path_factory: pytest.TempPathFactory, tiny_config, make_trainer) -> Path:
    """A run stopped cleanly after round 1 of the same configuration (rounds=1). Copy before changing."""
    out = tmp_path_factory.mktemp("run_one_round")
    make_trainer(tiny_config(rounds=1), out).run()
    return out


@pytest.fixture(scope="session")
def cli_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny end-to-end ``pqt train`` run through the CLI (1 round). Read-only."""
    from pqt.cli import main

    out = tmp_path_factory.mktemp("cli_run") / "run"
    rc = main(["train", "--train-limit", "300", "--test-limit", "100", "--rounds", "1", "--adam-epochs", "1",
               "--cobyla-maxiter", "10", "--phase-batch", "100", "--out", str(out)])
    assert rc == 0, "the tiny pqt train run failed"
    return out
