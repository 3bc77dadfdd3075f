"""What an inference method returns and what a training unroll returns (one type for every method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["InferenceResult", "UnrollLoss", "Trace", "TRACE_KEYS", "DEFAULT_TRACE_KEYS", "TRACE_MEANINGS",
           "TRACE_ROW_KEYS"]

#: what each key of ``InferenceResult.trace`` means — one meaning for every inference method (the one rollout
#: loop, ``fond.rollout.run_inference``, measures them all). Step t's value is the batch mean after step t;
#: "the frame" is the input (or, for an online input, its frame t − 1); "decoder input" is f(z_t) of the step's
#: sample (the code itself for point estimates); "mean code" is ``rates``.
TRACE_MEANINGS: dict[str, str] = {
    "r2": "R² of the frame reconstructed from the decoder input, g(f(z_t))",
    "r2_rates": "R² of the frame reconstructed from the mean code, g(rates_t)",
    "zeros": "fraction of exactly-zero entries of the decoder input f(z_t)",
    "du_norm": "‖state_t − state_{t−1}‖₂ of the method's own state (u; μ and log σ; a or LCA's u), state_0 the "
               "initial state (0 while an amortized posterior's frame does not change)",
    "nll": "−log p(frame | g(f(z_t))), the Gaussian likelihood with the model's σ_x (unit variance for point "
           "estimates), nats",
    "kl": "the prior term of the free energy at step t against the method's prior for that step, nats: "
          "KL(q_t ‖ q_{t−1}) for FOND's iterative models (the online prior), KL(q_t ‖ p) for amortized and hybrid "
          "models (the learned prior p; they have no online prior), −log p(a_t) up to a constant for point "
          "estimates (sparse and predictive coding: a penalty, not a KL)",
    "nelbo": "nll + kl (β = 1), nats",
    "rate_max": "the largest entry of the mean code in the batch (firing rate, f(μ), p, or the code a)",
    "saturated": "fraction of inputs whose state sits at the method's clamp bound (the family's sign of a "
                 "blow-up; 0 for methods without one)",
}
TRACE_KEYS: tuple[str, ...] = tuple(TRACE_MEANINGS)
#: what ``infer`` records by default: every key but ``r2_rates``, whose per-step value needs a decode of the
#: dense mean code (B×K·K×D) every step, about as much as the step itself; ask for it by name or with
#: ``trace=True`` (the final step's value is ``InferenceResult.reconstruction_from_rates``'s R² in any case)
DEFAULT_TRACE_KEYS: tuple[str, ...] = tuple(key for key in TRACE_KEYS if key != "r2_rates")
#: the columns of a method's one-pass trace table (``fond.rollout.InferenceSteps.trace_rows``), in ``TRACE_KEYS``
#: order: every key measured per input but ``r2_rates`` (``nelbo`` is nll + kl)
TRACE_ROW_KEYS: tuple[str, ...] = ("r2", "zeros", "du_norm", "nll", "kl", "rate_max", "saturated")


class Trace(dict):
    """``InferenceResult.trace``: key → per-step array; a key that was not recorded fails with one line that
    says how to record it."""

    def __missing__(self, key):
        if key in TRACE_KEYS:
            raise KeyError(f"trace key {key!r} was not recorded (recorded: {', '.join(self) or 'none'}); pass "
                           f"trace=True to infer for every key, or trace=(..., {key!r})")
        raise KeyError(f"unknown trace key {key!r}: the keys are {', '.join(TRACE_KEYS)}")


@dataclass
class InferenceResult:
    """What an inference rollout returns (the same fields for every inference method).

    rates: (B, K) the mean code a downstream reader sees after the last step — firing rates e^u for
    Poisson latents, f(μ) for Gaussian ones, p for Bernoulli ones. spikes: (B, K) the decoder input of
    the last sample, f(z): exact integer counts for Poisson, 0/1 for Bernoulli, real for Gaussian.
    state: the family's state tensors by name (u; mu and log_sigma; logit). reconstruction: (B, D) g(spikes).
    reconstruction_from_rates: (B, D) g(rates). trace: per-step means over the batch, each an array of length ``steps``
    (empty with ``trace=False``), keys ``DEFAULT_TRACE_KEYS`` by default, ``TRACE_KEYS`` with ``trace=True``: r2
    (from spikes), r2_rates (from rates; not recorded by default), zeros (fraction of zero entries of f(z)), du_norm
    (‖state_t − state_{t−1}‖₂), nll, kl (the prior term: to the online prior q_{t−1} for iterative models, to the
    learned prior for amortized and hybrid ones, the penalty −log p(a) for point estimates), nelbo = nll + kl (nats
    per input), rate_max (largest entry of the mean code), saturated (fraction of inputs at the clamp bound) —
    ``TRACE_MEANINGS`` says each exactly.
    history: only when ``infer`` was given ``record=`` steps: {"steps": (S,) int array of 1-based steps,
    "rates": (S, B, K), "spikes": (S, B, K)} — the mean code and the sample after each recorded step.
    steps_used: only with ``infer(..., tol=)`` (anytime inference, ``fond.rollout.Convergence``): (B,) int64,
    the step at which each input converged and was frozen (``steps`` where it never did); the rollout ran
    ``steps_run`` = its maximum, and the trace and history hold the frozen values after that.
    """

    rates: Tensor
    spikes: Tensor
    state: dict[str, Tensor]
    reconstruction: Tensor
    reconstruction_from_rates: Tensor
    steps: int
    trace: Trace = field(default_factory=Trace)
    history: dict[str, Any] | None = None
    steps_used: Tensor | None = None

    @property
    def steps_run(self) -> int:
        """The steps the rollout computed: ``steps``, or fewer when anytime inference froze every input."""
        return self.steps if self.steps_used is None else int(self.steps_used.max())

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
