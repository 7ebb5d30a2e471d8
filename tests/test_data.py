"""Tests for pqt.data: real shared data (partial-mnist), tiny synthetic IDX/CSV files, error messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pqt import data as D
from pqt.errors import UserError

VAL_COUNTS = [49, 74, 67, 49, 64, 66, 55, 54, 52, 70]


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write a uint8 IDX file (gzip when the name ends in .gz unless told otherwise)."""
    arr = np.asarray(arr, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz is None:
        gz = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_csv(path: Path, images: np.ndarray, labels: list[int], header: str = "image,label") -> Path:
    lines = [header]
    for img, lab in zip(images, labels, strict=True):
        lines.append('"[' + ", ".join(repr(float(v)) for v in np.ravel(img)) + ']",' + str(lab))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_mnist(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        # Mix raw and gzip files: both must be accepted.
        write_idx(folder / (stem + (".gz" if "images" in stem else "")), arr)
    return arrays


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PQT_DATA_DIR and a cwd without .env; the env var is restored after the test."""
    monkeypatch.setenv(D.ENV_VAR, "placeholder")  # records the original value for restoring
    monkeypatch.delenv(D.ENV_VAR)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    """The real shared data folder, found the same way the module's default does."""
    d = D.resolve_data_dir(None) or D.find_shared_data_dir()
    if d is None or not (d / "mnist").is_dir() or not (d / "perceval-quest" / "val.csv").is_file():
        pytest.skip("shared data folder (mnist/ + perceval-quest/val.csv) not found")
    return d


@pytest.fixture(scope="module")
def partial(shared_dir: Path) -> tuple[D.Dataset, D.Dataset]:
    return D.load_dataset("partial-mnist", shared_dir)


# --------------------------------------------------------------------------- real data


def test_partial_mnist_sizes_and_types(partial: tuple[D.Dataset, D.Dataset]) -> None:
    train, test = partial
    assert (len(train), len(test)) == (6000, 600)
    for ds in partial:
        assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
        assert ds.images.shape[1:] == (1, 28, 28)
        assert ds.images.min() >= 0 and ds.images.max() <= 1
        # Pixels are exactly k/255 in both sources (the CSV is snapped to match the IDX encoding).
        k = torch.round(ds.images * 255)
        assert torch.equal(k / 255, ds.images)
        assert ds.labels.min() >= 0 and ds.labels.max() <= 9
    assert torch.bincount(test.labels, minlength=10).tolist() == VAL_COUNTS
    assert train.name == "partial-mnist:train" and test.name == "partial-mnist:test"


def test_partial_train_is_first_6000_of_t10k(partial: tuple[D.Dataset, D.Dataset], shared_dir: Path) -> None:
    images = D.read_idx(shared_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = D.read_idx(shared_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    train, _ = partial
    expected = torch.from_numpy(images[:6000]).float().div(255).unsqueeze(1)
    assert torch.equal(train.images, expected)
    assert torch.equal(train.labels, torch.from_numpy(labels[:6000].astype(np.int64)))


def test_partial_default_dir_and_cache(partial: tuple[D.Dataset, D.Dataset], monkeypatch) -> None:
    monkeypatch.setenv(D.ENV_VAR, "placeholder")
    monkeypatch.delenv(D.ENV_VAR)
    # cwd is the repo (or wherever pytest runs): the shared/data default must be found with no setting.
    again = D.load_dataset("partial-mnist")
    assert again[0] is partial[0] and again[1] is partial[1]  # cached in-process


def test_read_quest_csv_real(shared_dir: Path) -> None:
    images, labels = D.read_quest_csv(shared_dir / "perceval-quest" / "val.csv")
    assert images.shape == (600, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64 and np.bincount(labels, minlength=10).tolist() == VAL_COUNTS


# --------------------------------------------------------------------------- IDX datasets from tmp files


def test_mnist_from_tmp_folder(tmp_path: Path, clean_env: Path) -> None:
    arrays = tiny_mnist(tmp_path / "d")
    train, test = D.load_dataset("mnist", tmp_path / "d", download=False)
    assert (len(train), len(test)) == (5, 3)
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.float32
    assert torch.equal(train.images[:, 0] * 255, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float())
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert test.labels.dtype == torch.int64


def test_mnist_torchvision_layout(tmp_path: Path, clean_env: Path) -> None:
    arrays = tiny_mnist(tmp_path / "FashionMNIST" / "raw", seed=3)
    train, _ = D.load_dataset("fashion-mnist", tmp_path, download=False)
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert train.name == "fashion-mnist:train"


def test_mnist_missing_no_download(tmp_path: Path, clean_env: Path) -> None:
    with pytest.raises(UserError) as e:
        D.load_dataset("mnist", tmp_path / "nothing", download=False)
    msg = str(e.value)
    assert "mnist" in msg and str(tmp_path / "nothing") in msg and "PQT_DATA_DIR" in msg
    assert "\n" not in msg


def test_mnist_download_failure_is_user_error(tmp_path: Path, clean_env: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(UserError, match="download into .* failed .*PQT_DATA_DIR"):
        D.load_dataset("mnist", tmp_path / "empty")


# --------------------------------------------------------------------------- data dir resolution


def test_env_var_and_data_dir_precedence(tmp_path: Path, clean_env: Path, monkeypatch) -> None:
    env_dir, cli_dir = tmp_path / "env", tmp_path / "cli"
    env_arrays = tiny_mnist(env_dir, seed=1)
    cli_arrays = tiny_mnist(cli_dir, seed=2)
    assert D.resolve_data_dir(None) is None
    monkeypatch.setenv(D.ENV_VAR, str(env_dir))
    assert D.resolve_data_dir(None) == env_dir
    assert D.resolve_data_dir(cli_dir) == cli_dir
    train, _ = D.load_dataset("mnist", download=False)
    assert train.labels.tolist() == env_arrays["train-labels-idx1-ubyte"].tolist()
    train, _ = D.load_dataset("mnist", cli_dir, download=False)
    assert train.labels.tolist() == cli_arrays["train-labels-idx1-ubyte"].tolist()


def test_dotenv_in_cwd(tmp_path: Path, clean_env: Path) -> None:
    (clean_env / ".env").write_text(f"{D.ENV_VAR}={tmp_path / 'from-dotenv'}\n")
    assert D.resolve_data_dir(None) == tmp_path / "from-dotenv"


def test_missing_folder_mentions_env_var(tmp_path: Path, clean_env: Path) -> None:
    for name in ("partial-mnist", "perceval-quest"):
        with pytest.raises(UserError, match="PQT_DATA_DIR") as e:
            D.load_dataset(name, tmp_path / "missing")
        assert name in str(e.value) and str(tmp_path / "missing") in str(e.value)


def test_partial_missing_files_lists_paths(tmp_path: Path, clean_env: Path) -> None:
    (tmp_path / "mnist").mkdir()
    with pytest.raises(UserError) as e:
        D.load_dataset("partial-mnist", tmp_path)
    msg = str(e.value)
    assert "val.csv" in msg and str(tmp_path / "perceval-quest") in msg and "PQT_DATA_DIR" in msg


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(UserError) as e:
        D.load_dataset("cifar10")
    for name in D.DATASETS:
        assert name in str(e.value)


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_idx_truncated(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    bad = tmp_path / "trunc-idx3-ubyte"
    bad.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated") as e:
        D.read_idx(bad)
    assert str(bad) in str(e.value)
    # A gzip stream cut short must fail the same way, naming the file.
    gz = tmp_path / "trunc-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good.read_bytes())[:-20])
    with pytest.raises(UserError) as e:
        D.read_idx(gz)
    assert str(gz) in str(e.value)


def test_corrupt_idx_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "magic-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"\x00\x01\x02")
    with pytest.raises(UserError, match="magic") as e:
        D.read_idx(bad)
    assert str(bad) in str(e.value)


def test_corrupt_idx_not_gzip(tmp_path: Path) -> None:
    bad = write_idx(tmp_path / "plain-idx1-ubyte.gz", np.arange(3), gz=False)
    with pytest.raises(UserError, match="not a gzip") as e:
        D.read_idx(bad)
    assert str(bad) in str(e.value)


def test_corrupt_idx_inside_dataset(tmp_path: Path, clean_env: Path) -> None:
    tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        D.load_dataset("mnist", tmp_path, download=False)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        out = D.read_idx(write_idx(tmp_path / name, arr))
        assert out.dtype == np.uint8 and np.array_equal(out, arr)


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("header", "header"),
        ("count", "783 values"),
        ("label", "label 11"),
        ("range", r"\[0, 1\]"),
        ("text", "non-numeric"),
    ],
)
def test_corrupt_csv(tmp_path: Path, case: str, pattern: str) -> None:
    images = np.full((3, 784), 0.5)
    labels = [1, 2, 3]
    header = "image,label"
    path = tmp_path / f"{case}.csv"
    if case == "header":
        header = "pixels,target"
    write_csv(path, images, labels, header)
    lines = path.read_text().splitlines()
    if case == "count":
        lines[2] = '"[' + ", ".join(["0.0"] * 783) + ']",4'
    elif case == "label":
        lines[2] = lines[2].rsplit(",", 1)[0] + ",11"
    elif case == "range":
        lines[2] = lines[2].replace("0.5", "1.5", 1)
    elif case == "text":
        lines[2] = lines[2].replace("0.5", "abc", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=pattern) as e:
        D.read_quest_csv(path)
    msg = str(e.value)
    assert str(path) in msg and ("line 1" if case == "header" else "line 3") in msg


def test_perceval_quest_from_tmp(tmp_path: Path, clean_env: Path) -> None:
    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (4, 784))
    folder = tmp_path / "perceval-quest"
    folder.mkdir()
    write_csv(folder / "train.csv", k[:3] / 255, [0, 5, 9])
    write_csv(folder / "val.csv", k[3:] / 255, [7])
    train, test = D.load_dataset("perceval-quest", tmp_path)
    assert (len(train), len(test)) == (3, 1)
    assert train.labels.tolist() == [0, 5, 9] and test.labels.tolist() == [7]
    assert torch.equal(train.images.reshape(3, -1), torch.from_numpy(k[:3]).float() / 255)


# --------------------------------------------------------------------------- load_images


def test_load_images_npy(tmp_path: Path) -> None:
    u8 = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    out = D.load_images(tmp_path / "u8.npy")
    assert out.shape == (4, 1, 28, 28) and out.dtype == torch.float32
    assert torch.equal(out[:, 0] * 255, torch.from_numpy(u8).float())
    np.save(tmp_path / "one.npy", u8[0] / 255.0)
    assert D.load_images(tmp_path / "one.npy").shape == (1, 1, 28, 28)
    np.save(tmp_path / "bad.npy", u8.astype(np.float32))  # 0-255 floats: a common mistake
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        D.load_images(tmp_path / "bad.npy")
    np.save(tmp_path / "shape.npy", np.zeros((3, 32, 32)))
    with pytest.raises(UserError, match="shape"):
        D.load_images(tmp_path / "shape.npy")


def test_load_images_png(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((28, 28), np.uint8)
    pixels[5:20, 10:15] = 255
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    out = D.load_images(tmp_path / "digit.png")
    assert out.shape == (1, 1, 28, 28)
    assert torch.equal(out[0, 0] * 255, torch.from_numpy(pixels).float())
    # A larger RGB picture is converted to grayscale and resized.
    Image.fromarray(np.stack([np.kron(pixels, np.ones((2, 2), np.uint8))] * 3, -1)).save(tmp_path / "big.jpg")
    big = D.load_images(tmp_path / "big.jpg")
    assert big.shape == (1, 1, 28, 28) and big.min() >= 0 and big.max() <= 1


def test_load_images_idx_csv_and_errors(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    out = D.load_images(write_idx(tmp_path / "imgs-idx3-ubyte.gz", arr))
    assert out.shape == (2, 1, 28, 28)
    csv_path = write_csv(tmp_path / "q.csv", arr.reshape(2, -1) / 255, [1, 2])
    assert torch.equal(D.load_images(csv_path), out)
    with pytest.raises(UserError, match="not found"):
        D.load_images(tmp_path / "nope.png")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported"):
        D.load_images(tmp_path / "x.txt")


# --------------------------------------------------------------------------- CIFAR-10 (python-batch format)


def _write_cifar(root: Path, per_batch: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Tiny CIFAR-10 files in torchvision's layout (no CIFAR-10 exists offline): 5 training batches + test."""
    from pqt.data import cifar

    folder = root / cifar.FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch)
    for i, name in enumerate(cifar.TRAIN_FILES + cifar.TEST_FILES):
        part = slice(i * per_batch, (i + 1) * per_batch)
        cifar.write_batch(folder / name, images[part], labels[part])
    return images, labels


def test_cifar10_loader_reads_python_batches(tmp_path: Path) -> None:
    images, labels = _write_cifar(tmp_path)
    train, test = D.load_dataset("cifar-10", tmp_path)
    assert train.images.shape == (60, 3, 32, 32) and test.images.shape == (12, 3, 32, 32)
    assert train.input_shape == (3, 32, 32) and D.input_shape_of("cifar-10") == (3, 32, 32)
    # channel-major rows of 1,024 values (R, then G, then B), row-major 32x32, pixels / 255
    np.testing.assert_array_equal((train.images * 255).round().numpy().astype(np.uint8), images[:60])
    np.testing.assert_array_equal(test.labels.numpy(), labels[60:])


def test_cifar10_tampered_batch_is_refused(tmp_path: Path) -> None:
    import pickle

    from pqt.data import cifar

    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / cifar.FOLDER / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        D.load_dataset("cifar-10", tmp_path)


def test_cifar10_missing_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        D.load_dataset("cifar-10", tmp_path)


def test_cifar10_shaped_target_trains(tmp_path: Path) -> None:
    """A 3x32x32 dataset feeds a target built for it (the small MLP: 24,674 weights -> 15 qubits)."""
    from pqt.training.config import TrainConfig
    from pqt.training.trainer import Trainer

    _write_cifar(tmp_path / "data")
    config = TrainConfig(dataset="cifar-10", data_dir=str(tmp_path / "data"), target="mlp", generator="qubit",
                         blocks=1, phase_optimizer="exact-gradient", shots=None, rounds=1, adam_epochs=1)
    metrics = Trainer(config, tmp_path / "run", log=lambda line: None).run()
    assert metrics["target_parameters"] == 3072 * 8 + 8 + 90
    assert metrics["generator"]["circuits"][0]["qubits"] == 15
    assert metrics["status"] == "finished"
