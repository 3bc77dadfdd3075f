"""Oracles for the Gaussian family's mathematics (DESIGN.md §2.2)."""

import torch
from torch.distributions import Normal, kl_divergence

from fond.families.gaussian import (
    gaussian_kl,
    natural_gradient_direction,
    relu_gain,
    relu_gain_derivative,
    sample_gaussian,
    soft_clamp_symmetric,
)


def test_kl_matches_torch_distributions():
    """The closed-form KL must equal torch.distributions' Normal–Normal KL (an independent implementation)."""
    gen = torch.Generator().manual_seed(0)
    mu, mu0 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    xi, xi0 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, xi.exp()), Normal(mu0, xi0.exp()))
    assert torch.allclose(gaussian_kl(mu, xi, mu0, xi0), expected, atol=1e-12)
    assert torch.allclose(gaussian_kl(mu, xi, mu, xi), torch.zeros(50, dtype=torch.float64))


def _setup(activation):
    gen = torch.Generator().manual_seed(1)
    phi = torch.randn(10, 6, generator=gen, dtype=torch.float64) * 0.5
    inv_var = torch.exp(torch.randn(10, generator=gen, dtype=torch.float64) * 0.2)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    mu = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    xi = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3 - 0.5
    eps = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    log_gain = torch.randn(6, generator=gen, dtype=torch.float64) * 0.2
    f = (lambda z: z) if activation is None else (lambda z: relu_gain(z, log_gain))
    df = (lambda z: torch.ones_like(z)) if activation is None else (lambda z: relu_gain_derivative(z, log_gain))
    return phi, inv_var, x, mu, xi, eps, f, df


def _check_natural_gradient(activation):
    phi, inv_var, x, mu0, xi0, eps, f, df = _setup(activation)
    mu, xi = mu0.clone().requires_grad_(True), xi0.clone().requires_grad_(True)
    z = mu + xi.exp() * eps
    free_energy = 0.5 * ((x - f(z) @ phi.T).pow(2) * inv_var).sum() + gaussian_kl(mu, xi, mu0, xi0).sum()
    g_mu, g_xi = torch.autograd.grad(free_energy, (mu, xi))
    natural = (g_mu * xi0.exp().pow(2), 0.5 * g_xi)  # inverse Fisher of N in (μ, log σ): diag(σ², ½)
    z0 = mu0 + xi0.exp() * eps
    grad_z = -df(z0) * (((x - f(z0) @ phi.T) * inv_var) @ phi)
    d_mu, d_xi = natural_gradient_direction(grad_z, eps, xi0)
    assert torch.allclose(d_mu, natural[0], atol=1e-10)
    assert torch.allclose(d_xi, natural[1], atol=1e-10)


def test_natural_gradient_equals_autograd_times_inverse_fisher():
    """iG-VAE: the closed-form direction equals autograd of the written-out single-sample free energy
    (reconstruction + KL to the online prior) multiplied by the inverse Fisher metric diag(σ², ½)."""
    _check_natural_gradient(None)


def test_natural_gradient_with_relu_gain_activation():
    """iG_relu-VAE: the same identity holds with f(z) = relu(z)·gain through the chain rule f'(z)."""
    _check_natural_gradient("relu")


def test_mean_dynamics_converge_to_least_squares():
    """With a linear decoder, b = 0 and the sample replaced by the mean, the iterated natural-gradient step
    converges to the least-squares code (checked against torch.linalg.lstsq)."""
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    inv_var = torch.ones(12, dtype=torch.float64)
    x = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    mu = torch.zeros(3, 5, dtype=torch.float64)
    xi = torch.full((3, 5), -1.0, dtype=torch.float64)
    for _ in range(3000):
        grad_z = -(((x - mu @ phi.T) * inv_var) @ phi)
        d_mu, _ = natural_gradient_direction(grad_z, torch.zeros_like(mu), xi)
        mu = mu - 0.1 * d_mu
    expected = torch.linalg.lstsq(phi, x.T).solution.T
    assert torch.allclose(mu, expected, atol=1e-8)


def test_sample_is_reparameterised_and_moments_match():
    """z = μ + σε carries gradients to μ and log σ, and has mean μ and std σ."""
    mu = torch.full((200_000,), 1.5, dtype=torch.float64, requires_grad=True)
    xi = torch.full((200_000,), -0.7, dtype=torch.float64, requires_grad=True)
    z, eps = sample_gaussian(mu, xi, torch.Generator().manual_seed(3))
    zd = z.detach()
    assert abs(float(zd.mean()) - 1.5) < 0.01 and abs(float(zd.std()) - float(torch.exp(torch.tensor(-0.7)))) < 0.01
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu)) and torch.allclose(xi.grad, (z - mu).detach())


def test_activation_and_clamps():
    """relu·gain is zero below 0 and scaled above; the symmetric clamp is bounded and ≈ identity near 0."""
    z = torch.tensor([-1.0, 0.0, 2.0])
    log_gain = torch.log(torch.tensor([3.0, 3.0, 3.0]))
    assert torch.allclose(relu_gain(z, log_gain), torch.tensor([0.0, 0.0, 6.0]))
    assert torch.allclose(relu_gain_derivative(z, log_gain), torch.tensor([0.0, 0.0, 3.0]))
    big = torch.linspace(-100, 100, 201)
    assert soft_clamp_symmetric(big, 7.0).abs().max() <= 7.0
    assert torch.allclose(soft_clamp_symmetric(torch.tensor([0.01]), 7.0), torch.tensor([0.01]), atol=1e-6)
