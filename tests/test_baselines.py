"""pqt.studies.baselines: exact parameter counts, the weight-sharing and pruning structures, the run contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pqt.errors import UserError
from pqt.studies.baselines import BaselineConfig, BaselineNet, run_baseline, trainable_count
from pqt.targets import PaperCNN
from pqt.training import run_files

TINY = {"train_limit": 200, "test_limit": 100, "epochs": 1}
# (rows, row length) of the paper CNN's weight matrices; biases: 8 + 12 + 20 + 10 = 50.
LAYERS = {"conv1": (8, 25), "conv2": (12, 200), "fc1": (20, 192), "fc2": (10, 20)}


def quiet(_line: str) -> None:
    pass


def config(**kw) -> BaselineConfig:
    return BaselineConfig(**{**TINY, **kw})


def test_classical_count_is_the_whole_network() -> None:
    assert trainable_count(config()) == 6690


@pytest.mark.parametrize("k", [1, 3, 8, 11, 25])
def test_weight_sharing_count_by_hand(k: int) -> None:
    by_hand = sum(min(k, rows) * length for rows, length in LAYERS.values()) + 50
    assert trainable_count(config(method="weight-sharing", share_k=k)) == by_hand
    if k == 3:
        assert by_hand == 3 * 25 + 3 * 200 + 3 * 192 + 3 * 20 + 50 == 1361


def test_weight_sharing_of_fc1_alone_gives_the_papers_4770() -> None:
    assert trainable_count(config(method="weight-sharing", share_k=10, share_layers=("fc1",))) == 6690 - 1920 == 4770


@pytest.mark.parametrize("ratio, expected", [(0.5, 100 + 1200 + 1920 + 100 + 50), (0.3, 60 + 720 + 1152 + 60 + 50),
                                             (1.0, 6690)])
def test_pruning_count(ratio: float, expected: int) -> None:
    assert trainable_count(config(method="pruning", keep_ratio=ratio)) == expected
    if ratio == 0.5:
        assert expected == 3370  # the paper's pruning count


def test_shared_rows_repeat_in_sequence() -> None:
    torch.manual_seed(0)
    net = BaselineNet(PaperCNN(), config(method="weight-sharing", share_k=3).validate())
    w = net.materialize()
    for name, (rows, _) in LAYERS.items():
        flat = w[f"{name}.weight"].reshape(rows, -1)
        for i in range(rows):
            assert torch.equal(flat[i], flat[i % 3]), (name, i)
    assert net.free["fc1__bias"].numel() == 20  # biases stay free


@pytest.mark.parametrize("kw, match", [
    ({"method": "classical", "share_k": 2}, "share-k"),
    ({"method": "weight-sharing"}, "share-k"),
    ({"method": "weight-sharing", "share_k": 0}, "share-k"),
    ({"method": "pruning", "keep_ratio": 0.0}, "keep-ratio"),
    ({"method": "pruning"}, "keep-ratio"),
    ({"method": "classical", "keep_ratio": 0.5}, "keep-ratio"),
    ({"method": "dropout"}, "unknown baseline method"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_settings_are_user_errors(kw: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        config(**kw).validate()


def test_unknown_layer_and_key_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown layer.*fc3"):
        trainable_count(config(method="weight-sharing", share_k=2, share_layers=("fc3",)))
    with pytest.raises(UserError, match="unknown baseline key.*share"):
        BaselineConfig.from_dict({"share": 2})


def test_one_epoch_run_writes_the_contract_and_is_skipped_when_finished(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = run_baseline(config(), out, log=quiet)
    saved = run_files.read_json(out / run_files.METRICS)
    assert saved == metrics
    for key in ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "generalization_error",
                "trainable_parameters", "target_parameters", "seed", "wall_seconds", "history"):
        assert key in saved, key
    assert saved["status"] == "finished" and saved["trainable_parameters"] == saved["target_parameters"] == 6690
    assert saved["generalization_error"] == pytest.approx(saved["test_loss"] - saved["train_loss"])
    assert saved["train_size"] == 200 and saved["test_size"] == 100
    assert [e["epoch"] for e in saved["history"]] == [1]
    assert saved["test_accuracy"] == saved["history"][0]["test_accuracy"]
    state = torch.load(out / run_files.MODEL, weights_only=True)
    cnn = PaperCNN()
    cnn.load_state_dict(state)  # a plain state_dict of the paper CNN
    assert run_files.read_json(out / run_files.CONFIG)["method"] == "classical"

    mtime = (out / run_files.METRICS).stat().st_mtime_ns
    assert run_baseline(config(), out, log=quiet)["status"] == "finished"
    assert (out / run_files.METRICS).stat().st_mtime_ns == mtime  # skipped, not retrained
    with pytest.raises(UserError, match="other settings"):
        run_baseline(config(lr=0.1), out, log=quiet)


def test_pruned_weights_stay_zero_and_training_resumes_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(method="pruning", keep_ratio=0.3)
    torch.manual_seed(cfg.seed)
    initial = BaselineNet(PaperCNN(), cfg).materialize()  # what the run starts from (same seed)
    first = run_baseline(cfg, out, log=quiet)
    assert first["trainable_parameters"] == 2042
    trained = torch.load(out / run_files.MODEL, weights_only=True)
    kept = 0
    for name, (rows, length) in LAYERS.items():
        w, w0 = trained[f"{name}.weight"], initial[f"{name}.weight"]
        mask = w0 != 0
        assert torch.all(w[~mask] == 0), name  # pruned weights never move
        assert int(mask.sum()) == round(0.3 * rows * length)
        kept += int(mask.sum())
        assert not torch.equal(w[mask], w0[mask]), name  # the kept ones were trained
    assert kept + 50 == 2042

    # More epochs later: the run continues from its checkpoint (epoch 1 kept as it was).
    second = run_baseline(BaselineConfig(**{**TINY, "epochs": 2, "method": "pruning", "keep_ratio": 0.3}), out,
                          log=quiet)
    assert second["epochs_completed"] == 2 and second["history"][0] == first["history"][0]
    trained = torch.load(out / run_files.MODEL, weights_only=True)
    for name in LAYERS:
        assert torch.all(trained[f"{name}.weight"][initial[f"{name}.weight"] == 0] == 0)


def test_baseline_study_runs_through_the_sweep(tmp_path: Path) -> None:
    from pqt.studies.sweep import load_study, run_sweep

    path = tmp_path / "b.toml"
    path.write_text("""
name = "b"
protocol = "smoke-1ep"
kind = "baseline"
[base]
epochs = 1
train_limit = 200
test_limit = 100
[[grid]]
method = ["classical"]
seed = [0]
[[grid]]
method = ["weight-sharing"]
share_k = [2]
seed = [0]
""")
    study = load_study(path)
    assert [r.name for r in study.runs] == ["method=classical,seed=0", "method=weight-sharing,share_k=2,seed=0"]
    outcome = run_sweep(study, tmp_path / "runs", results=tmp_path / "results", show_progress=False,
                        print_fn=quiet)
    assert len(outcome.finished) == 2 and not outcome.failed
    md = (tmp_path / "results" / "b.md").read_text()
    assert "| classical |  | 1/1 |" in md and "| weight-sharing | 2 | 1/1 |" in md
