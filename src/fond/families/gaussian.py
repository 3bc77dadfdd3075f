"""The Gaussian family (iG-VAE, iG_relu-VAE): the mathematics FOND needs from it (DESIGN.md §2.2).

State: mean μ and log standard deviation ξ = log σ of q(z) = N(μ, σ²) per latent (B×K each); the
prior of each step is the previous step's posterior. A sample is z = μ + σε. The decoder sees f(z):
identity (iG-VAE) or relu(z)·exp(log gain) with a learned per-neuron gain (iG_relu-VAE).

This module holds the family's pure functions — reparameterised sample, closed-form KL, the natural
gradient of the single-sample free energy, the activation and its derivative, symmetric soft clamps.
Wiring the family into the shared step, trainer and CLI (`fond.IGVAE`) is issue 3's remaining work.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gaussian_kl",
    "sample_gaussian",
    "soft_clamp_symmetric",
    "natural_gradient_direction",
    "relu_gain",
    "relu_gain_derivative",
]


def gaussian_kl(mu: Tensor, log_sigma: Tensor, mu_prior: Tensor, log_sigma_prior: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(μ₀, σ₀²)) elementwise, in nats: log(σ₀/σ) + (σ² + (μ − μ₀)²)/(2σ₀²) − ½."""
    ratio = torch.exp(2.0 * (log_sigma - log_sigma_prior))
    return log_sigma_prior - log_sigma + 0.5 * (ratio + (mu - mu_prior).pow(2) * torch.exp(-2.0 * log_sigma_prior)
                                               - 1.0)


def sample_gaussian(mu: Tensor, log_sigma: Tensor, generator: torch.Generator | None = None,
                    temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reparameterised sample z = μ + τσε, ε ~ N(0, 1); returns (z, ε). Differentiable in μ and log σ."""
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + temperature * torch.exp(log_sigma) * noise, noise


def soft_clamp_symmetric(x: Tensor, c: float) -> Tensor:
    """c·tanh(x/c): ≈ identity for |x| ≪ c, bounded by ±c."""
    return c * torch.tanh(x / c)


def natural_gradient_direction(grad_z: Tensor, noise: Tensor, log_sigma: Tensor,
                               bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Natural gradient of the single-sample free energy in (μ, log σ) coordinates at the online prior.

    grad_z: ∂F/∂z of the reconstruction term at the sample z = μ + σε (for a linear decoder,
    −f'(z) ⊙ Φᵀ(x − Φf(z))/σ_x²), (B, K). By the chain rule ∂F/∂μ = grad_z and ∂F/∂ξ = grad_z·ε·σ; the
    KL to the online prior has zero gradient there. The Fisher metric of N in (μ, log σ) is
    diag(1/σ², 2), so the natural gradient is (σ²·∂F/∂μ, ½·∂F/∂ξ). ``bias`` (K,) is added to the μ
    direction (the learned b of DESIGN §2.2). Returns the ascent directions (d_μ, d_ξ); a step moves by
    minus η times them.
    """
    sigma = torch.exp(log_sigma)
    d_mu = grad_z * sigma.pow(2)
    d_xi = 0.5 * grad_z * noise * sigma
    if bias is not None:
        d_mu = d_mu + bias
    return d_mu, d_xi


def relu_gain(z: Tensor, log_gain: Tensor) -> Tensor:
    """iG_relu-VAE's decoder input f(z) = relu(z)·exp(log gain), (B, K) with log_gain (K,)."""
    return torch.relu(z) * torch.exp(log_gain)


def relu_gain_derivative(z: Tensor, log_gain: Tensor) -> Tensor:
    """f'(z) = 1[z > 0]·exp(log gain)."""
    return (z > 0).to(z.dtype) * torch.exp(log_gain)
