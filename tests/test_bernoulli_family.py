"""Oracles for the Bernoulli family: KL, the natural-gradient step, samplers, clamps and options."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, kl_divergence

import fond.families.bernoulli  # noqa: F401  (registers "bernoulli" whatever fond.families imports)
from fond.errors import ConfigError
from fond.families.base import Sample, make_family
from fond.families.bernoulli import BernoulliFamily, bernoulli_kl, relaxed_bernoulli, sample_bernoulli

F64 = torch.float64


def _binomial_ok(hits: torch.Tensor, p: torch.Tensor, n: int, sigmas: float = 5.0) -> bool:
    se = torch.sqrt(p * (1 - p) / n)
    return bool(((hits - p).abs() <= sigmas * se + 1.0 / n).all())


def test_kl_matches_torch_distributions():
    """Our stable logit-space KL must equal torch's reference Bernoulli KL elementwise."""
    gen = torch.Generator().manual_seed(0)
    theta = 4.0 * torch.randn(2000, generator=gen, dtype=F64)
    theta0 = torch.cat([4.0 * torch.randn(1000, generator=gen, dtype=F64),
                        theta[1000:] + 0.3 * torch.randn(1000, generator=gen, dtype=F64)])
    ours = bernoulli_kl(theta, theta0)
    oracle = kl_divergence(Bernoulli(logits=theta), Bernoulli(logits=theta0))
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-13)


def test_kl_nonnegative_finite_and_zero_with_zero_gradient_at_prior():
    """KL ≥ 0 everywhere (also at extreme logits, float32), and at the online prior it and its gradient vanish."""
    grid = torch.tensor([-100.0, -30.0, -10.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 10.0, 30.0, 100.0])
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    kl = bernoulli_kl(a, b)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    off = ~torch.eye(len(grid), dtype=torch.bool)
    assert (kl[off] > 0).all()
    for dtype in (torch.float32, F64):
        theta = torch.linspace(-12, 12, 49, dtype=dtype, requires_grad=True)
        prior = theta.detach().clone().requires_grad_(True)
        value = bernoulli_kl(theta, prior)
        assert (value == 0).all()
        g_theta, g_prior = torch.autograd.grad(value.sum(), (theta, prior))
        assert (g_theta == 0).all() and (g_prior == 0).all()


def test_kl_accurate_for_tiny_steps():
    """Near the prior the KL is ½p(1−p)Δ² (the Fisher metric); cancellation must not swamp it."""
    theta = torch.tensor([-8.0, -2.0, 0.0, 3.0, 9.0], dtype=F64)
    delta = 1e-5
    p = torch.sigmoid(theta)
    torch.testing.assert_close(bernoulli_kl(theta, theta + delta), 0.5 * p * (1 - p) * delta**2, rtol=1e-4, atol=0)


def test_step_is_natural_gradient_of_written_out_free_energy():
    """With p in place of the sample and b = ½(1−2p)diag(ΦᵀVΦ), one step is exactly −G⁻¹∂F/∂θ (the claim of FOND)."""
    gen = torch.Generator().manual_seed(1)
    batch, dim, k, beta = 3, 7, 5, 0.7
    phi = torch.randn(dim, k, generator=gen, dtype=F64)
    v = 0.5 + torch.rand(dim, generator=gen, dtype=F64)
    x = torch.randn(batch, dim, generator=gen, dtype=F64)
    theta0 = 1.5 * torch.randn(batch, k, generator=gen, dtype=F64)
    family = BernoulliFamily(clamp_init=1e6, clamp_final=1e6)
    params = {"log_step_size": torch.zeros(1, dtype=F64), "logit_init": torch.zeros(k, dtype=F64)}

    theta = theta0.clone().requires_grad_(True)
    p = torch.sigmoid(theta)
    col_norms = (phi.pow(2) * v[:, None]).sum(0)  # diag(Φᵀ diag(v) Φ)
    expected_recon = (((x - p @ phi.T) ** 2) * v).sum(-1) + (p * (1 - p) * col_norms).sum(-1)
    free_energy = 0.5 * expected_recon.sum() + beta * family.kl((theta,), (theta0,)).sum()
    (grad_theta,) = torch.autograd.grad(free_energy, theta)

    p0 = torch.sigmoid(theta0)
    grad_z = -((x - p0 @ phi.T) * v) @ phi
    bias = 0.5 * (1 - 2 * p0) * col_norms
    direction = family.natural_gradient((theta0,), Sample(p0), grad_z, bias, params)
    (new_theta,) = family.descend((theta0,), direction, params, clamp_fraction=1.0)
    torch.testing.assert_close(new_theta - theta0, -grad_theta / (p0 * (1 - p0)), rtol=0, atol=1e-8)


def test_hard_samples_are_binary_with_frequency_p():
    """Evaluation spikes are exact Bernoulli(p) draws: values in {0, 1}, empirical rate p."""
    family = BernoulliFamily()
    theta = torch.tensor([-6.0, -2.0, -0.5, 0.0, 0.7, 2.5, 5.0])
    n = 20000
    state = (theta.expand(n, -1),)
    z = family.sample(state, {}, torch.Generator().manual_seed(2), None).value
    assert z.dtype == theta.dtype and set(z.unique().tolist()) <= {0.0, 1.0}
    assert _binomial_ok(z.mean(0).double(), torch.sigmoid(theta).double(), n)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 3.0])
def test_concrete_relaxation_thresholds_at_p_and_is_differentiable(temperature):
    """The binary-concrete sample crosses ½ with probability p at any τ, and θ gets gradients through it."""
    theta = torch.tensor([-4.0, -1.0, 0.0, 1.5, 4.0], requires_grad=True)
    n = 20000
    z = relaxed_bernoulli(theta.expand(n, -1), temperature, torch.Generator().manual_seed(3))
    assert ((z > 0) & (z < 1)).float().mean() > 0.5
    assert _binomial_ok((z > 0.5).double().mean(0), torch.sigmoid(theta.detach()).double(), n)
    (grad,) = torch.autograd.grad(z.sum(), theta)
    assert torch.isfinite(grad).all() and (grad > 0).all()


def test_concrete_tends_to_hard_as_temperature_vanishes():
    """As τ → 0 the relaxation becomes the hard draw from the same noise (training approaches evaluation)."""
    theta = torch.linspace(-3, 3, 200)
    hard = relaxed_bernoulli(theta, 0.0, torch.Generator().manual_seed(4))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    gaps = [float((relaxed_bernoulli(theta, tau, torch.Generator().manual_seed(4)) - hard).abs().mean())
            for tau in (1.0, 0.1, 0.01, 1e-4)]
    assert all(b < a for a, b in zip(gaps, gaps[1:], strict=False)) and gaps[-1] < 1e-3


def test_straight_through_forward_binary_backward_flows():
    """Straight-through: forward values are genuine spikes, yet θ still receives the concrete gradient."""
    family = BernoulliFamily(indicator="straight_through")
    theta = torch.linspace(-3, 3, 50, requires_grad=True)
    z = family.sample((theta.expand(64, -1),), {}, torch.Generator().manual_seed(5), 0.5).value
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    (grad,) = torch.autograd.grad(z.sum(), theta)
    assert torch.isfinite(grad).all() and (grad > 0).all()


def test_same_seed_same_sample_and_global_rng_untouched():
    """Reproducibility: samples depend only on the generator; building parameters leaves the global RNG alone."""
    family = BernoulliFamily()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    params = family.init_parameters(16, torch.Generator().manual_seed(7))
    again = family.init_parameters(16, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(params["logit_init"], again["logit_init"])
    assert params["logit_init"].shape == (16,) and params["log_step_size"].shape == (1,)
    assert ((params["logit_init"] >= -5.0) & (params["logit_init"] <= -3.0)).all()
    state = family.initial_state(params, 4)
    assert state[0].shape == (4, 16)
    for temperature in (None, 0.5):
        a = family.sample(state, params, torch.Generator().manual_seed(8), temperature).value
        b = family.sample(state, params, torch.Generator().manual_seed(8), temperature).value
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(family.mean_code(state, params), torch.sigmoid(state[0]))
    assert not family.saturated(state, params).any()


def test_clamps_bound_logits_and_ramp():
    """Huge drives move θ by at most the ramped bound c per step (stable early training), θ never leaves
    ±clamp_final, and typical logits are not pulled toward 0 (the hard θ clamp is inactive inside)."""
    family = BernoulliFamily(clamp_init=2.0, clamp_final=10.0)
    params = {"log_step_size": torch.zeros(1)}
    theta = torch.tensor([[-1.0, 0.0, 1.0]])
    drive = torch.tensor([[-1e4, 0.0, 1e4]])
    for fraction, bound in [(0.0, 2.0), (0.25, 4.0), (0.5, 6.0), (1.0, 10.0), (2.0, 10.0)]:
        assert family.bound(fraction) == pytest.approx(bound)
        (new,) = family.descend((theta,), (drive,), params, fraction)
        step = (new - theta).abs()
        assert (step <= bound + 1e-5).all() and float(step.max()) > 0.9 * min(bound, 9.0)
    (far,) = family.descend((torch.tensor([[-9.5, 9.5]]),), (torch.tensor([[1e4, -1e4]]),), params, 1.0)
    assert torch.equal(far, torch.tensor([[-10.0, 10.0]]))
    (kept,) = family.descend((torch.tensor([[-5.0, 0.1]]),), (torch.zeros(1, 2),), params, 0.0)
    assert torch.equal(kept, torch.tensor([[-5.0, 0.1]]))
    (small,) = family.descend((torch.tensor([[0.1]]),), (torch.tensor([[-0.05]]),), params, 1.0)
    assert float(small) == pytest.approx(0.15, rel=1e-3)


@pytest.mark.parametrize("options, key", [
    ({"logit_init_low": -1.0, "logit_init_high": -2.0}, "logit_init_low"),
    ({"logit_init_high": math.nan}, "logit_init_high"),
    ({"clamp_init": 0.0}, "clamp_init"),
    ({"clamp_init": 5.0, "clamp_final": 3.0}, "clamp_final"),
    ({"clamp_final": math.inf}, "clamp_final"),
    ({"indicator": "gumbel"}, "indicator"),
    ({"u_init_low": -3.0}, "u_init_low"),
])
def test_bad_options_raise_config_error_naming_the_key(options, key):
    """A bad config must fail at construction with a message that points at the offending option."""
    with pytest.raises(ConfigError, match=f"family_options.{key}"):
        make_family("bernoulli", options)


def test_make_family_builds_registered_bernoulli():
    """The registry finds the family by name and passes options through."""
    family = make_family("bernoulli", {"indicator": "straight_through"})
    assert isinstance(family, BernoulliFamily) and family.name == "bernoulli"
    assert family.options()["indicator"] == "straight_through"
    assert sample_bernoulli(torch.zeros(3)).shape == (3,)
