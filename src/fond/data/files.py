"""User data for ``--data``: a .npy file of patches, a folder of images, or the bundled ``natural<N>`` set.

:func:`load_data` is the single entry point; every bad input raises :class:`fond.errors.DataError`
with a one-line message naming the offending file, folder or argument.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fond.data.natural import (
    MIN_PATCH_STD,
    PatchData,
    check_counts,
    contrast_normalised_patches,
    derived_seeds,
    natural_patches,
    patch_data_from_images,
    size_in_range,
    to_gray_float,
    whiten,
)
from fond.errors import DataError
from fond.validate import integer

__all__ = ["IMAGE_SUFFIXES", "NATURAL_SIZES", "held_out_size", "load_data", "load_image_folder", "load_npy_patches"]

#: Data specs of MNIST (centred or raw; validation from the valid or the test split; ``-60k``: training on the
#: 50k training and the 10k validation digits, validation from the test digits, as the authors did).
MNIST_SPECS: tuple[str, ...] = ("mnist", "mnist-test", "mnist-raw", "mnist-raw-test", "mnist-raw-60k")

#: File suffixes (compared case-insensitively) read from an image folder.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Patch sides accepted by the ``natural<N>`` data spec.
NATURAL_SIZES = range(4, 65)

#: Fraction of rows of a .npy file that may at most be held out for validation.
_NPY_MAX_VAL_FRACTION = 0.10
#: the whitening roll-off of a folder's images (``fond.data.natural.whiten``'s default)
FOLDER_F0 = 0.4

#: Fraction of (sorted) images of a folder held out for validation; with one image, fraction of its rows.
_FOLDER_VAL_FRACTION = 0.15
_SINGLE_IMAGE_VAL_FRACTION = 0.20

_NATURAL_RE = re.compile(r"natural(\d+)(-lcn)?")

#: Inputs of a fixed held-out split: MNIST's validation or test digits, CIFAR-10's test batch (``cifar10:DIR``).
_FIXED_HELD_OUT_SIZE = 10_000
_CIFAR_SPEC_RE = re.compile(r"cifar-?10:.+", re.IGNORECASE)


def held_out_size(spec: str | Path) -> int | None:
    """Inputs in the fixed held-out split ``load_data(spec)`` validates on, or None where there is none.

    10 000 for every MNIST spec (the 10k validation or test digits) and ``cifar10:DIR`` (the test batch): an
    evaluation "on the test set" means all of them. None for data whose held-out inputs are sampled (natural
    and colour patches, CelebA, .npy files, image folders): there the number is the caller's choice.
    """
    fixed = str(spec) in MNIST_SPECS or _CIFAR_SPEC_RE.fullmatch(str(spec)) is not None
    return _FIXED_HELD_OUT_SIZE if fixed else None


def _unknown(spec: str) -> DataError:
    return DataError(
        f"unknown data {spec!r}: expected natural16, natural16-lcn, color16, mnist, cifar10:DIR, celeba:DIR, a .npy "
        "file of "
        "patches (N×D) or a folder of images"
    )


def load_data(
    spec: str,
    *,
    patch_size: int = 16,
    n_train: int = 100_000,
    n_val: int = 5_000,
    seed: int = 0,
) -> PatchData:
    """Load the data set named by ``spec`` (the CLI's ``--data``).

    Args:
        spec: one of
            * ``"mnist"``: MNIST digits (784 inputs, the mean training digit subtracted, labels; train from
              the 50k training digits, val from the 10k validation digits), ``"mnist-test"`` (val from the
              10k test digits), ``"mnist-raw"`` / ``"mnist-raw-test"`` (pixels in [0, 1), not centred),
              ``"mnist-raw-60k"`` (raw, training on all 60k training + validation digits, val from the test
              digits: the authors' MNIST); see :func:`fond.data.mnist.mnist_data`;
            * ``"color<N>"`` (4 ≤ N ≤ 64): whitened 3-channel N×N patches of the bundled colour photos;
              ``"cifar10:<dir>"`` (the binary CIFAR-10 a user has), ``"celeba[<N>]:<dir>"`` (aligned CelebA
              JPGs, N×N, default 64): rows channels last, patch_shape (h, w, 3); see :mod:`fond.data.color`;
            * ``"natural<N>"`` with 4 ≤ N ≤ 64 (e.g. ``"natural16"``): whitened N×N patches of the bundled
              photos (:func:`fond.data.natural.natural_patches`); N overrides ``patch_size``;
              ``"natural<N>-lcn"``: the same photos through the authors' vH16 pipeline (whitening, local contrast
              normalisation, z-score, crop: :func:`fond.data.natural.contrast_normalised_patches`);
            * a path to a ``.npy`` file holding an (N, D) real array of patches (:func:`load_npy_patches`);
            * a path to a folder of images (:func:`load_image_folder`).
        patch_size: patch side in pixels for a folder of images.
        n_train: number of training patches (for a .npy file: at most this many rows).
        n_val: number of validation patches (for a .npy file: at most this many rows, see there).
        seed: non-negative integer seed for all sampling.

    Returns:
        PatchData with float32 train (n_train', D) and val (n_val', D).
    """
    if not isinstance(spec, str | Path):
        raise DataError(f"data spec must be a string, got {type(spec).__name__}")
    spec_str = str(spec)
    from fond.data.color import load_color_data

    color = load_color_data(spec_str, n_train=n_train, n_val=n_val, seed=seed)
    if color is not None:
        return color
    if spec_str in MNIST_SPECS:
        from fond.data.mnist import mnist_data

        return mnist_data(n_train=n_train, n_val=n_val, seed=seed, centre="raw" not in spec_str,
                          val_split="test" if "test" in spec_str or "60k" in spec_str else "valid",
                          train_split="train+valid" if "60k" in spec_str else "train")
    match = _NATURAL_RE.fullmatch(spec_str)
    if match:
        size = size_in_range(spec_str, int(match.group(1)), NATURAL_SIZES, "natural patch")
        if match.group(2):
            return contrast_normalised_patches(size=size, n_train=n_train, n_val=n_val, seed=seed)
        return natural_patches(size=size, n_train=n_train, n_val=n_val, seed=seed)

    path = Path(spec_str).expanduser()
    if path.is_dir():
        return load_image_folder(path, patch_size=patch_size, n_train=n_train, n_val=n_val, seed=seed)
    if path.suffix.lower() == ".npy":
        return load_npy_patches(path, n_train=n_train, n_val=n_val, seed=seed)
    raise _unknown(spec_str)


def evaluation_data(spec: str, *, n_val: int = 5_000, seed: int = 0, patch_size: int = 16) -> PatchData:
    """Data to evaluate a model on, all of it, in ``val``: every row of a .npy file (``n_val`` does not apply),
    ``n_val`` patches drawn from every image of a folder, else ``load_data``'s held-out split of ``spec`` (a
    named test set's, or ``n_val`` sampled inputs). ``train`` is not for training here: the same rows for a
    file, the patches that set a folder's scale factor."""
    path = Path(str(spec)).expanduser()
    if path.suffix.lower() == ".npy" and not path.is_dir():
        rows = read_npy_rows(path)
        side = math.isqrt(rows.shape[1])
        return PatchData(train=rows, val=rows, patch_shape=(side, side) if side * side == rows.shape[1] else None,
                         name=path.name)
    if path.is_dir():
        return load_image_folder(path, patch_size=patch_size, n_train=n_val, n_val=n_val, seed=seed, hold_out=False)
    return load_data(spec, n_val=n_val, seed=seed, patch_size=patch_size)


# --------------------------------------------------------------------------------------------------
# .npy files of patches
# --------------------------------------------------------------------------------------------------


def load_npy_patches(
    path: str | Path, *, n_train: int = 100_000, n_val: int = 5_000, seed: int = 0
) -> PatchData:
    """Load an (N, D) array of patches from a .npy file and split it into train and val.

    The file is read with ``np.load(path, allow_pickle=False)`` and must hold a 2-D real (bool, integer or
    float) array, finite, with N ≥ 2 rows and D ≥ 1 columns; values are used as they are (no scaling).
    Rows are shuffled with ``seed``; ``min(n_val, 10 % of N)`` rows (at least 1) are held out for
    validation and up to ``n_train`` of the remaining rows are used for training.
    ``patch_shape`` is (s, s) when D = s² is a perfect square, else None.
    """
    path = Path(path)
    n_train, n_val = check_counts(n_train, n_val)
    seed_train, _ = derived_seeds(seed)
    data = read_npy_rows(path, minimum_rows=2)
    n_rows, d = data.shape
    n_held = max(1, min(n_val, int(math.floor(_NPY_MAX_VAL_FRACTION * n_rows))))
    order = np.random.default_rng(seed_train).permutation(n_rows)
    val = np.ascontiguousarray(data[order[:n_held]])
    train = np.ascontiguousarray(data[order[n_held : n_held + n_train]])
    side = math.isqrt(d)
    patch_shape = (side, side) if side * side == d else None
    return PatchData(train=train, val=val, patch_shape=patch_shape, name=path.name)


def read_npy_rows(path: str | Path, *, minimum_rows: int = 1) -> np.ndarray:
    """Every row of the (N, D) real array in a .npy file, as float32 (N, D), checked as ``load_npy_patches``
    describes (no pickle, 2-D, finite, N ≥ ``minimum_rows``); one clear ``DataError`` line otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    if not path.is_file():
        raise DataError(f"data file '{path}' is not a regular file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"cannot read data file '{path}' ({_first_line(exc)})") from None
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
        raise DataError(f"data file '{path}' is not a .npy file (it lacks the NumPy header)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise DataError(f"data file '{path}' holds an object array: save a numeric N×D array") from None
        raise DataError(f"data file '{path}' is not a valid .npy file ({_first_line(exc)})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read data file '{path}' ({_first_line(exc)})") from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive renamed to .npy
        close = getattr(loaded, "close", None)
        if close is not None:
            close()
        raise DataError(f"data file '{path}' is an .npz archive, not a single N×D .npy array")

    arr = loaded
    if arr.dtype.kind not in "biuf":
        raise DataError(f"data file '{path}' holds dtype {arr.dtype}: expected a real numeric N×D array")
    if arr.ndim != 2:
        raise DataError(f"data file '{path}' holds an array of shape {arr.shape}: expected a 2-D N×D array")
    n_rows, d = arr.shape
    if n_rows < minimum_rows:
        need = "at least 2 (train + val)" if minimum_rows > 1 else "at least 1"
        raise DataError(f"data file '{path}' holds {n_rows} row(s): need {need}")
    if d < 1:
        raise DataError(f"data file '{path}' holds rows of length 0: need D ≥ 1")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"data file '{path}' contains NaN or Inf")
    with np.errstate(over="ignore"):
        data = arr.astype(np.float32)
    if not np.isfinite(data).all():
        raise DataError(f"data file '{path}' has values too large for float32")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Folders of images
# --------------------------------------------------------------------------------------------------


def read_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """The images at ``paths`` as 2-D float64 grey arrays in [0, 1]: each a file, or a folder whose image files
    (``IMAGE_SUFFIXES``, sorted by name, not recursive) are all taken. One ``DataError`` line for a missing
    path, an unreadable file or no image at all."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"image path '{path}' does not exist")
    if not files:
        raise DataError("no image files among " + ", ".join(str(p) for p in paths))
    images = []
    for path in files:
        try:
            images.append(_read_image(path))
        except Exception as exc:  # any decoder failure means unreadable
            raise DataError(f"cannot read image '{path}' ({_first_line(exc)})") from None
    return images


def _read_image(path: Path) -> np.ndarray:
    """Read one image file as a 2-D float64 grayscale array; raises any PIL/OS error unchanged."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(img)
            if arr.dtype.kind == "f":
                return arr.astype(np.float64)
            return arr.astype(np.float64) / (65535.0 if arr.dtype.itemsize >= 2 else 255.0)
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
        return to_gray_float(np.asarray(img))


def load_image_folder(folder: str | Path, *, patch_size: int = 16, n_train: int = 100_000, n_val: int = 5_000,
                      seed: int = 0, hold_out: bool = True) -> PatchData:
    """Whitened patches from a folder of images (png, jpg, jpeg, tif, tiff, bmp; not recursive).

    Files are sorted by name and converted to grayscale; unreadable files, images smaller than the patch
    size (or than 8 px, the whitening minimum) and constant images are skipped, counted in ``name`` and
    reported with ``warnings.warn``. Each image is whitened (:func:`fond.data.natural.whiten`). Whole
    images are held out for validation: the last ceil(15 %) of the usable sorted images (at least 1) when
    there are ≥ 2; a single image is split into its top 80 % of rows (train) and bottom 20 % (val).
    Patches are then drawn exactly as for the bundled photos (std ≥ 0.25 per patch, one global scale
    factor giving the training patches std 1). ``hold_out=False``: no image is held out; train and val
    patches are both drawn from every image (to evaluate on all of them).

    Returns:
        PatchData with train (n_train, patch_size²), val (n_val, patch_size²), patch_shape (s, s).
    """
    folder = Path(folder)
    patch_size = integer(patch_size, "patch size", minimum=2, error=DataError)
    n_train, n_val = check_counts(n_train, n_val)
    if not folder.is_dir():
        raise DataError(f"image folder '{folder}' does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"image folder '{folder}' holds no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})"
        )

    min_side = max(patch_size, 8)
    images, skipped = _whitened_images(files, min_side)
    reasons = [f"{len(names)} {why} ({_first_names(names)})" for why, names in (
        ("unreadable", skipped["unreadable"]), (f"smaller than {min_side}×{min_side}", skipped["too_small"]),
        ("constant or non-finite", skipped["constant"])) if names]
    if reasons:
        warnings.warn(f"image folder '{folder}': skipped " + "; ".join(reasons), stacklevel=2)
    if not images:
        if len(skipped["unreadable"]) == len(files):
            raise DataError(f"image folder '{folder}': none of its {len(files)} image file(s) is readable "
                            f"({_first_names(skipped['unreadable'])})")
        raise DataError(f"image folder '{folder}' has no usable image: skipped " + "; ".join(reasons))
    if hold_out:
        train_images, val_images = _held_out_split(images, folder, patch_size)
    else:
        train_images = val_images = [im for _, im in images]

    counts = f"{len(images)} image{'s' if len(images) != 1 else ''}"
    n_unusable = len(skipped["too_small"]) + len(skipped["constant"])
    if len(skipped["unreadable"]) + n_unusable:
        counts += f", skipped {len(skipped['unreadable'])} unreadable, {n_unusable} unusable"
    return patch_data_from_images(
        train_images,
        val_images,
        size=patch_size,
        n_train=n_train,
        n_val=n_val,
        seed=seed,
        name=f"{folder.resolve().name or folder} ({counts})",
        min_std=MIN_PATCH_STD,
        f0=FOLDER_F0,
    )


def _first_names(names: list[str]) -> str:
    """The first three ``names``, comma-separated, with ", ..." when there are more."""
    return f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def _whitened_images(files: list[Path], min_side: int) -> tuple[list[tuple[str, np.ndarray]], dict[str, list[str]]]:
    """([(file name, whitened grey image)] of the usable ``files``, the names skipped by reason: "unreadable",
    "too_small" (a side below ``min_side`` pixels), "constant" (nothing to whiten))."""
    images: list[tuple[str, np.ndarray]] = []
    skipped: dict[str, list[str]] = {"unreadable": [], "too_small": [], "constant": []}
    for path in files:
        try:
            gray = _read_image(path)
        except Exception:  # any decoder failure (OSError, ValueError, SyntaxError, ...) means unreadable
            skipped["unreadable"].append(path.name)
            continue
        if min(gray.shape) < min_side:
            skipped["too_small"].append(path.name)
            continue
        try:
            images.append((path.name, whiten(gray, FOLDER_F0)))
        except DataError:
            skipped["constant"].append(path.name)
    return images, skipped


def _held_out_split(images: list[tuple[str, np.ndarray]], folder: Path,
                    patch_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training images, validation images): the last ceil(15 %) of ≥ 2 images held out whole, or a single
    image's top 80 % of rows for training and bottom 20 % for validation."""
    if len(images) >= 2:
        n_held = max(1, math.ceil(_FOLDER_VAL_FRACTION * len(images)))
        train_images = [im for _, im in images[:-n_held]]
        if not train_images:  # cannot happen for ceil(15 %) with ≥ 2 images; kept as a guard
            raise DataError(f"image folder '{folder}' has too few usable images to hold some out")
        return train_images, [im for _, im in images[-n_held:]]
    fname, im = images[0]
    cut = int(round((1.0 - _SINGLE_IMAGE_VAL_FRACTION) * im.shape[0]))
    top, bottom = im[:cut], im[cut:]
    if top.shape[0] < patch_size or bottom.shape[0] < patch_size:
        raise DataError(
            f"image '{fname}' in '{folder}' is the only usable image and is too small to split: "
            f"its bottom 20 % ({bottom.shape[0]} rows) must hold a {patch_size}×{patch_size} patch"
        )
    return [top], [bottom]
