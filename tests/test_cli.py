"""The ``pqt`` command line, in-process: one-line errors, params/plan output, a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pqt.cli import main
from pqt.data import load_dataset
from pqt.targets import PaperCNN

REPO = Path(__file__).resolve().parent.parent


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pqt: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(("flags", "needles"), [
    (["--modes", "3", "8", "--photons", "4", "4"], ["3 modes", "4 photons"]),
    (["--modes", "5", "4", "--photons", "2", "2"], ["configurations that fit", "6,690"]),
    (["--bond-dim", "0"], ["bond dimension", "0"]),
    (["--shots", "0"], ["shots", "exact"]),
    (["--shots", "many"], ["shots"]),
    (["--dataset", "cifar10"], ["cifar10", "partial-mnist"]),
    (["--backend", "quantum-magic"], ["quantum-magic", "slos"]),
    (["--phase-optimizer", "adam"], ["adam", "cobyla"]),
    (["--rounds", "0"], ["rounds"]),
    (["--no-such-flag"], ["--no-such-flag"]),
])
def test_train_bad_input_is_one_line(tiny_flags, capsys, tmp_path, flags, needles) -> None:
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "1", *flags, "--out", str(out))
    assert_one_line_error(rc, err, *needles)
    assert not out.exists(), "a refused run must not leave a run directory"


def test_params_photons_more_than_modes(capsys) -> None:
    rc, _, err = cli(capsys, "params", "--modes", "3", "8", "--photons", "4", "4")
    assert_one_line_error(rc, err, "3 modes", "4 photons")


def test_missing_data_folder(capsys, tmp_path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):  # no network: the fallback download fails, as on these machines
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(tvd, "MNIST", offline)
    missing = tmp_path / "nonexistent"
    rc, _, err = cli(capsys, "train", "--dataset", "mnist", "--data-dir", str(missing), "--out", str(tmp_path / "o"))
    assert_one_line_error(rc, err, str(missing), "mnist")


def test_missing_partial_mnist_folder(capsys, tmp_path) -> None:
    missing = tmp_path / "nonexistent"
    rc, _, err = cli(capsys, "train", "--data-dir", str(missing), "--out", str(tmp_path / "o"))
    assert_one_line_error(rc, err, str(missing), "does not exist")


GOOD_ROW = '"[' + ", ".join(["0.0"] * 784) + ']",3\n'


@pytest.mark.parametrize(("train_csv", "needle"), [
    ('image,label\n"[0.5, oops]",3\n', "train.csv"),
    ("image,label\n" + GOOD_ROW.replace(",3\n", ",12\n"), "label"),
    ("image,label\n", "no data rows"),
    (b"\xff\xfe\x00garbage", "train.csv"),
])
def test_corrupt_quest_csv(capsys, tmp_path, train_csv, needle) -> None:
    folder = tmp_path / "data" / "perceval-quest"
    folder.mkdir(parents=True)
    if isinstance(train_csv, bytes):
        (folder / "train.csv").write_bytes(train_csv)
    else:
        (folder / "train.csv").write_text(train_csv)
    (folder / "val.csv").write_text("image,label\n" + GOOD_ROW)
    rc, _, err = cli(capsys, "train", "--dataset", "perceval-quest", "--data-dir", str(tmp_path / "data"),
                     "--out", str(tmp_path / "o"))
    assert_one_line_error(rc, err, needle)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("t10k-images-idx3-ubyte", b"not an idx file at all", "IDX"),
    ("t10k-images-idx3-ubyte.gz", b"not gzip either", "gzip"),
    ("t10k-images-idx3-ubyte", bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") * 3 + b"\x00" * 50, "IDX"),
])
def test_corrupt_idx(capsys, tmp_path, name, content, needle) -> None:
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    (data / "perceval-quest").mkdir()
    (data / "mnist" / name).write_bytes(content)
    (data / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (1).to_bytes(4, "big") + b"\x01")
    (data / "perceval-quest" / "val.csv").write_text("image,label\n" + GOOD_ROW)
    rc, _, err = cli(capsys, "train", "--data-dir", str(data), "--out", str(tmp_path / "o"))
    assert_one_line_error(rc, err, needle)


def test_resume_without_checkpoint(capsys, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = cli(capsys, "train", "--resume", str(empty))
    assert_one_line_error(rc, err, str(empty), "checkpoint")
    rc, _, err = cli(capsys, "train", "--resume", str(tmp_path / "absent"))
    assert_one_line_error(rc, err, "checkpoint")


def test_out_dir_that_holds_a_run_is_refused(tiny_flags, capsys, cli_run_dir) -> None:
    before = {p.name: p.read_bytes() for p in cli_run_dir.iterdir() if p.is_file()}
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "1", "--out", str(cli_run_dir))
    assert_one_line_error(rc, err, str(cli_run_dir), "--resume")
    after = {p.name: p.read_bytes() for p in cli_run_dir.iterdir() if p.is_file()}
    assert after == before, "the existing run was modified"


def _damage(run: Path, what: str) -> None:
    if what == "missing config.json":
        (run / "config.json").unlink()
    elif what == "corrupt config.json":
        (run / "config.json").write_text("{not json")
    elif what == "corrupt checkpoint.pt":
        (run / "checkpoint.pt").write_bytes(b"garbage, not a torch file")


@pytest.mark.parametrize("what", ["corrupt config.json", "corrupt checkpoint.pt"])
def test_resume_of_damaged_run_is_one_line(capsys, cli_run_dir, tmp_path, what) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(cli_run_dir, run)
    _damage(run, what)
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    assert_one_line_error(rc, err, str(run))


def test_resume_without_config_json_is_no_traceback(capsys, cli_run_dir, tmp_path) -> None:
    """A run dir with a checkpoint but no config.json (e.g. written by the Trainer API): resuming either
    works (the checkpoint records the config) or is refused in one line, never a traceback."""
    run = tmp_path / "no_config"
    shutil.copytree(cli_run_dir, run)
    _damage(run, "missing config.json")
    rc, _, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    if rc != 0:
        assert_one_line_error(rc, err, str(run))


def test_evaluate_with_corrupt_config_is_one_line(capsys, cli_run_dir, tmp_path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(cli_run_dir, run)
    _damage(run, "corrupt config.json")
    rc, _, err = cli(capsys, "evaluate", str(run))
    assert_one_line_error(rc, err, "config.json")


def test_evaluate_without_model(capsys, tmp_path) -> None:
    rc, _, err = cli(capsys, "evaluate", str(tmp_path))
    assert_one_line_error(rc, err, "model.pt")


# --------------------------------------------------------------------------- params and plan


def test_params_bond_dim_4(capsys) -> None:
    rc, out, err = cli(capsys, "params", "--bond-dim", "4")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.split()[:1] == ["4"])
    numbers = [int(tok) for tok in row.split() if tok.isdigit()]
    # chi, MPS 31*16, phases 72+56, total, paper count 496+108+84, target
    assert numbers == [4, 496, 128, 624, 688, 6690]
    assert "72 phases" in out and "56 phases" in out


def test_params_json_several_bond_dims(capsys) -> None:
    rc, out, err = cli(capsys, "params", "--bond-dims", "1", "10", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["bond_dim"] for r in rows] == [1, 10]
    assert [r["mps_parameters"] for r in rows] == [31, 3100]
    assert [r["trainable_parameters"] for r in rows] == [159, 3228]
    assert [r["paper_count_parameters"] for r in rows] == [223, 3292]
    assert all(r["target_parameters"] == 6690 for r in rows)


def test_plan_defaults(capsys) -> None:
    rc, out, err = cli(capsys, "plan")
    assert rc == 0, err
    # 2 QNNs x (1000 COBYLA calls + 1) x 10,000 shots per round; 200 rounds + the first evaluation
    assert "shots: 20,020,000 per round, 4,004,020,000 in total" in out
    assert "400,402 in total" in out


def test_train_dry_run(capsys, tmp_path) -> None:
    out_dir = tmp_path / "dry"
    rc, out, err = cli(capsys, "train", "--dry-run", "--rounds", "3", "--cobyla-maxiter", "20", "--shots", "1000",
                       "--max-shots", "100000", "--out", str(out_dir))
    assert rc == 0, err
    per_round = 2 * (20 + 1)
    total = 2 + 3 * per_round
    assert f"shots: {1000 * per_round:,} per round, {1000 * total:,} in total" in out
    assert "--max-shots 100,000: the run will stop early" in out
    assert not out_dir.exists()


# --------------------------------------------------------------------------- end to end


def test_tiny_run_files(runs, cli_run_dir) -> None:
    for name in ("config.json", "checkpoint.pt", "model.pt", "metrics.json", "train.log"):
        assert (cli_run_dir / name).is_file(), name
    config = json.loads((cli_run_dir / "config.json").read_text())
    assert config["rounds"] == 1 and config["cobyla_maxiter"] == 10 and config["train_limit"] == 300
    assert config["qnn_modes"] == [9, 8] and config["qnn_photons"] == [4, 4]
    m = runs.read_metrics(cli_run_dir)
    assert m["status"] == "finished" and m["rounds_completed"] == 1 and len(m["history"]) == 1
    assert m["shots"] == 10_000 and m["train_size"] == 300 and m["test_size"] == 100
    assert "round 1/1" in (cli_run_dir / "train.log").read_text()


def test_run_records_its_provenance(cli_run_dir) -> None:
    import hashlib
    from importlib import metadata

    record = json.loads((cli_run_dir / "provenance.json").read_text())
    (attempt,) = record["attempts"]
    assert attempt["event"] == "start"
    data = attempt["data"]
    assert data["dataset"] == "partial-mnist" and data["folder"] is not None  # config.json says data_dir: null
    names = [Path(f["path"]).name.removesuffix(".gz") for f in data["files"]]
    assert names == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "val.csv"]
    for f in data["files"]:
        assert Path(f["path"]).is_relative_to(data["folder"])
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    versions = attempt["packages"]
    assert versions["torch"] == metadata.version("torch") and versions["numpy"] == metadata.version("numpy")
    assert versions["perceval-quandela"] and versions["scipy"] and versions["pqt"]
    assert attempt["threads"]["torch"] >= 1 and "OMP_NUM_THREADS" in attempt["threads"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert attempt["code"]["git_commit"] == head.stdout.strip()


def test_provenance_resolves_the_data_folder_of_the_environment(tmp_path, monkeypatch) -> None:
    from pqt.data import find_shared_data_dir
    from pqt.training import provenance

    shared = find_shared_data_dir()
    monkeypatch.setenv("PQT_DATA_DIR", str(shared))
    run = tmp_path / "run"
    run.mkdir()
    provenance.record(run, "partial-mnist", None, 1, "cpu", "start")
    provenance.record(run, "partial-mnist", None, 1, "cpu", "resume")
    attempts = json.loads((run / "provenance.json").read_text())["attempts"]
    assert [a["event"] for a in attempts] == ["start", "resume"]
    data = attempts[0]["data"]
    assert data["folder"] == str(shared.resolve()) and data["folder_from"] == "PQT_DATA_DIR"
    assert len(data["files"]) == 3 and all(len(f["sha256"]) == 64 for f in data["files"])


def model_from(run: Path) -> PaperCNN:
    model = PaperCNN()
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    return model.eval()


def test_evaluate_json(capsys, cli_run_dir) -> None:
    rc, out, err = cli(capsys, "evaluate", str(cli_run_dir), "--json")
    assert rc == 0, err
    result = json.loads(out)
    _, test = load_dataset("partial-mnist")
    with torch.no_grad():
        logits = model_from(cli_run_dir)(test.images)
    correct = (logits.argmax(1) == test.labels).sum().item()
    assert result["images"] == 600 and result["split"] == "test" and result["dataset"] == "partial-mnist"
    assert result["accuracy"] == pytest.approx(correct / 600, abs=1e-6)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, test.labels).item(), rel=1e-5)


def test_predict_npy_top3_probabilities(capsys, cli_run_dir, tmp_path) -> None:
    """Output changed with issue 13: the three most probable classes with their probabilities, per image."""
    train, _ = load_dataset("partial-mnist")
    pixels = np.rint(train.images[:7, 0].numpy() * 255).astype(np.uint8)
    path = tmp_path / "digits.npy"
    np.save(path, pixels)
    with torch.no_grad():
        probabilities = torch.softmax(model_from(cli_run_dir)(train.images[:7]).double(), dim=1)
    rc, out, err = cli(capsys, "predict", str(cli_run_dir), str(path), "--json")
    assert rc == 0, err
    (result,) = json.loads(out)
    assert result["file"] == str(path) and result["preparation"] == []  # MNIST digits: nothing to change
    assert [p["index"] for p in result["predictions"]] == list(range(7))
    for p, expected in zip(result["predictions"], probabilities, strict=True):
        best = expected.topk(3)
        assert [c["label"] for c in p["top"]] == best.indices.tolist() and not p["inverted"]
        np.testing.assert_allclose([c["probability"] for c in p["top"]], best.values.numpy(), rtol=1e-6)
    rc, out, err = cli(capsys, "predict", str(cli_run_dir), str(path))
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 7 and lines[0].startswith(f"{path}[0]: {probabilities[0].argmax().item()} ")
    assert all(line.count("%") == 3 for line in lines)


def _dark_on_light_picture(digit: torch.Tensor, path: Path) -> Path:
    """A 200x200 black-on-white picture of an MNIST digit, as a user would draw or scan it."""
    from PIL import Image

    pixels = 255 - np.rint(digit.numpy() * 255).astype(np.uint8)
    Image.fromarray(np.pad(np.kron(pixels, np.ones((7, 7), np.uint8)), 2, constant_values=255)).save(path)
    return path


def test_predict_inverts_and_centres_a_dark_on_light_picture(capsys, cli_run_dir, tmp_path) -> None:
    from pqt.data import prepare_images

    train, _ = load_dataset("partial-mnist")
    picture = _dark_on_light_picture(train.images[0, 0], tmp_path / "seven.png")
    prepared = prepare_images(picture)
    assert prepared.inverted == [True] and prepared.images.shape == (1, 1, 28, 28)
    # inverted, cropped and centred as MNIST's digits: the original digit again
    assert np.corrcoef(prepared.images.ravel(), train.images[0].ravel())[0, 1] > 0.95
    rc, out, err = cli(capsys, "predict", str(cli_run_dir), str(picture))
    assert rc == 0, err
    assert "inverted (dark on a light background)" in out and "centred in 28x28" in out
    kept = prepare_images(picture, invert=False)
    assert kept.inverted == [False] and "inverted" not in " ".join(kept.notes)
    np.save(tmp_path / "light.npy", np.rint(train.images[:2, 0].numpy() * 255).astype(np.uint8))
    forced = prepare_images(tmp_path / "light.npy", invert=True)
    assert forced.inverted == [True, True] and torch.allclose(forced.images, 1 - train.images[:2], atol=1e-6)
    assert forced.notes == ["inverted 2 of 2 images (forced by --invert)"]


def test_predict_colour_images_for_a_cifar_run(capsys, tmp_path) -> None:
    """A cifar-cnn run (made here: no CIFAR-10 offline) predicts on 3x32x32 pictures and arrays."""
    from PIL import Image

    from pqt.targets import create_target

    run = tmp_path / "cifar_run"
    run.mkdir()
    torch.manual_seed(0)
    model = create_target("cifar-cnn", (3, 32, 32), None).eval()
    torch.save(model.state_dict(), run / "model.pt")
    (run / "config.json").write_text(json.dumps({"target": "cifar-cnn", "dataset": "cifar-10"}))
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "two.npy", hwc)
    Image.fromarray(np.kron(hwc[0], np.ones((2, 3, 1), np.uint8))).save(tmp_path / "wide.png")  # 96x64
    rc, out, err = cli(capsys, "predict", str(run), str(tmp_path / "two.npy"), str(tmp_path / "wide.png"), "--json")
    assert rc == 0, err
    arrays, picture = json.loads(out)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255).double(), dim=1)
    for p, probabilities in zip(arrays["predictions"], expected, strict=True):
        assert [c["label"] for c in p["top"]] == probabilities.topk(3).indices.tolist()
        cifar = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        assert [c["name"] for c in p["top"]] == [cifar[c["label"]] for c in p["top"]]
    assert picture["preparation"] == ["resized from 96x64 to 32x32"]
    rc, _, err = cli(capsys, "predict", str(run), str(tmp_path / "two.npy"), "--invert")
    assert_one_line_error(rc, err, "--invert", "colour")


def test_evaluate_confusion_matrix(capsys, cli_run_dir) -> None:
    rc, out, err = cli(capsys, "evaluate", str(cli_run_dir), "--confusion", "--json")
    assert rc == 0, err
    result = json.loads(out)
    _, test = load_dataset("partial-mnist")
    with torch.no_grad():
        predicted = model_from(cli_run_dir)(test.images).argmax(1)
    matrix = np.array(result["confusion"])
    assert matrix.shape == (10, 10) and result["classes"] == [str(k) for k in range(10)]
    for true in range(10):
        for guess in range(10):
            assert matrix[true, guess] == int(((test.labels == true) & (predicted == guess)).sum())
    assert matrix.trace() / matrix.sum() == pytest.approx(result["accuracy"])
    rc, out, err = cli(capsys, "evaluate", str(cli_run_dir), "--confusion")
    assert rc == 0, err
    table = out.strip().splitlines()[1:]
    assert table[0].startswith("true \\ predicted") and len(table) == 11
    assert [int(v) for v in table[1].split()[1:11]] == matrix[0].tolist()


def test_deployment_does_not_import_perceval(cli_run_dir, tmp_path) -> None:
    digits = tmp_path / "one.npy"
    np.save(digits, np.zeros((28, 28), dtype=np.uint8))
    code = (
        "import sys\n"
        "from pqt.cli import main\n"
        f"assert main(['evaluate', {str(cli_run_dir)!r}]) == 0\n"
        "assert 'perceval' not in sys.modules, 'pqt evaluate imported perceval'\n"
        f"assert main(['predict', {str(cli_run_dir)!r}, {str(digits)!r}]) == 0\n"
        "assert 'perceval' not in sys.modules, 'pqt predict imported perceval'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout


def test_cli_resume_equals_uninterrupted_run(tiny_flags, capsys, runs, two_round_run, tmp_path) -> None:
    """`pqt train --rounds 1 --out C` then `pqt train --resume C --rounds 2` = 2 uninterrupted rounds."""
    run = tmp_path / "c"
    rc, _, err = cli(capsys, "train", *tiny_flags, "--rounds", "1", "--out", str(run))
    assert rc == 0, err
    rc, out, err = cli(capsys, "train", "--resume", str(run), "--rounds", "2")
    assert rc == 0, err
    assert "resuming" in out
    runs.assert_same_run(two_round_run["dir"], run)
    assert json.loads((run / "config.json").read_text())["rounds"] == 1  # the recorded config is kept
