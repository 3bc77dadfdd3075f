"""The evaluation engine: fused FOND steps for the combinations that admit them.

``dynamics.rollout`` runs any family with any decoder through ``fond_step``. For the paper's main model —
Poisson latents, linear decoder — a step can be written with one matrix product, one vectorised
exponential and one compiled pass (``fond.families.kernels.poisson_rate_step``) that does the clamped
update, the rates and the exact Poisson draw together, by carrying E = e^{−u} instead of u:

    d = η(Φᵀx/σ² − b) − η·z·ΦᵀΣ⁻¹Φ                  (torch.addmm, the step's one product)
    E ← min(E·(min(e^{−d}, e^{−floor}) + e^{−c}), e^{−floor}) + e^{−c},  r = 1/E,  z ~ Pois(r)

which is the family's rule u ← c − softplus(c − max(u + Δu, floor)), Δu = c − softplus(c − max(d, floor)),
rewritten exactly (c − softplus(c − y) = −log(e^{−y} + e^{−c})). ``PoissonLinearEngine`` is what
``rollout`` uses when the family and the decoder's operators allow it; results equal the generic path
to floating-point rounding on the same draws (``tests/test_engine.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PoissonLinearEngine"]


class PoissonLinearEngine:
    """Fused evaluation steps of a Poisson family with a linear decoder's operators (drive, gram).

    ``family``: a PoissonFamily; ``params``: its tensors (``log_step_size``); ``bias``: b (K,).
    ``start(u)`` takes the initial potentials (B, K); each ``step(z, drive)`` maps the previous sample z
    (B, K) and the current drive Φᵀx/σ² (B, K) to (rates, spikes) of the new state; ``potentials()``
    returns u = −log E. Tensors are reused between steps: copy what you keep.
    """

    def __init__(self, family, params, bias: Tensor, gram: Tensor) -> None:
        from fond.families.sampling import RECIPROCALS, SMALL_RATE_CUTOFF

        step = torch.exp(params["log_step_size"]).reshape(())
        self.step_size = step
        self.bias = bias
        self.scaled_gram = (step * gram).contiguous()
        c = family.clamp(1.0)
        self.ceiling = math.exp(-c)
        self.floor_factor = math.exp(-family.floor)
        self.reciprocals = RECIPROCALS
        self.cutoff = SMALL_RATE_CUTOFF
        self._drive = None
        self._neg_drive: Tensor | None = None

    def start(self, u: Tensor) -> None:
        self.inv_rates = torch.exp(-u).contiguous()
        self.rates = torch.empty_like(self.inv_rates)
        self.spikes = torch.empty_like(self.inv_rates)
        self.work = torch.empty_like(self.inv_rates)

    def step(self, z: Tensor, drive: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        from fond.families.kernels import poisson_rate_step
        from fond.families.sampling import draw_key, kernel_threads

        if drive is not self._drive:  # −η(drive − b), once per input frame
            self._drive = drive
            self._neg_drive = (self.step_size * (self.bias - drive)).contiguous()
        torch.addmm(self._neg_drive, z, self.scaled_gram, out=self.work)  # −d
        self.work.exp_()
        key1, key2 = draw_key(generator)
        kernel_threads()
        poisson_rate_step(self.work.view(-1).numpy(), self.inv_rates.view(-1).numpy(), self.rates.view(-1).numpy(),
                          self.spikes.view(-1).numpy(), key1, key2, self.ceiling, self.floor_factor, self.cutoff,
                          self.reciprocals)
        return self.rates, self.spikes

    def potentials(self) -> Tensor:
        """u = −log E (B, K)."""
        return -torch.log(self.inv_rates)
