"""The Bernoulli family: binary latents, and the evidence that a new family is one new file.

State: logits θ (B×K), the "membrane potential"; q(z) = ∏_k Bern(z_k; p_k) with p = sigmoid(θ), z ∈ {0,1}^K.
As in every family the prior of each step is the previous step's posterior (online belief updating).

Derivation of the step. The Fisher metric of Bern(p) in logit coordinates is G(θ) = p(1 − p) (per latent,
diagonal), and ∂F/∂θ = p(1 − p)·∂F/∂p, so the natural gradient G⁻¹∂F/∂θ is simply ∂F/∂p. For a linear
decoder Φ (D×K) with per-pixel inverse variances v = 1/σ_x², the expected reconstruction term is exact:

    E_q‖x − Φz‖²_v = ‖x − Φp‖²_v + Σ_k p_k(1 − p_k)‖Φ_k‖²_v,

so ½·∂/∂p of it is −Φᵀ v (x − Φp) + ½(1 − 2p)·diag(ΦᵀVΦ); the KL to the online prior has zero gradient
at the start of the step. Putting the sample z in place of p in the first (recurrent) term — spike-based
communication, exactly as in the Poisson family — gives grad_z = −Φᵀv(x − Φz), and the learned positive
bias b stands in for the second term. One step is therefore

    θ ← clamp_θ(θ + clamp_Δ(−η·(grad_z + b))) = clamp_θ(θ + clamp_Δ(η(Φᵀ(x − Φz)/σ_x² − b))),

a binary spiking network whose lateral connections −ΦᵀΦ inhibit co-active neurons. The clamps are the
symmetric soft clamp c·tanh(·/c) on Δθ, its bound c ramping from ``clamp_init`` to ``clamp_final``, and a hard
clamp of θ to ±clamp_final.

Samples: at evaluation the hard draw 1[U < p]; in training the binary-concrete (Gumbel-sigmoid) relaxation
z = sigmoid((θ + log U − log(1 − U))/τ), reparameterised in θ, or its straight-through variant (the hard
draw 1[θ + log U − log(1 − U) > 0] forward, the relaxation's gradient backward).

Saturation: the base class's "never" is kept on purpose. A binary unit cannot blow up — z ∈ {0, 1}
whatever θ is, the code p lies in (0, 1) and θ itself is held inside ±c by the tanh clamp — so a state
at the clamp bound only means a confident unit, not a runaway population burst as with Poisson rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fond.families.base import Params, PotentialFamily, Sample, State, register_family

__all__ = ["BernoulliFamily", "INDICATORS", "bernoulli_kl", "relaxed_bernoulli", "sample_bernoulli"]

INDICATORS: tuple[str, ...] = ("concrete", "straight_through")


def bernoulli_kl(logit: Tensor, logit_prior: Tensor) -> Tensor:
    """KL(Bern(sigmoid(θ)) ‖ Bern(sigmoid(θ₀))) elementwise, in nats, from logits; ≥ 0, 0 iff θ = θ₀.

    The KL is the Bregman divergence of softplus: softplus(θ₀) − softplus(θ) − p·(θ₀ − θ), i.e.
    p(log p − log p₀) + (1 − p)(log(1 − p) − log(1 − p₀)) with log p = −softplus(−θ), log(1 − p) =
    −softplus(θ). To keep it accurate it is evaluated after the label swap θ → −θ (which leaves the KL
    unchanged) that makes θ ≤ 0, so no softplus is large; for |θ₀ − θ| ≤ 1 the softplus difference is
    log1p(p·expm1(θ₀ − θ)), free of the cancellation between two nearly equal softplus values. Its value
    and its gradient are exactly zero at θ = θ₀ (the online prior makes the KL leak vanish). Shapes broadcast.
    """
    logit, logit_prior = torch.broadcast_tensors(logit, logit_prior)
    reflect = logit > 0
    t = torch.where(reflect, -logit, logit)
    t0 = torch.where(reflect, -logit_prior, logit_prior)
    delta = t0 - t
    p = torch.sigmoid(t)
    small = delta.abs() <= 1.0
    delta_small = torch.where(small, delta, torch.zeros_like(delta))  # keeps expm1 finite in the unused branch
    log_ratio = torch.where(small, torch.log1p(p * torch.expm1(delta_small)), F.softplus(t0) - F.softplus(t))
    return (log_ratio - p * delta).clamp_min(0.0)


def _logistic_noise(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """log U − log(1 − U), U uniform, guarded away from 0 and 1 (a standard logistic variable)."""
    info = torch.finfo(like.dtype)
    uniforms = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    uniforms = uniforms.clamp(info.tiny, 1.0 - info.eps / 2)
    return torch.log(uniforms) - torch.log1p(-uniforms)


def sample_bernoulli(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Hard draw z = 1[U < sigmoid(θ)] ∈ {0, 1}, same dtype and shape as ``logits`` (no gradient)."""
    logits = logits.detach()
    uniforms = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    return (uniforms < torch.sigmoid(logits)).to(logits.dtype)


def relaxed_bernoulli(logits: Tensor, temperature: float, generator: torch.Generator | None = None,
                      straight_through: bool = False) -> Tensor:
    """Binary-concrete sample z = sigmoid((θ + L)/τ), L = log U − log(1 − U), differentiable in θ.

    P(z > ½) = P(θ + L > 0) = sigmoid(θ) for every τ, and z → the hard draw 1[θ + L > 0] as τ → 0.
    ``straight_through``: forward the hard draw (an exact Bernoulli sample), backward the relaxation's
    gradient. τ = 0 gives the hard draw (zero gradient). ``logits``: any shape; returns the same shape.
    """
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature}")
    margin = logits + _logistic_noise(logits.shape, generator, logits)
    hard = (margin.detach() > 0).to(logits.dtype)
    if temperature == 0.0:
        return hard + 0.0 * logits if logits.requires_grad else hard
    soft = torch.sigmoid(margin / temperature)
    if straight_through:
        return hard + (soft - soft.detach())
    return soft


def _soft_clamp(x: Tensor, c: float) -> Tensor:
    """c·tanh(x/c): ≈ identity for |x| ≪ c, bounded by ±c."""
    return c * torch.tanh(x / c)


@register_family("bernoulli")
@dataclass(frozen=True)
class BernoulliFamily(PotentialFamily):
    """Bernoulli latents in logit coordinates: a binary spiking network (see the module docstring).

    State ``(θ,)``, firing probabilities p = sigmoid(θ). Fisher metric diag(p(1 − p)), so the natural
    gradient is ∂F/∂p; with spikes in the recurrent term and the learned b for ½(1 − 2p)·diag(ΦᵀΣ⁻¹Φ) one
    step is θ ← clip(θ + c·tanh(η(Φᵀ(x − Φz)/σ² − b)/c), ±clamp_final).

    Options: logit_init_low/high: range of the uniform initial logits (learned per neuron).
    clamp_init/clamp_final: the symmetric soft-clamp bound c on Δθ, ramped during training, final in
    evaluation. indicator: training sample, "concrete" (binary-concrete relaxation) or "straight_through"
    (hard forward, concrete backward). Learned tensors: ``log_step_size`` (1,), ``logit_init`` (K,).
    """

    logit_init_low: float = -5.0
    logit_init_high: float = -3.0
    clamp_init: float = 2.0
    clamp_final: float = 10.0
    indicator: str = "concrete"

    state_names: ClassVar[tuple[str, ...]] = ("logit",)
    integer_samples: ClassVar[bool] = True

    def validate(self) -> None:
        for key in ("logit_init_low", "logit_init_high", "clamp_init", "clamp_final"):
            value = getattr(self, key)
            self._require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                          key, f"must be a finite number, got {value!r}")
        self._require(self.logit_init_low < self.logit_init_high, "logit_init_low", "must be < logit_init_high")
        self._require(self.clamp_init > 0, "clamp_init", f"must be > 0, got {self.clamp_init!r}")
        self._require(self.clamp_init <= self.clamp_final, "clamp_final", "need clamp_init ≤ clamp_final")
        self._require(self.indicator in INDICATORS, "indicator",
                      f"expected one of {INDICATORS}, got {self.indicator!r}")

    def bound(self, clamp_fraction: float) -> float:
        """The clamp bound c after ``clamp_fraction`` of its ramp (logit units): ``clamp(clamp_fraction)``."""
        return self.clamp(clamp_fraction)

    def initial_range(self) -> tuple[float, float]:
        return self.logit_init_low, self.logit_init_high

    def sample(self, state: State, params: Params, generator: torch.Generator | None,
               temperature: float | None, mean_code: Tensor | None = None) -> Sample:
        if temperature is None:
            return Sample(sample_bernoulli(state[0], generator))
        return Sample(relaxed_bernoulli(state[0], temperature, generator,
                                        straight_through=self.indicator == "straight_through"))

    def descend(self, state: State, direction: State, params: Params, clamp_fraction: float) -> State:
        # The increment is soft-clamped with the ramped bound; the logit itself is held in ±clamp_final by a
        # hard clamp, which leaves typical logits untouched (a tanh clamp would pull every θ toward 0 each
        # step, and at clamp_init it would drag the initial logits far from their learned values).
        delta = _soft_clamp(-torch.exp(params["log_step_size"]) * direction[0], self.bound(clamp_fraction))
        return ((state[0] + delta).clamp(-self.clamp_final, self.clamp_final),)

    def kl(self, state: State, prior_state: State) -> Tensor:
        return bernoulli_kl(state[0], prior_state[0])

    def mean_code(self, state: State, params: Params) -> Tensor:
        return torch.sigmoid(state[0])
