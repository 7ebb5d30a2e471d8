"""Datasets of 10 classes: MNIST, Fashion-MNIST, the Perceval Quest CSVs, the offline "partial MNIST"
protocol (28x28 grayscale) and CIFAR-10 (32x32 colour). (`pqt predict`'s image files: :mod:`pqt.data.images`.)

Every image tensor is float32 (N, C, H, W) with pixels in [0, 1] (uint8 / 255, no normalisation);
every label tensor is int64 (N,). Bad or missing input raises :class:`pqt.errors.UserError`.
"""

from __future__ import annotations

import csv
import functools
import gzip
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pqt.errors import UserError

DATASETS = ("mnist", "fashion-mnist", "perceval-quest", "partial-mnist", "cifar-10")
_FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                    "ankle boot")
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_names(name: str) -> tuple[str, ...] | None:
    """What labels 0-9 mean for a dataset (None for the digit datasets: the label is the digit)."""
    return {"fashion-mnist": _FASHION_CLASSES, "cifar-10": _CIFAR_CLASSES}.get(name)
_INPUT_SHAPES = {"cifar-10": (3, 32, 32)}  # the others: (1, 28, 28)


def input_shape_of(name: str) -> tuple[int, ...]:
    """(C, H, W) of a dataset's images, without loading it."""
    return _INPUT_SHAPES.get(name, (1, 28, 28))

ENV_VAR = "PQT_DATA_DIR"
_HINT = f"pass --data-dir DIR or set {ENV_VAR} (see .env.example)"
_SIDE = 28
_NUM_CLASSES = 10
# Where torchvision downloads go when no data folder is set (never inside the repo).
_CACHE_DIR = Path("~/.cache/pqt").expanduser()
# Debian's `dataset-fashion-mnist` package installs the four standard *.gz files here.
_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# Sub-folder torchvision's MNIST/FashionMNIST classes use under their root, per dataset.
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_PARTIAL_TRAIN_SIZE = 6000

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class Dataset:
    """Images (N, C, H, W) float32 in [0, 1] and int64 labels (N,).

    Instances returned by :func:`load_dataset` are cached and shared: do not modify them in place.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image: what the target network takes."""
        return tuple(int(v) for v in self.images.shape[1:])


# --------------------------------------------------------------------------- locating data


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Return the data folder: ``data_dir`` (--data-dir) beats ``PQT_DATA_DIR`` (env or ./.env); else None."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    # Imported here so that merely importing pqt.data has no side effects on os.environ.
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else None


def find_shared_data_dir() -> Path | None:
    """Find a ``shared/data`` folder (holding ``mnist/``) beside or above the cwd or this package.

    This is the workspace/CI layout: repo at X/main, data at X/shared/data.
    """
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    seen: set[Path] = set()
    for start in starts:
        for parent in (start, *start.parents):
            if parent in seen:
                continue
            seen.add(parent)
            candidate = parent / "shared" / "data"
            if (candidate / "mnist").is_dir():
                return candidate
    return None


def _find_file(dirs: Iterable[Path], stem: str) -> Path | None:
    """First existing ``dir/stem`` or ``dir/stem.gz`` (raw preferred: it is faster to read)."""
    for d in dirs:
        for name in (stem, stem + ".gz"):
            p = d / name
            if p.is_file():
                return p
    return None


def _fmt_dirs(dirs: Iterable[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


# --------------------------------------------------------------------------- file parsers


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it is named .gz or starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"file not found: {path}; check the path or {_HINT}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    is_gz_name = path.suffix.lower() == ".gz"
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"corrupt gzip file {path} ({e}); delete it and download it again") from None
    if is_gz_name:
        raise UserError(f"{path} is named .gz but is not a gzip file; delete it and download it again")
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array of its declared shape; validates magic, dims, size."""
    path = Path(path)
    data = _read_bytes(path)
    fix = "the file is corrupt or not an IDX file; delete it and download it again"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"bad IDX magic number in {path}: {fix}")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    if ndim == 0:
        raise UserError(f"IDX file {path} declares 0 dimensions: {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"IDX file {path} is truncated inside its header: {fix}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise UserError(
            f"IDX file {path} is {what} ({actual} data bytes, header {dims} needs {expected}): {fix}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # Native byte order and a writable copy so torch.from_numpy works without warnings.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _snap_to_255(values: np.ndarray) -> np.ndarray:
    """float32 pixels; exactly uint8/255 when the values are k/255 (as in the quest CSVs)."""
    scaled = values * 255.0
    q = np.rint(scaled)
    # The CSVs print k/255 with a few rounded digits; snapping makes them bit-identical to IDX pixels.
    if values.size and np.abs(scaled - q).max() < 1e-3:
        return q.astype(np.float32) / np.float32(255.0)
    return values.astype(np.float32)


def read_quest_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Perceval Quest CSV (header ``image,label``) -> images (N, 28, 28) float32, labels (N,) int64."""
    path = Path(path)
    fix = 'fix or replace the file (expected header image,label and rows like "[0.0, ...]",3)'
    n_pix = _SIDE * _SIDE
    rows: list[np.ndarray] = []
    labels: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != ["image", "label"]:
                raise UserError(f"{path} line 1: header is {header!r}, expected ['image', 'label']; {fix}")
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # tolerate blank lines (e.g. a trailing newline pair)
                if len(row) != 2:
                    raise UserError(f"{path} line {line}: expected 2 columns, got {len(row)}; {fix}")
                text = row[0].strip()
                if not (text.startswith("[") and text.endswith("]")):
                    raise UserError(f"{path} line {line}: image is not a bracketed list of numbers; {fix}")
                parts = text[1:-1].split(",")
                if len(parts) != n_pix:
                    raise UserError(
                        f"{path} line {line}: image has {len(parts)} values, expected {n_pix}; {fix}"
                    )
                try:
                    values = np.array(parts, dtype=np.float64)
                except ValueError:
                    raise UserError(f"{path} line {line}: image holds a non-numeric value; {fix}") from None
                if not np.all((values >= 0.0) & (values <= 1.0)):  # also rejects NaN
                    raise UserError(
                        f"{path} line {line}: pixel values must be in [0, 1] (found "
                        f"{np.nanmin(values):g}..{np.nanmax(values):g}); {fix}"
                    )
                try:
                    label = int(row[1].strip())
                except ValueError:
                    raise UserError(
                        f"{path} line {line}: label {row[1]!r} is not an integer; {fix}"
                    ) from None
                if not 0 <= label < _NUM_CLASSES:
                    raise UserError(f"{path} line {line}: label {label} is outside 0-9; {fix}")
                rows.append(values)
                labels.append(label)
    except FileNotFoundError:
        raise UserError(f"file not found: {path}; check the path or {_HINT}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text CSV; {fix}") from None
    except csv.Error as e:
        raise UserError(f"{path}: malformed CSV ({e}); {fix}") from None
    if not rows:
        raise UserError(f"{path} has a header but no data rows; {fix}")
    images = _snap_to_255(np.stack(rows)).reshape(-1, _SIDE, _SIDE)
    return images, np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- tensors


def _images_from_uint8(arr: np.ndarray) -> torch.Tensor:
    # Copy read-only arrays (PIL, np.load mmap) because torch warns on non-writable buffers.
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if not arr.flags.writeable:
        arr = arr.copy()
    return (torch.from_numpy(arr).to(torch.float32) / 255.0).reshape(-1, 1, _SIDE, _SIDE)


def _images_from_unit(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).reshape(-1, 1, _SIDE, _SIDE)


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an IDX images/labels pair of 28x28 uint8 digits with labels 0-9."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise UserError(
            f"{images_path} holds {images.dtype} {images.shape}, expected uint8 (N, 28, 28) images; "
            "point at the right file"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise UserError(f"{labels_path} holds {labels.dtype} {labels.shape}, expected uint8 (N,) labels")
    if len(labels) != len(images):
        raise UserError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "use files from the same split"
        )
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise UserError(f"{labels_path} has label {int(labels.max())} outside 0-9; the file is corrupt")
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------- datasets

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    roots = [data_dir] if data_dir is not None else [_CACHE_DIR]
    dirs: list[Path] = []
    for root in roots:
        dirs += [root, root / _TORCHVISION_FOLDER[name] / "raw"]
    if name == "fashion-mnist":
        dirs.append(_DEBIAN_FASHION)
    return dirs


def _find_idx_set(dirs: list[Path]) -> list[Path] | None:
    """The four IDX files, all from the same folder (mixing splits across folders would be confusing)."""
    for d in dirs:
        found = [_find_file([d], stem) for split in ("train", "test") for stem in _IDX_STEMS[split]]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
    return None


def _download_idx(name: str, data_dir: Path | None) -> None:
    """Let torchvision download the IDX files into root/<MNIST|FashionMNIST>/raw."""
    root = data_dir if data_dir is not None else _CACHE_DIR
    try:
        # Lazy: torchvision is slow to import and only needed for downloads.
        import torchvision.datasets as tvd

        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as e:  # network, permissions, missing torchvision: all mean "get the files yourself"
        # torchvision's message spans lines (one per mirror); keep the first and the root cause.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise UserError(
            f"dataset {name!r}: IDX files not found and download into {root} failed ({first}); "
            f"put the four IDX files in a folder and {_HINT}"
        ) from None


def _stat_key(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """Cache key: resolved path plus mtime/size, so a replaced file is re-read."""
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(key)


@functools.lru_cache(maxsize=8)
def _load_idx_dataset(name: str, files: tuple[tuple[str, int, int], ...]) -> tuple[Dataset, Dataset]:
    tr_img, tr_lab, te_img, te_lab = (Path(f[0]) for f in files)
    out = []
    for split, (ip, lp) in (("train", (tr_img, tr_lab)), ("test", (te_img, te_lab))):
        images, labels = _idx_pair(ip, lp)
        out.append(Dataset(_images_from_uint8(images), torch.from_numpy(labels), f"{name}:{split}"))
    return out[0], out[1]


@functools.lru_cache(maxsize=8)
def _load_quest_dataset(files: tuple[tuple[str, int, int], ...]) -> tuple[Dataset, Dataset]:
    out = []
    for split, f in zip(("train", "test"), files, strict=True):
        images, labels = read_quest_csv(f[0])
        out.append(Dataset(_images_from_unit(images), torch.from_numpy(labels), f"perceval-quest:{split}"))
    return out[0], out[1]


@functools.lru_cache(maxsize=8)
def _load_partial_dataset(files: tuple[tuple[str, int, int], ...]) -> tuple[Dataset, Dataset]:
    img_path, lab_path, csv_path = (Path(f[0]) for f in files)
    images, labels = _idx_pair(img_path, lab_path)
    if len(images) < _PARTIAL_TRAIN_SIZE:
        raise UserError(
            f"{img_path} has {len(images)} images; partial-mnist needs at least {_PARTIAL_TRAIN_SIZE} "
            "(use the full MNIST t10k file)"
        )
    # The protocol: first 6,000 t10k images in file order; the remaining 4,000 stay held out.
    train = Dataset(
        _images_from_uint8(images[:_PARTIAL_TRAIN_SIZE]),
        torch.from_numpy(labels[:_PARTIAL_TRAIN_SIZE].copy()),
        "partial-mnist:train",
    )
    q_images, q_labels = read_quest_csv(csv_path)
    test = Dataset(_images_from_unit(q_images), torch.from_numpy(q_labels), "partial-mnist:test")
    return train, test


def _locate_cifar(data_dir: Path | None) -> list[Path]:
    from pqt.data import cifar

    roots = [data_dir] if data_dir is not None else [_CACHE_DIR]
    folder = cifar.find_folder(roots)
    if folder is None:
        looked = ", ".join(str(r / cifar.FOLDER) for r in roots)
        raise UserError(f"dataset 'cifar-10': the python batches ({', '.join(cifar.TRAIN_FILES + cifar.TEST_FILES)}) "
                        f"were not found in {looked}; unpack cifar-10-python.tar.gz (torchvision's CIFAR10 download) "
                        f"there and {_HINT}")
    return [folder / n for n in cifar.TRAIN_FILES + cifar.TEST_FILES]


@functools.lru_cache(maxsize=2)
def _load_cifar_folder(files: tuple[tuple[str, int, int], ...]) -> tuple[Dataset, Dataset]:
    from pqt.data import cifar

    folder = Path(files[0][0]).parent
    train = Dataset(*cifar.load_split(folder, cifar.TRAIN_FILES), "cifar-10:train")
    test = Dataset(*cifar.load_split(folder, cifar.TEST_FILES), "cifar-10:test")
    return train, test


def _require_dir(name: str, data_dir: Path, source: str) -> None:
    if not data_dir.is_dir():
        raise UserError(f"dataset {name!r}: data folder {data_dir} (from {source}) does not exist; {_HINT}")


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's images come from: the data folder and how it was chosen, and the files read."""

    name: str
    folder: Path | None  # the data folder used (None: torchvision's cache or a system package)
    folder_from: str  # "--data-dir", "PQT_DATA_DIR", "the shared/data default" or "download cache"
    files: tuple[Path, ...]  # resolved paths, in the order the loader reads them


def locate_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> DataSource:
    """Find the files of one of :data:`DATASETS` (downloading MNIST / Fashion-MNIST when allowed)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    explicit = data_dir is not None and str(data_dir) != ""
    resolved = resolve_data_dir(data_dir)
    source = "--data-dir" if explicit else ENV_VAR
    if resolved is None and key in ("mnist", "fashion-mnist", "cifar-10"):
        source = "download cache"

    def found(files: Iterable[Path]) -> DataSource:
        return DataSource(key, resolved.resolve() if resolved is not None else None, source,
                          tuple(Path(f).resolve() for f in files))

    if key in ("mnist", "fashion-mnist"):
        dirs = _idx_search_dirs(key, resolved)
        files = _find_idx_set(dirs)
        if files is None and download:
            _download_idx(key, resolved)
            files = _find_idx_set(dirs)
        if files is None:
            stems = ", ".join(s + "[.gz]" for split in ("train", "test") for s in _IDX_STEMS[split])
            why = "" if download else " (download disabled)"
            raise UserError(
                f"dataset {key!r}: the IDX files ({stems}) were not all found in one folder{why}; "
                f"looked in: {_fmt_dirs(dirs)}; {_HINT}"
            )
        return found(files)

    if key == "cifar-10":
        return found(_locate_cifar(resolved))

    if resolved is None:
        resolved = find_shared_data_dir()
        source = "the shared/data default"
        if resolved is None:
            raise UserError(
                f"dataset {key!r}: no data folder set and no shared/data folder found above "
                f"{Path.cwd()}; {_HINT}"
            )
    _require_dir(key, resolved, source)

    if key == "perceval-quest":
        dirs = [resolved, resolved / "perceval-quest"]
        quest = [_find_file(dirs, "train.csv"), _find_file(dirs, "val.csv")]
        missing = [n for n, p in zip(("train.csv", "val.csv"), quest, strict=True) if p is None]
        if missing:
            raise UserError(
                f"dataset 'perceval-quest': {' and '.join(missing)} not found; looked in: "
                f"{_fmt_dirs(dirs)}; {_HINT}"
            )
        return found(p for p in quest if p is not None)

    # partial-mnist: data_dir holds mnist/ and perceval-quest/ (flat layouts accepted too).
    idx_dirs = [resolved / "mnist", resolved, resolved / "MNIST" / "raw"]
    csv_dirs = [resolved / "perceval-quest", resolved]
    img = _find_file(idx_dirs, _IDX_STEMS["test"][0])
    lab = _find_file(idx_dirs, _IDX_STEMS["test"][1])
    val = _find_file(csv_dirs, "val.csv")
    problems = []
    if img is None or lab is None:
        problems.append(f"t10k-images/labels IDX files not found in {_fmt_dirs(idx_dirs)}")
    if val is None:
        problems.append(f"val.csv not found in {_fmt_dirs(csv_dirs)}")
    if problems or img is None or lab is None or val is None:
        raise UserError(f"dataset 'partial-mnist': {'; '.join(problems)}; {_HINT}")
    return found((img, lab, val))


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[Dataset, Dataset]:
    """Load ``(train, test)`` for one of :data:`DATASETS` (results are cached in-process)."""
    source = locate_dataset(name, data_dir, download=download)
    files = _stat_key(source.files)
    if source.name in ("mnist", "fashion-mnist"):
        return _load_idx_dataset(source.name, files)
    if source.name == "cifar-10":
        return _load_cifar_folder(files)
    if source.name == "perceval-quest":
        return _load_quest_dataset(files)
    return _load_partial_dataset(files)


def training_splits(name: str, data_dir: str | os.PathLike | None, train_limit: int | None = None,
                    test_limit: int | None = None, validation_size: int = 0,
                    ) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, validation, test) for a training run: optional limits, then the last
    ``validation_size`` training images held out for tuning (never the test set)."""
    train, test = load_dataset(name, data_dir)

    def rows(ds: Dataset, part: slice) -> Dataset:
        return Dataset(ds.images[part], ds.labels[part], ds.name)

    if train_limit is not None:
        train = rows(train, slice(0, train_limit))
    if test_limit is not None:
        test = rows(test, slice(0, test_limit))
    validation = None
    if validation_size:
        if not 0 < validation_size < len(train):
            raise UserError(f"validation-size must be between 1 and {len(train) - 1} (the training images)")
        validation = rows(train, slice(len(train) - validation_size, None))
        train = rows(train, slice(0, len(train) - validation_size))
    return train, validation, test
