"""What ``fond eval --data`` evaluates: all of a file or folder a user brings (issue 19), not the slice a
training run would hold out. Oracles: the file's own rows, and the images the patch sampler is handed."""

import json

import numpy as np
import pytest
from PIL import Image

from fond.config import ModelConfig
from fond.data import files
from fond.data.files import evaluation_data, load_npy_patches
from fond.errors import DataError
from fond.models import build_model


def _rows(tmp_path, n=37, d=16):
    rows = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    np.save(tmp_path / "x.npy", rows)
    return rows


def test_evaluation_data_of_a_file_is_every_row_bit_for_bit(tmp_path):
    """A user evaluating on a test set expects all of it, unshuffled and unscaled."""
    rows = _rows(tmp_path)
    data = evaluation_data(str(tmp_path / "x.npy"), n_val=5, seed=3)
    assert np.array_equal(data.val, rows) and data.patch_shape == (4, 4)
    assert len(load_npy_patches(tmp_path / "x.npy").val) == 3  # the training split holds out 10 %


def test_a_file_with_one_row_can_be_evaluated_but_not_split(tmp_path):
    np.save(tmp_path / "one.npy", np.ones((1, 4), dtype=np.float32))
    assert evaluation_data(str(tmp_path / "one.npy")).val.shape == (1, 4)
    with pytest.raises(DataError, match="need at least 2"):
        load_npy_patches(tmp_path / "one.npy")


def test_evaluation_data_of_a_folder_samples_every_image(tmp_path, monkeypatch):
    """A folder evaluated is every image of it; training holds the last 15 % of them out whole."""
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(tmp_path / name)
    handed = []
    real = files.patch_data_from_images
    monkeypatch.setattr(files, "patch_data_from_images",
                        lambda train, val, **kw: (handed.append((len(train), len(val))), real(train, val, **kw))[1])
    data = evaluation_data(str(tmp_path), n_val=50, seed=0)
    files.load_image_folder(tmp_path, n_train=50, n_val=50)
    assert handed == [(3, 3), (2, 1)] and data.val.shape == (50, 256)


def test_fond_eval_counts_every_row_of_a_file_and_split_file_keeps_the_old_slice(tmp_path, capsys):
    from fond.cli import main

    _rows(tmp_path)
    model = build_model(ModelConfig(n_inputs=16, n_latents=6, model="ipvae"), seed=0)
    model.save(tmp_path / "model")
    args = ["eval", str(tmp_path / "model"), "--data", str(tmp_path / "x.npy"), "--steps", "4", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 37
    assert main([*args, "--split-file"]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 3
