"""Evaluation at T_test inference steps (DESIGN.md §2.5), chunked over the evaluation set."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fond.errors import DataError
from fond.metrics import convergence_step, r2_per_sample, rate_distortion_distance
from fond.rollout import DEFAULT_WINDOW

__all__ = ["evaluate", "Evaluation", "diverged_inputs", "DIVERGED_R2"]

#: an input's rollout diverged when its final mean-code reconstruction misses it by more than twice its own
#: variance (per-sample R² below this): a blow-up, not a poor fit (a silent code gives R² ≈ 0). A state held
#: near its clamp bound is not divergence by itself: a low bound (the quick P-VAE's rates ≤ e²) keeps healthy
#: states there while every number stays finite and the fit good.
DIVERGED_R2 = -1.0


@dataclass
class Evaluation:
    """Summary of a T-step rollout over an evaluation set, plus the per-step curves.

    r2 / r2_rates: mean per-sample R² at the last step from the sample f(z) ("spikes") / from the mean
    code ("rates": e^u, f(μ), p). zeros: fraction of zero entries of f(z) at the last step.
    convergence_step: first step with R² ≥ 99 % of its final value (None if the final R² ≤ 0).
    nelbo: nats per sample at the last step (NLL + KL to the online prior).
    rate_distortion: √((1 − R²)² + (1 − zeros)²). diverged: the rollout blew up (non-finite values, a mean
    R² of the mean code below 0, or any input diverged — a noisy sample alone is not divergence); numbers
    from such a rollout mean little. diverged_fraction: fraction of inputs whose rollout diverged
    (``diverged_inputs``: final mean-code reconstruction non-finite or R² < ``DIVERGED_R2``). trace:
    per-step means (arrays of length steps; ``saturated`` says how many inputs sit at the clamp bound).
    features: the mean code at the last step (N, K). With anytime inference (``evaluate(..., tol=)``):
    steps_used, the mean step at which an input converged and froze (``steps`` for one that never did), and
    steps_run, the mean length of the rollouts that computed them (a chunk stops when all its inputs froze).
    r2_uncentred / r2_rates_uncentred (``evaluate(..., offset=)``): the same R² against the inputs before their
    preprocessing subtracted ``offset`` (centred MNIST: the raw digits, as the paper measures; the residual is the
    same, the per-input variance it is divided by larger).
    """

    r2: float
    r2_rates: float
    zeros: float
    convergence_step: int | None
    nelbo: float
    n_params: int
    steps: int
    n_samples: int
    rate_distortion: float
    diverged: bool
    rate_max: float
    diverged_fraction: float = 0.0
    trace: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    features: np.ndarray | None = field(repr=False, default=None)
    steps_used: float | None = None
    steps_run: float | None = None
    r2_uncentred: float | None = None
    r2_rates_uncentred: float | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars (no arrays); steps_used / steps_run only for an anytime evaluation, the uncentred R²
        only where an offset was given."""
        keys = ("r2", "r2_rates", "zeros", "convergence_step", "nelbo", "n_params", "steps", "n_samples",
                "rate_distortion", "diverged", "diverged_fraction", "rate_max")
        anytime = ("steps_used", "steps_run") if self.steps_used is not None else ()
        uncentred = ("r2_uncentred", "r2_rates_uncentred") if self.r2_uncentred is not None else ()
        return {k: getattr(self, k) for k in keys + anytime + uncentred}


def evaluate(model, x: np.ndarray | torch.Tensor, steps: int = 1000, *, seed: int = 0,
             chunk_size: int = 1000, keep_features: bool = False, tol: float | None = None,
             window: int = DEFAULT_WINDOW, offset: np.ndarray | torch.Tensor | None = None) -> Evaluation:
    """Roll ``model.infer`` for ``steps`` steps over ``x`` (N, D) in chunks and average the results; each
    chunk goes to the model's device (``x`` may stay on the CPU).

    Per-step curves are averaged over chunks weighted by chunk size; chunk i uses seed ``seed + i``.
    ``tol``, ``window``: anytime inference (``fond.rollout.Convergence``): each input freezes once converged
    and a chunk stops when all its inputs have (``Evaluation.steps_used`` / ``steps_run``). ``offset`` (D,): what
    the data's preprocessing subtracted (``fond.data.preprocessing.input_offset``): adds ``r2_uncentred`` and
    ``r2_rates_uncentred``.
    """
    from fond.models.common import check_steps, make_generator, numeric_tensor

    x = numeric_tensor(x, "evaluation data")
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"evaluation data must have shape (N ≥ 1, D), got {tuple(x.shape)}")
    check_steps(steps)
    make_generator(seed, None)  # an integer seed, checked before any chunk runs
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
    n = x.shape[0]
    sums: dict[str, np.ndarray] = {}
    rate_max = 0.0
    n_diverged = 0
    features = []
    used = run = 0.0
    offset = _checked_offset(offset, x)
    uncentred = np.zeros(2)
    device = model_device(model)  # the data follow the model, one chunk at a time
    for i, begin in enumerate(range(0, n, chunk_size)):
        chunk = x[begin:begin + chunk_size].to(device)
        res = model.infer(chunk, steps, seed=seed + i, trace=True, **({} if tol is None else
                                                                        {"tol": tol, "window": window}))
        if tol is not None:
            used, run = used + float(res.steps_used.sum()), run + res.steps_run * chunk.shape[0]
        for key, values in res.trace.items():
            if key == "rate_max":  # a maximum, not a mean
                rate_max = max(rate_max, float(np.max(values)))
            else:
                sums[key] = sums.get(key, 0.0) + np.asarray(values, dtype=float) * chunk.shape[0]
        n_diverged += int(diverged_inputs(chunk, res).sum())
        if offset is not None:
            uncentred += _uncentred_r2_sums(chunk, res, offset)
        if keep_features:
            features.append(res.rates.cpu().numpy())
    trace = {k: v / n for k, v in sums.items()}
    # the trace's last step is the rollout's final state: its means are the summary numbers
    r2, r2_rates, zeros = (float(trace[k][-1]) for k in ("r2", "r2_rates", "zeros"))
    nelbo = float(trace["nelbo"][-1])
    diverged = (not all(math.isfinite(v) for v in (r2, r2_rates, zeros, nelbo))
                or r2_rates < 0 or n_diverged > 0)
    return Evaluation(
        r2=r2, r2_rates=r2_rates, zeros=zeros, convergence_step=convergence_step(trace.get("r2", [])),
        nelbo=nelbo, n_params=int(model.n_params()), steps=steps, n_samples=n,
        rate_distortion=rate_distortion_distance(r2, zeros), diverged=bool(diverged), rate_max=rate_max,
        diverged_fraction=n_diverged / n, trace=trace,
        features=np.concatenate(features) if keep_features else None,
        steps_used=None if tol is None else used / n, steps_run=None if tol is None else run / n,
        r2_uncentred=None if offset is None else float(uncentred[0] / n),
        r2_rates_uncentred=None if offset is None else float(uncentred[1] / n),
    )


def model_device(model) -> torch.device:
    """Where ``model``'s inputs go: the device of its ``input_like`` tensor, else the CPU."""
    like = getattr(model, "input_like", None)
    return like.device if like is not None else torch.device("cpu")


def _checked_offset(offset, x: torch.Tensor) -> torch.Tensor | None:
    """``offset`` as a float64 (D,) tensor matching x (N, D), or None; a wrong shape or a non-finite entry is a
    ``DataError``."""
    if offset is None:
        return None
    offset = torch.as_tensor(np.asarray(offset, dtype=np.float64))
    if offset.shape != (x.shape[1],) or not bool(torch.isfinite(offset).all()):
        raise DataError(f"offset must be {x.shape[1]} finite numbers (one per input dimension), got shape "
                        f"{tuple(offset.shape)}")
    return offset


def _uncentred_r2_sums(chunk: torch.Tensor, result, offset: torch.Tensor) -> np.ndarray:
    """Σ over the chunk's inputs of R² against x + offset, of the sample's and of the mean code's reconstruction."""
    images = chunk.cpu().double() + offset
    return np.array([float(r2_per_sample(images, reconstruction.cpu().double().reshape(images.shape) + offset).sum())
                     for reconstruction in (result.reconstruction, result.reconstruction_from_rates)])


def diverged_inputs(x: torch.Tensor, result) -> torch.Tensor:
    """(B,) bool: the inputs x (B, D) whose rollout ``result`` (an ``InferenceResult`` of x) diverged: a
    non-finite mean code or reconstruction at the last step, or a mean-code R² below ``DIVERGED_R2``."""
    reconstruction = result.reconstruction_from_rates.reshape(x.shape[0], -1)
    rates = result.rates.reshape(x.shape[0], -1)
    finite = torch.isfinite(reconstruction).all(dim=-1) & torch.isfinite(rates).all(dim=-1)
    r2 = r2_per_sample(x.to(reconstruction.dtype), torch.nan_to_num(reconstruction))
    return ~finite | ~(r2 >= DIVERGED_R2)
