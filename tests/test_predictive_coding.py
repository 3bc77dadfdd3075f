"""Predictive coding (Rao & Ballard): the ridge solution it converges to, learning, the shared interface."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

import fond
from fond.config import ModelConfig
from fond.errors import ConfigError, DataError
from fond.models import MODEL_CLASSES
from fond.models.predictive_coding import PredictiveCoding, PredictiveCodingOptions
from fond.result import TRACE_KEYS

D, K = 20, 30


@pytest.mark.parametrize("prior_variance", [0.25, 1.0, 4.0])
def test_fixed_point_is_the_ridge_solution(prior_variance):
    """Gaussian prior + point estimate = ridge regression: the dynamics must land on (ΦᵀΦ + I/σ_p²)⁻¹Φᵀx."""
    model = PredictiveCoding(D, K, seed=1, method_options={"prior_variance": prior_variance, "init_scale": 0.3})
    model = model.double()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((5, D)))
    phi = model.dictionary.detach()
    solved = torch.linalg.solve(phi.T @ phi + torch.eye(K, dtype=phi.dtype) / prior_variance, phi.T @ x.T).T
    result = model.infer(x, 2000, trace=False)
    torch.testing.assert_close(result.rates, solved, atol=1e-8, rtol=0)
    ridge = Ridge(alpha=1.0 / prior_variance, fit_intercept=False).fit(phi.numpy(), x.numpy().T)
    np.testing.assert_allclose(result.rates.numpy(), ridge.coef_, atol=1e-8)


def test_trace_is_the_energy_descending():
    """Gradient descent with a stable step never increases the energy it reports (nelbo = nll + prior term)."""
    model = PredictiveCoding(D, K, seed=2, method_options={"init_scale": 0.3}).double()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, D)))
    res = model.infer(x, 60, trace=True)
    assert set(res.trace) == set(TRACE_KEYS) and all(len(v) == 60 for v in res.trace.values())
    assert (np.diff(res.trace["nelbo"]) <= 1e-12).all()
    np.testing.assert_allclose(res.trace["kl"][-1], 0.5 * float(res.rates.pow(2).sum(-1).mean()), rtol=1e-12)
    assert res.trace["zeros"][-1] == 0 and (res.trace["saturated"] == 0).all() and res.trace["du_norm"][-1] > 0
    assert list(res.state) == ["a"] and res.spikes is res.rates and model.family is None


def test_learning_reduces_reconstruction_error():
    """Learning Φ must make the inferred codes explain the data better (the point of training the baseline)."""
    rng = np.random.default_rng(0)
    d, k, n = 16, 8, 300
    true = rng.standard_normal((d, k))
    x = torch.from_numpy(rng.standard_normal((n, k)) @ true.T + 0.05 * rng.standard_normal((n, d))).float()
    model = PredictiveCoding(d, k, seed=0)
    before = model.infer(x, 100).trace["r2"][-1]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(150):
        out = model.unroll_loss(x, 50, beta=1.0, temperature=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.after_update()
        losses.append(float(out.loss.detach()))
    after = model.infer(x, 100).trace["r2"][-1]
    assert before < 0.2 and after > 0.9, (before, after)
    assert losses[-1] < 0.2 * losses[0]


def test_save_load_round_trip(tmp_path):
    """A saved model must come back (through fond.load and MODEL_CLASSES) inferring exactly as before."""
    assert MODEL_CLASSES["pc"] == "fond.models.predictive_coding:PredictiveCoding"
    model = PredictiveCoding(D, K, seed=4, method_options={"prior_variance": 2.0, "step_size": 0.3})
    model.save(tmp_path / "pc")
    loaded = fond.load(tmp_path / "pc")
    assert type(loaded) is PredictiveCoding and loaded.options == model.options
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.infer(x, 30).rates, model.infer(x, 30).rates)
    assert loaded.n_params() == D * K


def test_initialisation_is_seeded_and_scaled():
    """The init draws from a private generator (reproducible, global RNG untouched) at the option's scale."""
    state = torch.random.get_rng_state()
    a = PredictiveCoding(64, 128, seed=3, method_options={"init_scale": 0.2})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.dictionary, PredictiveCoding(64, 128, seed=3, method_options={"init_scale": 0.2}).dictionary)
    assert float(a.dictionary.detach().std()) == pytest.approx(0.2, rel=0.05)
    assert PredictiveCodingOptions() == PredictiveCodingOptions(prior_variance=1.0, step_size=0.5, init_scale=0.1)


@pytest.mark.parametrize("options, key", [
    ({"prior_variance": 0}, "prior_variance"), ({"prior_variance": float("nan")}, "prior_variance"),
    ({"step_size": 1.0}, "step_size"), ({"step_size": -0.1}, "step_size"), ({"init_scale": "x"}, "init_scale"),
    ({"sparsity": 0.5}, "sparsity"),
])
def test_bad_options_raise_config_error_naming_the_key(options, key):
    """A bad config must fail at construction with the offending key named."""
    with pytest.raises(ConfigError, match=rf"method_options\.{key}"):
        ModelConfig(n_inputs=D, n_latents=K, model="pc", method_options=options)


def test_bad_input_raises_data_error():
    """Malformed input and step counts fail with a one-line DataError."""
    model = PredictiveCoding(D, K)
    for bad in (np.zeros((2, D + 1)), np.full((2, D), np.inf), np.zeros((2, D), dtype=np.int32)):
        with pytest.raises(DataError):
            model.infer(bad, 5)
        with pytest.raises(DataError):
            model.unroll_loss(bad, 5, beta=1.0, temperature=1.0)
    with pytest.raises(DataError):
        model.infer(np.zeros((2, D), dtype=np.float32), 0)
