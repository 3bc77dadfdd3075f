"""A user's plug-in, as ``fond --plugin tests/plugin_family.py`` loads it: one small family and one model spec.

The family "fixed-gauss" is a Gaussian with a fixed, known spread: state (μ,), z = μ + σ₀ε, Fisher metric
1/σ₀², so the natural gradient is σ₀²·∂F/∂z (+ the learned bias b); KL(N(μ, σ₀²) ‖ N(μ₀, σ₀²)) =
(μ − μ₀)²/(2σ₀²); the code is μ. Registering it makes the model "fixed-gauss" (a FOND model of the family,
default presets); the spec "fixed-gauss-wide" fixes σ₀ = 2 and gives the model its own title and presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fond.families.base import Family, Params, Sample, State, register_family
from fond.registry import PresetValues, family_model_spec, register_model

FAMILY = "fixed-gauss"
WIDE = "fixed-gauss-wide"


@register_family(FAMILY)
@dataclass(frozen=True)
class FixedGaussianFamily(Family):
    """Gaussian latents of fixed spread ``sigma`` (σ₀); ``clamp``: soft bound c·tanh(·/c) on every Δμ."""

    sigma: float = 1.0
    clamp: float = 5.0

    state_names: ClassVar[tuple[str, ...]] = ("mu",)

    def validate(self) -> None:
        for key in ("sigma", "clamp"):
            value = getattr(self, key)
            self._require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key,
                          f"must be a finite number > 0, got {value!r}")

    def init_parameters(self, n_latents: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"log_step_size": torch.full((1,), -2.0), "mu_init": torch.zeros(n_latents)}

    def initial_state(self, params: Params, batch_size: int) -> State:
        return (params["mu_init"].expand(batch_size, -1),)

    def sample(self, state: State, params: Params, generator: torch.Generator | None,
               temperature: float | None) -> Sample:
        noise = torch.randn(state[0].shape, generator=generator, dtype=state[0].dtype)
        return Sample(state[0] + self.sigma * noise, noise)

    def natural_gradient(self, state: State, sample: Sample, grad_z: Tensor, bias: Tensor, params: Params) -> State:
        return (self.sigma ** 2 * grad_z + bias,)

    def descend(self, state: State, direction: State, params: Params, clamp_fraction: float) -> State:
        step = -torch.exp(params["log_step_size"]) * direction[0]
        return (state[0] + self.clamp * torch.tanh(step / self.clamp),)

    def kl(self, state: State, prior_state: State) -> Tensor:
        return (state[0] - prior_state[0]) ** 2 / (2 * self.sigma ** 2)

    def mean_code(self, state: State, params: Params) -> Tensor:
        return state[0]


register_model(family_model_spec(FAMILY, name=WIDE, family_options={"sigma": 2.0}, title="iFG-VAE (wide)",
                                 presets={"natural": PresetValues(steps=4, beta=2.0)}))
