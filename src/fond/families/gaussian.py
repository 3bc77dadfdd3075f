"""The Gaussian family (iG-VAE, iG_relu-VAE): the mathematics FOND needs from it (DESIGN.md §2.2).

State: mean μ and log standard deviation ξ = log σ of q(z) = N(μ, σ²) per latent (B×K each); the
prior of each step is the previous step's posterior. A sample is z = μ + σε. The decoder sees f(z):
identity (iG-VAE) or relu(z)·exp(log gain) with a learned per-neuron gain (iG_relu-VAE).

This module holds the family's pure functions — reparameterised sample, closed-form KL, the natural
gradient of the single-sample free energy, the activation and its derivative, symmetric soft clamps —
and ``GaussianFamily``, which hands them to the fixed dynamics (``fond.dynamics.fond_step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fond.families.base import Family, Params, Sample, State, ramp, register_family

ACTIVATIONS: tuple[str, ...] = ("identity", "relu")

__all__ = [
    "GaussianFamily",
    "ACTIVATIONS",
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


@register_family("gaussian")
@dataclass(frozen=True)
class GaussianFamily(Family):
    """Gaussian latents in (μ, log σ) coordinates: iG-VAE (nonlinearity "identity") and iG_relu-VAE ("relu").

    One step: d_μ = σ²·∂F/∂z + b, d_ξ = ½·∂F/∂z·ε·σ (the Fisher metric diag(1/σ², 2) inverted), then
    μ ← c_μ·tanh((μ − η_μ d_μ clamped to ±c_Δμ)/c_μ) and likewise ξ = log σ. Samples are z = μ + σε at
    temperature 1 in training and evaluation (a training temperature is ignored). Learned: step sizes
    η_μ, η_ξ (log, init 0), the initial state μ_init, log σ_init (init 0) and, for relu, a per-neuron
    log gain (init 0). The four clamp bounds ramp from ``clamp_init`` to their final values.
    """

    nonlinearity: str = "identity"
    clamp_init: float = 1.0
    mu_clamp: float = 7.0
    log_sigma_clamp: float = 2.0
    delta_mu_clamp: float = 7.0
    delta_log_sigma_clamp: float = 3.0

    state_names: ClassVar[tuple[str, ...]] = ("mu", "log_sigma")

    def validate(self) -> None:
        self._require(self.nonlinearity in ACTIVATIONS, "nonlinearity",
                      f"expected one of {ACTIVATIONS}, got {self.nonlinearity!r}")
        bounds = ("mu_clamp", "log_sigma_clamp", "delta_mu_clamp", "delta_log_sigma_clamp")
        for key in ("clamp_init", *bounds):
            value = getattr(self, key)
            self._require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                          and value > 0, key, f"must be a finite number > 0, got {value!r}")
        for key in bounds:
            self._require(self.clamp_init <= getattr(self, key), "clamp_init", f"must be ≤ {key}")

    def bound(self, final: float, clamp_fraction: float) -> float:
        """A clamp bound ramped from ``clamp_init`` to ``final`` after ``clamp_fraction`` of the ramp."""
        return ramp(self.clamp_init, final, clamp_fraction)

    def init_parameters(self, n_latents: int, generator: torch.Generator) -> dict[str, Tensor]:
        params = {"log_step_size": torch.zeros(2), "mu_init": torch.zeros(n_latents),
                  "log_sigma_init": torch.zeros(n_latents)}
        if self.nonlinearity == "relu":
            params["log_gain"] = torch.zeros(n_latents)
        return params

    def initial_state(self, params: Params, batch_size: int) -> State:
        return (params["mu_init"].expand(batch_size, -1), params["log_sigma_init"].expand(batch_size, -1))

    def sample(self, state: State, params: Params, generator: torch.Generator | None,
               temperature: float | None, mean_code: Tensor | None = None) -> Sample:
        z, noise = sample_gaussian(state[0], state[1], generator)
        return Sample(z, noise)

    def activation(self, z: Tensor, params: Params) -> Tensor:
        return z if self.nonlinearity == "identity" else relu_gain(z, params["log_gain"])

    def activation_derivative(self, z: Tensor, params: Params) -> Tensor | None:
        return None if self.nonlinearity == "identity" else relu_gain_derivative(z, params["log_gain"])

    def natural_gradient(self, state: State, sample: Sample, grad_z: Tensor, bias: Tensor, params: Params) -> State:
        assert sample.noise is not None
        return natural_gradient_direction(grad_z, sample.noise, state[1], bias)

    def descend(self, state: State, direction: State, params: Params, clamp_fraction: float) -> State:
        step_size = torch.exp(params["log_step_size"])
        mu, log_sigma = state
        d_mu, d_xi = direction
        delta_mu = soft_clamp_symmetric(-step_size[0] * d_mu, self.bound(self.delta_mu_clamp, clamp_fraction))
        delta_xi = soft_clamp_symmetric(-step_size[1] * d_xi, self.bound(self.delta_log_sigma_clamp, clamp_fraction))
        return (soft_clamp_symmetric(mu + delta_mu, self.bound(self.mu_clamp, clamp_fraction)),
                soft_clamp_symmetric(log_sigma + delta_xi, self.bound(self.log_sigma_clamp, clamp_fraction)))

    def kl(self, state: State, prior_state: State) -> Tensor:
        return gaussian_kl(state[0], state[1], prior_state[0], prior_state[1])

    def mean_code(self, state: State, params: Params) -> Tensor:
        return self.activation(state[0], params)

    def saturated(self, state: State, params: Params) -> Tensor:
        """Inputs with most of the population pinned at the clamp bound, |μ| ≥ 0.95·c_μ for over half the
        neurons (the double tanh clamp caps |μ| at c_μ·tanh(2) ≈ 0.96·c_μ).

        Single large means are legitimate (a small dictionary needs large codes), and the tanh clamps
        keep every rollout finite, so only a population held at its limit counts as a blow-up."""
        pinned = state[0].abs() >= 0.95 * self.mu_clamp
        return pinned.float().mean(dim=-1) > 0.5
