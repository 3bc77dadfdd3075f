"""Tests of fond.data: whitening, patch extraction, bundled natural patches and user data loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from fond.data import (
    BUNDLED_PHOTOS,
    VALIDATION_PHOTOS,
    PatchData,
    extract_patches,
    load_data,
    load_photo,
    natural_patches,
    whiten,
)
from fond.data import natural as natural_mod
from fond.errors import DataError

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def radial_power(image: np.ndarray, lo: float = 0.05, hi: float = 0.3, n_bins: int = 10):
    """Radially averaged power spectrum of ``image`` in log-spaced bins over [lo, hi] cycles/pixel."""
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    f = np.hypot(np.fft.fftfreq(image.shape[0])[:, None], np.fft.fftfreq(image.shape[1])[None, :])
    edges = np.geomspace(lo, hi, n_bins + 1)
    idx = np.digitize(f.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    band = np.bincount(idx[ok], power.ravel()[ok], n_bins) / np.bincount(idx[ok], minlength=n_bins)
    return np.sqrt(edges[:-1] * edges[1:]), band


def spectrum_stats(image: np.ndarray) -> tuple[float, float]:
    """(log-log slope, max/min band power) of the radial power spectrum over 0.05–0.3 cycles/pixel."""
    freqs, band = radial_power(image)
    slope = float(np.polyfit(np.log(freqs), np.log(band), 1)[0])
    return slope, float(band.max() / band.min())


def pink_noise(n: int, seed: int) -> np.ndarray:
    """n×n noise with Fourier amplitude ∝ 1/f (power ∝ 1/f², like natural images)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = np.inf
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) / f).real


def source_of(patches: np.ndarray, images: list[np.ndarray], size: int) -> np.ndarray:
    """Index of the image holding each patch, up to a positive scale (cosine similarity ≈ 1); -1 if none."""
    p = patches.astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    best = np.full(len(p), -1.0)
    where = np.full(len(p), -1)
    for i, im in enumerate(images):
        w = sliding_window_view(np.asarray(im, dtype=np.float64), (size, size)).reshape(-1, size * size)
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        cos = (w @ p.T).max(axis=0)
        better = cos > best
        best[better] = cos[better]
        where[better] = i
    where[best < 1 - 1e-5] = -1
    return where


def assert_one_line_error(exc: pytest.ExceptionInfo[DataError], *needles: str) -> None:
    """The CLI prints the message verbatim, so it must be one line naming the offending thing."""
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# --------------------------------------------------------------------------------------------------
# whiten
# --------------------------------------------------------------------------------------------------


def test_whiten_flattens_pink_noise_spectrum():
    """Whitening must turn a 1/f² power spectrum into a nearly flat one, or the model sees mostly DC."""
    image = pink_noise(256, seed=0)
    slope_in, ratio_in = spectrum_stats(image)
    slope_out, ratio_out = spectrum_stats(whiten(image))
    assert -2.3 < slope_in < -1.7
    assert abs(slope_out) < 0.5
    assert ratio_in / ratio_out > 10


def test_whiten_flattens_real_photo_spectrum():
    """The same flattening must happen on a real photo, whose spectrum is only roughly 1/f²."""
    image = load_photo("camera")
    slope_in, ratio_in = spectrum_stats(image)
    slope_out, ratio_out = spectrum_stats(whiten(image))
    assert slope_out - slope_in > 1.5
    assert ratio_in / ratio_out > 10


def test_whiten_output_is_zscored_float32_same_shape():
    """Downstream code assumes whitened images are float32 with mean 0 and std 1 (patch std threshold)."""
    image = np.random.default_rng(1).integers(0, 255, size=(37, 50)).astype(np.uint8)
    out = whiten(image)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-5
    assert abs(float(out.std()) - 1) < 1e-5
    # z-scoring makes the result independent of the input's gain and offset
    np.testing.assert_allclose(whiten(3.0 * image.astype(float) + 7.0), out, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.full((16, 16), np.nan), "NaN"),
        (np.where(np.eye(16) > 0, np.inf, 0.0), "Inf"),
        (np.arange(64.0), "2-D"),
        (np.zeros((16, 16, 3)), "2-D"),
        (np.full((16, 16), 3.0), "constant"),
        (np.random.default_rng(0).random((5, 40)), "too small"),
        (np.array([["a"] * 16] * 16), "dtype"),
    ],
)
def test_whiten_rejects_bad_images(image, needle):
    """Bad images must give a one-line DataError, not a numpy traceback or a silent NaN result."""
    with pytest.raises(DataError) as exc:
        whiten(image)
    assert_one_line_error(exc, needle)


@pytest.mark.parametrize("f0", [0.0, -1.0, float("nan"), "0.4"])
def test_whiten_rejects_bad_f0(f0):
    """f0 is in cycles/pixel and must be positive; anything else would silently zero the image."""
    with pytest.raises(DataError) as exc:
        whiten(np.random.default_rng(0).random((16, 16)), f0=f0)
    assert_one_line_error(exc, "f0")


# --------------------------------------------------------------------------------------------------
# extract_patches
# --------------------------------------------------------------------------------------------------


def test_extract_patches_shape_dtype_and_determinism():
    """Experiments must be reproducible from the seed alone, and distinct seeds must give distinct data."""
    image = np.random.default_rng(0).random((40, 30))
    a = extract_patches(image, 6, 500, seed=3)
    b = extract_patches(image, 6, 500, seed=3)
    c = extract_patches(image, 6, 500, seed=4)
    assert a.shape == (500, 36)
    assert a.dtype == np.float32
    assert a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_extract_patches_does_not_touch_global_rng():
    """Using the global RNG would make results depend on unrelated code run before."""
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    extract_patches(np.random.default_rng(0).random((20, 20)), 4, 100, seed=0, min_std=0.1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_extract_patches_are_exact_windows_of_the_image():
    """Each row must be a real row-major size×size window: a transposed or shifted gather corrupts data."""
    image = np.random.default_rng(1).random((13, 17)).astype(np.float32)
    size = 5
    patches = extract_patches(image, size, 200, seed=0)
    windows = {image[r : r + size, c : c + size].tobytes(): (r, c) for r in range(9) for c in range(13)}
    seen = {windows[p.reshape(size, size).tobytes()] for p in patches}  # KeyError if a patch is not a window
    assert len(seen) > 60  # positions are spread over the 9×13 valid ones


def test_extract_patches_samples_images_in_proportion_to_positions():
    """Images of different shapes must be sampled by number of valid positions, not one image each."""
    rng = np.random.default_rng(2)
    small = rng.random((10, 10))  # 7×7 = 49 positions for size 4, values in [0, 1)
    large = 10 + rng.random((20, 20))  # 17×17 = 289 positions, values in [10, 11)
    patches = extract_patches([small, large], 4, 20_000, seed=0)
    from_large = float((patches.min(axis=1) >= 10).mean())
    assert abs(from_large - 289 / 338) < 0.02
    assert np.all((patches.max(axis=1) < 1) | (patches.min(axis=1) >= 10))  # never straddles images


def test_extract_patches_min_std_rejects_flat_patches():
    """min_std must drop flat patches (and only those), since they make per-sample R² meaningless."""
    image = np.zeros((40, 40))
    image[:, 20:] = np.random.default_rng(0).standard_normal((40, 20))
    plain = extract_patches(image, 6, 2000, seed=0)
    assert (plain.std(axis=1) == 0).any()
    kept = extract_patches(image, 6, 2000, seed=0, min_std=0.5)
    assert kept.shape == (2000, 36)
    assert (kept.std(axis=1, dtype=np.float64) >= 0.5).all()


def test_extract_patches_min_std_unreachable_raises():
    """An impossible threshold must fail clearly instead of looping forever."""
    with pytest.raises(DataError) as exc:
        extract_patches(np.zeros((20, 20)), 4, 10, seed=0, min_std=0.1)
    assert_one_line_error(exc, "min_std")


@pytest.mark.parametrize(
    ("images", "size", "n", "needles"),
    [
        ([np.zeros((20, 20)), np.zeros((8, 30))], 10, 5, ("image 1", "(8, 30)", "10×10")),
        (np.zeros((20, 20)), 1, 5, ("patch size",)),
        (np.zeros((20, 20)), 4, 0, ("number of patches",)),
        ([], 4, 5, ("no images",)),
        (np.full((20, 20), np.nan), 4, 5, ("NaN",)),
        (np.zeros(20), 4, 5, ("2-D",)),
        ([np.zeros((20, 20)), np.zeros(7)], 4, 5, ("image 1", "2-D")),
    ],
)
def test_extract_patches_errors(images, size, n, needles):
    """Bad arguments must name the problem (and the offending image index/shape) in one line."""
    with pytest.raises(DataError) as exc:
        extract_patches(images, size, n, seed=0)
    assert_one_line_error(exc, *needles)


def test_extract_patches_in_bulk_are_real_windows_above_the_contrast_floor():
    """A paper-sized draw (200k patches, the quick preset's count) in bulk: every row must be an actual
    16×16 window of the image and respect min_std — the bulk rejection must not mix rows up."""
    image = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    image[:256] *= 0.05  # a low-contrast half whose windows are mostly rejected
    patches = extract_patches(image, 16, 200_000, seed=0, min_std=0.25)
    assert patches.shape == (200_000, 256)
    assert float(patches.std(axis=1).min()) >= 0.25
    windows = np.lib.stride_tricks.sliding_window_view(image, (16, 16))
    for row in (0, 12345, 199_999):  # locate each checked patch by its first pixel and compare the window
        ys, xs = np.nonzero(windows[..., 0, 0] == patches[row, 0])
        assert any(np.array_equal(windows[y, x].ravel(), patches[row]) for y, x in zip(ys, xs, strict=True))


# --------------------------------------------------------------------------------------------------
# natural patches
# --------------------------------------------------------------------------------------------------


def test_patch_data_from_images_keeps_train_and_val_apart_and_scales_once():
    """Validation must come only from held-out images, and one global factor must give train std 1."""
    rng = np.random.default_rng(0)
    train_imgs = [2 * rng.random((30, 40)), 2 * rng.random((25, 25))]  # values ≥ 0
    val_imgs = [-2 * rng.random((30, 30))]  # values ≤ 0
    data = natural_mod.patch_data_from_images(
        train_imgs, val_imgs, size=4, n_train=3000, n_val=400, seed=0, name="toy"
    )
    assert (data.train >= 0).all()
    assert (data.val <= 0).all()
    assert abs(float(data.train.std()) - 1) < 1e-4
    # the same factor is applied to val: raw train/val images have the same spread, so should the patches
    assert 0.85 < float(data.val.std()) < 1.15


def test_natural_patches_val_only_from_held_out_photos(monkeypatch):
    """No validation patch may come from a training photo, or validation scores would be optimistic."""
    rng = np.random.default_rng(5)
    raw = {f"toy_{k}": rng.random((24 + 4 * k, 32)) for k in range(4)}
    monkeypatch.setattr(natural_mod, "BUNDLED_PHOTOS", {k: (lambda v=v: v) for k, v in raw.items()})
    monkeypatch.setattr(natural_mod, "VALIDATION_PHOTOS", ("toy_3",))
    data = natural_patches(size=6, n_train=300, n_val=60, seed=0)
    whitened = [whiten(v) for v in raw.values()]
    assert set(source_of(data.val, whitened, 6)) == {3}
    assert set(source_of(data.train, whitened, 6)) <= {0, 1, 2}


def test_natural_patches_wiring_uses_the_real_held_out_photos(monkeypatch):
    """The real bundled split must hand exactly VALIDATION_PHOTOS to validation and the rest to training."""
    seen = {}

    def spy(train_images, val_images, **kwargs):
        seen["train"], seen["val"] = train_images, val_images
        return natural_mod.PatchData(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32), (2, 2), "x")

    monkeypatch.setattr(natural_mod, "patch_data_from_images", spy)
    natural_patches(size=2, n_train=1, n_val=1)
    cached = natural_mod._whitened_photo
    assert [id(v) for v in seen["val"]] == [id(cached(p, 0.4)) for p in VALIDATION_PHOTOS]
    train_names = [p for p in BUNDLED_PHOTOS if p not in VALIDATION_PHOTOS]
    assert [id(v) for v in seen["train"]] == [id(cached(p, 0.4)) for p in train_names]
    assert set(VALIDATION_PHOTOS) <= set(BUNDLED_PHOTOS)


def test_natural_patches_real_photos():
    """The default data set must be finite, unit-std, float32 and reproducible from the seed."""
    data = natural_patches(size=16, n_train=3000, n_val=300, seed=0)
    assert isinstance(data, PatchData)
    assert data.train.shape == (3000, 256) and data.val.shape == (300, 256)
    assert data.n_inputs == 256 and data.patch_shape == (16, 16)
    for arr in (data.train, data.val):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous and np.isfinite(arr).all()
    assert abs(float(data.train.std()) - 1) < 1e-4
    assert 0.6 < float(data.val.std()) < 1.5
    again = natural_patches(size=16, n_train=3000, n_val=300, seed=0)
    np.testing.assert_array_equal(data.train, again.train)
    np.testing.assert_array_equal(data.val, again.val)
    other = natural_patches(size=16, n_train=3000, n_val=300, seed=1)
    assert not np.array_equal(data.train, other.train)


def _contrast_normalised_by_loops(image: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Local contrast normalisation written out pixel by pixel from the authors' definition (DESIGN.md §7):
    Gaussian weights exp(−r²/σ) on a [−1, 1]² grid summing to 1, zero padding, subtract the local mean, divide
    by the local std floored at its image mean."""
    r = kernel_size // 2
    grid = np.linspace(-1, 1, kernel_size)
    weights = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / sigma)
    weights /= weights.sum()

    def local_sum(values):
        padded = np.pad(values, r)
        return np.array([[(padded[i:i + kernel_size, j:j + kernel_size] * weights).sum()
                          for j in range(values.shape[1])] for i in range(values.shape[0])])

    centred = image - local_sum(image)
    local_std = np.sqrt(local_sum(centred**2))
    return centred / np.maximum(local_std, local_std.mean())


@pytest.mark.parametrize("kernel_size", [5, 13])
def test_local_contrast_normalisation_matches_its_definition(kernel_size):
    """natural.local_contrast_normalise equals the pixel-by-pixel oracle; an even kernel is refused."""
    image = np.random.default_rng(1).standard_normal((20, 24)) * np.linspace(0.2, 3.0, 24)
    np.testing.assert_allclose(natural_mod.local_contrast_normalise(image, kernel_size),
                               _contrast_normalised_by_loops(image, kernel_size, 0.5), atol=1e-10)
    with pytest.raises(DataError, match="odd"):
        natural_mod.local_contrast_normalise(image, 4)


def test_contrast_normalisation_equalises_local_contrast():
    """Noise of std 1 over most of the image, 10 and 30 on two stripes: the two strong stripes (above the image's
    mean local contrast) end with about the same std, where they differed 3×; the weak part is only scaled
    down by that mean (the floor that keeps flat regions from being amplified)."""
    rng = np.random.default_rng(2)
    column_std = np.ones(256)
    column_std[160:208], column_std[208:] = 10.0, 30.0
    image = rng.standard_normal((64, 256)) * column_std
    out = natural_mod.local_contrast_normalise(image)
    weak, strong, strongest = out[8:-8, 8:150].std(), out[8:-8, 168:200].std(), out[8:-8, 216:-8].std()
    assert 0.8 < strongest / strong < 1.25 and weak < 0.5 * strong


def test_contrast_normalised_photo_is_cropped_and_z_scored():
    """contrast_normalised: whitening (roll-off 0.5), LCN, z-score, 4 px cropped from every side."""
    photo = load_photo("camera")
    out = natural_mod.contrast_normalised(photo)
    assert out.dtype == np.float32 and out.shape == (photo.shape[0] - 8, photo.shape[1] - 8)
    assert abs(float(out.mean())) < 0.05 and 0.9 < float(out.std()) < 1.1
    full = natural_mod.local_contrast_normalise(whiten(photo, f0=0.5))
    full = (full - full.mean()) / full.std()
    np.testing.assert_allclose(out, full[4:-4, 4:-4], atol=1e-5)


def test_natural_lcn_spec_draws_contrast_normalised_patches_from_the_held_out_split(monkeypatch):
    """--data natural16-lcn: patches of the contrast-normalised photos, the same held-out photos for
    validation, unit std, and not the plain natural16 patches."""
    seen = {}

    def spy(train_images, val_images, **kwargs):
        seen["train"], seen["val"], seen["name"] = train_images, val_images, kwargs["name"]
        return natural_mod.PatchData(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32), (2, 2), "x")

    with monkeypatch.context() as patch:
        patch.setattr(natural_mod, "patch_data_from_images", spy)
        load_data("natural4-lcn", n_train=1, n_val=1)
    cached = natural_mod._contrast_normalised_photo
    assert [id(v) for v in seen["val"]] == [id(cached(p, 0.5)) for p in VALIDATION_PHOTOS]
    assert len(seen["train"]) == len(BUNDLED_PHOTOS) - len(VALIDATION_PHOTOS) and seen["name"] == "natural4-lcn"
    data = load_data("natural16-lcn", n_train=2000, n_val=200)
    assert data.name == "natural16-lcn" and data.train.shape == (2000, 256) and data.patch_shape == (16, 16)
    assert abs(float(data.train.std()) - 1) < 1e-4
    assert not np.allclose(data.train, load_data("natural16", n_train=2000, n_val=200).train)


def test_bundled_photos_load_as_gray_unit_range():
    """Every bundled photo must load offline as a 2-D float image in [0, 1]."""
    assert len(BUNDLED_PHOTOS) == 13
    for name in BUNDLED_PHOTOS:
        img = load_photo(name)
        assert img.ndim == 2 and img.dtype == np.float64, name
        assert 0 <= img.min() and img.max() <= 1 and img.std() > 0, name


def test_load_photo_unknown_name_lists_valid_names():
    """A typo must tell the user which names exist."""
    with pytest.raises(DataError) as exc:
        load_photo("lena")
    assert_one_line_error(exc, "'lena'", "camera", "flower")


# --------------------------------------------------------------------------------------------------
# load_data: natural<N>
# --------------------------------------------------------------------------------------------------


def test_load_data_natural_specs():
    """`--data natural16` (and other sizes) is the default CLI path and must give N×size² patches."""
    data = load_data("natural16", n_train=500, n_val=50)
    assert data.train.shape == (500, 256) and data.val.shape == (50, 256)
    assert data.name == "natural16"
    assert load_data("natural8", n_train=100, n_val=10).patch_shape == (8, 8)


@pytest.mark.parametrize(("spec", "needle"), [("natural3", "natural3"), ("natural65", "natural65")])
def test_load_data_natural_size_out_of_range(spec, needle):
    """Sizes outside 4..64 must be refused with the spec in the message."""
    with pytest.raises(DataError) as exc:
        load_data(spec)
    assert_one_line_error(exc, needle, "4..64")


def test_load_data_unknown_spec(tmp_path):
    """Anything unrecognised must list the accepted kinds of --data."""
    for spec in ("foo", str(tmp_path / "notes.txt"), "natural"):
        if spec.endswith(".txt"):
            Path(spec).write_text("hello")
        with pytest.raises(DataError) as exc:
            load_data(spec)
        assert_one_line_error(exc, f"unknown data '{spec}'", "natural16", ".npy", "folder of images")


# --------------------------------------------------------------------------------------------------
# load_data: .npy
# --------------------------------------------------------------------------------------------------


def test_load_data_npy_round_trip(tmp_path):
    """User patches must come back unchanged (as float32), shuffled, with a ≤10% validation hold-out."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    path = tmp_path / "patches.npy"
    np.save(path, x)
    data = load_data(str(path), seed=0)
    assert data.val.shape == (20, 16) and data.train.shape == (180, 16)  # 10% cap beats n_val=5000
    assert data.patch_shape == (4, 4) and data.name == "patches.npy"
    rows = np.concatenate([data.train, data.val])
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(x.astype(np.float32), axis=0))
    assert not np.array_equal(rows, x.astype(np.float32))  # shuffled
    small = load_data(str(path), n_val=7, n_train=50, seed=0)
    assert small.val.shape == (7, 16) and small.train.shape == (50, 16)
    np.testing.assert_array_equal(load_data(str(path), seed=0).train, data.train)


def test_load_data_npy_small_and_non_square(tmp_path):
    """Two rows is the minimum (one each); non-square D has no patch shape."""
    path = tmp_path / "two.npy"
    np.save(path, np.arange(20, dtype=np.int16).reshape(2, 10))
    data = load_data(str(path))
    assert data.train.shape == (1, 10) and data.val.shape == (1, 10)
    assert data.patch_shape is None and data.n_inputs == 10
    assert data.train.dtype == np.float32


def _write_bad_npy(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad_{kind}.npy"
    if kind == "text":
        path.write_text("this is not an array\n1,2,3\n")
    elif kind == "truncated":
        np.save(path, np.zeros((100, 16)))
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "object":
        np.save(path, np.array([[1, "a"], [2, None]], dtype=object), allow_pickle=True)
    elif kind == "one_d":
        np.save(path, np.zeros(10))
    elif kind == "three_d":
        np.save(path, np.zeros((4, 4, 4)))
    elif kind == "nan":
        np.save(path, np.array([[0.0, np.nan], [1.0, 2.0]]))
    elif kind == "inf":
        np.save(path, np.array([[0.0, np.inf], [1.0, 2.0]]))
    elif kind == "complex":
        np.save(path, np.zeros((4, 4), dtype=complex))
    elif kind == "strings":
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    elif kind == "one_row":
        np.save(path, np.zeros((1, 16)))
    elif kind == "no_cols":
        np.save(path, np.zeros((5, 0)))
    elif kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, x=np.zeros((4, 4)))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "text",
        "truncated",
        "object",
        "one_d",
        "three_d",
        "nan",
        "inf",
        "complex",
        "strings",
        "one_row",
        "no_cols",
        "npz",
        "missing",
    ],
)
def test_load_data_npy_bad_files(tmp_path, kind):
    """Every malformed .npy must give a one-line DataError naming the file, never a numpy traceback."""
    path = _write_bad_npy(tmp_path, kind)
    with pytest.raises(DataError) as exc:
        load_data(str(path))
    assert_one_line_error(exc, path.name)


# --------------------------------------------------------------------------------------------------
# load_data: folder of images
# --------------------------------------------------------------------------------------------------


def _noise_image(rng: np.random.Generator, h: int, w: int, mode: str) -> Image.Image:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode)


def _gray_as_loaded(path: Path) -> np.ndarray:
    """Reference grayscale of a file, as the loader sees it (whitening makes gain/offset irrelevant)."""
    from skimage.color import rgb2gray

    arr = np.asarray(Image.open(path)).astype(np.float64) / 255
    return rgb2gray(arr) if arr.ndim == 3 else arr


def test_load_data_folder_holds_out_last_images_and_skips_bad_files(tmp_path):
    """Whole sorted images are held out, corrupt/tiny files are skipped and counted, others ignored."""
    rng = np.random.default_rng(0)
    names = ["a.png", "b.PNG", "c.jpg", "d.tif", "e.bmp", "f.png", "g.png"]
    for k, name in enumerate(names):
        img = _noise_image(rng, 40 + 2 * k, 48, "RGB" if k % 2 else "L")
        fmt = {"jpg": "PNG"}.get(name.rsplit(".", 1)[1].lower())  # lossless, whatever the suffix says
        img.save(tmp_path / name, format=fmt)
    (tmp_path / "broken.png").write_text("not an image")
    _noise_image(rng, 5, 5, "L").save(tmp_path / "tiny.png")
    (tmp_path / "notes.txt").write_text("ignored")

    with pytest.warns(UserWarning, match="1 unreadable"):
        data = load_data(str(tmp_path), patch_size=8, n_train=400, n_val=80, seed=0)
    assert data.train.shape == (400, 64) and data.val.shape == (80, 64) and data.patch_shape == (8, 8)
    assert "1 unreadable" in data.name and "7 images" in data.name
    assert abs(float(data.train.std()) - 1) < 1e-4
    assert (data.train.std(axis=1) > 0).all()

    whitened = [whiten(_gray_as_loaded(tmp_path / n)) for n in names]
    n_held = math.ceil(0.15 * len(names))  # 2: f.png and g.png
    assert set(source_of(data.val, whitened, 8)) <= set(range(len(names) - n_held, len(names)))
    assert set(source_of(data.train, whitened, 8)) <= set(range(len(names) - n_held))
    assert -1 not in set(source_of(data.train[:100], whitened, 8))


def test_load_data_folder_single_image_splits_rows(tmp_path):
    """With one image, validation must come from its bottom 20% of rows only."""
    rng = np.random.default_rng(1)
    _noise_image(rng, 100, 60, "L").save(tmp_path / "only.png")
    data = load_data(str(tmp_path), patch_size=8, n_train=200, n_val=50, seed=0)
    w = whiten(_gray_as_loaded(tmp_path / "only.png"))
    assert set(source_of(data.val, [w[:80], w[80:]], 8)) == {1}
    assert set(source_of(data.train, [w[:80], w[80:]], 8)) == {0}


def test_load_data_folder_errors(tmp_path):
    """Empty, all-corrupt and unsplittable folders must each give a one-line DataError naming the folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_data(str(empty))
    assert_one_line_error(exc, "empty", "no images")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_text("nope")
    (broken / "y.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError) as exc, pytest.warns(UserWarning):
        load_data(str(broken))
    assert_one_line_error(exc, "broken", "readable")

    small = tmp_path / "small"
    small.mkdir()
    _noise_image(np.random.default_rng(0), 40, 40, "L").save(small / "one.png")
    with pytest.raises(DataError) as exc:
        load_data(str(small), patch_size=16)
    assert_one_line_error(exc, "one.png", "16×16")
