"""The training loop on real data (tiny runs): run files, metrics contract, resume, divergence, plan."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pqt.data import load_dataset
from pqt.errors import UserError
from pqt.targets import PaperCNN
from pqt.training.config import TrainConfig

METRIC_KEYS = {
    "test_accuracy", "train_accuracy", "test_loss", "train_loss", "generalization_error", "bond_dim",
    "mps_parameters", "photonic_parameters", "trainable_parameters", "target_parameters", "shots", "backend",
    "rounds_completed", "seed", "wall_seconds", "history",
}


def accuracy_and_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(images)
    return (logits.argmax(1) == labels).sum().item() / len(labels), F.cross_entropy(logits, labels).item()


# --------------------------------------------------------------------------- one finished run


def test_metrics_contract(runs, two_round_run) -> None:
    run = two_round_run["dir"]
    m = runs.read_metrics(run)
    assert m.keys() >= METRIC_KEYS
    assert m["status"] == "finished"
    for key in ("test_accuracy", "train_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    for key in ("test_loss", "train_loss"):
        assert math.isfinite(m[key]) and m[key] > 0
    assert m["generalization_error"] == m["test_loss"] - m["train_loss"]
    assert m["bond_dim"] == 4
    assert m["mps_parameters"] == 31 * 4**2 == 496
    assert m["photonic_parameters"] == 72 + 56
    assert m["trainable_parameters"] == 496 + 128
    assert m["target_parameters"] == 6690
    assert m["shots"] == 1000 and m["backend"] == "slos"
    assert m["rounds_completed"] == 2 and m["seed"] == 0
    assert m["wall_seconds"] > 0
    assert [e["round"] for e in m["history"]] == [1, 2]
    last = m["history"][-1]
    for key in ("test_accuracy", "train_accuracy", "test_loss", "train_loss"):
        assert m[key] == last[key]
    # Shot accounting: per round 2 QNNs x (20 COBYLA calls + 1 end-of-round), plus round 1's Adam stage.
    assert m["circuit_evaluations"] == 2 + 2 * 2 * (20 + 1)
    assert m["shots_used"] == 1000 * m["circuit_evaluations"]
    assert [e["objective_evaluations"] for e in m["history"]] == [20, 20]
    # the metrics returned by run() are the ones on disk
    assert two_round_run["metrics"] == m


def test_run_files_written(runs, two_round_run) -> None:
    run = two_round_run["dir"]
    for name in ("checkpoint.pt", "model.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp")), "atomic-write leftovers"
    ck = runs.load_checkpoint(run)
    assert ck["round"] == 2 and len(ck["history"]) == 2
    assert [len(p) for p in ck["circuit_parameters"]] == [72, 56]
    assert TrainConfig.from_dict(ck["config"]).rounds == 2


def test_model_pt_is_a_plain_cnn_that_reproduces_the_metrics(runs, two_round_run) -> None:
    run = two_round_run["dir"]
    m = runs.read_metrics(run)
    state = torch.load(run / "model.pt", weights_only=True)
    model = PaperCNN()
    model.load_state_dict(state)  # strict: exactly the CNN's tensors
    model.eval()
    train, test = load_dataset("partial-mnist")
    acc, loss = accuracy_and_loss(model, test.images[:100], test.labels[:100])
    assert acc == pytest.approx(m["test_accuracy"], abs=1e-9)
    assert loss == pytest.approx(m["test_loss"], rel=1e-5)
    acc, loss = accuracy_and_loss(model, train.images[:300], train.labels[:300])
    assert acc == pytest.approx(m["train_accuracy"], abs=1e-9)
    assert loss == pytest.approx(m["train_loss"], rel=1e-5)


def test_model_pt_is_what_the_checkpoint_generates(runs, two_round_run) -> None:
    """model.pt = MPS(checkpointed state) applied to the checkpointed distributions (independent rebuild)."""
    from pqt.distributions.combine import combine_distributions
    from pqt.mappers import MPSMapper

    run = two_round_run["dir"]
    ck = runs.load_checkpoint(run)
    mapper = MPSMapper(6690, 4)
    mapper.load_state_dict({k.removeprefix("mapper."): v for k, v in ck["method"].items()})
    p1, p2 = (d.numpy() for d in ck["dists"])
    assert p1.shape == (126,) and p2.shape == (70,)
    # shot frequencies: multiples of 1/1000 summing to 1
    for p in (p1, p2):
        np.testing.assert_allclose(p * 1000, np.rint(p * 1000), atol=1e-9)
        assert math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    with torch.no_grad():
        raw = mapper.reference_forward(combine_distributions([p1, p2], 6690))
        weights = raw - raw.mean()
    state = torch.load(run / "model.pt", weights_only=True)
    flat = torch.cat([state[k].reshape(-1) for k in [n for n, _ in PaperCNN().named_parameters()]])
    torch.testing.assert_close(flat, weights, rtol=1e-4, atol=1e-6)
    assert flat.abs().max() > 0  # trained: no longer the all-zero start


def test_training_changes_phases_and_mps(runs, two_round_run, tiny_config, make_trainer, tmp_path) -> None:
    fresh = make_trainer(tiny_config(rounds=2), tmp_path / "unused")
    ck = runs.load_checkpoint(two_round_run["dir"])
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.state.parameters, ck["circuit_parameters"], strict=True))
    start = fresh.model.state_dict()
    assert any(not torch.equal(start[k], ck["method"][k]) for k in start)


# --------------------------------------------------------------------------- resume


def test_resume_after_clean_stop_equals_uninterrupted_run(runs, two_round_run, one_round_run, tiny_config,
                                                          make_trainer, tmp_path) -> None:
    run = tmp_path / "b"
    shutil.copytree(one_round_run, run)
    assert runs.read_metrics(run)["rounds_completed"] == 1
    trainer = make_trainer(tiny_config(rounds=2), run)  # as `pqt train --resume B --rounds 2`
    trainer.load()
    assert trainer.state.round == 1
    trainer.run()
    runs.assert_same_run(two_round_run["dir"], run)


def test_resume_after_kill_mid_round_equals_uninterrupted_run(runs, two_round_run, tiny_config, make_trainer,
                                                               tmp_path, monkeypatch) -> None:
    from pqt.training.trainer import Trainer

    run = tmp_path / "killed"
    original = Trainer._phase_stage

    def killed_in_round_2(self, r, *args):
        if r == 1:  # round 2: after its Adam stage changed the MPS in memory
            raise KeyboardInterrupt
        return original(self, r, *args)

    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "_phase_stage", killed_in_round_2)
        with pytest.raises(KeyboardInterrupt):
            make_trainer(tiny_config(rounds=2), run).run()
    m = runs.read_metrics(run)
    assert m["status"] == "interrupted" and m["rounds_completed"] == 1
    assert runs.load_checkpoint(run)["round"] == 1

    resumed = make_trainer(tiny_config(rounds=2), run)
    resumed.load()
    resumed.run()
    runs.assert_same_run(two_round_run["dir"], run)


@pytest.mark.parametrize("overrides", [
    {"phase_optimizer": "spsa", "spsa_iterations": 5},
    {"phase_optimizer": "exact-gradient", "shots": None},
    pytest.param({"phase_optimizer": "nlopt-cobyla"}, marks=pytest.mark.skipif(
        importlib.util.find_spec("nlopt") is None, reason="optional nlopt not installed (pip install nlopt)")),
], ids=["spsa", "exact-gradient", "nlopt-cobyla"])
def test_resume_equivalence_other_phase_optimizers(runs, tiny_config, make_trainer, tmp_path, overrides) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    make_trainer(tiny_config(rounds=2, **overrides), whole).run()
    make_trainer(tiny_config(rounds=1, **overrides), split).run()
    resumed = make_trainer(tiny_config(rounds=2, **overrides), split)
    resumed.load()
    resumed.run()
    runs.assert_same_run(whole, split)


# --------------------------------------------------------------------------- divergence


def test_nan_loss_stops_with_user_error_and_keeps_last_checkpoint(runs, one_round_run, tiny_config, make_trainer,
                                                                   tmp_path, monkeypatch) -> None:
    from pqt.training.trainer import TrainingDiverged

    run = tmp_path / "nan"
    shutil.copytree(one_round_run, run)
    model_before = (run / "model.pt").read_bytes()
    phases_before = runs.load_checkpoint(run)["circuit_parameters"]
    trainer = make_trainer(tiny_config(rounds=2), run)
    trainer.load()
    # Poison the generator's input from now on: round 2's Adam loss becomes NaN.
    monkeypatch.setattr(trainer.method.generator, "values", lambda dists: torch.full((6690,), float("nan")))
    with pytest.raises(UserError) as e:
        trainer.run()
    assert isinstance(e.value, TrainingDiverged)
    msg = str(e.value)
    assert "nan" in msg.lower() and "round 1" in msg and str(run) in msg and "\n" not in msg
    # The previous round's checkpoint and model are intact and load.
    again = make_trainer(tiny_config(rounds=2), run)
    again.load()
    assert again.state.round == 1
    for a, b in zip(again.state.parameters, phases_before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (run / "model.pt").read_bytes() == model_before
    PaperCNN().load_state_dict(torch.load(run / "model.pt", weights_only=True))
    m = runs.read_metrics(run)
    assert m["rounds_completed"] == 1 and m["status"].startswith("stopped")


def test_nan_in_phase_objective_stops(runs, one_round_run, tiny_config, make_trainer, tmp_path, monkeypatch) -> None:
    """A NaN that only appears in the phase optimizer's objective also stops the run cleanly."""
    import pqt.training.quantum_train as qt_method
    from pqt.training.trainer import TrainingDiverged

    run = tmp_path / "nan_phase"
    shutil.copytree(one_round_run, run)
    trainer = make_trainer(tiny_config(rounds=2), run)
    trainer.load()

    class NaNLoss:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, weights):
            return float("nan")

    monkeypatch.setattr(qt_method, "FixedBatchLoss", NaNLoss)
    with pytest.raises(TrainingDiverged, match="phase optimizer"):
        trainer.run()
    assert runs.load_checkpoint(run)["round"] == 1


# --------------------------------------------------------------------------- exact gradient


def test_exact_gradient_round_changes_phases(runs, tiny_config, make_trainer, tmp_path) -> None:
    config = tiny_config(rounds=1, shots=None, phase_optimizer="exact-gradient", phase_lr=0.05)
    trainer = make_trainer(config, tmp_path / "exact")
    before = [p.copy() for p in trainer.state.parameters]
    metrics = trainer.run()
    after = trainer.state.parameters
    assert [len(p) for p in after] == [72, 56]
    for a, b in zip(before, after, strict=True):
        assert np.abs(a - b).max() > 1e-4
    assert metrics["shots"] == "exact" and metrics["shots_used"] == 0
    assert metrics["history"][0]["phase_objective_start"] is None
    # nothing sampled, but both circuits were simulated at every Adam step (300 images / 128 = 3 steps) and
    # once more for the round's network: that is what the run records
    assert metrics["circuit_evaluations"] == metrics["history"][0]["circuit_evaluations_round"] == 2 * (3 + 1)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    ck = runs.load_checkpoint(tmp_path / "exact")
    for a, b in zip(ck["circuit_parameters"], after, strict=True):
        np.testing.assert_array_equal(a, b)
    # the stored distributions are the exact ones at the new phases
    np.testing.assert_allclose(ck["dists"][0], trainer.circuits[0].distribution(after[0]), atol=1e-12)


def test_exact_gradient_with_shots_is_user_error(tiny_config, make_trainer, tmp_path) -> None:
    with pytest.raises(UserError, match="exact-gradient"):
        make_trainer(tiny_config(phase_optimizer="exact-gradient", shots=1000), tmp_path / "x")
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


@pytest.mark.parametrize(("overrides", "match"), [
    ({"qnn_modes": (3, 8), "qnn_photons": (4, 4)}, "photon"),
    ({"qnn_modes": (5, 4), "qnn_photons": (2, 2)}, "configurations that fit"),
    ({"bond_dim": 0}, "bond dimension"),
    ({"shots": 0}, "shots"),
    ({"phase_optimizer": "adam"}, "phase optimizer"),
    ({"backend": "nonsense"}, "backend"),
])
def test_bad_configurations_are_user_errors(tiny_config, make_trainer, tmp_path, overrides, match) -> None:
    with pytest.raises(UserError, match=match):
        make_trainer(tiny_config(**overrides), tmp_path / "bad")


# --------------------------------------------------------------------------- plan


def test_plan_run_for_the_paper_defaults() -> None:
    from pqt.training.accounting import plan_run

    config = TrainConfig()
    assert (config.rounds, config.cobyla_maxiter, len(config.qnn_modes), config.shots) == (200, 1000, 2, 10_000)
    per_round = 2 * (1000 + 1)  # each COBYLA call evaluates both QNNs, + the end-of-round evaluation
    total = 2 + 200 * per_round  # + round 1's first Adam-stage evaluation
    plan = plan_run(config)
    assert plan["rounds"] == 200
    assert plan["circuit_evaluations_per_round"] == per_round == 2002
    assert plan["circuit_evaluations_total"] == total == 400_402
    assert plan["shots_per_round"] == 10_000 * per_round == 20_020_000
    assert plan["shots_total"] == 10_000 * total == 4_004_020_000
    assert plan["jobs_per_round"] == plan["jobs_total"] == 0  # local simulation
    assert plan["max_shots"] is None


def test_plan_run_other_optimizers() -> None:
    from pqt.training.accounting import plan_run

    spsa = plan_run(TrainConfig(phase_optimizer="spsa", spsa_iterations=50, rounds=3, shots=100))
    assert spsa["circuit_evaluations_per_round"] == 2 * (2 * 50 + 1)
    assert spsa["shots_total"] == 100 * (2 + 3 * 2 * 101)
    exact = plan_run(TrainConfig(phase_optimizer="exact-gradient", shots=None))
    assert exact["circuit_evaluations_total"] == 0 and exact["shots_total"] == 0


def test_plan_matches_a_real_run(runs, two_round_run, tiny_config) -> None:
    from pqt.training.accounting import plan_run

    plan = plan_run(tiny_config(rounds=2))
    m = runs.read_metrics(two_round_run["dir"])
    assert m["circuit_evaluations"] <= plan["circuit_evaluations_total"]
    assert m["shots_used"] <= plan["shots_total"]
    assert m["shots_used"] == plan["shots_total"]  # COBYLA used its whole budget of 20 here


def test_validation_split_holds_out_the_last_training_images(tiny_config, make_trainer, tmp_path):
    trainer = make_trainer(tiny_config(rounds=1, validation_size=50), tmp_path)
    assert len(trainer.train_set) == 250 and len(trainer.validation_set) == 50
    full = make_trainer(tiny_config(rounds=1), tmp_path / "full").train_set
    assert torch.equal(trainer.validation_set.images, full.images[250:300])
    assert torch.equal(trainer.train_set.images, full.images[:250])
    metrics = trainer.run()
    entry = metrics["history"][0]
    assert 0.0 <= entry["validation_accuracy"] <= 1.0 and metrics["validation_accuracy"] == entry["validation_accuracy"]


def test_cosine_schedule_decays_both_learning_rates(tiny_config, make_trainer, tmp_path):
    trainer = make_trainer(tiny_config(rounds=2, phase_optimizer="exact-gradient", shots=None,
                                       lr_schedule="cosine", adam_lr=0.01, phase_lr=0.02), tmp_path)
    trainer._schedule_lr(0.0)
    assert trainer.adam.param_groups[0]["lr"] == pytest.approx(0.01)
    assert trainer.circuit_adam.param_groups[0]["lr"] == pytest.approx(0.02)
    trainer._schedule_lr(0.5)
    assert trainer.adam.param_groups[0]["lr"] == pytest.approx(0.005)
    trainer._schedule_lr(1.0)
    assert trainer.adam.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    constant = make_trainer(tiny_config(rounds=1), tmp_path / "constant")
    constant._schedule_lr(0.9)
    assert constant.adam.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_metrics_record_the_thread_settings(two_round_run) -> None:
    """Results depend on the torch thread count: every run records it, with OpenMP's wait policy."""
    threads = two_round_run["metrics"]["threads"]
    assert threads["torch_threads"] == torch.get_num_threads()
    assert threads["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "unset")
    assert set(threads) == {"torch_threads", "omp_wait_policy", "omp_wait_policy_in_effect", "numpy_blas_threads"}


def test_pqt_sets_a_passive_openmp_wait_policy_unless_the_user_chose_one() -> None:
    import subprocess
    import sys

    code = "import pqt, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
