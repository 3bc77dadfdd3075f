"""Predictive coding (Rao & Ballard 1999): a Gaussian prior and a point-estimate code found by gradient
descent on the prediction error.

The code a minimises, per input, E(a) = ½‖x − Φa‖² + ½‖a‖²/σ_p² (unit-variance Gaussian likelihood,
prior N(0, σ_p² I)) by plain gradient dynamics from a = 0:

    a ← a + η(Φᵀ(x − Φa) − a/σ_p²)

whose fixed point is the ridge solution (ΦᵀΦ + I/σ_p²)⁻¹Φᵀx (``sklearn.linear_model.Ridge`` with
alpha = 1/σ_p², no intercept). E's Hessian is ΦᵀΦ + I/σ_p², so the steps converge for
η < 2/(L + 1/σ_p²), L = the largest eigenvalue of ΦᵀΦ (computed per batch); ``step_size`` is η as a
fraction of that bound (default 0.5, i.e. η = 1/(L + 1/σ_p²), the classic 1/Lipschitz step).

Learning (``unroll_loss``) takes gradient steps on ½‖x − Φa*‖² + ½‖a*‖²/σ_p² w.r.t. Φ at the inferred
code a* (Rao & Ballard's Hebbian rule ΔΦ ∝ (x − Φa*)a*ᵀ). There is no renormalisation of Φ: the
trainer's weight decay on ``decoder.*`` parameters plays the role of Rao & Ballard's prior on Φ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from fond.models.common import check_option
from fond.models.sparse_coding import MAPCoding, Solution, check_positive_number, largest_eigenvalue

__all__ = ["PredictiveCodingOptions", "PredictiveCoding"]


@dataclass(frozen=True)
class PredictiveCodingOptions:
    """Options of predictive coding (``ModelConfig.method_options``).

    prior_variance: σ_p² of the Gaussian prior N(0, σ_p² I) (default 1). step_size: η as a fraction of
    the stability bound 2/(L + 1/σ_p²), in (0, 1) (default 0.5). init_scale: std of Φ's normal
    initialisation (default 0.1; ``ModelConfig.init_scale`` belongs to the FOND models and is not used).
    """

    prior_variance: float = 1.0
    step_size: float = 0.5
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        for key in ("prior_variance", "step_size", "init_scale"):
            check_positive_number(getattr(self, key), key)
        check_option(self.step_size < 1, "step_size",
                     f"must be < 1 (a fraction of the stability bound), got {self.step_size!r}")


class PredictiveCoding(MAPCoding):
    """Rao & Ballard predictive coding: a ← a + η(Φᵀ(x − Φa) − a/σ_p²) from a = 0 (``state["a"]``).

    ``penalty`` (reported as ``kl`` in traces) is the prior term ½‖a‖²/σ_p², not a KL divergence.
    """

    default_model = "pc"

    def _init_scale(self) -> float:
        return float(self.options.init_scale)

    @property
    def prior_precision(self) -> float:
        """1/σ_p²."""
        return 1.0 / float(self.options.prior_variance)

    def penalty(self, code: Tensor) -> Tensor:
        """½‖a‖²/σ_p² per input: (B, K) → (B,)."""
        return 0.5 * self.prior_precision * code.pow(2).sum(-1)

    def _dynamics(self, drive: Tensor, gram: Tensor) -> Iterator[Solution]:
        precision = self.prior_precision
        eta = self.options.step_size * 2.0 / (largest_eigenvalue(gram) + precision)
        a = torch.zeros_like(drive)
        yield {"a": a}, a
        while True:
            a = a + eta * (drive - a @ gram - precision * a)
            yield {"a": a}, a

    def after_update(self) -> None:
        """Nothing to do: Φ is not renormalised (kept for the trainer's uniform interface)."""
