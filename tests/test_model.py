"""The IPVAE model: parameter count, inference result, determinism, saving and loading, bad input."""

import json

import numpy as np
import pytest
import torch

import fond
from fond import IPVAE
from fond.errors import CheckpointError, DataError


@pytest.mark.parametrize("d, expected", [(256, 132_353), (784, 403_217)])
def test_parameter_count_matches_paper(d, expected):
    """Φ + log σ_x + log b + log η + u_init: the paper's 132,353 (16×16) and 403,217 (MNIST) parameters."""
    assert IPVAE(d, 512).n_params() == expected


def test_infer_returns_integer_spikes_and_consistent_fields(tiny_model, tiny_data):
    """Evaluation uses exact integer counts; reconstructions are Φ·spikes and Φ·rates."""
    res = tiny_model.infer(torch.from_numpy(tiny_data), steps=30, seed=1, trace=True)
    assert res.rates.shape == res.spikes.shape == (64, 24)
    assert torch.equal(res.spikes, res.spikes.round()) and (res.spikes >= 0).all()
    assert torch.allclose(res.reconstruction, res.spikes @ tiny_model.dictionary.T.detach())
    assert torch.allclose(res.reconstruction_from_rates, res.rates @ tiny_model.dictionary.T.detach())
    assert torch.allclose(res.rates, res.membrane_potential.exp())
    for key in ("r2", "r2_rates", "zeros", "du_norm"):
        assert res.trace[key].shape == (30,) and np.isfinite(res.trace[key]).all()
    assert res.spikes.sum() > 0


def test_same_seed_same_result_different_seed_different(tiny_model, tiny_data):
    """Inference is a pure function of (parameters, input, seed): reproducible, and the seed matters."""
    x = torch.from_numpy(tiny_data)
    a, b = tiny_model.infer(x, 20, seed=7), tiny_model.infer(x, 20, seed=7)
    c = tiny_model.infer(x, 20, seed=8)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.rates, b.rates)
    assert not torch.equal(a.spikes, c.spikes)


def test_inference_does_not_depend_on_call_order(tiny_model, tiny_data):
    """No hidden state: a rollout on one batch does not change the next rollout's result."""
    x = torch.from_numpy(tiny_data)
    first = tiny_model.infer(x[:8], 15, seed=0)
    tiny_model.infer(x[8:], 15, seed=0)
    again = tiny_model.infer(x[:8], 15, seed=0)
    assert torch.equal(first.rates, again.rates)


def test_construction_leaves_global_rng_alone():
    """Building a model must not seed or consume the global RNG (nothing happens at construction)."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    IPVAE(16, 8, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_save_load_roundtrip(tmp_path, tiny_model, tiny_data):
    """A saved model reloads with identical parameters and identical inference (safetensors + JSON)."""
    tiny_model.save(tmp_path / "m")
    loaded = fond.load(tmp_path / "m")
    for (name, p), (_, q) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    x = torch.from_numpy(tiny_data[:4])
    assert torch.equal(tiny_model.infer(x, 10).rates, loaded.infer(x, 10).rates)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["n_latents"] == 24


def test_truncated_checkpoint_gives_one_line_error(tmp_path, tiny_model):
    """A truncated tensor file is named in a one-line error, never a crash deep inside safetensors."""
    tiny_model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors") as info:
        fond.load(tmp_path / "m")
    assert "\n" not in str(info.value)


def test_wrong_model_checkpoint_is_rejected(tmp_path, tiny_model):
    """Tensors that do not fit the config (a different K) are refused with the tensor named."""
    tiny_model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["n_latents"] = 25
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        fond.load(tmp_path / "m")


def test_missing_and_garbage_directories(tmp_path):
    """A missing directory or a config that is not JSON gets a CheckpointError naming the path."""
    with pytest.raises(CheckpointError, match="no such directory"):
        fond.load(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        fond.load(tmp_path / "bad")


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 15), np.float32), "shape"),
    (np.zeros((0, 16), np.float32), "shape"),
    (np.zeros(16, np.float32), "shape"),
    (np.full((2, 16), np.nan, np.float32), "NaN"),
    (np.full((2, 16), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((2, 16), np.int64), "floating"),
])
def test_bad_input_is_named(tiny_model, bad, match):
    """Wrong dimension, empty batch, NaN/Inf or integer input each get a DataError saying which."""
    with pytest.raises(DataError, match=match):
        tiny_model.infer(torch.from_numpy(bad), 5)


def test_non_numeric_input_is_named(tiny_model):
    """Strings are refused with a DataError, not a torch TypeError; a plain list of floats is fine."""
    with pytest.raises(DataError, match="numeric"):
        tiny_model.infer([["a"] * 16], 5)
    assert tiny_model.infer(np.zeros((2, 16)).tolist(), 5).rates.shape == (2, 24)


def test_bad_steps_rejected(tiny_model, tiny_data):
    """Zero or negative inference steps are a user error, not an empty result."""
    with pytest.raises(DataError, match="steps"):
        tiny_model.infer(torch.from_numpy(tiny_data), 0)
