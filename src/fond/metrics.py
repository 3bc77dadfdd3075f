"""Evaluation metrics shared by every inference method (DESIGN.md §2.5)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "r2_per_sample",
    "zeros_fraction",
    "gaussian_nll",
    "convergence_step",
    "rate_distortion_distance",
]

LOG_2PI = math.log(2.0 * math.pi)


def r2_per_sample(x: Tensor, x_hat: Tensor, eps: float = 1e-12) -> Tensor:
    """R² = 1 − Σ_d (x − x̂)² / Σ_d (x − mean_d x)², one value per sample: (B, D) → (B,)."""
    residual = (x - x_hat).pow(2).sum(-1)
    total = (x - x.mean(-1, keepdim=True)).pow(2).sum(-1)
    return 1.0 - residual / total.clamp_min(eps)


def zeros_fraction(spikes: Tensor) -> Tensor:
    """Fraction of exactly-zero latent counts per sample: (B, K) → (B,)."""
    return (spikes == 0).to(spikes.dtype if spikes.is_floating_point() else torch.float32).mean(-1)


def gaussian_nll(x: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """−log N(x; mean, diag(exp(2 log σ))) summed over the last axis, in nats: (B, D) → (B,)."""
    z = (x - mean) * torch.exp(-log_sigma)
    return (0.5 * z.pow(2) + log_sigma + 0.5 * LOG_2PI).sum(-1)


def convergence_step(r2_trace: np.ndarray, fraction: float = 0.99) -> int | None:
    """First inference step t (1-based) at which R² reaches ``fraction`` of its final value.

    Defined only for a positive final R²; returns None otherwise (nothing to converge to).
    """
    trace = np.asarray(r2_trace, dtype=float)
    if trace.size == 0 or not np.isfinite(trace[-1]) or trace[-1] <= 0:
        return None
    reached = np.nonzero(trace >= fraction * trace[-1])[0]
    return int(reached[0]) + 1


def rate_distortion_distance(r2: float, zeros: float) -> float:
    """d = √((1 − R²)² + (1 − zeros)²): distance to the ideal corner (perfect and silent); smaller is better."""
    return float(math.hypot(1.0 - r2, 1.0 - zeros))
