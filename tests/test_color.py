"""Tests of fond.data.color: colour whitening and patches, CIFAR-10 binary batches, CelebA folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from fond.data import color as color_mod
from fond.data.color import (
    COLOR_PHOTOS,
    COLOR_VALIDATION_PHOTOS,
    color_patch_data_from_images,
    color_patches,
    extract_color_patches,
    load_celeba,
    load_cifar10,
    load_color_data,
    whiten_color,
)
from fond.data.natural import BUNDLED_PHOTOS, whiten
from fond.errors import DataError

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def write_cifar_batch(path: Path, labels: list[int], rng: np.random.Generator) -> np.ndarray:
    """Write a CIFAR-10 binary batch with random pixels; return the planar pixel bytes (n, 3072) uint8."""
    planar = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], planar], axis=1)
    path.write_bytes(records.tobytes())
    return planar


def channels_last_oracle(planar_record: np.ndarray) -> np.ndarray:
    """Explicit-loop conversion of one channel-planar 32×32 record to a channels-last row in [0, 1]."""
    row = np.empty(3072, dtype=np.float64)
    for y in range(32):
        for x in range(32):
            for c in range(3):
                row[(y * 32 + x) * 3 + c] = planar_record[c * 1024 + y * 32 + x] / 255.0
    return row


# --------------------------------------------------------------------------------------------------
# colour whitening and patches
# --------------------------------------------------------------------------------------------------


def test_whiten_color_of_gray_copies_equals_gray_whitening():
    """A gray image in three channels must whiten exactly as the grayscale Olshausen–Field whitening."""
    gray = np.random.default_rng(0).random((40, 56))
    out = whiten_color(np.repeat(gray[:, :, None], 3, axis=2), f0=0.4)
    expected = whiten(gray, f0=0.4)
    assert out.shape == (40, 56, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], expected, atol=1e-5)


def test_whiten_color_keeps_relative_channel_contrast():
    """One common std (not per-channel z-scores) keeps colour: a half-contrast channel stays half."""
    rng = np.random.default_rng(1)
    red, green = rng.random((32, 32)), rng.random((32, 32))
    out = whiten_color(np.stack([red, green, 0.5 * red + 0.2], axis=2))
    np.testing.assert_allclose(out[:, :, 2], 0.5 * out[:, :, 0], atol=1e-5)
    assert abs(float(out.std()) - 1.0) < 1e-5
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "image, needle",
    [(np.zeros((16, 16)), "(H, W, 3)"), (np.ones((16, 16, 3)), "constant"), (np.ones((4, 16, 3)), "too small")],
)
def test_whiten_color_rejects_bad_images(image, needle):
    """Gray, constant or tiny inputs must raise a DataError naming the problem, not return NaN."""
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        whiten_color(image)


def test_extract_color_patches_flatten_channels_last():
    """Rows must be image[r:r+s, c:c+s, :] flattened (h, w, c): value (i*s+j)*3+ch is channel ch of (i, j)."""
    h, w, s = 12, 15, 4
    yy, xx, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    image = (1000 * yy + 10 * xx + cc).astype(np.float32)  # each value encodes (row, col, channel)
    rows = extract_color_patches(image, s, 20, seed=3)
    assert rows.shape == (20, s * s * 3) and rows.dtype == np.float32
    for row in rows:
        top, left = int(row[0]) // 1000, (int(row[0]) % 1000) // 10
        for i in range(s):
            for j in range(s):
                for ch in range(3):
                    assert row[(i * s + j) * 3 + ch] == 1000 * (top + i) + 10 * (left + j) + ch


def test_color_patch_data_keeps_train_and_val_images_apart():
    """Train patches only from train images, val only from val images (positive vs negative pixels)."""
    rng = np.random.default_rng(2)
    train_images = [rng.random((20, 24, 3)) + 1.0, rng.random((18, 30, 3)) + 1.0]
    val_images = [-rng.random((20, 20, 3)) - 1.0]
    data = color_patch_data_from_images(
        train_images, val_images, size=5, n_train=300, n_val=100, seed=0, name="t", min_std=0.0
    )
    assert data.patch_shape == (5, 5, 3)
    assert (data.train > 0).all() and (data.val < 0).all()
    assert abs(float(data.train.std()) - 1.0) < 1e-4


def test_color_patches_val_only_from_held_out_photos(monkeypatch):
    """color_patches must draw validation patches only from COLOR_VALIDATION_PHOTOS, training from the rest."""
    seen = []

    def fake(name: str, f0: float) -> np.ndarray:
        seen.append(name)
        noise = np.random.default_rng(len(name)).standard_normal((40, 40, 3)).astype(np.float32)
        return np.abs(noise) + 0.5 if name not in COLOR_VALIDATION_PHOTOS else -np.abs(noise) - 0.5

    monkeypatch.setattr(color_mod, "_whitened_color_photo", fake)
    data = color_patches(8, n_train=200, n_val=50, seed=1)
    assert sorted(seen) == sorted(COLOR_PHOTOS)
    assert (data.train > 0).all() and (data.val < 0).all()


@pytest.mark.parametrize("size", [16, 32])
def test_color_patches_real_photos_shapes_and_scale(size):
    """Real bundled photos give finite float32 (n, size²·3) rows, training std 1, patch_shape (s, s, 3)."""
    data = color_patches(size, n_train=300, n_val=60, seed=0)
    assert data.train.shape == (300, size * size * 3) and data.val.shape == (60, size * size * 3)
    assert data.train.dtype == np.float32 and data.patch_shape == (size, size, 3)
    assert np.isfinite(data.train).all() and np.isfinite(data.val).all()
    assert abs(float(data.train.std()) - 1.0) < 1e-4
    assert data.name == f"color{size}"


def test_color_patches_are_deterministic_per_seed():
    """The same seed must give identical patches and another seed different ones (reproducible runs)."""
    a = color_patches(16, n_train=50, n_val=20, seed=4)
    b = color_patches(16, n_train=50, n_val=20, seed=4)
    c = color_patches(16, n_train=50, n_val=20, seed=5)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.train, c.train)


def test_color_photos_are_bundled_rgb():
    """Every listed colour photo must load offline from an installed wheel as an RGB uint8 image."""
    for name in COLOR_PHOTOS:
        raw = BUNDLED_PHOTOS[name]()
        assert raw.ndim == 3 and raw.shape[2] == 3 and min(raw.shape[:2]) >= 64, name


# --------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------


def test_cifar10_recovers_pixels_and_labels_channels_last(tmp_path):
    """Every loaded row must equal the channel-planar record converted by an explicit-loop oracle, with its label."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train_labels = [3, 7, 0, 9, 1]
    train_planar = write_cifar_batch(folder / "data_batch_1.bin", train_labels, rng)
    test_labels = [5, 2]
    test_planar = write_cifar_batch(folder / "test_batch.bin", test_labels, rng)

    data = load_cifar10(tmp_path, n_train=10, n_val=10, seed=0)  # parent folder is accepted
    assert data.train.shape == (5, 3072) and data.val.shape == (2, 3072) and data.patch_shape == (32, 32, 3)
    for rows, labels, planar, expected_labels in (
        (data.train, data.train_labels, train_planar, train_labels),
        (data.val, data.val_labels, test_planar, test_labels),
    ):
        oracle = np.stack([channels_last_oracle(p) for p in planar]).astype(np.float32)
        matched = []
        for row, label in zip(rows, labels, strict=True):
            hits = np.flatnonzero((oracle == row).all(axis=1))
            assert hits.size == 1
            assert label == expected_labels[hits[0]]
            matched.append(int(hits[0]))
        assert sorted(matched) == list(range(len(expected_labels)))
    assert data.train_labels.dtype == np.int64


def test_cifar10_subsamples_across_batches_deterministically(tmp_path):
    """n_train smaller than the records must pick a seeded subset spanning all data_batch files."""
    rng = np.random.default_rng(1)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [0] * 6, rng)
    write_cifar_batch(tmp_path / "data_batch_2.bin", [1] * 6, rng)
    write_cifar_batch(tmp_path / "test_batch.bin", [4] * 3, rng)
    a = load_cifar10(tmp_path, n_train=8, n_val=2, seed=7)
    b = load_cifar10(tmp_path, n_train=8, n_val=2, seed=7)
    assert a.train.shape == (8, 3072) and a.val.shape == (2, 3072)
    np.testing.assert_array_equal(a.train, b.train)
    assert set(a.train_labels.tolist()) == {0, 1}
    assert (a.val_labels == 4).all()
    assert a.train.min() >= 0.0 and a.train.max() <= 1.0


def test_cifar10_truncated_file_names_the_file(tmp_path):
    """A batch whose size is not a multiple of 3073 bytes must raise DataError naming that file."""
    rng = np.random.default_rng(2)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [1, 2], rng)
    write_cifar_batch(tmp_path / "test_batch.bin", [1], rng)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_1.bin.*truncated"):
        load_cifar10(tmp_path, n_train=2, n_val=1)


def test_cifar10_bad_label_byte_is_corrupt(tmp_path):
    """A label byte outside 0..9 means the file is not CIFAR-10: DataError naming it."""
    rng = np.random.default_rng(3)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [1], rng)
    write_cifar_batch(tmp_path / "test_batch.bin", [200], rng)
    with pytest.raises(DataError, match="test_batch.bin.*label byte 200"):
        load_cifar10(tmp_path, n_train=1, n_val=1)


def test_cifar10_pickle_version_is_refused(tmp_path):
    """The python release must be refused with a pointer to the binary one: we never unpickle user files."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(DataError, match="pickle.*binary version"):
        load_cifar10(tmp_path, n_train=1, n_val=1)


def test_cifar10_missing_folder_or_batches(tmp_path):
    """An empty folder, a missing folder or a folder without test_batch.bin must raise DataError."""
    with pytest.raises(DataError, match="no binary batches"):
        load_cifar10(tmp_path, n_train=1, n_val=1)
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope", n_train=1, n_val=1)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [1], np.random.default_rng(0))
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tmp_path, n_train=1, n_val=1)


# --------------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------------


def framed_face(height: int, width: int) -> np.ndarray:
    """A uint8 RGB image whose central square is pure red and whose margins are green (before) / blue (after)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 255
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if height > width:
        image[:top] = (0, 255, 0)
        image[top + side :] = (0, 0, 255)
    else:
        image[:, :left] = (0, 255, 0)
        image[:, left + side :] = (0, 0, 255)
    return image


def test_celeba_centre_crops_and_resizes(tmp_path):
    """Non-square images must be centre-cropped (margins gone) and resized to (size, size, 3), red first."""
    for k, (h, w) in enumerate([(60, 40), (40, 64), (50, 30), (45, 45)]):
        skio.imsave(tmp_path / f"{k:06d}.png", framed_face(h, w), check_contrast=False)
    data = load_celeba(tmp_path, size=8, n_train=3, n_val=1, seed=0)
    assert data.train.shape == (3, 8 * 8 * 3) and data.val.shape == (1, 8 * 8 * 3)
    assert data.patch_shape == (8, 8, 3) and data.train.dtype == np.float32
    for row in np.concatenate([data.train, data.val]):
        image = row.reshape(8, 8, 3)
        np.testing.assert_allclose(image[..., 0], 1.0, atol=1e-6)
        np.testing.assert_allclose(image[..., 1:], 0.0, atol=1e-6)


def test_celeba_reads_jpgs_in_nested_folder_and_only_chosen_files(tmp_path, monkeypatch):
    """img_align_celeba/ is found under the parent; only n_train + n_val files are decoded; last file is val."""
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(10):
        skio.imsave(folder / f"{k + 1:06d}.jpg", rng.integers(0, 256, (36, 30, 3), dtype=np.uint8))
    read = []
    real_read = color_mod._read_rgb
    monkeypatch.setattr(color_mod, "_read_rgb", lambda path: read.append(path.name) or real_read(path))
    data = load_celeba(tmp_path, size=16, n_train=4, n_val=1, seed=2)
    assert data.train.shape == (4, 768) and data.val.shape == (1, 768)
    assert len(read) == 5 and read[-1] == "000010.jpg" and "000010.jpg" not in read[:-1]
    assert 0.0 <= data.train.min() and data.train.max() <= 1.0


def test_celeba_bad_folders_raise(tmp_path):
    """An empty folder, a single image or an undecodable chosen file must raise DataError naming the problem."""
    with pytest.raises(DataError, match="holds no images"):
        load_celeba(tmp_path, size=8, n_train=1, n_val=1)
    skio.imsave(tmp_path / "000001.png", framed_face(20, 20), check_contrast=False)
    with pytest.raises(DataError, match="at least 2"):
        load_celeba(tmp_path, size=8, n_train=1, n_val=1)
    (tmp_path / "000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="000002.jpg"):
        load_celeba(tmp_path, size=8, n_train=1, n_val=1)
    with pytest.raises(DataError, match="size"):
        load_celeba(tmp_path, size=2, n_train=1, n_val=1)


# --------------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------------


def test_load_color_data_dispatches_specs(tmp_path):
    """Spec strings must route to the right loader and leave non-colour specs (None) to load_data."""
    rng = np.random.default_rng(0)
    write_cifar_batch(tmp_path / "data_batch_1.bin", [1, 2], rng)
    write_cifar_batch(tmp_path / "test_batch.bin", [3], rng)
    assert load_color_data(f"cifar10:{tmp_path}", n_train=2, n_val=1).patch_shape == (32, 32, 3)
    faces = tmp_path / "faces"
    faces.mkdir()
    for k in range(2):
        skio.imsave(faces / f"{k}.png", framed_face(20, 24), check_contrast=False)
    assert load_color_data(f"celeba16:{faces}", n_train=1, n_val=1).patch_shape == (16, 16, 3)
    assert load_color_data(f"celeba:{faces}", n_train=1, n_val=1).patch_shape == (64, 64, 3)
    assert load_color_data("color8", n_train=5, n_val=5).patch_shape == (8, 8, 3)
    assert load_color_data("natural16", n_train=5, n_val=5) is None
    with pytest.raises(DataError, match="outside"):
        load_color_data("color100", n_train=5, n_val=5)
