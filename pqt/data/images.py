"""Image files for ``pqt predict``: read at the shape a trained network takes, then made to look like
its training data, saying what was done.

Reading (:func:`load_images`): pictures (PNG, JPEG, ...), ``.npy`` arrays, IDX image files and
Quest CSVs -> (N, C, H, W) float32 in [0, 1], for 1x28x28 grayscale or 3x32x32 colour networks.

Preparing (:func:`prepare_images`), for grayscale digit-like networks (MNIST and its kin):
- polarity: the training images are light ink on a dark background. An image whose border is
  light on average is taken to be dark on light and inverted (``invert=True`` / ``False`` forces it);
- geometry: a picture of another size is cropped to its ink, scaled so that its longer side is 20
  pixels and centred by its centre of mass in 28x28, which is how MNIST's digits were made (a plain
  resize leaves a small digit in a large frame, which the network has never seen).
Colour pictures are converted to RGB and resized to 32x32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pqt.data.datasets import read_idx, read_quest_csv
from pqt.errors import UserError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY = (1, 28, 28)
MNIST_BOX = 20  # MNIST's digits fit a 20x20 box, centred by mass in the 28x28 frame
_INK = 0.2  # pixels above this fraction of the brightest are ink (for the crop)


@dataclass
class PreparedImages:
    """One input file ready for the network, and what was done to it."""

    path: str
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    inverted: list[bool]  # per image
    notes: list[str] = field(default_factory=list)


def _check_shape(input_shape: tuple[int, ...]) -> None:
    if tuple(input_shape) not in (GRAY, (3, 32, 32)):
        raise UserError(f"pqt predict reads images for 1x28x28 or 3x32x32 networks, not {tuple(input_shape)}")


def _to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    """uint8 pixels or floats in [0, 1] -> float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{path} holds integers outside 0-255; save uint8 pixels or floats in [0, 1]")
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all((arr >= 0) & (arr <= 1)):
            raise UserError(f"{path} holds floats outside [0, 1] (or NaN); divide 0-255 pixels by 255 before saving")
        return arr.astype(np.float32)
    raise UserError(f"{path} holds {arr.dtype} values; save uint8 pixels or floats in [0, 1]")


def _array_to_images(arr: np.ndarray, path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """An array of one or more images -> (N, C, H, W) float32 for a network taking ``input_shape``.

    Grayscale: (H, W), (N, H, W) or (N, 1, H, W). Colour: (H, W, 3) or (N, H, W, 3) as pictures are
    stored, or (3, H, W) / (N, 3, H, W) as torch stores them.
    """
    c, h, w = input_shape
    if c == 1:
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        ok = arr.ndim == 3 and arr.shape[1:] == (h, w) and arr.shape[0] > 0
        expected = f"({h}, {w}) or (N, {h}, {w}) images"
    else:
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim == 4 and arr.shape[1:] == (h, w, c):
            arr = arr.transpose(0, 3, 1, 2)
        ok = arr.ndim == 4 and arr.shape[1:] == (c, h, w) and arr.shape[0] > 0
        expected = f"({h}, {w}, {c}), (N, {h}, {w}, {c}) or (N, {c}, {h}, {w}) colour images"
    if not ok:
        raise UserError(f"{path} holds shape {arr.shape}; the network takes {expected}")
    return torch.from_numpy(np.ascontiguousarray(_to_unit(arr, path))).reshape(-1, c, h, w)


def _open_picture(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # lazy: only pictures need PIL

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path} ({e}); give a valid PNG/JPEG file") from None


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (size[1], size[0]) by Lanczos resampling."""
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def _picture(path: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    """A picture at the network's size by a plain resize: (pixels, note or None)."""
    c, h, w = input_shape
    pixels = _open_picture(path, "L" if c == 1 else "RGB")
    if pixels.shape[:2] == (h, w):
        return pixels, None
    note = f"resized from {pixels.shape[1]}x{pixels.shape[0]} to {w}x{h}"
    return _resize(pixels, (w, h)), note


def load_images(path: str | os.PathLike, input_shape: tuple[int, ...] = GRAY) -> torch.Tensor:
    """Read the images of one file -> (N, C, H, W) float32 in [0, 1], as stored (no polarity or centring).

    Accepts a picture (converted to grayscale or RGB and resized), a .npy array (uint8 or floats in
    [0, 1]; shapes as in :func:`_array_to_images`), an IDX images file (raw or .gz) or a Perceval Quest
    CSV (labels ignored); the last two hold 28x28 grayscale images.
    """
    _check_shape(input_shape)
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"input file not found: {path}; give a .png/.jpg, .npy, IDX or quest .csv file")
    suffix, name = path.suffix.lower(), path.name.lower()
    if suffix in PICTURE_SUFFIXES:
        return _array_to_images(_picture(path, input_shape)[0], path, input_shape)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"cannot read {path} as a .npy array ({e}); save it with numpy.save") from None
        return _array_to_images(np.asarray(arr), path, input_shape)
    if suffix == ".csv" or "idx" in name or "ubyte" in name or suffix == ".gz":
        if tuple(input_shape) != GRAY:
            raise UserError(f"{path} holds 28x28 grayscale images; the network takes {tuple(input_shape)} colour "
                            "images: give pictures or a .npy array")
        if suffix == ".csv":
            return _array_to_images(read_quest_csv(path)[0], path, input_shape)
        arr = read_idx(path)
        if arr.dtype != np.uint8:
            raise UserError(f"{path} holds {arr.dtype} values; expected an IDX file of uint8 images")
        return _array_to_images(arr, path, input_shape)
    raise UserError(f"unsupported input {path}; give a .png/.jpg picture, a .npy array, an IDX images file "
                    "or a quest .csv")


# --------------------------------------------------------------------------- preparing digits


def light_background(image: np.ndarray) -> bool:
    """Whether a grayscale image (H, W) in [0, 1] is dark on light: its border is light on average."""
    h, w = image.shape
    k = max(1, min(h, w) // 14)  # a 2-pixel frame at 28x28
    frame = np.concatenate([image[:k].ravel(), image[-k:].ravel(), image[k:-k, :k].ravel(), image[k:-k, -k:].ravel()])
    return float(frame.mean()) > 0.5


def centre_like_mnist(image: np.ndarray, side: int = GRAY[1]) -> np.ndarray:
    """Light-on-dark (H, W) in [0, 1] -> (side, side): cropped to its ink, longer side scaled to 20 pixels,
    centre of mass at the centre (MNIST's own preparation)."""
    if image.max() <= 0:
        return _resize((image * 255).round().astype(np.uint8), (side, side)).astype(np.float32) / 255.0
    rows, cols = np.nonzero(image > _INK * image.max())
    crop = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = MNIST_BOX / max(crop.shape)
    h, w = (max(1, round(n * scale)) for n in crop.shape)
    small = _resize((crop * 255).round().astype(np.uint8), (w, h)).astype(np.float32) / 255.0
    out = np.zeros((side, side), np.float32)
    mass = small.sum()
    cy, cx = ((np.indices(small.shape) * small).reshape(2, -1).sum(1) / mass) if mass > 0 else (h / 2, w / 2)
    top = int(np.clip(round(side / 2 - cy), 0, side - h))
    left = int(np.clip(round(side / 2 - cx), 0, side - w))
    out[top : top + h, left : left + w] = small
    return out


def prepare_images(path: str | os.PathLike, input_shape: tuple[int, ...] = GRAY,
                   invert: bool | None = None) -> PreparedImages:
    """Read one file and make its images look like the training data (see the module docstring).

    ``invert``: None detects dark-on-light images from their border, True / False forces it.
    """
    _check_shape(input_shape)
    path = Path(path).expanduser()
    colour = tuple(input_shape) != GRAY
    if colour:
        if invert:
            raise UserError("--invert applies to grayscale digit images; this network takes colour images")
        images = load_images(path, input_shape)
        notes = []
        if path.suffix.lower() in PICTURE_SUFFIXES:
            note = _picture(path, input_shape)[1]
            notes = [note] if note else []
        return PreparedImages(str(path), images, [False] * len(images), notes)
    if path.suffix.lower() in PICTURE_SUFFIXES and path.is_file():
        return _prepare_picture(path, invert)
    images = load_images(path, input_shape)
    flags = []
    for i in range(len(images)):
        image = images[i, 0]
        flip = light_background(image.numpy()) if invert is None else invert
        if flip:
            images[i, 0] = 1.0 - image
        flags.append(flip)
    notes = []
    if any(flags):
        why = "forced by --invert" if invert else "light background"
        notes.append(f"inverted ({why})" if len(flags) == 1 else f"inverted {sum(flags)} of {len(flags)} images "
                                                                    f"({why})")
    return PreparedImages(str(path), images, flags, notes)


def _prepare_picture(path: Path, invert: bool | None) -> PreparedImages:
    image = _open_picture(path, "L").astype(np.float32) / 255.0
    notes: list[str] = []
    flip = light_background(image) if invert is None else invert
    if flip:
        image = 1.0 - image
        notes.append("inverted (" + ("forced by --invert" if invert else "dark on a light background") + ")")
    if image.shape != GRAY[1:]:
        notes.append(f"{image.shape[1]}x{image.shape[0]} picture cropped to the ink and centred in 28x28 as MNIST "
                     "digits are")
        image = centre_like_mnist(image)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(1, *GRAY)
    return PreparedImages(str(path), tensor, [flip], notes)

