"""Amortized VAE baselines (P-VAE, G-VAE, G_relu-VAE): fond.models.amortized."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fond
from fond.config import ModelConfig
from fond.encoders import make_encoder
from fond.errors import ConfigError, DataError
from fond.models import IPVAE, build_model
from fond.models.amortized import AmortizedVAE
from fond.result import TRACE_KEYS

MODELS = ("pvae", "gvae", "gvae-relu")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randomise(model, seed=11, scale=2.0):
    """Give every parameter a nontrivial value so a hand computation exercises all of them."""
    gen = _gen(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            s = scale if name.startswith("encoder.") else 0.5
            param.copy_(torch.randn(param.shape, generator=gen) * s)


def _nll(x, mean, log_sigma):
    # −log N(x; mean, σ²) summed over pixels, written out
    return (0.5 * ((x - mean) / torch.exp(log_sigma)) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)).sum(-1)


# -- the loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["gvae", "gvae-relu"])
def test_gaussian_loss_matches_hand_written_elbo(model_name):
    """The training objective must be exactly the negative ELBO (NLL + β·closed-form Gaussian KL), scaled."""
    d, k, beta, seed = 4, 3, 2.5, 5
    model = AmortizedVAE(d, k, model=model_name, encoder="linear", seed=1)
    _randomise(model)
    x = torch.randn(6, d, generator=_gen(2))
    out = model.unroll_loss(x, 7, beta=beta, temperature=0.3, generator=_gen(seed))

    raw = x @ model.encoder.weight.T + model.encoder.bias
    mu = 7.0 * torch.tanh(raw[:, :k] / 7.0)
    log_sigma = 2.0 * torch.tanh(raw[:, k:] / 2.0)
    eps = torch.randn((6, k), generator=_gen(seed))
    z = mu + torch.exp(log_sigma) * eps
    f = z if model_name == "gvae" else torch.relu(z) * torch.exp(model.log_gain)
    reconstruction = f @ model.decoder.dictionary.T
    log_sigma_x = 3.45 * torch.tanh(model.log_sigma_x / 3.45)
    nll = _nll(x, reconstruction, log_sigma_x)
    mu0, ls0 = model.mu_init, model.log_sigma_init
    kl = (ls0 - log_sigma + (torch.exp(2 * log_sigma) + (mu - mu0) ** 2) / (2 * torch.exp(2 * ls0)) - 0.5).sum(-1)
    expected = (nll + beta * kl).mean() * 256 / d
    nll, kl = nll.detach(), kl.detach()

    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.nll, [float(nll.mean())], rtol=1e-5)
    np.testing.assert_allclose(out.kl, [float(kl.mean())], rtol=1e-5)
    mean_code = mu if model_name == "gvae" else torch.relu(mu) * torch.exp(model.log_gain)
    assert out.rate_max == pytest.approx(float(mean_code.detach().max()), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_poisson_loss_matches_hand_written_elbo():
    """P-VAE's objective must be NLL + β·(r₀ − r + r(u − u₀)) with u = clamp(u₀ + encoder(x)) (r = r₀·δr)."""
    d, k, beta, seed, tau = 4, 3, 3.0, 9, 0.4
    model = AmortizedVAE(d, k, model="pvae", encoder="linear", seed=1, init_scale=0.5)
    _randomise(model, scale=3.0)
    with torch.no_grad():
        model.u_init.copy_(torch.tensor([-5.0, -4.2, -1.0]))
    x = torch.randn(6, d, generator=_gen(2))
    clamp_fraction = 0.5  # clamp bound 2 + 0.5·(10 − 2) = 6
    out = model.unroll_loss(x, 1, beta=beta, temperature=tau, clamp_fraction=clamp_fraction, generator=_gen(seed))

    raw = model.u_init + x @ model.encoder.weight.T + model.encoder.bias
    c, floor = 6.0, -8.0
    u = c - F.softplus(c - raw.clamp_min(floor))
    assert (raw > 3.0).any() and (raw < floor).any()  # the clamps are exercised
    # the one fixed relaxed sample: the family's sampler with an identically seeded generator
    z = model.family.sample((u,), {}, _gen(seed), tau).value
    reconstruction = z @ model.decoder.dictionary.T
    nll = _nll(x, reconstruction, 3.45 * torch.tanh(model.log_sigma_x / 3.45))
    r, u0 = torch.exp(u), model.u_init
    kl = (torch.exp(u0) - r + r * (u - u0)).sum(-1)
    expected = (nll + beta * kl).mean() * 256 / d
    kl = kl.detach()

    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.kl, [float(kl.mean())], rtol=1e-5)
    assert out.rate_max == pytest.approx(float(r.detach().max()), rel=1e-5)
    assert len(out.nll) == len(out.kl) == 1
    out.loss.backward()
    assert model.encoder.weight.grad.abs().sum() > 0 and model.u_init.grad.abs().sum() > 0


# -- construction ---------------------------------------------------------------------------------


def test_parameter_counts():
    """Parameter counts are what the paper comparison reports: amortized models are several times larger."""
    d, k, h = 256, 512, 512
    counts = {}
    for name, n_state, extra in (("pvae", 1, 0), ("gvae", 2, 0), ("gvae-relu", 2, k)):
        model = AmortizedVAE(d, k, model=name, encoder="mlp")
        encoder = (d * h + h) + (h * h + h) + (h * n_state * k + n_state * k)
        expected = d * k + encoder + d + n_state * k + extra
        counts[name] = model.n_params()
        assert counts[name] == expected
    print(f"\nD=256, K=512, linear decoder, MLP encoder (hidden 512): {counts}")
    assert counts == {"pvae": 788_736, "gvae": 1_051_904, "gvae-relu": 1_052_416}
    iterative = IPVAE(d, k).n_params()
    assert iterative == 132_353
    assert counts["pvae"] > 3 * iterative


def test_construction_is_private_and_ordered():
    """Init draws decoder → encoder from a private generator only, so runs are reproducible and comparable."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = AmortizedVAE(16, 8, model="gvae-relu", seed=4, decoder="mlp", decoder_hidden=6, encoder_hidden=5)
    assert torch.equal(before, torch.get_rng_state())
    gen = _gen(4)
    reference_decoder = IPVAE(16, 8, seed=4, decoder="mlp", decoder_hidden=6).decoder
    for a, b in zip(model.decoder.parameters(), reference_decoder.parameters(), strict=True):
        assert torch.equal(a, b)
    from fond.decoders import make_decoder

    make_decoder("mlp", 16, 8, generator=gen, hidden=6)
    reference_encoder = make_encoder("mlp", 16, 16, generator=gen, hidden=5)
    for a, b in zip(model.encoder.parameters(), reference_encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    keys = set(model.state_dict())
    assert {"log_sigma_x", "mu_init", "log_sigma_init", "log_gain"} <= keys
    assert not {"log_bias", "log_step_size"} & keys
    again = AmortizedVAE(16, 8, model="gvae-relu", seed=4, decoder="mlp", decoder_hidden=6, encoder_hidden=5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_build_model_and_bad_model():
    """The registry builds this class for the amortized names, and other names are refused with one line."""
    model = build_model(ModelConfig(n_inputs=16, n_latents=4, model="gvae", encoder="linear"))
    assert isinstance(model, AmortizedVAE) and model.config.model == "gvae"
    with pytest.raises(ConfigError, match="not a model of AmortizedVAE"):
        AmortizedVAE(16, 4, model="ipvae")
    with pytest.raises(ConfigError, match="encoder"):
        AmortizedVAE(16, 4, encoder="rnn")
    with pytest.raises(TypeError):
        AmortizedVAE()


# -- training -------------------------------------------------------------------------------------


def _synthetic(d=16, n=96, seed=0):
    gen = _gen(seed)
    atoms = torch.randn(d, 6, generator=gen)
    codes = torch.rand(n, 6, generator=gen) * (torch.rand(n, 6, generator=gen) < 0.3)
    return codes @ atoms.T + 0.1 * torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("model_name", MODELS)
def test_training_reduces_loss(model_name):
    """A few dozen Adam steps must lower the loss: gradients reach encoder, decoder, σ_x and prior coherently."""
    x = _synthetic()
    model = AmortizedVAE(16, 12, model=model_name, seed=0, init_scale=0.1, encoder_hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss(seed):
        return model.unroll_loss(x, 1, beta=1.0, temperature=0.5, generator=_gen(seed))

    with torch.no_grad():
        start = float(loss(12345).loss)
    for step in range(80):
        optimizer.zero_grad()
        out = loss(step)
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = float(loss(12345).loss)
    assert math.isfinite(end) and end < 0.85 * start, (start, end)


# -- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_infer_result(model_name):
    """infer returns the documented fields and trace, like FOND's rollout, so evaluation code treats all alike."""
    model = AmortizedVAE(16, 10, model=model_name, seed=2, init_scale=0.3, encoder="linear")
    _randomise(model, scale=0.5)
    x = torch.randn(5, 16, generator=_gen(0))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    res = model.infer(x, 6, seed=3, trace=True)
    assert torch.equal(before, torch.get_rng_state())
    assert res.steps == 6
    assert res.rates.shape == res.spikes.shape == (5, 10)
    assert res.reconstruction.shape == res.reconstruction_from_rates.shape == (5, 16)
    assert tuple(res.state) == model.family.state_names
    assert set(res.trace) == set(TRACE_KEYS) and all(v.shape == (6,) for v in res.trace.values())
    assert np.all(res.trace["du_norm"] == 0) and np.ptp(res.trace["kl"]) == 0
    np.testing.assert_allclose(res.trace["nelbo"], res.trace["nll"] + res.trace["kl"], rtol=1e-6)
    torch.testing.assert_close(res.reconstruction, model.decode(res.spikes))
    torch.testing.assert_close(res.reconstruction_from_rates, model.decode(res.rates))
    assert res.trace["zeros"][-1] == pytest.approx(float((res.spikes == 0).float().mean()))
    state = model.encode(x)
    torch.testing.assert_close(res.rates, model.family.mean_code(state, model.family_params()))
    if model_name == "pvae":
        assert torch.equal(res.spikes, res.spikes.round()) and (res.spikes >= 0).all()
        torch.testing.assert_close(res.rates, torch.exp(res.state["u"]))
    elif model_name == "gvae":
        assert res.trace["zeros"][-1] == 0.0
    else:  # zeros counted on f(z) = relu(z)·gain, not on z
        assert 0.1 < res.trace["zeros"].mean() < 0.9 and (res.spikes >= 0).all() and (res.rates >= 0).all()
    again = model.infer(x, 6, seed=3, trace=False)
    assert again.trace == {} and torch.equal(again.spikes, res.spikes)
    assert not torch.equal(model.infer(x, 6, seed=4).spikes, res.spikes)


def test_bad_input():
    """Bad inputs fail with one-line DataErrors instead of deep tracebacks."""
    model = AmortizedVAE(8, 4, encoder="linear")
    good = torch.zeros(2, 8)
    for bad in (torch.zeros(2, 7), torch.full((2, 8), float("nan")), torch.zeros(2, 8, dtype=torch.int64),
                torch.zeros(0, 8)):
        with pytest.raises(DataError):
            model.infer(bad, 3)
        with pytest.raises(DataError):
            model.unroll_loss(bad, 1, beta=1.0, temperature=0.5)
    for steps in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="steps"):
            model.infer(good, steps)
        with pytest.raises(DataError, match="steps"):
            model.unroll_loss(good, steps, beta=1.0, temperature=0.5)


@pytest.mark.parametrize("model_name, encoder", [("pvae", "mlp"), ("gvae-relu", "conv")])
def test_save_load_round_trip(tmp_path, model_name, encoder):
    """A saved model reloads through fond.load (no pickle) and infers exactly as before."""
    model = AmortizedVAE(16, 6, model=model_name, encoder=encoder, encoder_hidden=4, seed=5, init_scale=0.3)
    _randomise(model, scale=0.5)
    model.save(tmp_path / "m")
    loaded = fond.load(tmp_path / "m")
    assert type(loaded) is AmortizedVAE and loaded.config == model.config
    x = torch.randn(3, 16, generator=_gen(1))
    a, b = model.infer(x, 4, seed=2, trace=True), loaded.infer(x, 4, seed=2, trace=True)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.rates, b.rates)
    for key in TRACE_KEYS:
        np.testing.assert_array_equal(a.trace[key], b.trace[key])


@pytest.mark.parametrize("model_name", ["pvae", "gvae"])
@pytest.mark.parametrize("encoder", ["linear", "mlp", "conv"])
def test_all_encoders(model_name, encoder):
    """Every encoder plugs into the model (D = 64, an 8×8 image for the conv one): loss, gradients, infer."""
    model = AmortizedVAE(64, 5, model=model_name, encoder=encoder, encoder_hidden=4, seed=0)
    x = torch.randn(3, 64, generator=_gen(0))
    out = model.unroll_loss(x, 1, beta=1.0, temperature=0.5, generator=_gen(1))
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    res = model.infer(x, 2)
    assert res.spikes.shape == (3, 5) and torch.isfinite(res.reconstruction).all()
