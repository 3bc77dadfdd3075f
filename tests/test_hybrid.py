"""Hybrid iterative-amortized VAEs (fond.models.hybrid): SA-VAE and iA-VAE baselines."""

import math

import numpy as np
import pytest
import torch

import fond
from fond.config import ModelConfig
from fond.errors import ConfigError, DataError
from fond.families.gaussian import gaussian_kl
from fond.metrics import gaussian_nll
from fond.models import build_model
from fond.models.hybrid import IterativeAmortizedVAE, SemiAmortizedVAE
from fond.result import TRACE_KEYS

D, K = 16, 8
SMALL = {"encoder_hidden": 16, "init_scale": 0.5}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(n=64, seed=0, dtype=torch.float32):
    """Sparse-ish codes through a fixed dictionary plus noise: data a small model can learn."""
    g = _gen(seed + 100)
    atoms = torch.randn(D, K, generator=g, dtype=torch.float64) * 0.5
    codes = torch.relu(torch.randn(n, K, generator=g, dtype=torch.float64))
    return (codes @ atoms.T + 0.1 * torch.randn(n, D, generator=g, dtype=torch.float64)).to(dtype)


def _savae(**method_options):
    return SemiAmortizedVAE(D, K, seed=1, method_options=method_options, **SMALL)


def _iavae(hidden=16):
    return IterativeAmortizedVAE(D, K, seed=1, method_options={"hidden": hidden}, **SMALL)


def test_refinement_lowers_the_free_energy_on_average():
    """SA-VAE's point: SGD on (μ, log σ) improves on the encoder's guess (else refinement is useless)."""
    model = _savae(refine_steps=8, refine_lr=0.05).double()
    x = _data(512, dtype=torch.float64)
    out = model.unroll_loss(x, 1, beta=1.0, temperature=1.0, generator=_gen(0))
    free_energy = out.nll + out.kl  # batch means at λ₀ … λ_8, each at a fresh sample
    assert free_energy.shape == (9,)
    assert free_energy[-1] < free_energy[0] - 0.05 * abs(free_energy[0])
    res = model.infer(x, 8, seed=0)  # evaluation refines the same way
    assert res.trace["nelbo"][-1] < free_energy[0]


@pytest.mark.parametrize("refine_steps, refine_lr", [(0, 0.1), (3, 0.0)])
def test_without_refinement_it_is_an_amortized_gaussian_vae(refine_steps, refine_lr):
    """With no effective refinement the loss must be the plain VAE's F(initial): a hand-computed check."""
    model = _savae(refine_steps=refine_steps, refine_lr=refine_lr).double()
    x, beta = _data(32, dtype=torch.float64), 2.5
    loss = model.unroll_loss(x, 5, beta=beta, temperature=0.3, generator=_gen(7)).loss
    with torch.no_grad():
        raw_mu, raw_xi = model.encoder(x).chunk(2, dim=-1)
        mu, xi = 7.0 * torch.tanh(raw_mu / 7.0), 2.0 * torch.tanh(raw_xi / 2.0)  # the family's default clamps
        g = _gen(7)
        noise = [torch.randn(mu.shape, generator=g, dtype=mu.dtype) for _ in range(refine_steps + 1)][-1]
        recon = (mu + xi.exp() * noise) @ model.dictionary.T
        log_sigma = 3.45 * torch.tanh(model.log_sigma_x / 3.45)
        f = gaussian_nll(x, recon, log_sigma) + beta * gaussian_kl(mu, xi, torch.zeros(K), torch.zeros(K)).sum(-1)
        expected = f.mean() * 256 / D
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=1e-10)
    if refine_steps == 0:  # and the same number as the amortized G-VAE built from the same seed
        from fond.models.amortized import AmortizedVAE

        gvae = AmortizedVAE(D, K, seed=1, model="gvae", **SMALL).double()
        amortized = gvae.unroll_loss(x, 5, beta=beta, temperature=0.3, generator=_gen(7)).loss
        torch.testing.assert_close(loss.detach(), amortized.detach(), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("build", [_savae, _iavae], ids=["savae", "iavae"])
def test_gradients_reach_every_parameter(build):
    """Training is end to end through the refinement: encoder, decoder, prior, σ_x and update network learn."""
    model = build()
    out = model.unroll_loss(_data(16), 3, beta=1.0, temperature=1.0, generator=_gen(0))
    out.loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    if isinstance(model, IterativeAmortizedVAE):
        assert any(n.startswith("update_network.") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_savae_encoder_learns_through_the_refinement():
    """Kim et al.: the encoder's gradient is dF(λ_K)/dλ₀ through the steps, not the initial ELBO's gradient."""
    x = _data(16, dtype=torch.float64)
    grads = []
    for lr in (0.0, 0.2):
        model = _savae(refine_steps=3, refine_lr=lr).double()
        model.unroll_loss(x, 1, beta=1.0, temperature=1.0, generator=_gen(0)).loss.backward()
        grads.append(model.encoder.weight1.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("build", [_savae, _iavae], ids=["savae", "iavae"])
def test_adam_reduces_the_loss(build):
    """A few dozen Adam steps on synthetic data lower the training loss: the models can learn."""
    model = build()
    x = _data(128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss(seed):
        return model.unroll_loss(x, 3, beta=1.0, temperature=1.0, generator=_gen(seed)).loss

    with torch.no_grad():
        before = float(loss(999))
    for i in range(40):
        opt.zero_grad()
        loss(i).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(999))
    assert math.isfinite(after) and after < 0.8 * before


@pytest.mark.parametrize("build", [_savae, _iavae], ids=["savae", "iavae"])
def test_infer_fields_and_save_load_roundtrip(tmp_path, build):
    """infer has rollout's documented fields; a saved model (with its refinement β) reloads to identical results."""
    model = build()
    model.unroll_loss(_data(8), 2, beta=3.0, temperature=1.0, generator=_gen(0))  # records β = 3
    x = _data(10, seed=1)
    res = model.infer(x, 6, seed=4, trace=True)
    assert res.rates.shape == res.spikes.shape == (10, K)
    assert res.reconstruction.shape == res.reconstruction_from_rates.shape == (10, D)
    assert set(res.state) == {"mu", "log_sigma"} and res.steps == 6
    assert torch.equal(res.rates, res.state["mu"])  # f = identity
    assert torch.allclose(res.reconstruction, model.decode(res.spikes))
    assert set(res.trace) == set(TRACE_KEYS)
    for key in TRACE_KEYS:
        assert res.trace[key].shape == (6,) and np.isfinite(res.trace[key]).all(), key
    assert np.allclose(res.trace["nelbo"], res.trace["nll"] + res.trace["kl"])
    assert all(t.grad_fn is None and not t.requires_grad for t in (res.rates, res.spikes, *res.state.values()))
    assert torch.equal(model.infer(x, 6, seed=4).spikes, res.spikes)  # a pure function of the seed
    assert not torch.equal(model.infer(x, 6, seed=5).spikes, res.spikes)

    model.save(tmp_path / "m")
    loaded = fond.load(tmp_path / "m")
    assert type(loaded) is type(model) and float(loaded.refine_beta) == 3.0
    again = loaded.infer(x, 6, seed=4, trace=True)
    assert torch.equal(again.spikes, res.spikes) and torch.equal(again.state["log_sigma"], res.state["log_sigma"])
    for key in TRACE_KEYS:
        assert np.array_equal(again.trace[key], res.trace[key]), key


def test_construction_is_seeded_and_leaves_global_rng_alone():
    """Initialisation draws only from the private generator; build_model gives the class the config names."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = _iavae(), _iavae()
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert isinstance(build_model(ModelConfig(D, K, model="savae")), SemiAmortizedVAE)
    assert isinstance(build_model(ModelConfig(D, K, model="iavae")), IterativeAmortizedVAE)


@pytest.mark.parametrize("model, options, key", [
    ("savae", {"refine_steps": -1}, "refine_steps"),
    ("savae", {"refine_steps": 2.0}, "refine_steps"),
    ("savae", {"refine_lr": -0.1}, "refine_lr"),
    ("savae", {"refine_lr": float("nan")}, "refine_lr"),
    ("savae", {"max_grad_norm": 0}, "max_grad_norm"),
    ("savae", {"bogus": 1}, "bogus"),
    ("iavae", {"hidden": 0}, "hidden"),
    ("iavae", {"hidden": True}, "hidden"),
    ("iavae", {"refine_lr": 0.1}, "refine_lr"),
])
def test_bad_options_name_the_key(model, options, key):
    """A bad method option fails at configuration time with the offending key named, not deep in training."""
    with pytest.raises(ConfigError, match=rf"method_options\.{key}'"):
        ModelConfig(D, K, model=model, method_options=options)


@pytest.mark.parametrize("build", [_savae, _iavae], ids=["savae", "iavae"])
def test_bad_input_raises_data_error(build):
    """Wrong shapes, NaNs and bad step counts give one-line DataErrors, not crashes inside autograd."""
    model = build()
    with pytest.raises(DataError):
        model.infer(torch.zeros(3, D + 1), 2)
    with pytest.raises(DataError):
        model.infer(torch.full((3, D), float("nan")), 2)
    with pytest.raises(DataError):
        model.infer(torch.zeros(3, D), 0)
    with pytest.raises(DataError):
        model.unroll_loss(torch.zeros(3, D, dtype=torch.int64), 2, beta=1.0, temperature=1.0)
