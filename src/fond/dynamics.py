"""FOND's fixed prescription: natural-gradient descent on the free energy, online belief updating,
iterative refinement — as pure functions of explicit state.

For the Poisson family with a linear decoder g(z) = Φz and likelihood N(x; Φz, diag(σ_x²)), the
natural gradient of the free energy in membrane-potential coordinates (Fisher metric diag(exp u)) with
spikes in the recurrent term and the online prior u₀ ← u_t (so the leak vanishes) is one step

    u_{t+1} = u_t + η · ( Φᵀ (x − Φ z_t) / σ_x² − b ),     z_t ~ Pois(exp(u_t)),

drive minus explaining-away minus a learned per-neuron bias, followed by soft upper clamps on the
increment and on the potential. Nothing here keeps state between calls: every function takes the state
it needs and returns the new one, so rollouts do not depend on call order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["DynamicsParams", "soft_clamp_upper", "pullback", "natural_gradient_step", "EvalOperators"]


@dataclass(frozen=True)
class DynamicsParams:
    """What one inference step needs, read off a model's learned parameters.

    dictionary: Φ, (D, K). inv_variance: σ_x⁻², (D,). bias: b = exp(log b), (K,).
    step_size: η = exp(log η), scalar tensor. clamp: the upper soft-clamp bound c on both the increment
    Δu and the potential u (nats; ramps from 2 to 10 in training). floor: hard lower bound (nats).
    """

    dictionary: Tensor
    inv_variance: Tensor
    bias: Tensor
    step_size: Tensor
    clamp: float
    floor: float = -8.0


def soft_clamp_upper(x: Tensor, c: float, floor: float = -8.0) -> Tensor:
    """Hard floor, then the smooth upper bound c − softplus(c − x) (≈ x well below c, → c above)."""
    return c - F.softplus(c - x.clamp_min(floor))


def pullback(params: DynamicsParams, x: Tensor, reconstruction: Tensor) -> Tensor:
    """Φᵀ (x − x̂) / σ_x²: the precision-weighted prediction error carried back to the latents, (B, K)."""
    return ((x - reconstruction) * params.inv_variance) @ params.dictionary


def natural_gradient_step(params: DynamicsParams, u: Tensor, error_pullback: Tensor) -> Tensor:
    """One FOND step for the Poisson family: u_{t+1} from u_t (B, K) and Φᵀ(x − Φz_t)/σ_x² (B, K)."""
    du = params.step_size * (error_pullback - params.bias)
    du = soft_clamp_upper(du, params.clamp, params.floor)
    return soft_clamp_upper(u + du, params.clamp, params.floor)


@dataclass(frozen=True)
class EvalOperators:
    """Per-batch constants of a long evaluation rollout, so that a step is one (B×K)·(K×K) product.

    drive: Φᵀ x / σ_x², (B, K). gram: W = Φᵀ diag(σ_x⁻²) Φ, (K, K). Then Φᵀ(x − Φz)/σ_x² = drive − z W.
    """

    drive: Tensor
    gram: Tensor

    @classmethod
    def build(cls, params: DynamicsParams, x: Tensor) -> EvalOperators:
        weighted = params.dictionary * params.inv_variance.unsqueeze(1)
        return cls(drive=x @ weighted, gram=params.dictionary.T @ weighted)

    def pullback(self, spikes: Tensor) -> Tensor:
        return self.drive - spikes @ self.gram
