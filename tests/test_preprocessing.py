"""The transform from raw images to a model's inputs travels with the run (issue 19): recorded at training,
applied to a user's images, and inputs of another kind named in one line. Oracles: the training pipeline's
own patches and digits, bit for bit."""

import json

import numpy as np
import pytest
import torch

from fond.data import load_data, load_photo
from fond.data.files import read_images
from fond.data.mnist import load_mnist, mnist_data
from fond.data.natural import VALIDATION_PHOTOS, derived_seeds
from fond.data.preprocessing import Preprocessing, input_offset
from fond.errors import DataError


def test_recorded_whitening_rebuilds_the_training_pipelines_patches_bit_for_bit():
    """A user's photo must become exactly what training made of the same photo: same whitening, patch
    rule and global scale (here the held-out photos, whose patches the pipeline drew with the val seed)."""
    data = load_data("natural16", n_train=2000, n_val=300, seed=4)
    record = Preprocessing.from_dict(data.preprocessing)
    assert record.kind == "whitened" and record.patch_size == 16 and record.input_std == pytest.approx(1.0)
    photos = [load_photo(name) for name in VALIDATION_PHOTOS]
    again = record.inputs_from_images(photos, n=300, seed=derived_seeds(4)[1])
    assert np.array_equal(again, data.val)


def test_recorded_mnist_transform_rebuilds_the_centred_digits_bit_for_bit():
    data = mnist_data(n_train=1000, n_val=50, val_split="test")
    digits = load_mnist()["test"][0][:50].reshape(50, 28, 28)
    assert np.array_equal(Preprocessing.from_dict(data.preprocessing).inputs_from_images(list(digits)), data.val)
    raw = mnist_data(n_train=1000, n_val=50, val_split="test", centre=False)
    assert np.array_equal(Preprocessing.from_dict(raw.preprocessing).inputs_from_images(list(digits)), raw.val)


def test_the_offset_undoes_the_centring_and_only_it():
    """x + input_offset(record) are the raw digits again (what the paper's R² is measured on); raw digits, whitened
    patches and data without a record have no offset."""
    centred = mnist_data(n_train=1000, n_val=50, val_split="test")
    raw = mnist_data(n_train=1000, n_val=50, val_split="test", centre=False)
    assert np.allclose(centred.val + input_offset(centred.preprocessing), raw.val, atol=1e-6)
    assert input_offset(raw.preprocessing) is None and input_offset(None) is None
    assert input_offset(load_data("natural16", n_train=500, n_val=10).preprocessing) is None


def test_the_record_round_trips_through_json_and_refuses_bad_records():
    record = Preprocessing.from_dict(load_data("natural16", n_train=500, n_val=10).preprocessing)
    assert Preprocessing.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(DataError, match="unknown key 'gamma'"):
        Preprocessing.from_dict({**record.to_dict(), "gamma": 2.2})
    with pytest.raises(DataError, match="kind must be one of"):
        Preprocessing.from_dict({**record.to_dict(), "kind": "jpeg"})
    with pytest.raises(DataError, match="needs a finite scale > 0"):
        Preprocessing.from_dict({**record.to_dict(), "scale": float("nan")})


def test_inputs_of_another_kind_are_named_and_the_right_kind_is_not():
    """Forgetting to whiten gives R² far below zero with no hint why: the statistics give the hint."""
    data = load_data("natural16", n_train=2000, n_val=300)
    record = Preprocessing.from_dict(data.preprocessing)
    assert record.far_from_training(data.val) is None
    unwhitened = np.stack([load_photo(VALIDATION_PHOTOS[0])[:16, i:i + 16].ravel() for i in range(0, 256, 16)])
    message = record.far_from_training(unwhitened)
    assert message is not None and "another kind" in message and "whitened 16×16 patches" in message


def test_images_too_small_or_of_the_wrong_size_are_one_line():
    record = Preprocessing.from_dict(load_data("natural16", n_train=500, n_val=10).preprocessing)
    with pytest.raises(DataError, match="smaller than the model's 16×16 patches"):
        record.inputs_from_images([np.zeros((10, 40))])
    with pytest.raises(DataError, match="reads 28×28 digits"):
        Preprocessing.from_dict(mnist_data(n_train=100, n_val=5).preprocessing).inputs_from_images(
            [np.zeros((32, 32))])
    with pytest.raises(DataError, match="integer pixels must lie in"):
        record.inputs_from_images([np.full((40, 40), -3, dtype=np.int32)])


def test_read_images_takes_files_and_folders_and_names_what_fails(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "d").mkdir()
    for name in ("d/b.png", "d/a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), "L").save(tmp_path / name)
    images = read_images([tmp_path / "d", tmp_path / "c.png"])
    assert len(images) == 3 and images[0].shape == (20, 30) and 0 <= images[0].min() <= images[0].max() <= 1
    with pytest.raises(DataError, match="does not exist"):
        read_images([tmp_path / "nowhere"])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        read_images([tmp_path / "bad.png"])


@pytest.mark.slow
def test_a_run_records_its_preprocessing_and_fond_eval_reads_images_through_it(tmp_path, capsys):
    """End to end as a user would: train, then evaluate on a photo of one's own; and a run trained on a
    .npy file (no recorded transform) refuses --images in one line."""
    from PIL import Image

    from fond.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "ipvae", "--data", "natural16", "--latents", "16", "--iterations", "3",
                 "--batch-size", "8", "--steps", "3", "--preset", "quick", "--no-eval", "--no-progress",
                 "--config", _write(tmp_path / "c.json", {"n_train": 500, "n_val": 50}), "--out", str(out)]) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["data"]["preprocessing"] == load_data("natural16", n_train=500, n_val=50).preprocessing
    Image.fromarray((load_photo(VALIDATION_PHOTOS[1]) * 255).astype(np.uint8)).save(tmp_path / "mine.png")
    assert main(["eval", str(out), "--images", str(tmp_path / "mine.png"), "--steps", "5", "--samples", "40",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 40
    np.save(tmp_path / "rows.npy", torch.randn(30, 256).numpy())
    npy_run = tmp_path / "npy-run"
    assert main(["train", "--model", "ipvae", "--data", str(tmp_path / "rows.npy"), "--latents", "8",
                 "--iterations", "2", "--batch-size", "4", "--steps", "2", "--no-eval", "--no-progress",
                 "--out", str(npy_run)]) == 0
    assert main(["eval", str(npy_run), "--images", str(tmp_path / "mine.png"), "--steps", "3"]) == 2
    assert "not made from images by a recorded transform" in capsys.readouterr().err


def _write(path, values):
    path.write_text(json.dumps(values))
    return str(path)


def test_fond_eval_names_unwhitened_photos_given_to_a_shipped_model(tmp_path, capsys):
    """Raw photo patches given to a model trained on whitened ones: the hint comes before a meaningless R²."""
    from fond.cli import main

    raw = np.stack([load_photo(VALIDATION_PHOTOS[0])[r:r + 16, c:c + 16].ravel()
                    for r in range(0, 160, 16) for c in range(0, 160, 16)]).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    assert main(["eval", "pretrained:ipvae-natural16", "--data", str(tmp_path / "raw.npy"), "--steps", "3",
                 "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "inputs of another kind (the model was trained on whitened 16×16 patches" in err


def test_a_loaded_model_preprocesses_images_as_its_training_did_and_keeps_the_record(tmp_path):
    """model.preprocess is the training transform (the shipped model's held-out patches, bit for bit), and
    the record survives model.save / fond.load; a model built in code says it has none."""
    import fond
    from fond.config import ModelConfig
    from fond.models import build_model
    from fond.pretrained import held_out_data
    from fond.resume import read_run, training_split

    model = fond.pretrained("ipvae-natural16")
    info = read_run(fond.pretrained.run_folder("ipvae-natural16"))
    _, split = training_split(info)
    photos = [load_photo(name) for name in VALIDATION_PHOTOS]
    x = model.preprocess(photos, n=split["n_val"], seed=derived_seeds(split["seed"])[1])
    assert torch.equal(x, torch.as_tensor(held_out_data(info).val))
    model.save(tmp_path / "copy")
    assert fond.load(tmp_path / "copy").preprocessing == model.preprocessing
    with pytest.raises(DataError, match="carries no preprocessing record"):
        build_model(ModelConfig(n_inputs=16, n_latents=4, model="ipvae")).preprocess([np.zeros((20, 20))])
