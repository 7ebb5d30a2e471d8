"""The Quantum-Train family through one generator interface: mappers, scalings, generators, targets, ablation
sources, devices, and every circuit x mapper combination training end to end."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pqt.circuits.photonic import PhotonicQNN
from pqt.circuits.qubit import QubitQNN
from pqt.distributions.combine import combine_distributions
from pqt.distributions.sources import DistributionSource
from pqt.errors import UserError
from pqt.generator import QuantumTrainGenerator, build_generator
from pqt.mappers import MLPMapper, MPSMapper, index_bits
from pqt.targets import create_target, n_parameters, register_target
from pqt.training.accounting import parameter_report
from pqt.training.config import TrainConfig

# --------------------------------------------------------------------------- mapping models


@pytest.mark.parametrize(("blocks", "total"), [(16, 457), (31, 652), (46, 847), (61, 1042), (76, 1237), (91, 1432),
                                               (106, 1627), (121, 1822)])
def test_gate_based_paper_parameter_counts(blocks: int, total: int) -> None:
    """QT paper Table I: L blocks x 13 angles + the 249-parameter mapping model."""
    generator = build_generator(TrainConfig(generator="qubit", blocks=blocks), 6690)
    report = parameter_report(generator, create_target("paper-cnn"))
    assert generator.n_mapper_parameters == 249
    assert report["circuit_parameters"] == 13 * blocks
    assert report["trainable_parameters"] == report["paper_count_parameters"] == total


def test_cifar_mapping_model_count() -> None:
    """The QT paper's CIFAR-10 mapping model (20-40, 40-200, 200-40, 40-1) for 19 qubits: 17,121 parameters, and
    QT-19 = 19 x 19 + 17,121 = 17,482."""
    mapper = MLPMapper(285_226, widths=(40, 200, 40))
    assert mapper.n_features == 20 and sum(p.numel() for p in mapper.parameters()) == 17_121
    assert 19 * 19 + 17_121 == 17_482


@pytest.mark.parametrize("activation", ["none", "tanh", "tanh-all"])
def test_mlp_mapper_forward_matches_its_layers(activation: str) -> None:
    torch.manual_seed(0)
    mapper = MLPMapper(100, widths=(4, 20, 4), activation=activation)
    values = torch.rand(100)
    x = torch.cat([index_bits(100), values[:, None]], 1)
    layers = list(mapper.layers)
    h = layers[0](x)
    h = torch.tanh(h) if activation != "none" else h
    for i, layer in enumerate(layers[1:], start=1):
        h = layer(h)
        if activation == "tanh-all" and i < len(layers) - 1:
            h = torch.tanh(h)
    torch.testing.assert_close(mapper(values), h.squeeze(1))


def test_mlp_without_activation_is_affine_in_its_inputs() -> None:
    """The QT code's mapping model applies no activation: one affine map of (bits, value)."""
    torch.manual_seed(1)
    mapper = MLPMapper(64, activation="none")
    a, b = torch.rand(64), torch.rand(64)
    torch.testing.assert_close(mapper(0.3 * a + 0.7 * b), 0.3 * mapper(a) + 0.7 * mapper(b), rtol=1e-5, atol=1e-6)


def test_value_only_mapper_sees_no_bits() -> None:
    mapper = MLPMapper(64, inputs="value")
    assert mapper.n_features == 1
    same = torch.full((64,), 0.25)
    out = mapper(same)
    assert torch.allclose(out, out[0].expand(64))  # equal values -> equal weights: no index information


@pytest.mark.parametrize("kind", ["mps", "mlp"])
def test_mapper_buffers_follow_the_module(kind: str) -> None:
    """.to() moves the index bits and the MPS contraction plan with the parameters (--device cuda needs it)."""
    mapper = MPSMapper(6690, 3) if kind == "mps" else MLPMapper(6690)
    generator = QuantumTrainGenerator([PhotonicQNN(9, 4), PhotonicQNN(8, 4)], mapper).double()
    assert all(b.dtype in (torch.float64, torch.int64) for b in generator.buffers())
    assert mapper.bits.dtype == torch.float64
    values = generator.values([np.full(126, 1 / 126), np.full(70, 1 / 70)])
    weights = generator(values)
    assert weights.dtype == torch.float64 and weights.shape == (6690,)


# --------------------------------------------------------------------------- scalings


def test_qt_scaling_is_the_papers_formula() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(16))
    values = combine_distributions([p], 10, "qt", exponent=0.3).double()
    x = (0.8 * np.tanh(0.1 * 8 * p[:10])) ** 0.3  # 2^(N-1) = 8 for N = 4 qubits
    np.testing.assert_allclose(values.numpy(), x - x.mean(), rtol=1e-6)


def test_none_and_mean_scalings() -> None:
    p, q = np.random.default_rng(1).dirichlet(np.ones(6)), np.random.default_rng(2).dirichlet(np.ones(4))
    outer = np.outer(p, q).reshape(-1)
    np.testing.assert_allclose(combine_distributions([p, q], 20, "none").numpy(), outer[:20], rtol=1e-6)
    np.testing.assert_allclose(combine_distributions([p, q], 20, "mean").numpy(), 24 * outer[:20], rtol=1e-6)


# --------------------------------------------------------------------------- generators


def test_generator_kinds_and_description() -> None:
    qubit = build_generator(TrainConfig(generator="qubit", blocks=3), 6690)
    assert qubit.kind == "qubit" and qubit.mapper.kind == "mlp" and qubit.scaling == "qt"
    assert qubit.describe()["circuits"] == [{"kind": "qubit", "qubits": 13, "blocks": 3, "parameters": 39,
                                             "outcomes": 8192}]
    mixed = QuantumTrainGenerator([QubitQNN(7, 2), PhotonicQNN(8, 4)], MPSMapper(6690, 2))
    assert mixed.kind == "qubit+photonic" and mixed.circuit_sizes == [14, 56]
    dists = [c.exact_distribution(c.random_parameters(np.random.default_rng(0))) for c in mixed.circuits]
    assert mixed.generate(dists).shape == (6690,)


def test_too_few_outcomes_is_one_line() -> None:
    with pytest.raises(UserError, match="qubits >= 13"):
        build_generator(TrainConfig(generator="qubit", qubits=12), 6690)


def test_gate_based_qnn_refused_on_photonic_backends() -> None:
    for backend in ("noisy", "remote"):
        with pytest.raises(UserError, match="local simulator only"):
            TrainConfig(generator="qubit", backend=backend).validate()


# --------------------------------------------------------------------------- targets


def test_target_registry_sizes() -> None:
    assert n_parameters(create_target("paper-cnn")) == 6690
    assert n_parameters(create_target("cifar-cnn", (3, 32, 32))) == 285_226
    assert n_parameters(create_target("mlp", (1, 28, 28))) == 784 * 8 + 8 + 8 * 10 + 10
    assert n_parameters(create_target("mlp", (3, 32, 32))) == 3072 * 8 + 8 + 90


def test_target_shape_mismatch_is_one_line() -> None:
    with pytest.raises(UserError, match="takes 3x32x32 images but the dataset gives 1x28x28"):
        create_target("cifar-cnn", (1, 28, 28))
    with pytest.raises(UserError, match="unknown target"):
        create_target("resnet-9000")


def test_registering_a_target_by_name() -> None:
    @register_target("test-tiny", input_shape=(1, 28, 28))
    def tiny(shape, activation):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    assert n_parameters(create_target("test-tiny")) == 7850


USER_MODULE = textwrap.dedent("""
    import torch

    def small_net():
        return torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(49, 10))

    def not_a_module():
        return 3

    def wrong_output():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 7))
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "pqt_user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pqt_user_nets"
    sys.modules.pop("pqt_user_nets", None)


@pytest.mark.parametrize(("attr", "needle"), [("not_a_module", "not an nn.Module"), ("wrong_output", "logits"),
                                              ("missing", "no callable")])
def test_bad_user_targets_are_one_line(user_module, attr: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        create_target(f"{user_module}:{attr}")


# --------------------------------------------------------------------------- ablation sources


def test_ablation_sources() -> None:
    sizes = [126, 70]
    photonic = [np.full(126, 1 / 126), np.full(70, 1 / 70)]
    fixed = DistributionSource("random-fixed", sizes, seed=3)
    a = fixed.replace(photonic)
    fixed.reseed(3, 5)
    b = fixed.replace(photonic)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # drawn once, kept across rounds
    assert all(abs(x.sum() - 1) < 1e-12 and x.std() > 0 for x in a)
    assert not np.array_equal(a[0], DistributionSource("random-fixed", sizes, seed=4).replace(photonic)[0])
    redraw = DistributionSource("random-redraw", sizes, seed=3)
    first, second = redraw.replace(photonic), redraw.replace(photonic)
    assert redraw.redraws and not np.array_equal(first[0], second[0])  # fresh at every call
    redraw.reseed(3, 1)
    again = redraw.replace(photonic)
    redraw.reseed(3, 1)
    assert np.array_equal(again[0], redraw.replace(photonic)[0])  # but replayable per round (resume)
    constant = DistributionSource("constant", sizes, seed=0).replace(photonic)
    assert np.allclose(constant[0], 1 / 126) and np.allclose(constant[1], 1 / 70)
    for kind in ("circuit", "photonic"):
        assert DistributionSource(kind, sizes, seed=0).replace(photonic) is photonic


def test_ablation_source_really_feeds_the_mapper(tiny_config, make_trainer, tmp_path) -> None:
    """With random-fixed the generated network does not depend on the phases; with the circuit it does."""
    for source, depends in (("random-fixed", False), ("circuit", True)):
        trainer = make_trainer(tiny_config(rounds=1, shots=None, distribution_source=source), tmp_path / source)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        rng = np.random.default_rng(0)
        nets = [trainer.method.network([c.exact_distribution(c.random_parameters(rng)) for c in trainer.circuits])
                for _ in range(2)]
        same = all(torch.equal(nets[0].state_dict[k], nets[1].state_dict[k]) for k in nets[0].state_dict)
        assert same != depends, source


# --------------------------------------------------------------------------- every combination trains


@pytest.mark.parametrize(("overrides", "kind"), [
    ({"generator": "qubit", "blocks": 2, "mapper": "mlp", "phase_optimizer": "exact-gradient", "shots": None}, "qubit"),
    ({"generator": "qubit", "blocks": 2, "mapper": "mps", "bond_dim": 2, "cobyla_maxiter": 30}, "qubit"),
    ({"generator": "photonic", "mapper": "mlp", "cobyla_maxiter": 140, "shots": None}, "photonic"),
    ({"generator": "qubit", "blocks": 2, "phase_optimizer": "spsa", "spsa_iterations": 3, "scaling": "mean"}, "qubit"),
])
def test_every_circuit_and_mapper_combination_trains(tiny_config, make_trainer, tmp_path, overrides, kind) -> None:
    trainer = make_trainer(tiny_config(rounds=1, **overrides), tmp_path / "run")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.run()
    assert metrics["status"] == "finished" and metrics["generator"]["kind"] == kind
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert metrics["circuit_evaluations"] > 0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_user_target_trains_end_to_end_and_deploys(user_module, tmp_path, monkeypatch, capsys) -> None:
    """`--target module:callable` trains through the CLI, and `pqt evaluate` rebuilds it from config.json."""
    from pqt.cli import main

    out = tmp_path / "user"
    rc = main(["train", "--target", f"{user_module}:small_net", "--train-limit", "300", "--test-limit", "100",
               "--rounds", "1", "--adam-epochs", "1", "--cobyla-maxiter", "20", "--phase-batch", "100",
               "--shots", "1000", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_parameters"] == 49 * 10 + 10 and metrics["fast_path"] is False
    capsys.readouterr()
    rc = main(["evaluate", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result["dataset"] == "partial-mnist"  # defaults to the dataset the run was trained on
    assert result["images"] == 600 and 0.0 <= result["accuracy"] <= 1.0  # the whole test split, not --test-limit


def test_metrics_record_generator_and_fast_path(two_round_run) -> None:
    metrics = json.loads((Path(two_round_run["dir"]) / "metrics.json").read_text())
    assert metrics["method"] == "quantum-train" and metrics["fast_path"] is True
    gen = metrics["generator"]
    assert gen["kind"] == "photonic" and gen["mapper"]["kind"] == "mps" and gen["mapper"]["bond_dim"] == 4
    assert [c["modes"] for c in gen["circuits"]] == [9, 8]
    assert math.isclose(metrics["mapper_parameters"] + metrics["circuit_parameters"], 624)
