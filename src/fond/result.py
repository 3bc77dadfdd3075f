"""What an inference method returns and what a training unroll returns (one type for every method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["InferenceResult", "UnrollLoss", "TRACE_KEYS"]

TRACE_KEYS: tuple[str, ...] = ("r2", "r2_rates", "zeros", "du_norm", "nll", "kl", "nelbo", "rate_max", "saturated")


@dataclass
class InferenceResult:
    """What an inference rollout returns (the same fields for every inference method).

    rates: (B, K) the mean code a downstream reader sees after the last step — firing rates e^u for
    Poisson latents, f(μ) for Gaussian ones, p for Bernoulli ones. spikes: (B, K) the decoder input of
    the last sample, f(z): exact integer counts for Poisson, 0/1 for Bernoulli, real for Gaussian.
    state: the family's state tensors by name (u; mu and log_sigma; logit). reconstruction: (B, D) g(spikes).
    reconstruction_from_rates: (B, D) g(rates). trace: per-step means over the batch, each an array of
    length ``steps``: r2 (from spikes), r2_rates (from rates), zeros (fraction of zero entries of f(z)),
    du_norm (‖state_t − state_{t−1}‖₂), nll, kl (to the online prior), nelbo = nll + kl (nats per input),
    rate_max (largest rate in the batch), saturated (fraction of inputs at the family's clamp bound).
    history: only when ``infer`` was given ``record=`` steps: {"steps": (S,) int array of 1-based steps,
    "rates": (S, B, K), "spikes": (S, B, K)} — the mean code and the sample after each recorded step.
    """

    rates: Tensor
    spikes: Tensor
    state: dict[str, Tensor]
    reconstruction: Tensor
    reconstruction_from_rates: Tensor
    steps: int
    trace: dict[str, np.ndarray] = field(default_factory=dict)
    history: dict[str, Any] | None = None

    @property
    def membrane_potential(self) -> Tensor:
        """The family's first state tensor: u (Poisson), μ (Gaussian), the logit (Bernoulli), (B, K)."""
        return next(iter(self.state.values()))


@dataclass
class UnrollLoss:
    """Training objective of one batch: the mean over T_train steps of NLL + β·KL (scaled by 256/D).

    loss: scalar tensor to backpropagate. nll, kl: per-step batch means (length T, no grad),
    rate_max: the largest rate (mean code) seen. All per-sample quantities are in nats.
    """

    loss: Tensor
    nll: np.ndarray
    kl: np.ndarray
    rate_max: float
