"""Natural-image patches: bundled photos, Olshausen–Field whitening and vectorised patch extraction.

Units and conventions used throughout:

* images are 2-D float arrays of shape (H, W), rows first; bundled photos are grayscale in [0, 1];
* spatial frequencies are in cycles/pixel (``np.fft.fftfreq`` convention, Nyquist = 0.5);
* a batch of patches is a float32 array of shape (n, size * size), each row one size×size patch
  flattened in row-major (C) order.

Everything here is computed in memory from images that ship inside installed wheels (scikit-image,
PyWavelets, scikit-learn); nothing is downloaded and nothing is written to disk.
"""

from __future__ import annotations

import functools
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fond.errors import DataError
from fond.validate import finite_float, integer

__all__ = [
    "BUNDLED_PHOTOS",
    "size_in_range",
    "MIN_PATCH_STD",
    "VALIDATION_PHOTOS",
    "PatchData",
    "LCN_CROP",
    "LCN_F0",
    "LCN_KERNEL",
    "check_counts",
    "check_f0",
    "contrast_normalised",
    "contrast_normalised_patches",
    "local_contrast_normalise",
    "derived_seeds",
    "extract_patches",
    "load_photo",
    "natural_patches",
    "patch_data_from_images",
    "photo_patches",
    "sample_patches",
    "to_gray_float",
    "whiten",
    "whiten_channels",
]

#: Patches of whitened (unit-variance) images whose own std is below this are rejected: flat sky or
#: background patches carry almost no signal, so per-sample R² on them is meaningless.
MIN_PATCH_STD = 0.25

#: Smallest image side (pixels) that :func:`whiten` accepts.
_MIN_WHITEN_SIDE = 8
#: Largest |value| whiten accepts: the image's mean and variance are computed in float64 and must not overflow.
_MAX_WHITEN_VALUE = 1e150

#: Upper bound on the number of float32 elements gathered in one batch of candidate patches (64 MiB).
_GATHER_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------------
# Patch container
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchData:
    """Training and validation patches for one data set.

    Attributes:
        train: float32 array (n_train, D), C-contiguous, finite.
        val: float32 array (n_val, D), C-contiguous, finite, same D as ``train``.
        patch_shape: (height, width) of one patch with height * width == D, (height, width, 3) for colour
            rows (channels last, see fond.data.color), or None when the rows are
            not images (e.g. a .npy file whose D is not a perfect square).
        name: short human-readable description of where the data came from.
        train_labels, val_labels: integer class labels (n,) for labelled sets (MNIST), else None.
        preprocessing: the transform from raw images to these inputs (``Preprocessing.to_dict()``), or None.
    """

    train: np.ndarray
    val: np.ndarray
    patch_shape: tuple[int, ...] | None
    name: str
    train_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    #: how raw images became these inputs: a ``fond.data.preprocessing.Preprocessing`` record (its
    #: ``to_dict()``, JSON-ready), where they came from images
    preprocessing: dict | None = None

    def __post_init__(self) -> None:
        for label, arr in (("train", self.train), ("val", self.val)):
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype != np.float32:
                raise DataError(f"PatchData.{label} must be a 2-D float32 array")
            if not arr.flags.c_contiguous:
                raise DataError(f"PatchData.{label} must be C-contiguous")
            if arr.shape[0] < 1 or arr.shape[1] < 1:
                raise DataError(f"PatchData.{label} is empty (shape {arr.shape})")
            if not np.isfinite(arr).all():
                raise DataError(f"PatchData.{label} contains NaN or Inf")
        if self.train.shape[1] != self.val.shape[1]:
            raise DataError(
                f"PatchData train and val widths differ ({self.train.shape[1]} vs {self.val.shape[1]})"
            )
        for label, data, labels in (("train", self.train, self.train_labels), ("val", self.val, self.val_labels)):
            if labels is not None and (not isinstance(labels, np.ndarray) or labels.shape != (data.shape[0],)):
                raise DataError(f"PatchData.{label}_labels must be an array of shape ({data.shape[0]},)")
        if self.patch_shape is not None and math.prod(self.patch_shape) != self.train.shape[1]:
            raise DataError(
                f"PatchData patch_shape {self.patch_shape} does not match row length {self.train.shape[1]}"
            )

    @property
    def n_inputs(self) -> int:
        """Number of inputs per sample, D (pixels per patch)."""
        return int(self.train.shape[1])


# --------------------------------------------------------------------------------------------------
# Bundled photos
# --------------------------------------------------------------------------------------------------


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    load.__name__ = f"skimage_{name}"
    return load


def _pywt_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import pywt.data

        return getattr(pywt.data, name)()

    load.__name__ = f"pywt_{name}"
    return load


def _sklearn_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")

    load.__name__ = f"sklearn_{name}"
    return load


_SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick", "moon")

#: Name → loader of every photo bundled with an installed wheel (raw array, uint8, gray or RGB).
#: PyWavelets' ``camera`` is left out: it duplicates scikit-image's.
BUNDLED_PHOTOS: Mapping[str, Callable[[], np.ndarray]] = types.MappingProxyType(
    {
        **{name: _skimage_loader(name) for name in _SKIMAGE_PHOTOS},
        **{name: _pywt_loader(name) for name in ("aero", "ascent")},
        **{name: _sklearn_loader(name) for name in ("china", "flower")},
    }
)

#: Whole photos held out for validation: no training patch is ever drawn from them.
VALIDATION_PHOTOS: tuple[str, ...] = ("chelsea", "ascent")


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """Convert a gray (H, W), RGB (H, W, 3) or RGBA (H, W, 4) image to a 2-D float64 array.

    Integer images are scaled to [0, 1] by their dtype's range; float images are kept as they are.
    Raises DataError for any other shape or a non-numeric dtype.
    """
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float64

    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"image has non-numeric dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return img_as_float64(arr) if arr.dtype.kind != "f" else arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = img_as_float64(arr) if arr.dtype.kind != "f" else arr.astype(np.float64)
        if arr.shape[2] == 4:
            arr = rgba2rgb(arr)
        return np.asarray(rgb2gray(arr), dtype=np.float64)
    raise DataError(f"image has shape {arr.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")


def load_photo(name: str) -> np.ndarray:
    """Load bundled photo ``name`` as a 2-D float64 grayscale array (H, W) with values in [0, 1]."""
    try:
        loader = BUNDLED_PHOTOS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown photo {name!r}: expected one of {', '.join(BUNDLED_PHOTOS)}") from None
    return to_gray_float(loader())


@functools.lru_cache(maxsize=64)
def _whitened_photo(name: str, f0: float) -> np.ndarray:
    """Whitened bundled photo (read-only float32 (H, W)); cached in memory per (name, f0)."""
    out = whiten(load_photo(name), f0=f0)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------------
# Whitening
# --------------------------------------------------------------------------------------------------


def check_f0(f0: object) -> float:
    """The whitening roll-off ``f0`` (cycles/pixel) as a float > 0, else DataError."""
    value = finite_float(f0, "whitening roll-off f0", error=DataError)
    if not value > 0:
        raise DataError(f"whitening roll-off f0 must be a positive number of cycles/pixel, got {f0!r}")
    return value


def _check_eps(eps: object) -> float:
    return finite_float(eps, "whitening eps", minimum=0.0, error=DataError)


def whiten(image: np.ndarray, f0: float = 0.4, eps: float = 1e-8) -> np.ndarray:
    """Olshausen–Field whitening of one grayscale image (:func:`whiten_channels` on a 2-D image).

    The mean is removed, the image is filtered in Fourier space by ``f * exp(-(f / f0) ** 4)`` where
    ``f = sqrt(fx**2 + fy**2)`` is the radial spatial frequency in cycles/pixel (``np.fft.fftfreq``
    on each axis, so Nyquist is 0.5), and the real part of the result is z-scored over the whole image.
    The ramp ``f`` flattens the ~1/f amplitude spectrum of natural images; the exponential rolls off
    above ``f0`` to suppress aliasing and pixel noise.

    Args:
        image: 2-D array (H, W), H and W ≥ 8, any real numeric dtype, finite, not constant.
        f0: roll-off frequency of the low-pass part, in cycles/pixel (> 0; default 0.4).
        eps: an image whose filtered std is ≤ eps (in the input's intensity units) is treated as
            having no contrast and rejected.

    Returns:
        float32 array (H, W) with mean 0 and std 1.

    Raises:
        DataError: for a non-2-D, non-numeric, non-finite, too small (< 8 px a side) or constant image,
            or for f0 ≤ 0.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise DataError(f"whiten expects a 2-D grayscale image, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"whiten expects a real numeric image, got dtype {arr.dtype}")
    return whiten_channels(arr.astype(np.float64), f0=f0, eps=eps)


def whiten_channels(image: np.ndarray, f0: float = 0.4, eps: float = 1e-8) -> np.ndarray:
    """Olshausen–Field whitening of a float image, grey (H, W) or with channels (H, W, C), channels last.

    Each channel has its mean removed and is filtered by ``f * exp(-(f / f0) ** 4)`` (see :func:`whiten`);
    then every value is divided by ONE common std over all pixels and channels, so the relative contrast of the
    channels is kept (a grey image is the case C = 1). The same call serves grey images (:func:`whiten`) and
    colour ones (:func:`fond.data.color.whiten_color`).

    Args:
        image: float array (H, W) or (H, W, C), H and W ≥ 8, finite, not constant.
        f0: roll-off frequency in cycles/pixel (> 0).
        eps: an image whose filtered std is ≤ eps (input intensity units) has no contrast and is rejected.

    Returns:
        float32 array of the image's shape: per-channel mean 0, std 1 over all values.
    """
    arr = np.asarray(image)
    if min(arr.shape[:2]) < _MIN_WHITEN_SIDE:
        raise DataError(
            f"image of shape {arr.shape} is too small to whiten (need ≥ {_MIN_WHITEN_SIDE} px a side)"
        )
    f0 = check_f0(f0)
    eps = _check_eps(eps)
    if not np.isfinite(arr).all():
        raise DataError(f"image of shape {arr.shape} contains NaN or Inf")
    largest = float(np.abs(arr).max())
    if largest > _MAX_WHITEN_VALUE:
        raise DataError(f"image of shape {arr.shape} has values too large to whiten (max |x| = {largest:.3g} > "
                        f"{_MAX_WHITEN_VALUE:.0e}): rescale it")
    centred = arr - arr.mean(axis=(0, 1), keepdims=True)
    if not np.any(centred):
        raise DataError(f"image of shape {arr.shape} is constant: nothing to whiten")
    channel_axes = (1,) * (arr.ndim - 2)
    fy = np.fft.fftfreq(arr.shape[0]).reshape(-1, 1, *channel_axes)
    fx = np.fft.fftfreq(arr.shape[1]).reshape(1, -1, *channel_axes)
    f = np.hypot(fx, fy)
    filt = f * np.exp(-((f / f0) ** 4))
    out = np.fft.ifft2(np.fft.fft2(centred, axes=(0, 1)) * filt, axes=(0, 1)).real
    out -= out.mean(axis=(0, 1), keepdims=True)
    std = float(out.std())
    if not std > eps:
        raise DataError(f"image of shape {arr.shape} has no contrast left after whitening (std {std:.3g})")
    out /= std
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The authors' vH16 pipeline: whitening, then local contrast normalisation
# --------------------------------------------------------------------------------------------------

#: whitening roll-off (cycles/pixel), Gaussian kernel side (pixels) and border crop (pixels) of the authors'
#: vH16 pipeline (DESIGN.md §7)
LCN_F0 = 0.5
LCN_KERNEL = 13
LCN_CROP = 4


def local_contrast_normalise(image: np.ndarray, kernel_size: int = LCN_KERNEL, sigma: float = 0.5) -> np.ndarray:
    """Local contrast normalisation (Jarrett et al. 2009) of a 2-D image, as the authors' code writes it.

    Weights w ∝ exp(−(x² + y²)/sigma) on a kernel_size × kernel_size grid spanning [−1, 1]², summing to 1.
    Subtractive step: v = x − w ⋆ x; divisive step: s = √(w ⋆ v²), floored at its mean over the image; the
    result is v / s. Convolutions pad with zeros (the border is cropped later). image: (H, W) float, finite,
    not constant; returns float64 (H, W).
    """
    from scipy.ndimage import correlate

    kernel_size = integer(kernel_size, "kernel_size", minimum=1, error=DataError)
    if kernel_size % 2 == 0:
        raise DataError(f"the contrast normalisation kernel needs an odd side, got {kernel_size}")
    grid = np.linspace(-1.0, 1.0, kernel_size)
    weights = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / sigma)
    weights /= weights.sum()
    arr = np.asarray(image, dtype=np.float64)
    centred = arr - correlate(arr, weights, mode="constant", cval=0.0)
    local_std = np.sqrt(correlate(centred**2, weights, mode="constant", cval=0.0))
    floor = float(local_std.mean())
    if not floor > 0:
        raise DataError(f"image of shape {arr.shape} has no contrast to normalise")
    return centred / np.maximum(local_std, floor)


def contrast_normalised(image: np.ndarray, f0: float = LCN_F0) -> np.ndarray:
    """One grey photo through the authors' vH16 pipeline: whitening (:func:`whiten`, roll-off ``f0``), local
    contrast normalisation (:func:`local_contrast_normalise`, 13-px kernel), z-score over the image, then
    ``LCN_CROP`` pixels cropped from every side (the convolutions' zero-padded border). Returns float32
    (H − 8, W − 8)."""
    normalised = local_contrast_normalise(whiten(image, f0=f0))
    normalised = (normalised - normalised.mean()) / normalised.std()
    c = LCN_CROP
    return np.ascontiguousarray(normalised[c:-c, c:-c], dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _contrast_normalised_photo(name: str, f0: float) -> np.ndarray:
    """Bundled photo ``name`` through :func:`contrast_normalised` (read-only float32, cached per (name, f0))."""
    out = contrast_normalised(load_photo(name), f0=f0)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------------
# Patch extraction
# --------------------------------------------------------------------------------------------------


def check_counts(n_train: int, n_val: int) -> tuple[int, int]:
    """Validate the requested numbers of training and validation inputs (both integers ≥ 1)."""
    return (integer(n_train, "n_train", minimum=1, error=DataError),
            integer(n_val, "n_val", minimum=1, error=DataError))


def _as_images(images: np.ndarray | Sequence[np.ndarray], channels: int | None = None) -> list[np.ndarray]:
    """Validate ``images`` (one image or a sequence of them) and return float32 C-contiguous copies.

    channels None: grey 2-D images (H, W); an integer C: images (H, W, C), channels last.
    """
    ndim = 2 if channels is None else 3
    what = "a 2-D grayscale array" if channels is None else f"an (H, W, {channels}) array"
    expected = f"images must be {what} or a sequence of them"
    if isinstance(images, np.ndarray):
        if images.ndim == ndim:
            seq: Sequence[np.ndarray] = [images]
        elif images.ndim == ndim + 1:
            seq = list(images)
        else:
            raise DataError(f"{expected}, got an array of shape {images.shape}")
    else:
        try:
            seq = list(images)
        except TypeError:
            raise DataError(f"{expected}, got {type(images).__name__}") from None
    if not seq:
        raise DataError("no images to extract patches from")
    out = []
    for i, im in enumerate(seq):
        arr = np.asarray(im)
        if arr.ndim != ndim or (channels is not None and arr.shape[2] != channels):
            raise DataError(f"image {i} has shape {arr.shape}: expected {what}")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"image {i} has non-numeric dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise DataError(f"image {i} (shape {arr.shape}) contains NaN or Inf")
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"image {i} (shape {arr.shape}) has values too large for float32")
        out.append(arr)
    return out


def extract_patches(
    images: np.ndarray | Sequence[np.ndarray],
    size: int,
    n: int,
    seed: int,
    min_std: float = 0.0,
    *,
    channels: int | None = None,
) -> np.ndarray:
    """Draw ``n`` random size×size patches from one or more 2-D images (or (H, W, C) images: ``channels=C``,
    rows flattened channels last).

    Every valid top-left position of every image is equally likely (so an image is chosen with
    probability proportional to its number of valid positions); positions are drawn with replacement
    from ``np.random.default_rng(seed)``. With ``min_std > 0`` patches whose std (over their pixels)
    is below ``min_std`` are rejected and redrawn, in bulk, until ``n`` are accepted; DataError is
    raised if that has not happened after 50·n + 1000 candidates.

    Args:
        images: one 2-D array (H, W), or a sequence of 2-D arrays of possibly different shapes,
            every side ≥ size, finite values.
        size: patch side in pixels (≥ 2).
        n: number of patches (≥ 1).
        seed: non-negative integer seed.
        min_std: minimum per-patch std, in the images' intensity units (≥ 0).

    Returns:
        float32 array (n, size * size); row k is patch k flattened in row-major order.
    """
    size = integer(size, "patch size", minimum=2, error=DataError)
    n = integer(n, "number of patches", minimum=1, error=DataError)
    seed = integer(seed, "seed", minimum=0, error=DataError)
    min_std = finite_float(min_std, "min_std", minimum=0.0, error=DataError)
    imgs = _as_images(images, channels)
    for i, im in enumerate(imgs):
        if im.shape[0] < size or im.shape[1] < size:
            raise DataError(f"image {i} of shape {im.shape} is smaller than the patch size {size}×{size}")

    return sample_patches(imgs, size, n, seed, min_std)


def _physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_fits_in_memory(n: int, d: int) -> None:
    """DataError when n float32 rows of d values cannot fit in this machine's memory (instead of an OOM kill)."""
    need = n * d * 4
    have = _physical_memory()
    if have is not None and need > have:
        raise DataError(f"{n} patches of {d} values need {need / 1e9:.3g} GB, more than this machine's "
                        f"{have / 1e9:.3g} GB of memory: ask for fewer")


def sample_patches(imgs: Sequence[np.ndarray], size: int, n: int, seed: int, min_std: float) -> np.ndarray:
    """The sampler behind :func:`extract_patches` for checked images (H, W) or (H, W, C): (n, size·size·C)."""
    d = size * size * int(np.prod(imgs[0].shape[2:], dtype=np.int64))
    _check_fits_in_memory(n, d)
    rng = np.random.default_rng(seed)
    windows = [sliding_window_view(im, (size, size, *im.shape[2:])) for im in imgs]
    n_cols = np.array([w.shape[1] for w in windows], dtype=np.int64)
    counts = np.array([w.shape[0] * w.shape[1] for w in windows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    chunk = max(1, _GATHER_CHUNK_ELEMENTS // d)

    def draw(m: int) -> np.ndarray:
        flat = rng.integers(0, total, size=m, dtype=np.int64)
        which = np.searchsorted(starts, flat, side="right") - 1
        local = flat - starts[which]
        rows, cols = np.divmod(local, n_cols[which])
        batch = np.empty((m, d), dtype=np.float32)
        order = np.argsort(which, kind="stable")  # group draws by image: one gather per image
        bounds = np.searchsorted(which[order], np.arange(len(windows) + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[j] : bounds[j + 1]]
            batch[sel] = windows[j][rows[sel], cols[sel]].reshape(-1, d)
        return batch

    if min_std <= 0:
        if n <= chunk:
            return draw(n)
        return np.concatenate([draw(min(chunk, n - k)) for k in range(0, n, chunk)])

    kept: list[np.ndarray] = []
    have = 0
    drawn = 0
    accepted = 0
    budget = 50 * n + 1000
    while have < n and drawn < budget:
        rate = max(accepted / drawn, 0.02) if drawn else 1.0
        m = min(chunk, budget - drawn, math.ceil((n - have) / rate * 1.1) + 16)
        batch = draw(m)
        drawn += m
        ok = batch.std(axis=1, dtype=np.float64) >= min_std
        k = int(ok.sum())
        accepted += k
        if k:
            take = batch[ok][: n - have]
            kept.append(take)
            have += take.shape[0]
    if have < n:
        raise DataError(
            f"only {have} of {n} patches of size {size}×{size} have std ≥ {min_std} after {drawn} draws: "
            "lower min_std or use higher-contrast images"
        )
    return np.ascontiguousarray(np.concatenate(kept)) if len(kept) > 1 else kept[0]


# --------------------------------------------------------------------------------------------------
# Patch data sets
# --------------------------------------------------------------------------------------------------


def derived_seeds(seed: int) -> tuple[int, int]:
    """Two independent non-negative integer seeds (train, val) derived from ``seed``."""
    seed = integer(seed, "seed", minimum=0, error=DataError)
    train_ss, val_ss = np.random.SeedSequence(seed).spawn(2)
    return int(train_ss.generate_state(1)[0]), int(val_ss.generate_state(1)[0])


def patch_data_from_images(
    train_images: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    *,
    size: int,
    n_train: int,
    n_val: int,
    seed: int,
    name: str,
    min_std: float = MIN_PATCH_STD,
    channels: int | None = None,
    f0: float | None = None,
) -> PatchData:
    """Draw train patches from ``train_images`` and val patches from ``val_images`` (already whitened;
    grey (H, W), or (H, W, C) with ``channels=C``: patch_shape (size, size, C), rows channels last).

    Patches with std < ``min_std`` are rejected (see :func:`extract_patches`); train and val use
    different seeds derived from ``seed``. All patches are then multiplied by one global factor chosen
    so that the training patches have overall std 1 (the same factor is applied to validation).
    ``f0``: the roll-off the grey images were whitened with; given, ``preprocessing`` records the transform.
    """
    n_train, n_val = check_counts(n_train, n_val)
    seed_train, seed_val = derived_seeds(seed)
    train = extract_patches(train_images, size, n_train, seed_train, min_std=min_std, channels=channels)
    val = extract_patches(val_images, size, n_val, seed_val, min_std=min_std, channels=channels)
    std = float(train.std(dtype=np.float64))
    if not std > 0:
        raise DataError(f"training patches of {name!r} have zero variance")
    scale = np.float32(1.0 / std)
    train *= scale
    val *= scale
    shape = (size, size) if channels is None else (size, size, channels)
    record = None
    if f0 is not None and channels is None:  # fond.data.preprocessing.Preprocessing's fields
        record = {"kind": "whitened", "input_std": float(train.std(dtype=np.float64)), "patch_size": size,
                  "f0": float(f0), "min_std": float(min_std), "scale": float(scale), "centre": False}
    return PatchData(train=train, val=val, patch_shape=shape, name=name, preprocessing=record)


def natural_patches(
    size: int = 16,
    n_train: int = 100_000,
    n_val: int = 5_000,
    seed: int = 0,
    f0: float = 0.4,
) -> PatchData:
    """Whitened natural-image patches from the bundled photos.

    Every photo in :data:`BUNDLED_PHOTOS` is converted to grayscale and whitened (:func:`whiten`, roll-off
    ``f0`` in cycles/pixel; the whitened images are cached in memory). Training patches are drawn from
    the photos not in :data:`VALIDATION_PHOTOS`, validation patches only from those held-out photos,
    with different seeds derived from ``seed``.

    Low-contrast patches (std < :data:`MIN_PATCH_STD` = 0.25 in units of the whitened image's std)
    are rejected and redrawn: whitened flat sky or background patches are almost pure noise of tiny
    amplitude, and per-sample R² on them is meaningless. Finally all patches are scaled by one global
    factor so that the training patches have overall std 1 (validation gets the same factor).

    Returns:
        PatchData with train (n_train, size²), val (n_val, size²), float32, patch_shape (size, size).
    """
    return photo_patches(BUNDLED_PHOTOS, VALIDATION_PHOTOS, _whitened_photo, size=size, n_train=n_train,
                         n_val=n_val, seed=seed, f0=f0, name=f"natural{size}")


def contrast_normalised_patches(size: int = 16, n_train: int = 100_000, n_val: int = 5_000,
                                seed: int = 0) -> PatchData:
    """Patches of the bundled photos after the authors' vH16 pipeline (the ``natural<N>-lcn`` data).

    Each photo goes through :func:`contrast_normalised` (whitening with roll-off 0.5 cycles/pixel, local
    contrast normalisation, per-image z-score, 4-px crop); patches are then drawn and scaled to std 1 (the
    global z-score) exactly as by :func:`natural_patches`, with the same held-out photos and the same
    rejection of low-contrast patches. The authors' images (van Hateren) and their 80/20 split in contiguous
    blocks are not ours.
    """
    return photo_patches(BUNDLED_PHOTOS, VALIDATION_PHOTOS, _contrast_normalised_photo, size=size, n_train=n_train,
                         n_val=n_val, seed=seed, f0=LCN_F0, name=f"natural{size}-lcn")


def photo_patches(
    photos: Sequence[str],
    held_out: Sequence[str],
    whitened: Callable[[str, float], np.ndarray],
    *,
    size: int,
    n_train: int,
    n_val: int,
    seed: int,
    f0: float,
    name: str,
    channels: int | None = None,
) -> PatchData:
    """Patches of whole photos held apart: training patches from the ``photos`` not in ``held_out``, validation
    patches only from the held-out ones (:func:`patch_data_from_images`, seeds derived from ``seed``).

    whitened: ``whitened(photo_name, f0)`` gives the whitened photo, grey (H, W) or with ``channels`` channels
    (H, W, C); f0 is checked first (:func:`check_f0`). The grey and the colour bundled sets both come from here.
    """
    f0 = check_f0(f0)
    val_names = [p for p in held_out if p in photos]
    train_names = [p for p in photos if p not in held_out]
    if not val_names or not train_names:
        raise DataError("the bundled photo set needs at least one training and one validation photo")
    return patch_data_from_images(
        [whitened(p, f0) for p in train_names],
        [whitened(p, f0) for p in val_names],
        size=size,
        n_train=n_train,
        n_val=n_val,
        seed=seed,
        name=name,
        channels=channels,
        f0=f0,
    )


def size_in_range(spec: str, size: int, sizes: tuple[int, ...], what: str) -> int:
    """``size`` if it is one of ``sizes`` (a contiguous range), else a one-line ``DataError`` naming ``spec``."""
    if size not in sizes:
        raise DataError(f"data {spec!r}: {what} size {size} is outside {sizes[0]}..{sizes[-1]}")
    return size
