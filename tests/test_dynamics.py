"""Oracles for FOND's prescription: the generic step is the natural gradient of the written-out free energy,
for every family and decoder, and the Poisson step did not change when it moved behind the family interface."""

import numpy as np
import pytest
import torch

from fond.decoders import make_decoder
from fond.dynamics import fond_step, soft_clamp_upper
from fond.families import BernoulliFamily, GaussianFamily, PoissonFamily, Sample
from fond.families.gaussian import relu_gain
from fond.families.poisson import poisson_kl

D, K = 12, 20
UNCLAMPED_POISSON = PoissonFamily(u_init_low=-50.0, u_init_high=-40.0, floor=-60.0, clamp_init=60.0, clamp_final=60.0)
UNCLAMPED_GAUSSIAN = {"clamp_init": 1e6, "mu_clamp": 1e6, "log_sigma_clamp": 1e6, "delta_mu_clamp": 1e6,
                      "delta_log_sigma_clamp": 1e6}


def _linear(seed=0):
    gen = torch.Generator().manual_seed(seed)
    phi = torch.randn(D, K, generator=gen, dtype=torch.float64) * 0.3
    inv_var = torch.exp(torch.randn(D, generator=gen, dtype=torch.float64) * 0.3)
    return phi, inv_var


def _pullback(phi, inv_var, x, code):
    return ((x - code @ phi.T) * inv_var) @ phi


def _unit_step(dtype=torch.float64, n=1):
    return torch.zeros(n, dtype=dtype)


def test_poisson_step_is_natural_gradient_of_free_energy():
    """With rates in place of spikes and b = ½diag(ΦᵀΣ⁻¹Φ), u_{t+1} − u_t = −η G(u)⁻¹ ∂F/∂u at the online
    prior, where F is the written-out free energy E_q‖x − Φz‖²_Σ⁻¹/2 + β KL(q‖q_prior), G = diag(e^u)."""
    phi, inv_var = _linear()
    b_exact = 0.5 * (phi.pow(2) * inv_var.unsqueeze(1)).sum(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, D, generator=gen, dtype=torch.float64)
    u0 = torch.randn(5, K, generator=gen, dtype=torch.float64) * 0.5 - 1.0
    u = u0.clone().requires_grad_(True)
    r = u.exp()
    # E_q‖x − Φz‖²: squared error of the mean plus Σ_k Var(z_k)‖Φ_k‖² with Var z_k = r_k (Poisson).
    expected_sq = ((x - r @ phi.T).pow(2) * inv_var).sum(-1) + (r * (phi.pow(2) * inv_var.unsqueeze(1)).sum(0)).sum(-1)
    free_energy = 0.5 * expected_sq + 7.0 * poisson_kl(u, u0).sum(-1)
    (grad,) = torch.autograd.grad(free_energy.sum(), u)
    natural = grad / u0.exp()
    rates = r.detach()
    (u_next,) = fond_step(UNCLAMPED_POISSON, {"log_step_size": _unit_step()}, (u0,), Sample(rates),
                          _pullback(phi, inv_var, x, rates), b_exact)
    assert torch.allclose(u_next - u0, -natural, atol=1e-8)


def test_leak_appears_away_from_the_online_prior():
    """Away from the prior the natural gradient of β·KL adds the leak −β(u − u₀), which online updating removes."""
    u = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    u0 = torch.tensor([-0.2, -0.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad((3.0 * poisson_kl(u, u0)).sum(), u)
    assert torch.allclose(grad / u.detach().exp(), 3.0 * (u.detach() - u0))


def test_rate_form_is_divisive_normalisation():
    """r_{t+1,i} = r_{t,i}·exp(η(Φᵀx/σ²)_i − ηb_i) / ∏_j exp(η W_ij z_j): the membrane update in rate form."""
    decoder = make_decoder("linear", D, K, generator=torch.Generator().manual_seed(0), init_scale=0.3).double()
    _, inv_var = _linear()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, D, generator=gen, dtype=torch.float64)
    u = torch.randn(3, K, generator=gen, dtype=torch.float64) - 2.0
    z = torch.poisson(u.exp() * 3, generator=gen)
    bias = torch.rand(K, generator=gen, dtype=torch.float64)
    eta = torch.tensor([0.7], dtype=torch.float64)
    with torch.no_grad():
        ops = decoder.operators(x, inv_var)
        (u_next,) = fond_step(UNCLAMPED_POISSON, {"log_step_size": eta.log()}, (u,), Sample(z), ops.pullback(z), bias)
    numerator = torch.exp(eta * (ops.drive - bias))
    denominator = torch.exp(eta * ops.gram.unsqueeze(0) * z.unsqueeze(1)).prod(-1)
    assert torch.allclose(u_next.exp(), u.exp() * numerator / denominator, rtol=1e-9)
    assert (torch.diagonal(ops.gram) > 0).all()  # self-inhibition


def _gaussian_case(nonlinearity, decoder_name, seed=3):
    gen = torch.Generator().manual_seed(seed)
    decoder = make_decoder(decoder_name, 16, 8, generator=gen, init_scale=0.4, hidden=10).double()
    inv_var = torch.exp(torch.randn(16, generator=gen, dtype=torch.float64) * 0.2)
    x = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    mu = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    xi = torch.randn(4, 8, generator=gen, dtype=torch.float64) * 0.3 - 0.5
    eps = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    bias = torch.rand(8, generator=gen, dtype=torch.float64)
    family = GaussianFamily(nonlinearity=nonlinearity, **UNCLAMPED_GAUSSIAN)
    params = {"log_step_size": torch.zeros(2, dtype=torch.float64),
              "log_gain": torch.randn(8, generator=gen, dtype=torch.float64) * 0.2}
    return family, params, decoder, inv_var, x, mu, xi, eps, bias


@pytest.mark.parametrize("nonlinearity, decoder_name", [("identity", "linear"), ("relu", "linear"),
                                                        ("identity", "mlp"), ("relu", "mlp"), ("relu", "conv")])
def test_gaussian_step_equals_finite_difference_natural_gradient(nonlinearity, decoder_name):
    """iG / iG_relu with linear, MLP and conv decoders: the step built from the decoder's vector–Jacobian
    product moves (μ, log σ) by −η·(inverse Fisher × central finite differences of the single-sample free
    energy) − η·(b, 0): the vjp pull-back and the chain rule through f are right for every decoder."""
    family, params, decoder, inv_var, x, mu, xi, eps, bias = _gaussian_case(nonlinearity, decoder_name)

    def free_energy(mu_, xi_):  # single-sample reconstruction term; the KL's gradient is 0 at the online prior
        z = mu_ + xi_.exp() * eps
        code = z if nonlinearity == "identity" else relu_gain(z, params["log_gain"])
        return 0.5 * ((x - decoder(code)).pow(2) * inv_var).sum()

    h = 1e-6
    grads = []
    with torch.no_grad():
        for which in (0, 1):
            g = torch.zeros_like(mu)
            for idx in np.ndindex(*mu.shape):
                delta = torch.zeros_like(mu)
                delta[idx] = h
                plus = free_energy(mu + delta, xi) if which == 0 else free_energy(mu, xi + delta)
                minus = free_energy(mu - delta, xi) if which == 0 else free_energy(mu, xi - delta)
                g[idx] = (plus - minus) / (2 * h)
            grads.append(g)
        expected_mu = -(xi.exp().pow(2) * grads[0] + bias)
        expected_xi = -0.5 * grads[1]
        z = mu + xi.exp() * eps
        code = family.activation(z, params)
        reconstruction, pull = decoder.with_pullback(code)
        new_mu, new_xi = fond_step(family, params, (mu, xi), Sample(z, eps), pull((x - reconstruction) * inv_var),
                                   bias)
    assert torch.allclose(new_mu - mu, expected_mu, atol=1e-6)
    assert torch.allclose(new_xi - xi, expected_xi, atol=1e-6)


def test_gaussian_mean_dynamics_reach_the_least_squares_code():
    """iG-VAE through the generic step: linear decoder, b = 0, the sample replaced by the mean — the
    fixed point is the (precision-weighted) least-squares code of torch.linalg.lstsq."""
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    inv_var = torch.exp(torch.randn(12, generator=gen, dtype=torch.float64) * 0.2)
    x = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    family = GaussianFamily(**UNCLAMPED_GAUSSIAN)
    params = {"log_step_size": torch.tensor([np.log(0.05), 0.0], dtype=torch.float64)}
    mu, xi = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    zero_bias = torch.zeros(5, dtype=torch.float64)
    for _ in range(4000):
        mu, xi = fond_step(family, params, (mu, xi), Sample(mu, torch.zeros_like(mu)),
                           _pullback(phi, inv_var, x, mu), zero_bias)
    weight = inv_var.sqrt()
    expected = torch.linalg.lstsq(phi * weight.unsqueeze(1), (x * weight).T).solution.T
    assert torch.allclose(mu, expected, atol=1e-8)
    assert torch.equal(xi, torch.zeros_like(xi))  # ε = 0: no evidence about σ, log σ stays put


def test_bernoulli_step_is_identity_in_the_poisson_form():
    """Bernoulli and Poisson share the natural-gradient direction ∂F/∂(mean) + b: with the same sample,
    pull-back, bias and unit step the logit and the membrane potential move by the same amount (no clamps)."""
    phi, inv_var = _linear(5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, D, generator=gen, dtype=torch.float64)
    z = (torch.rand(2, K, generator=gen, dtype=torch.float64) < 0.3).double()
    state = torch.randn(2, K, generator=gen, dtype=torch.float64) - 2.0
    bias = torch.rand(K, generator=gen, dtype=torch.float64)
    pull = _pullback(phi, inv_var, x, z)
    step = {"log_step_size": _unit_step()}
    (u_next,) = fond_step(UNCLAMPED_POISSON, step, (state,), Sample(z), pull, bias)
    bern = BernoulliFamily(clamp_init=1e6, clamp_final=1e6)
    (logit_next,) = fond_step(bern, step, (state,), Sample(z), pull, bias)
    assert torch.allclose(u_next, logit_next, atol=1e-9)


def test_soft_clamp_bounds_and_identity_far_below():
    """The clamp never exceeds c, is ≈ identity well below c, and the floor is hard."""
    x = torch.linspace(-20, 40, 1001, dtype=torch.float64)
    y = soft_clamp_upper(x, 10.0, -8.0)
    assert (y < 10.0).all()
    assert y.min() >= 10.0 - torch.nn.functional.softplus(torch.tensor(18.0, dtype=torch.float64)) - 1e-12
    mid = (x > -5) & (x < 0)
    assert torch.allclose(y[mid], x[mid], atol=1e-4)
    assert torch.all(torch.diff(y) >= 0)


def test_clamp_limits_runaway_rates_and_ramps():
    """A huge drive cannot push the potential past c (what keeps 1000-step rollouts finite); c ramps
    from clamp_init to clamp_final with the training schedule's clamp fraction."""
    family = PoissonFamily()
    u = torch.zeros(1, K, dtype=torch.float64)
    drive = torch.full((1, K), 1e6, dtype=torch.float64)
    for fraction, c in ((0.0, 2.0), (0.5, 6.0), (1.0, 10.0)):
        (out,) = fond_step(family, {"log_step_size": _unit_step()}, (u,), Sample(u), drive, torch.zeros(K),
                           clamp_fraction=fraction)
        # Δu saturates at c, then u + Δu = c is clamped again: c − softplus(0).
        assert torch.allclose(out, torch.full_like(out, c - np.log(2.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_soft_clamp_equals_the_torch_expression(dtype):
    """The update's clamp runs as one compiled pass with a one-product backward: its value and gradient must
    be those of autograd through c − softplus(c − max(x, floor)) — across the floor, the softplus threshold
    (c − x > 20), far above c — and a NaN must stay NaN (a diverged state is caught downstream, not hidden)."""
    x = torch.cat([torch.linspace(-30, 40, 20001, dtype=torch.float64), torch.tensor([-8.0, -15.0, 10.0])]).to(dtype)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    fused = soft_clamp_upper(a, 10.0, -8.0)
    plain = 10.0 - torch.nn.functional.softplus(10.0 - b.clamp_min(-8.0))
    (fused * weights).sum().backward()
    (plain * weights).sum().backward()
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(fused, plain, **tolerance)
    torch.testing.assert_close(a.grad, b.grad, **tolerance)
    assert float(a.grad[x == -8.0][0]) == float(b.grad[x == -8.0][0])  # at the floor: passes, as clamp_min's
    assert torch.isnan(soft_clamp_upper(torch.tensor([float("nan"), 1.0], dtype=dtype), 10.0, -8.0)[0])


@pytest.mark.parametrize("clamp_fraction", [0.3, 1.0])
def test_fused_training_update_gives_autograds_loss_and_gradients(monkeypatch, clamp_fraction):
    """The iP-VAE's fused training step (update, clamps and KL in one compiled pass, its backward in another)
    must give the loss, the per-step NLL/KL and every parameter's gradient that autograd of the composed
    step gives on the same draws (float64; rates spanning the floor, the clamp ramp and the KL's two forms; a
    step size η ≠ 1, as training learns it: at η = 1 a gradient off by a factor η would pass)."""
    from fond import IPVAE
    from fond.families.poisson import PoissonFamily

    def run(fused: bool):
        model = IPVAE(16, 12, seed=5, init_scale=0.4).double()
        with torch.no_grad():
            model.log_step_size.fill_(-0.7)
        if not fused:
            monkeypatch.setattr(PoissonFamily, "training_update", lambda *args, **kwargs: None)
        x = torch.randn(9, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
        out = model.unroll_loss(x, 6, beta=2.5, temperature=0.4, clamp_fraction=clamp_fraction,
                                generator=torch.Generator().manual_seed(2))
        out.loss.backward()
        monkeypatch.undo()
        return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    (fast, fast_grads), (plain, plain_grads) = run(True), run(False)
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.kl, plain.kl, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.nll, plain.nll, rtol=1e-12)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) >= 4
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-9, atol=1e-12, msg=name)
        assert float(plain_grads[name].abs().sum()) > 0, name


def test_unroll_loss_is_the_mean_over_steps_of_the_reported_nll_and_kl():
    """The objective training descends and the per-step NLL/KL curves it reports must be one thing: loss = the mean
    over steps of (mean NLL + β·mean KL), times 256/D (the paper's scaling), each term from that step's sample."""
    from fond import IPVAE

    model = IPVAE(16, 12, seed=5, init_scale=0.4).double()
    x = torch.randn(9, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    for steps in (1, 5):
        out = model.unroll_loss(x, steps, beta=2.5, temperature=0.4, generator=torch.Generator().manual_seed(2))
        assert out.nll.shape == out.kl.shape == (steps,)
        expected = float(np.mean(out.nll + 2.5 * out.kl)) * 256.0 / 16
        assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-12)


def test_fused_training_update_returns_the_new_rates_with_their_gradient():
    """The fused step hands e^{u'} to the sampler (no second exponential per step) and takes e^u from the step
    before: its value must be e^{u'} and the Jacobians of all three outputs (u', e^{u'}, KL) must match finite
    differences (float64 gradcheck), e^u counting as a function of u."""
    from fond.families.poisson import _PoissonUpdate

    g = torch.Generator().manual_seed(0)
    u = torch.empty(3, 7, dtype=torch.float64).uniform_(-3, 3, generator=g).requires_grad_()
    pull = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 4).requires_grad_()
    bias = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_()
    log_step = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)

    def step(u, pull, bias, log_step):
        return _PoissonUpdate.apply(u, torch.exp(u).detach(), pull, bias, log_step, 4.0, -8.0, 1e6)

    new, rates, _ = step(u, pull, bias, log_step)
    torch.testing.assert_close(rates, torch.exp(new), rtol=1e-15, atol=0)
    assert torch.autograd.gradcheck(step, (u, pull, bias, log_step))


def test_float32_training_update_in_rate_space_matches_float64_to_float32_resolution():
    """The float32 update runs in rate space (e^{−u'} = e^{−c} + min(e^{−u}·A, e^{−floor}), one exponential and
    one logarithm); the float64 one in log space, tested against autograd above. On states and pulls that reach
    the floor, the clamp and both KL forms, every output must agree to float32's resolution, and a NaN must
    still reach u' and r' (training's divergence check reads it)."""
    from fond.families.kernels import poisson_update_forward, poisson_update_forward32

    g = torch.Generator().manual_seed(3)
    u = torch.empty(40, 64, dtype=torch.float64).uniform_(-9.0, 5.0, generator=g)
    pull = torch.randn(40, 64, generator=g, dtype=torch.float64) * torch.logspace(-4, 1.5, 64, dtype=torch.float64)
    bias = torch.rand(64, generator=g, dtype=torch.float64)
    u, pull, bias = (t.float().double() for t in (u, pull, bias))  # the same inputs in both widths
    pull[0, :3] = float("nan")
    outputs = {}
    for dtype, kernel in ((torch.float64, poisson_update_forward), (torch.float32, poisson_update_forward32)):
        arrays = [t.to(dtype).contiguous() for t in (u, torch.exp(u), pull, bias)]
        new, rates, s1, s2 = torch.empty((4, *u.shape), dtype=dtype)
        kl = torch.empty(u.shape[0], dtype=torch.float64)
        kernel(*(a.numpy() for a in arrays), 0.6, 5.0, -8.0, new.numpy(), rates.numpy(), s1.numpy(), s2.numpy(),
               kl.numpy())
        outputs[dtype] = [t.double() for t in (new, rates, s1, s2)] + [kl]
    (new, rates, s1, s2, kl), (new32, rates32, s1_32, s2_32, kl32) = outputs[torch.float64], outputs[torch.float32]
    assert torch.isnan(new32[0, :3]).all() and torch.isnan(rates32[0, :3]).all() and torch.isnan(kl32[0])
    ok = ~torch.isnan(new)
    assert float(new[ok].min()) < -7.9 and float(new[ok].max()) > 4.9 and float(s2[ok].min()) < 0.1  # both clamps
    torch.testing.assert_close(new32[ok], new[ok], rtol=0, atol=1e-6)
    torch.testing.assert_close(rates32[ok], rates[ok], rtol=1e-6, atol=0)
    torch.testing.assert_close(s1_32[ok], s1[ok], rtol=0, atol=3e-7)
    torch.testing.assert_close(s2_32[ok], s2[ok], rtol=0, atol=3e-7)
    torch.testing.assert_close(kl32[1:], kl[1:], rtol=1e-5, atol=1e-6)


def test_fused_training_update_in_float32_follows_the_composed_step(monkeypatch):
    """A float32 model's fused step computes in float32 (twice the vector lanes): its loss and gradients must
    stay within float32 rounding of the composed step's on the same draws."""
    from fond import IPVAE
    from fond.families.poisson import PoissonFamily

    def run(fused: bool):
        model = IPVAE(16, 12, seed=5, init_scale=0.4)
        with torch.no_grad():
            model.log_step_size.fill_(-0.7)
        if not fused:
            monkeypatch.setattr(PoissonFamily, "training_update", lambda *args, **kwargs: None)
        x = torch.randn(9, 16, generator=torch.Generator().manual_seed(1)) * 3
        out = model.unroll_loss(x, 6, beta=2.5, temperature=0.4, clamp_fraction=1.0,
                                generator=torch.Generator().manual_seed(2))
        out.loss.backward()
        monkeypatch.undo()
        return out.loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    (fast, fast_grads), (plain, plain_grads) = run(True), run(False)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    for name in plain_grads:
        scale = float(plain_grads[name].abs().max())
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-4 * scale, msg=name)
