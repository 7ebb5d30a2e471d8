"""PQKD (``pqt distill``, ``pqt teacher``): its parts against independent references, and whole runs on the one
training loop (metrics, deployment without perceval, resume equivalence, backends, bad inputs)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pqt.cli import main
from pqt.distill.config import DistillConfig
from pqt.distill.features import PhotonicFeatures
from pqt.distill.method import distillation_loss
from pqt.distill.student import DictionaryConv2d, DictionaryStudent, normalise_features
from pqt.targets import create_target, n_parameters

REPO = Path(__file__).resolve().parent.parent

# A tiny distillation run: 3 student steps per round, 2 SPSA steps, 100 shots per evaluation.
TINY = {"train_limit": 300, "test_limit": 100, "rounds": 2, "adam_epochs": 1, "spsa_iterations": 2,
        "phase_batch": 64, "shots": 100, "widths": (4, 8), "threads": 1}
TINY_FLAGS = ["--train-limit", "300", "--test-limit", "100", "--adam-epochs", "1", "--spsa-iterations", "2",
              "--phase-batch", "64", "--shots", "100", "--widths", "4", "8", "--threads", "1"]


def quiet(_line: str) -> None:
    pass


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pqt: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher trained for one epoch on 300 partial-MNIST images (its logits cached). Read-only."""
    out = tmp_path_factory.mktemp("teacher") / "t"
    rc = main(["teacher", "--train-limit", "300", "--test-limit", "100", "--epochs", "1", "--threads", "1",
               "--out", str(out)])
    assert rc == 0
    return out


def make_config(teacher: Path | None, **overrides: Any) -> DistillConfig:
    settings = {**TINY, "teacher": str(teacher) if teacher else None, **overrides}
    return DistillConfig(**settings).validate()


def train(config: DistillConfig, out: Path) -> dict[str, Any]:
    """A run through the Trainer API, with the config.json that pqt distill writes (deployment reads it)."""
    from pqt.training import run_files
    from pqt.training.trainer import Trainer

    trainer = Trainer(config, out, log=quiet)
    run_files.write_json(out / run_files.CONFIG, config.to_dict())
    return trainer.run()


@pytest.fixture(scope="module")
def two_rounds(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted tiny 2-round PQKD run. Read-only."""
    out = tmp_path_factory.mktemp("distill") / "run"
    train(make_config(teacher), out)
    return out


# --------------------------------------------------------------------------- parts against references


def test_dictionary_kernels_are_the_basis_mixed_by_the_transformed_features() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    layer = DictionaryConv2d(3, 5, 3, basis=4, n_features=7, affine=True, transform_generator=g)
    with torch.no_grad():
        layer.scale.fill_(1.7)
        layer.shift.fill_(-0.3)
    phi = torch.rand(7)
    kernels = layer.kernels(phi).detach()
    a = layer.transform.double().numpy().reshape(5, 3, 4, 7)
    b = layer.basis.detach().double().numpy()
    expected = np.zeros((5, 3, 3, 3))
    for o in range(5):
        for i in range(3):
            for j in range(4):
                c = 1.7 * float(a[o, i, j] @ phi.double().numpy()) - 0.3
                expected[o, i] += c * b[j]
    np.testing.assert_allclose(kernels.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    x = torch.rand(2, 3, 6, 6)
    np.testing.assert_allclose(layer(x, phi).detach().numpy(),
                               F.conv2d(x, torch.from_numpy(expected).float(), layer.bias, padding=1).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_trainable_count_does_not_grow_with_width_and_the_transform_is_not_trained() -> None:
    g = torch.Generator().manual_seed(0)
    narrow = DictionaryConv2d(2, 3, 3, basis=4, n_features=10, affine=True, transform_generator=g)
    wide = DictionaryConv2d(20, 30, 3, basis=4, n_features=10, affine=True, transform_generator=g)
    trainable = {name for name, _ in wide.named_parameters()}
    assert trainable == {"basis", "scale", "shift", "bias"}
    assert wide.basis.numel() == narrow.basis.numel() == 4 * 9
    assert "transform" in wide.state_dict() and wide.transform.shape == (30 * 20 * 4, 10)
    fixed = DictionaryConv2d(2, 3, 3, basis=4, n_features=10, affine=False, transform_generator=g)
    assert {name for name, _ in fixed.named_parameters()} == {"basis", "bias"}


def test_transforms_are_seeded_and_differ_between_layers() -> None:
    a = DictionaryStudent(1, (4, 8), 3, 2, 6, True, seed=3)
    b = DictionaryStudent(1, (4, 8), 3, 2, 6, True, seed=3)
    c = DictionaryStudent(1, (4, 8), 3, 2, 6, True, seed=4)
    assert torch.equal(a.layers[1].transform, b.layers[1].transform)
    assert not torch.equal(a.layers[1].transform, c.layers[1].transform)
    assert not torch.equal(a.layers[0].transform[:8], a.layers[1].transform[:8])


def test_deployed_student_is_a_plain_network_that_computes_the_same_logits() -> None:
    torch.manual_seed(0)
    student = DictionaryStudent(1, (4, 8), 3, basis=3, n_features=12, affine=True, seed=0, head_grid=3)
    phi = normalise_features([np.random.default_rng(0).dirichlet(np.ones(12))])
    plain = create_target("student-cnn", (1, 28, 28), options={"widths": (4, 8), "kernel_size": 3, "head_grid": 3})
    plain.load_state_dict(student.deployed_state_dict(phi))
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(plain(x).numpy(), student(x, phi).numpy(), rtol=1e-5, atol=1e-6)
    # what pqt distill --params counts: the deployed network is conv 1->4, conv 4->8, head 8*9 -> 10
    assert n_parameters(plain) == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (8 * 9 * 10 + 10)


def test_features_are_normalised_to_unit_rms() -> None:
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(8))
    phi = normalise_features([p, q])
    assert phi.shape == (20,)
    assert float(phi.square().mean()) == pytest.approx(1.0, rel=1e-6)
    scaled = np.concatenate([12 * p, 8 * q])  # each distribution times its length, then one overall scale
    np.testing.assert_allclose(phi.numpy() / phi.numpy()[0], scaled / scaled[0], rtol=1e-5)
    assert torch.allclose(normalise_features([np.full(8, 1 / 8), np.full(3, 1 / 3)]), torch.ones(11))


def test_ema_follows_its_recursion_and_beta_zero_is_the_last_estimate() -> None:
    rng = np.random.default_rng(0)
    estimates = [rng.dirichlet(np.ones(6)) for _ in range(5)]
    features = PhotonicFeatures([6], beta=0.8, source="circuit", seed=0)
    expected = estimates[0]
    for t, e in enumerate(estimates):
        phi = features.update([e])
        if t:
            expected = 0.8 * expected + 0.2 * e
        np.testing.assert_allclose(phi.numpy(), normalise_features([expected]).numpy(), rtol=1e-6)
    restored = PhotonicFeatures([6], beta=0.8, source="circuit", seed=0)
    restored.load_state_dict(features.state_dict())
    assert torch.equal(restored.current(), features.current())
    off = PhotonicFeatures([6], beta=0.0, source="circuit", seed=0)
    for e in estimates:
        phi = off.update([e])
    np.testing.assert_allclose(phi.numpy(), normalise_features([estimates[-1]]).numpy(), rtol=1e-6)


@pytest.mark.parametrize("source", ["random-fixed", "constant"])
def test_ablation_sources_ignore_the_circuit(source: str) -> None:
    rng = np.random.default_rng(0)
    features = PhotonicFeatures([5, 3], beta=0.0, source=source, seed=7)
    first = features.update([rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(3))])
    second = features.update([rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(3))])
    assert torch.equal(first, second)
    if source == "constant":
        assert torch.allclose(first, torch.ones(8))


def test_distillation_loss_against_its_formula() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    T, alpha = 3.0, 0.7
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(6), y].mean()
    assert float(distillation_loss(s, t, y, alpha, T)) == pytest.approx(float(alpha * T * T * kl + (1 - alpha) * ce),
                                                                        rel=1e-5)
    assert float(distillation_loss(s, t, y, 0.0, T)) == pytest.approx(float(ce), rel=1e-6)
    assert float(distillation_loss(s, None, y, 0.5, T)) == pytest.approx(float(ce), rel=1e-6)
    assert float(distillation_loss(t, t, y, 1.0, T)) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- the teacher


def test_teacher_run_and_its_cached_logits(teacher: Path) -> None:
    from pqt.data import load_dataset
    from pqt.deploy import load_model
    from pqt.distill.teacher import LOGITS_FILE, load_teacher, training_logits

    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["trainable_parameters"] == 119_530
    model = load_model(teacher)
    full, _ = load_dataset("partial-mnist")
    cache = torch.load(teacher / LOGITS_FILE, weights_only=True)
    assert cache["logits"].shape == (300, 10)  # the rows the teacher trained on
    with torch.no_grad():
        np.testing.assert_allclose(cache["logits"][:50].numpy(), model(full.images[:50]).numpy(), rtol=1e-5,
                                   atol=1e-5)
    t = load_teacher(teacher, "partial-mnist", (1, 28, 28))
    assert torch.equal(training_logits(t, full.images[:200], None), cache["logits"][:200])
    shifted = full.images[1:301]  # not a prefix of the split: computed, not read from the cache
    with torch.no_grad():
        np.testing.assert_allclose(training_logits(t, shifted, None).numpy(), model(shifted).numpy(), rtol=1e-5,
                                   atol=1e-5)


def test_a_stale_logit_cache_is_recomputed(teacher: Path, tmp_path: Path) -> None:
    from pqt.data import load_dataset
    from pqt.distill.teacher import LOGITS_FILE, load_teacher, training_logits

    copy = tmp_path / "t"
    shutil.copytree(teacher, copy)
    cache = torch.load(copy / LOGITS_FILE, weights_only=True)
    cache["logits"] = cache["logits"] + 1.0
    cache["teacher_sha256"] = "0" * 64  # written by another teacher
    torch.save(cache, copy / LOGITS_FILE)
    full, _ = load_dataset("partial-mnist")
    fresh = training_logits(load_teacher(copy, "partial-mnist", (1, 28, 28)), full.images[:10], None)
    original = torch.load(teacher / LOGITS_FILE, weights_only=True)["logits"][:10]
    np.testing.assert_allclose(fresh.numpy(), original.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- whole runs


def test_metrics_contract_and_accounting(two_rounds: Path, teacher: Path) -> None:
    m = json.loads((two_rounds / "metrics.json").read_text())
    assert m["status"] == "finished" and m["method"] == "distill" and m["rounds_completed"] == 2
    assert m["generator"]["kind"] == "pqkd" and m["generator"]["features"] == 56  # C(8, 3) patterns
    assert m["target"] == "student-cnn" and m["widths"] == [4, 8]
    assert m["teacher"]["parameters"] == m["teacher_parameters"] == 119_530
    assert m["teacher"]["dir"] == str(teacher)
    # 2 layers of 4 basis filters 3x3 (fixed coefficients: no scale or shift), conv biases 4 + 8, head 8*9*10 + 10;
    # 56 phases
    assert (m["basis_parameters"], m["mixing_parameters"], m["conv_bias_parameters"], m["head_parameters"]) == \
        (72, 0, 12, 730)
    assert m["student_trainable_parameters"] == 72 + 12 + 730
    assert m["photonic_parameters"] == 56 and m["trainable_parameters"] == 814 + 56
    assert m["fixed_transform_entries"] == (4 * 1 * 4 + 8 * 4 * 4) * 56
    assert m["deployed_parameters"] == m["target_parameters"] == 40 + 296 + 730
    # shots: every student step and every SPSA evaluation is a fresh 100-shot estimate, plus one per round end
    per_round = (3 + 4 + 1) * 100
    assert m["shots_used"] == 2 * per_round and m["history"][0]["shots_round"] == per_round
    assert 0 < m["feature_noise"] < 1
    for key in ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "generalization_error"):
        assert isinstance(m[key], float)
    assert m["history"][1]["phase_objective_start"] is not None and m["history"][1]["phase_objective_end"] is not None


def test_model_pt_is_the_plain_student_and_reproduces_the_metrics(two_rounds: Path) -> None:
    from pqt.deploy import evaluate_model, load_model

    model = load_model(two_rounds)
    assert type(model).__name__ == "StudentCNN"
    m = json.loads((two_rounds / "metrics.json").read_text())
    result = evaluate_model(two_rounds, None, None)
    assert result["dataset"] == "partial-mnist"
    # the run tested on the first 100 test images; evaluate uses all 600: check those 100 directly
    from pqt.data import load_dataset
    from pqt.targets import loss_and_accuracy

    _, test = load_dataset("partial-mnist")
    loss, accuracy = loss_and_accuracy(model, test.images[:100], test.labels[:100])
    assert accuracy == m["test_accuracy"] and loss == pytest.approx(m["test_loss"], rel=1e-6)


def test_deployment_does_not_import_perceval(two_rounds: Path, tmp_path: Path) -> None:
    digits = tmp_path / "one.npy"
    np.save(digits, np.zeros((28, 28), dtype=np.uint8))
    code = ("import sys\nfrom pqt.cli import main\n"
            f"assert main(['evaluate', {str(two_rounds)!r}]) == 0\n"
            f"assert main(['predict', {str(two_rounds)!r}, {str(digits)!r}]) == 0\n"
            "assert 'perceval' not in sys.modules, 'deployment imported perceval'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def assert_same_run(a: Path, b: Path) -> None:
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["method"].keys() == cb["method"].keys()
    for key in ca["method"]:
        assert torch.equal(ca["method"][key], cb["method"][key]), key
    for pa, pb in zip(ca["circuit_parameters"], cb["circuit_parameters"], strict=True):
        assert torch.equal(pa, pb)
    assert ca["backend"] == cb["backend"]
    ma, mb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)

    def strip(m: dict[str, Any]) -> dict[str, Any]:
        # timing (total, this attempt, the rounds', each attempt's) and how the run was resumed
        m = {k: v for k, v in m.items()
             if k not in ("wall_seconds", "wall_seconds_attempt", "rounds_seconds", "attempts", "resumes")}
        m["history"] = [{k: v for k, v in e.items() if k != "seconds"} for e in m["history"]]
        return m

    assert strip(json.loads((a / "metrics.json").read_text())) == strip(json.loads((b / "metrics.json").read_text()))


def test_cli_resume_after_a_clean_stop_equals_the_uninterrupted_run(two_rounds: Path, teacher: Path, capsys,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "c"
    rc, out, err = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(teacher), "--rounds", "1", "--out", str(run))
    assert rc == 0, err
    assert "pqt distill ->" in out and "deployed 1066" in out
    moved = tmp_path / "moved-teacher"
    shutil.copytree(teacher, moved)  # the same teacher in another place may be given on resume
    rc, out, err = cli(capsys, "distill", "--resume", str(run), "--rounds", "2", "--teacher", str(moved))
    assert rc == 0, err
    assert "resuming" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumes"][0]["changes"]["teacher"] == [str(teacher), str(moved)]
    metrics_a = json.loads((two_rounds / "metrics.json").read_text())
    assert metrics["test_accuracy"] == metrics_a["test_accuracy"]
    ca = torch.load(two_rounds / "checkpoint.pt", weights_only=True)
    cb = torch.load(run / "checkpoint.pt", weights_only=True)
    for key in ca["method"]:
        assert torch.equal(ca["method"][key], cb["method"][key]), key


def test_resume_after_a_kill_mid_round_equals_the_uninterrupted_run(two_rounds: Path, teacher: Path,
                                                                    tmp_path: Path) -> None:
    from pqt.training.trainer import Trainer

    out = tmp_path / "killed"
    original = Trainer._phase_stage

    def killed_in_round_2(self: Trainer, r: int, batch: Any) -> Any:
        if r == 1:
            raise KeyboardInterrupt
        return original(self, r, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_phase_stage", killed_in_round_2)
        with pytest.raises(KeyboardInterrupt):
            train(make_config(teacher), out)
    trainer = Trainer(make_config(teacher), out, log=quiet)
    trainer.load()
    assert trainer.state.round == 1
    trainer.run()
    assert_same_run(two_rounds, out)


def test_resume_refuses_another_teacher(two_rounds: Path, teacher: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_rounds, run)
    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    state = torch.load(other / "model.pt", weights_only=True)
    state["fc2.bias"] = state["fc2.bias"] + 1.0
    torch.save(state, other / "model.pt")
    rc, _, err = cli(capsys, "distill", "--resume", str(run), "--rounds", "3", "--teacher", str(other))
    one_line_error(rc, err, "teacher changed")


def test_exact_features_and_the_plain_kd_baseline(teacher: Path, tmp_path: Path) -> None:
    exact = train(make_config(teacher, shots=None, rounds=1), tmp_path / "exact")
    assert exact["shots_used"] == 0 and exact["feature_noise"] is None
    # exact: one evaluation serves the first stage, then SPSA's 4 and the end-of-round one
    assert exact["circuit_evaluations"] == 1 + 4 + 1
    plain = train(make_config(teacher, student="plain", widths=(3, 6)), tmp_path / "plain")
    assert plain["generator"]["kind"] == "plain-kd" and plain["circuit_evaluations"] == 0
    assert plain["photonic_parameters"] == 0 and plain["fixed_transform_entries"] == 0
    assert plain["trainable_parameters"] == plain["deployed_parameters"] == (30 + 168 + 550)
    assert plain["history"][0]["phase_objective_start"] is None
    alone = train(make_config(None, alpha=0.0, rounds=1), tmp_path / "alone")
    assert alone["teacher"] is None and alone["teacher_parameters"] is None


def test_constant_features_make_the_phase_objective_flat(teacher: Path, tmp_path: Path) -> None:
    """With phi replaced by a constant, the phases cannot change the loss: SPSA sees equal values."""
    from pqt.training.trainer import Trainer

    trainer = Trainer(make_config(teacher, distribution_source="constant", rounds=1), tmp_path / "c", log=quiet)
    images, labels, idx = trainer._phase_batch(0)
    objective = trainer.method.batch_objective(images, labels, indices=idx)
    rng = np.random.default_rng(0)
    values = {objective([q.exact_distribution(q.random_parameters(rng))]) for q in trainer.circuits for _ in range(3)}
    assert len(values) == 1


def test_noisy_backend_run(teacher: Path, tmp_path: Path) -> None:
    m = train(make_config(teacher, rounds=1, backend="noisy",
                          backend_options={"indistinguishability": 0.9, "transmittance": 0.5}), tmp_path / "noisy")
    assert m["backend"] == "noisy" and m["status"] == "finished"
    assert 0 < m["postselection_rate"] < 1
    assert m["shots_used"] == (3 + 4 + 1) * 100


def test_fake_cloud_run_journals_every_job(teacher: Path, tmp_path: Path, monkeypatch) -> None:
    from backends.fake_cloud import FakeCloud

    with FakeCloud("distill-token", seed=3) as cloud:
        monkeypatch.setenv("PCVL_CLOUD_TOKEN", "distill-token")
        options = {"cloud_url": cloud.url, "poll_interval": 0.01, "retry_backoff": 0.01}
        m = train(make_config(teacher, rounds=1, backend="remote", backend_options=options), tmp_path / "cloud")
    assert m["status"] == "finished" and m["jobs_submitted"] == 3 + 4 + 1
    journal = [json.loads(line) for line in (tmp_path / "cloud" / "jobs.jsonl").read_text().splitlines()]
    assert len({e["tag"] for e in journal if "tag" in e}) == 8
    assert "distill-token" not in (tmp_path / "cloud" / "metrics.json").read_text()


def test_params_and_dry_run(teacher: Path, two_rounds: Path, capsys) -> None:
    rc, out, err = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(teacher), "--params", "--json")
    assert rc == 0, err
    report = json.loads(out)
    metrics = json.loads((two_rounds / "metrics.json").read_text())
    for key in ("teacher_parameters", "student_trainable_parameters", "photonic_parameters", "trainable_parameters",
                "fixed_transform_entries", "deployed_parameters"):
        assert report[key] == metrics[key], key
    rc, out, _ = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(teacher), "--params")
    assert "fixed transform entries (not trained)" in out and "deployed student" in out
    rc, out, _ = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(teacher), "--coefficients", "affine", "--params",
                     "--json")
    assert json.loads(out)["mixing_parameters"] == 4  # a scale and a shift per layer
    rc, out, _ = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(teacher), "--rounds", "2", "--dry-run", "--json")
    plan = json.loads(out)
    assert plan["circuit_evaluations_total"] == metrics["circuit_evaluations"]
    assert plan["shots_total"] == metrics["shots_used"]


def test_help_shows_distill_settings_not_quantum_train_ones(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = capsys.readouterr().out
    for flag in ("--basis", "--widths", "--beta", "--alpha", "--temperature", "--teacher", "--shots", "--spsa-a"):
        assert flag in out, flag
    for flag in ("--bond-dim", "--mapper", "--generator", "--target"):
        assert flag not in out, flag


@pytest.mark.parametrize(("flags", "needles"), [
    ([], ["needs a teacher", "pqt teacher"]),
    (["--alpha", "1.5"], ["alpha", "[0, 1]"]),
    (["--beta", "1"], ["beta"]),
    (["--basis", "0"], ["basis"]),
    (["--kernel-size", "4"], ["odd"]),
    (["--widths", "2", "2", "2", "2", "2"], ["at most 4"]),
    (["--phase-optimizer", "exact-gradient"], ["exact-gradient", "spsa"]),
    (["--student", "plain", "--backend", "noisy"], ["plain", "slos"]),
    (["--temperature", "0"], ["temperature"]),
])
def test_bad_inputs_are_one_line(capsys, tmp_path: Path, flags: list[str], needles: list[str]) -> None:
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "distill", *TINY_FLAGS, *flags, "--out", str(out))
    one_line_error(rc, err, *needles)
    assert not out.exists()


def test_bad_teachers_and_config_keys_are_one_line(teacher: Path, capsys, tmp_path: Path) -> None:
    rc, _, err = cli(capsys, "distill", *TINY_FLAGS, "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "a"))
    one_line_error(rc, err, "no trained teacher", "pqt teacher")
    rc, _, err = cli(capsys, "distill", *TINY_FLAGS, "--dataset", "fashion-mnist", "--teacher", str(teacher),
                     "--out", str(tmp_path / "b"))
    one_line_error(rc, err, "'partial-mnist'", "fashion-mnist")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"bond_dim": 4, "alpha": 0}))
    rc, _, err = cli(capsys, "distill", "--config", str(config), "--out", str(tmp_path / "c"))
    one_line_error(rc, err, "bond_dim", "pqt train")
    rc, _, err = cli(capsys, "teacher", "--epochs", "0", "--out", str(tmp_path / "d"))
    one_line_error(rc, err, "--epochs")


def test_resume_refuses_a_changed_setting(two_rounds: Path, capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_rounds, run)
    rc, _, err = cli(capsys, "distill", "--resume", str(run), "--basis", "8")
    one_line_error(rc, err, "--basis", "new run")


def test_distill_study_through_the_sweep(teacher: Path, tmp_path: Path) -> None:
    from pqt.studies.sweep import load_study, run_sweep

    study_file = tmp_path / "s.toml"
    base = "\n".join(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in TINY.items()
                     if k not in ("rounds",))
    study_file.write_text(f'name = "d"\nkind = "distill"\nprotocol = "tiny"\n[base]\nrounds = 1\n'
                          f'teacher = "{teacher}"\n{base}\n[grid]\nbasis = [2, 4]\n'
                          '[report]\nmetrics = ["test_accuracy", "trainable_parameters", "deployed_parameters"]\n')
    study = load_study(study_file)
    outcome = run_sweep(study, tmp_path / "runs", 1, tmp_path / "results", show_progress=False, print_fn=quiet)
    assert sorted(outcome.finished) == ["basis=2", "basis=4"] and not outcome.failed
    summary = (tmp_path / "results" / "d_summary.csv").read_text().splitlines()
    assert summary[0].startswith("protocol,basis,n,runs,test_accuracy_mean")
    rows = [line.split(",") for line in summary[1:]]
    assert [r[1] for r in rows] == ["2", "4"] and all(r[2] == "1" for r in rows)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CIFAR-10 in its python-batch format: 40 training images per batch file, 30 test images."""
    from pqt.data.cifar import FOLDER, TEST_FILES, TRAIN_FILES, write_batch

    root = tmp_path_factory.mktemp("cifar")
    folder = root / FOLDER
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f, 40) for f in TRAIN_FILES] + [(f, 30) for f in TEST_FILES]:
        labels = rng.integers(0, 10, n)
        # a learnable signal: the mean brightness of one colour channel follows the label
        images = rng.integers(0, 120, (n, 3, 32, 32)).astype(np.uint8)
        images[np.arange(n), labels % 3] += (labels[:, None, None] * 12).astype(np.uint8)
        write_batch(folder / name, images, labels)
    return root


def test_cifar10_teacher_student_and_deployment(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    from pqt.data import load_dataset

    train_set, test_set = load_dataset("cifar-10", cifar_dir)
    assert train_set.images.shape == (200, 3, 32, 32) and test_set.images.shape == (30, 3, 32, 32)
    teacher = tmp_path / "teacher"
    rc, out, err = cli(capsys, "teacher", "--dataset", "cifar-10", "--data-dir", str(cifar_dir), "--epochs", "1",
                       "--threads", "1", "--out", str(teacher))
    assert rc == 0, err
    assert "teacher-resnet (308,650 parameters)" in out
    run = tmp_path / "student"
    rc, out, err = cli(capsys, "distill", "--dataset", "cifar-10", "--data-dir", str(cifar_dir), "--teacher",
                       str(teacher), "--rounds", "1", "--spsa-iterations", "1", "--phase-batch", "32", "--shots", "50",
                       "--widths", "4", "8", "--threads", "1", "--out", str(run))
    assert rc == 0, err
    m = json.loads((run / "metrics.json").read_text())
    assert m["teacher_parameters"] == 308_650 and m["test_accuracy"] is not None
    assert m["conv_bias_parameters"] == 12 and m["basis_parameters"] == 72  # 3 input channels: same basis count
    rc, out, err = cli(capsys, "evaluate", str(run), "--data-dir", str(cifar_dir), "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["dataset"] == "cifar-10" and result["images"] == 30
    assert math.isclose(result["accuracy"], m["test_accuracy"])


# --------------------------------------------------------------------------- figures


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def test_pqkd_figures_from_result_tables(tmp_path: Path) -> None:
    from pqt.studies.figures import make_figures

    res = tmp_path / "results"
    res.mkdir()
    p = {"protocol": "synthetic"}
    frontier = [{**p, "student": st, "widths": w, "basis": k, "alpha": a, "n": 3, "trainable_parameters_mean": n,
                 "trainable_parameters_std": 0, "test_accuracy_mean": acc, "test_accuracy_std": 0.01}
                for st, w, k, a, n, acc in (("dictionary", "4+8", 4, 0.5, 874, 0.9), ("dictionary", "8+16", 4, 0.5,
                                            1606, 0.93), ("dictionary", "8+16", 2, 0.5, 1570, 0.92),
                                            ("plain", "3+13", 4, 0.5, 1574, 0.91), ("dictionary", "8+16", 4, 0.0, 1606,
                                                                                     0.9))]
    _write_csv(res / "pqkd_frontier_summary.csv", frontier)
    _write_csv(res / "teachers_summary.csv", [{**p, "dataset": "partial-mnist", "test_accuracy_mean": 0.98,
                                               "test_accuracy_std": 0.002, "trainable_parameters_mean": 119530}])
    shots_rows = []
    for shots in ("10", "100", "1000", "exact"):
        noise = math.nan if shots == "exact" else 4 / math.sqrt(float(shots))
        for beta in ("0.0", "0.9"):
            shots_rows.append({**p, "shots": shots, "ema_beta": beta, "test_accuracy_std": 0.01,
                               "test_accuracy_mean": 0.93 - (0 if shots == "exact" else 0.1 * noise),
                               "feature_noise_mean": "" if shots == "exact" else noise, "feature_noise_std": ""})
    _write_csv(res / "pqkd_shots_summary.csv", shots_rows)
    lines: list[str] = []
    written = {path.name for path in make_figures(res, tmp_path / "figs", log=lines.append)}
    assert {"pqkd_frontier.png", "pqkd_shots.png"} <= written
    assert (tmp_path / "figs" / "pqkd_frontier.png").stat().st_size > 10_000
