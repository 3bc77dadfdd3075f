"""``fond encode`` / ``fond.encode.encode``: codes out for analysis elsewhere. Oracle: ``model.infer`` on the
same chunks with the same seeds (chunk i seeded seed + i, as ``fond.evaluate`` does)."""

import numpy as np
import pytest
import torch

from fond.config import ModelConfig
from fond.encode import encode
from fond.errors import DataError, FondError
from fond.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(n_inputs=16, n_latents=6, model="ipvae"), seed=1)


def test_the_codes_are_infers_chunk_by_chunk_in_the_inputs_order(model, tmp_path):
    """What a user analyses elsewhere must be exactly what the model infers, across chunk boundaries."""
    x = torch.randn(10, 16)
    shapes = encode(model, x, tmp_path / "c.npz", 5, what=["spikes", "rates", "reconstruction"], record=[2, 5],
                    seed=3, chunk_size=4)
    codes = np.load(tmp_path / "c.npz")
    assert shapes["rates_history"] == (2, 10, 6) and codes["steps"].tolist() == [2, 5]
    for i, begin in enumerate(range(0, 10, 4)):
        res = model.infer(x[begin:begin + 4], 5, seed=3 + i, record=[2, 5])
        rows = slice(begin, begin + 4)
        assert np.array_equal(codes["spikes"][rows], res.spikes.numpy())
        assert np.array_equal(codes["rates"][rows], res.rates.numpy())
        assert np.array_equal(codes["reconstruction"][rows], res.reconstruction.numpy())
        assert np.array_equal(codes["rates_history"][:, rows], res.history["rates"].numpy())
        assert np.array_equal(codes["spikes_history"][:, rows], res.history["spikes"].numpy())
    assert set(codes.files) == {"spikes", "rates", "reconstruction", "steps", "rates_history", "spikes_history"}


def test_a_failed_encoding_leaves_neither_a_file_nor_litter(model, tmp_path, monkeypatch):
    """An interrupted export must not leave a truncated .npz that loads as if complete."""
    calls = []

    def failing(x, steps, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return type(model).infer(model, x, steps, **kw)

    monkeypatch.setattr(model, "infer", failing)
    with pytest.raises(FondError, match="cannot write .*No space left on device"):
        encode(model, torch.randn(6, 16), tmp_path / "c.npz", 3, chunk_size=3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"what": ["rates", "voltage"]}, "what must name some of spikes, rates, reconstruction"),
    ({"what": []}, "what must name some of"), ({"chunk_size": 0}, "chunk_size must be an integer ≥ 1"),
    ({"record": [0]}, "record steps must lie in 1..3")])
def test_bad_options_are_one_line(model, tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        encode(model, torch.randn(2, 16), tmp_path / "c.npz", 3, **kwargs)


def test_bad_destinations_and_data_are_one_line(model, tmp_path):
    with pytest.raises(DataError, match="written as a .npz file"):
        encode(model, torch.randn(2, 16), tmp_path / "c.csv", 3)
    with pytest.raises(DataError, match="does not exist"):
        encode(model, torch.randn(2, 16), tmp_path / "missing" / "c.npz", 3)
    with pytest.raises(DataError, match=r"shape \(N ≥ 1, D\)"):
        encode(model, torch.randn(16), tmp_path / "c.npz", 3)


def test_fond_encode_writes_what_and_record_from_a_file(model, tmp_path, capsys):
    from fond.cli import main

    x = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model")
    assert main(["encode", str(tmp_path / "model"), "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "codes.npz"), "--steps", "3", "--what", "rates", "--record", "1,3",
                 "--no-progress"]) == 0
    codes = np.load(tmp_path / "codes.npz")
    assert set(codes.files) == {"rates", "rates_history", "steps"} and codes["rates"].shape == (7, 6)
    assert np.array_equal(codes["rates"], model.infer(torch.from_numpy(x), 3, seed=0).rates.numpy())
    assert "wrote" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "model"), "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "codes.npz"), "--what", "voltage"]) == 2
