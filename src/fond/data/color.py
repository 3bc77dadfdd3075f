"""Colour image data: whitened colour patches of the bundled photos, CIFAR-10 (binary) and CelebA faces.

Layout convention (every function here): one colour patch or image of height h and width w is a row of
D = h * w * 3 float32 values flattened in (h, w, c) row-major order, channels last — the row is
``image[:h, :w, :].reshape(-1)``, so value ``(i * w + j) * 3 + c`` is channel c (0 = R, 1 = G, 2 = B)
of pixel (row i, column j). ``PatchData.patch_shape`` is (h, w, 3); ``row.reshape(patch_shape)`` gives the
image back.

* :func:`color_patches` — whitened RGB patches of the colour photos shipped in installed wheels
  (scikit-image, scikit-learn); nothing is downloaded.
* :func:`load_cifar10` — CIFAR-10 from the *binary* release a user already has on disk, raw pixels in [0, 1]
  with labels. The python (pickle) release is refused: fond never unpickles user files.
* :func:`load_celeba` — a folder of aligned CelebA face images, centre-cropped to a square and resized,
  raw pixels in [0, 1].
* :func:`load_color_data` — the ``--data`` spec strings for the three above.

Every bad input raises :class:`fond.errors.DataError` with a one-line message naming the file or folder.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fond.data.natural import (
    BUNDLED_PHOTOS,
    PatchData,
    check_counts,
    derived_seeds,
    extract_patches,
    patch_data_from_images,
    photo_patches,
    size_in_range,
    whiten_channels,
)
from fond.errors import DataError
from fond.validate import integer

__all__ = [
    "CELEBA_SIZES",
    "CIFAR10_CLASSES",
    "CIFAR10_SHAPE",
    "COLOR_PHOTOS",
    "COLOR_SIZES",
    "COLOR_VALIDATION_PHOTOS",
    "color_patch_data_from_images",
    "color_patches",
    "extract_color_patches",
    "load_celeba",
    "load_cifar10",
    "load_color_data",
    "load_color_photo",
    "whiten_color",
]

#: The RGB photos bundled with installed wheels (keys of :data:`fond.data.natural.BUNDLED_PHOTOS`).
COLOR_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")

#: Whole colour photos held out for validation (the same cat photo natural_patches holds out).
COLOR_VALIDATION_PHOTOS: tuple[str, ...] = ("chelsea",)

#: Patch sides accepted by the ``color<N>`` data spec (as for ``natural<N>``).
COLOR_SIZES = range(4, 65)

#: Output sides accepted by :func:`load_celeba` (32 and 64 are the usual ones).
CELEBA_SIZES = range(4, 257)

#: CIFAR-10 image shape, channels last.
CIFAR10_SHAPE = (32, 32, 3)

#: CIFAR-10 class names, indexed by label.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then 1024 R, 1024 G, 1024 B bytes (rows first)
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"

#: Suffixes (case-insensitive) of the image files :func:`load_celeba` reads.
_CELEBA_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: Fraction of the (sorted) CelebA files held out for validation. The official CelebA partition is
#: contiguous in file name (train 000001–162770, val –182637, test –202599), so the last 10 % by name
#: are (nearly) the official test split.
_CELEBA_VAL_FRACTION = 0.10


# --------------------------------------------------------------------------------------------------
# Colour whitening
# --------------------------------------------------------------------------------------------------


def _as_rgb_float(image: np.ndarray, what: str) -> np.ndarray:
    """A (H, W, 3) float64 copy of an RGB image; integer images are scaled to [0, 1] by their dtype range."""
    from skimage.util import img_as_float64

    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} has non-numeric dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{what} has shape {arr.shape}: expected an RGB image (H, W, 3)")
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    return img_as_float64(arr)


def whiten_color(image: np.ndarray, f0: float = 0.4, eps: float = 1e-8) -> np.ndarray:
    """Olshausen–Field whitening of one RGB image, the same spatial filter on every channel
    (:func:`fond.data.natural.whiten_channels`, the whitening of grey images too).

    Each channel has its mean removed and is filtered in Fourier space by ``f * exp(-(f / f0) ** 4)``
    (f = radial frequency in cycles/pixel, exactly as :func:`fond.data.natural.whiten`). All three channels
    are then divided by ONE common std (over all pixels and channels), so the relative contrast of the
    channels is kept. Because the filter is linear and identical for R, G and B, this equals whitening the
    luminance and the colour-opponent channels (or any other linear colour transform) separately: no colour
    space has to be chosen, and colour opponency is left as it is in the photo. A gray image copied into
    three channels gives ``whiten(gray)`` in each channel.

    Args:
        image: (H, W, 3) RGB array, H and W ≥ 8, finite, not constant; integers are scaled to [0, 1].
        f0: roll-off frequency in cycles/pixel (> 0; default 0.4).
        eps: an image whose filtered std is ≤ eps (input intensity units) has no contrast and is rejected.

    Returns:
        float32 array (H, W, 3): per-channel mean 0, std 1 over all H * W * 3 values.
    """
    return whiten_channels(_as_rgb_float(image, "image"), f0=f0, eps=eps)


def load_color_photo(name: str) -> np.ndarray:
    """Bundled colour photo ``name`` (one of :data:`COLOR_PHOTOS`) as float64 (H, W, 3) in [0, 1]."""
    if name not in COLOR_PHOTOS:
        raise DataError(f"unknown colour photo {name!r}: expected one of {', '.join(COLOR_PHOTOS)}")
    return _as_rgb_float(BUNDLED_PHOTOS[name](), f"photo {name!r}")


@functools.lru_cache(maxsize=16)
def _whitened_color_photo(name: str, f0: float) -> np.ndarray:
    """Whitened bundled colour photo (read-only float32 (H, W, 3)); cached in memory per (name, f0)."""
    out = whiten_color(load_color_photo(name), f0=f0)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------------
# Colour patch extraction
# --------------------------------------------------------------------------------------------------


def extract_color_patches(images: np.ndarray | Sequence[np.ndarray], size: int, n: int, seed: int,
                          min_std: float = 0.0) -> np.ndarray:
    """Draw ``n`` random size×size×3 patches from one or more (H, W, 3) images: float32 (n, size·size·3), row k
    patch k flattened in (h, w, c) order (channels last).

    :func:`fond.data.natural.extract_patches` with ``channels=3`` (same arguments and sampling; ``min_std`` is
    compared with the std over all size·size·3 values of a patch).
    """
    return extract_patches(images, size, n, seed, min_std, channels=3)


def color_patch_data_from_images(train_images: Sequence[np.ndarray], val_images: Sequence[np.ndarray],
                                 **options: Any) -> PatchData:
    """Colour counterpart of :func:`fond.data.natural.patch_data_from_images` for (H, W, 3) whitened images
    (``channels=3``; the same keyword options: size, n_train, n_val, seed, name, min_std).

    Train patches only from ``train_images``, val patches only from ``val_images`` (seeds derived from
    ``seed``), patches with std < ``min_std`` rejected, then one global factor applied to both so that the
    training patches have overall std 1. patch_shape is (size, size, 3).
    """
    return patch_data_from_images(train_images, val_images, channels=3, **options)


def color_patches(size: int = 16, *, n_train: int = 100_000, n_val: int = 5_000, seed: int = 0,
                  f0: float = 0.4) -> PatchData:
    """Whitened RGB patches (size×size×3) from the colour photos bundled in installed wheels.

    The photos (:data:`COLOR_PHOTOS`: scikit-image astronaut, coffee, chelsea, rocket; scikit-learn china,
    flower) are whitened with :func:`whiten_color` (the Olshausen–Field filter on every channel, one common
    std, so colour opponency is kept; roll-off ``f0`` cycles/pixel; cached in memory). Training patches come
    only from the photos not in :data:`COLOR_VALIDATION_PHOTOS`, validation patches only from the held-out
    ones. Patches with std < 0.25 (in units of the whitened image's std) are rejected and redrawn, and one
    global factor gives the training patches overall std 1, as in :func:`fond.data.natural.natural_patches`.

    Returns:
        PatchData with train (n_train, size² · 3), val (n_val, size² · 3), float32, rows in (h, w, c) order,
        patch_shape (size, size, 3), name ``color<size>``.
    """
    size = integer(size, "patch size", minimum=2, error=DataError)
    return photo_patches(COLOR_PHOTOS, COLOR_VALIDATION_PHOTOS, _whitened_color_photo, size=size, n_train=n_train,
                         n_val=n_val, seed=seed, f0=f0, name=f"color{size}", channels=3)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (binary release)
# --------------------------------------------------------------------------------------------------


def _cifar_folder(directory: Path) -> Path:
    """The folder holding the CIFAR-10 binary batches: ``directory`` or its ``cifar-10-batches-bin``."""
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 folder '{directory}' does not exist or is not a folder")
    for folder in (directory, directory / "cifar-10-batches-bin"):
        if folder.is_dir() and any((folder / f).is_file() for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)):
            return folder
    for folder in (directory, directory / "cifar-10-batches-py"):
        if folder.is_dir() and any((folder / f).is_file() for f in ("data_batch_1", "test_batch", "batches.meta")):
            raise DataError(
                f"'{folder}' holds the python (pickle) version of CIFAR-10: fond never unpickles user files; "
                "use the binary version (cifar-10-binary.tar.gz, folder cifar-10-batches-bin)"
            )
    if (directory / "cifar-10-binary.tar.gz").is_file():
        raise DataError(f"'{directory}' holds cifar-10-binary.tar.gz: extract it first (tar xzf)")
    raise DataError(
        f"CIFAR-10 folder '{directory}' holds no binary batches (data_batch_1.bin … data_batch_5.bin, test_batch.bin)"
    )


def _cifar_records(path: Path) -> np.ndarray:
    """Memory-map one CIFAR-10 binary batch as a (n, 3073) uint8 array; DataError naming a bad file."""
    try:
        n_bytes = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 file '{path}' ({exc.strerror})") from None
    if n_bytes == 0 or n_bytes % _CIFAR_RECORD:
        raise DataError(
            f"CIFAR-10 file '{path}' is truncated or corrupt: {n_bytes} bytes is not a positive multiple of "
            f"the {_CIFAR_RECORD}-byte record"
        )
    try:
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(n_bytes // _CIFAR_RECORD, _CIFAR_RECORD))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read CIFAR-10 file '{path}' ({type(exc).__name__})") from None


def _cifar_take(paths: Sequence[Path], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` records of a seeded permutation of all records of ``paths`` (concatenated in order):
    (pixels (n', 3072) float32 in [0, 1], channels last; labels (n',) int64), n' = min(n, records)."""
    batches = [_cifar_records(p) for p in paths]
    starts = np.concatenate([[0], np.cumsum([len(b) for b in batches])])
    chosen = np.random.default_rng(seed).permutation(int(starts[-1]))[:n]
    records = np.empty((len(chosen), _CIFAR_RECORD), dtype=np.uint8)
    which = np.searchsorted(starts, chosen, side="right") - 1
    for j, (path, batch) in enumerate(zip(paths, batches, strict=True)):
        sel = np.flatnonzero(which == j)
        if sel.size:
            local = chosen[sel] - starts[j]
            order = np.argsort(local)  # sorted reads from the memory map
            records[sel[order]] = batch[local[order]]
            bad = records[sel, 0] > 9
            if bad.any():
                raise DataError(
                    f"CIFAR-10 file '{path}' is corrupt: label byte {int(records[sel[bad][0], 0])} is not in 0..9"
                )
    labels = records[:, 0].astype(np.int64)
    planar = records[:, 1:].reshape(-1, 3, 32, 32)  # (n, c, h, w) as stored
    pixels = planar.transpose(0, 2, 3, 1).reshape(-1, 32 * 32 * 3).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels), labels


def load_cifar10(
    directory: str | Path, *, n_train: int = 50_000, n_val: int = 10_000, seed: int = 0
) -> PatchData:
    """CIFAR-10 from its binary release on disk (nothing is downloaded, nothing is unpickled).

    ``directory`` is the extracted ``cifar-10-batches-bin`` folder or its parent. Training images come from
    every ``data_batch_<k>.bin`` present (k = 1..5, at least one), validation images from ``test_batch.bin``
    (required). Each file is a sequence of 3073-byte records: one label byte (0–9), then the 32×32 image
    channel-planar (1024 red, 1024 green, 1024 blue bytes, each plane row-major). Training rows are the
    first ``n_train`` of a seeded permutation of all training records (fewer if there are fewer), validation
    rows likewise from the test batch with an independent derived seed; only those records are read.

    Returns:
        PatchData with train (n_train', 3072), val (n_val', 3072) float32 raw pixels byte / 255 in [0, 1]
        (no whitening, no standardisation), rows channels last in (h, w, c) order, patch_shape (32, 32, 3),
        train_labels / val_labels int64 (class names in :data:`CIFAR10_CLASSES`).

    Raises:
        DataError: missing folder or batches, the python (pickle) release, a truncated file or a label byte
            outside 0..9 (the message names the file).
    """
    n_train, n_val = check_counts(n_train, n_val)
    seed_train, seed_val = derived_seeds(seed)
    folder = _cifar_folder(Path(directory).expanduser())
    train_paths = [folder / f for f in _CIFAR_TRAIN_FILES if (folder / f).is_file()]
    test_path = folder / _CIFAR_TEST_FILE
    if not train_paths:
        raise DataError(f"CIFAR-10 folder '{folder}' has no training batch (data_batch_1.bin … data_batch_5.bin)")
    if not test_path.is_file():
        raise DataError(f"CIFAR-10 folder '{folder}' has no {_CIFAR_TEST_FILE}")
    train, train_labels = _cifar_take(train_paths, n_train, seed_train)
    val, val_labels = _cifar_take([test_path], n_val, seed_val)
    return PatchData(
        train=train,
        val=val,
        patch_shape=CIFAR10_SHAPE,
        name=f"CIFAR-10 ({len(train)} train from {len(train_paths)} batches, {len(val)} test)",
        train_labels=train_labels,
        val_labels=val_labels,
    )


# --------------------------------------------------------------------------------------------------
# CelebA (aligned faces)
# --------------------------------------------------------------------------------------------------


def _celeba_files(directory: Path) -> tuple[Path, list[Path]]:
    """(folder, sorted image files) for ``directory``, descending into ``img_align_celeba`` (up to twice)."""
    if not directory.is_dir():
        raise DataError(f"CelebA folder '{directory}' does not exist or is not a folder")
    folder = directory
    for _ in range(3):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _CELEBA_SUFFIXES and p.is_file())
        if files:
            return folder, files
        if not (folder / "img_align_celeba").is_dir():
            break
        folder = folder / "img_align_celeba"
    raise DataError(
        f"CelebA folder '{directory}' holds no images ({', '.join(s.lstrip('.') for s in _CELEBA_SUFFIXES)})"
    )


def _read_rgb(path: Path) -> np.ndarray:
    """Read one image file as float64 (H, W, 3) in [0, 1]; DataError naming an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except Exception as exc:  # any decoder failure (OSError, ValueError, SyntaxError, ...) means unreadable
        raise DataError(f"cannot read image '{path}' ({type(exc).__name__}): delete or replace it") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise DataError(f"image '{path}' is empty")
    return rgb.astype(np.float64) / 255.0


def _square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H, W, 3) to its largest central square, resize to (size, size, 3) with anti-aliasing."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    out = resize(square, (size, size, 3), order=1, mode="reflect", anti_aliasing=side > size)
    return np.clip(out, 0.0, 1.0)


def _first_names(names: list[str]) -> str:
    """The first three names, comma-separated, with ", ..." when there are more."""
    return f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def _celeba_split(folder: Path, pool: list[Path], n: int, seed: int, size: int,
                  split: str) -> tuple[np.ndarray, list[str]]:
    """``min(n, len(pool))`` files of ``pool`` chosen without replacement (``seed``), read as size×size RGB
    rows (n', size² · 3) float32 in [0, 1]; the names of the chosen files that cannot be decoded (skipped).
    None readable: a :class:`DataError` naming the ``split`` and the first unreadable files."""
    chosen = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    out = np.empty((len(chosen), size * size * 3), dtype=np.float32)
    k, bad = 0, []
    for i in chosen:
        try:
            rgb = _read_rgb(pool[int(i)])
        except DataError:  # undecodable or empty: skipped and counted, as in an image folder
            bad.append(pool[int(i)].name)
            continue
        out[k] = _square_resize(rgb, size).reshape(-1)
        k += 1
    if k == 0:
        raise DataError(f"CelebA folder '{folder}': none of the {len(chosen)} {split} image(s) chosen is "
                        f"readable ({_first_names(bad)})")
    return np.ascontiguousarray(out[:k]), bad


def load_celeba(directory: str | Path, *, size: int = 64, n_train: int = 10_000, n_val: int = 1_000,
                seed: int = 0) -> PatchData:
    """Aligned CelebA faces from a folder of images (``img_align_celeba`` or its parent; jpg, jpeg, png, bmp).

    Files are sorted by name; the last 10 % (ceil, at least one; at least two files are needed) are held
    out for validation — CelebA's official partition is contiguous in file name, so with the full set these
    are (nearly) its test split. ``n_train`` files are chosen without replacement from the rest and ``n_val``
    from the held-out ones (fewer if there are fewer) with seeds derived from ``seed``; only those files are
    read. Each image is converted to RGB, centre-cropped to its largest central square (178×218 aligned faces
    → the central 178×178) and resized to size×size with ``skimage.transform.resize`` (bilinear, Gaussian
    anti-aliasing when shrinking). A chosen file that cannot be decoded is skipped and counted, as in an image
    folder (``warnings.warn`` and the data set's ``name``); a split left with no readable file is refused.

    Returns:
        PatchData with train (n_train', size² · 3), val (n_val', size² · 3) float32 raw pixels in [0, 1]
        (no whitening), rows in (h, w, c) order, patch_shape (size, size, 3).

    Raises:
        DataError: missing or image-less folder, fewer than two images, a bad ``size``, or a split none of
            whose chosen files can be decoded (the message names them).
    """
    size = integer(size, "CelebA image size", error=DataError)
    if size not in CELEBA_SIZES:
        raise DataError(f"CelebA image size must be in {CELEBA_SIZES[0]}..{CELEBA_SIZES[-1]}, got {size}")
    n_train, n_val = check_counts(n_train, n_val)
    seed_train, seed_val = derived_seeds(seed)
    folder, files = _celeba_files(Path(directory).expanduser())
    if len(files) < 2:
        raise DataError(f"CelebA folder '{folder}' holds only {len(files)} image: need at least 2 (train + val)")
    n_held = max(1, math.ceil(_CELEBA_VAL_FRACTION * len(files)))
    train, bad_train = _celeba_split(folder, files[:-n_held], n_train, seed_train, size, "training")
    val, bad_val = _celeba_split(folder, files[-n_held:], n_val, seed_val, size, "validation")
    unreadable = [*bad_train, *bad_val]
    skipped = ""
    if unreadable:
        warnings.warn(f"CelebA folder '{folder}': skipped {len(unreadable)} unreadable ({_first_names(unreadable)})",
                      stacklevel=2)
        skipped = f", skipped {len(unreadable)} unreadable"
    return PatchData(
        train=train,
        val=val,
        patch_shape=(size, size, 3),
        name=f"CelebA {size}×{size} ({len(train)} train, {len(val)} val of {len(files)} files{skipped})",
    )


# --------------------------------------------------------------------------------------------------
# --data specs
# --------------------------------------------------------------------------------------------------

_COLOR_RE = re.compile(r"colou?r(\d+)")
_CIFAR_RE = re.compile(r"cifar-?10:(.+)", re.IGNORECASE)
_CELEBA_RE = re.compile(r"celeba(\d*):(.+)", re.IGNORECASE)


def load_color_data(spec: str, *, n_train: int, n_val: int, seed: int = 0) -> PatchData | None:
    """Load a colour data spec, or return None when ``spec`` is not one (so the caller tries the others).

    Specs:
        * ``color<N>`` (or ``colour<N>``), 4 ≤ N ≤ 64: :func:`color_patches` with size N;
        * ``cifar10:<dir>`` (or ``cifar-10:<dir>``): :func:`load_cifar10`;
        * ``celeba:<dir>`` (64×64) or ``celeba<N>:<dir>`` (e.g. ``celeba32:<dir>``): :func:`load_celeba`.
    """
    spec = str(spec)
    match = _COLOR_RE.fullmatch(spec)
    if match:
        size = size_in_range(spec, int(match.group(1)), COLOR_SIZES, "colour patch")
        return color_patches(size, n_train=n_train, n_val=n_val, seed=seed)
    match = _CIFAR_RE.fullmatch(spec)
    if match:
        return load_cifar10(match.group(1), n_train=n_train, n_val=n_val, seed=seed)
    match = _CELEBA_RE.fullmatch(spec)
    if match:
        size = int(match.group(1)) if match.group(1) else 64
        return load_celeba(match.group(2), size=size, n_train=n_train, n_val=n_val, seed=seed)
    return None
