"""Temporal analyses of inference dynamics: response latency, serial dependence, tracking of moving input.

Inference in an iterative model unfolds over steps, so its responses have a time course that can be
compared with neurons': how long the population takes to respond and how that depends on contrast
(DESIGN.md §3: higher contrast → earlier response), how much the belief about a stimulus is pulled toward
the one shown before it (serial dependence), and how closely the code follows an input that moves
(tracking, with a lag). Every function runs ``model.infer`` with ``record=`` (the mean code after each
recorded step, ``result.history``); the online analyses give it a 3-D input (steps, B, D) whose frame
x[t − 1] drives step t with no reset in between.

Only models that accept an online input sequence (iterative and amortized ones) can run
``serial_dependence`` and ``tracking``; any other model's ``DataError`` for a 3-D input propagates
unchanged, as does any error ``infer`` raises for bad data.

Conventions: steps are 1-based (step t is the state after t updates; step 0 is the state before the
first update, i.e. before the stimulus). Numbers come back as JSON-ready dicts from ``to_dict()``, where
a value that is undefined by construction (e.g. the R² against the previous frame at step 1, or the
latency of a response that never rises) is ``None`` (NaN in the arrays). Figures are PNGs written
atomically (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.ticker import NullLocator
from scipy import stats
from torch import Tensor

from fond.analysis.stimuli import contrast_series, pair_sequence
from fond.analysis.summary import none_if_nan
from fond.errors import ConfigError, DataError
from fond.metrics import r2_per_sample
from fond.plots import new_figure, save_figure
from fond.validate import finite_float, float_array, positive_int

__all__ = [
    "response_latency",
    "initial_rates",
    "LatencyResult",
    "contrast_latency",
    "plot_contrast_latency",
    "SerialDependenceResult",
    "serial_dependence",
    "plot_serial_dependence",
    "TrackingResult",
    "tracking",
    "plot_tracking",
    "spike_raster",
]

# --------------------------------------------------------------------------- helpers


def _as_input(x: Any, name: str, ndim: int) -> Tensor:
    """``x`` as a finite floating tensor with ``ndim`` axes, none of them empty, else ``DataError``."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    if not x.is_floating_point():
        raise DataError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.ndim != ndim or 0 in x.shape:
        raise DataError(f"{name} must have {ndim} non-empty axes, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contains NaN or Inf")
    return x.detach()


def _check_fraction(fraction: Any) -> float:
    value = finite_float(fraction, "fraction")
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return value


def _recorded_rates(result: Any, expected_steps: Sequence[int]) -> np.ndarray:
    """``result.history["rates"]`` as a float64 array (S, B, K), checked against the steps asked for."""
    history = getattr(result, "history", None)
    if not history or "rates" not in history:
        raise DataError("the model's infer returned no history; it must support record= steps")
    steps = np.asarray(history["steps"]).tolist()
    if steps != list(expected_steps):
        raise DataError(f"the model recorded steps {steps[:3]}..., expected {list(expected_steps)[:3]}...")
    rates = history["rates"]
    rates = rates.detach().cpu().numpy() if isinstance(rates, Tensor) else np.asarray(rates)
    return rates.astype(np.float64)


# --------------------------------------------------------------------------- response latency


def response_latency(curve: Any, fraction: float = 0.5, *, baseline: float | None = None) -> float:
    """The (fractional, 1-based) step at which a response first reaches ``fraction`` of its rise.

    curve: (T,) the response after steps 1..T (``curve[0]`` is step 1). The rise is measured from a
    baseline to the peak (the curve's maximum); the threshold is ``baseline + fraction·(peak − baseline)``,
    and the crossing time is linearly interpolated between the two steps that bracket it.

    baseline: the response before the stimulus, i.e. at step 0 (for instance the mean code of the initial
    state, the prior's rates). Given, it is placed at step 0 and takes part in the interpolation, so a
    latency can fall in (0, 1]. ``None`` (default): the first value ``curve[0]`` is the baseline, placed at
    step 1, and the latency is ≥ 1. Either way the latency is the time from the baseline's step plus that
    step: a rise r(t) = r∞(1 − e^{−t/τ}) from step 0 gives τ·ln 2 with ``baseline=0`` and 1 + τ·ln 2
    (exactly, as the exponential is memoryless) with ``baseline=None``; a step response that jumps at step
    n gives n − 1 + fraction.

    Returns NaN when the response never rises above its baseline (peak ≤ baseline: flat or falling
    curves, e.g. suppressed neurons). Raises ``DataError`` for a curve that is not 1-D, empty or not finite,
    ``ConfigError`` for ``fraction`` outside (0, 1].
    """
    fraction = _check_fraction(fraction)
    values = float_array(curve, "curve", finite=True)
    if values.ndim != 1 or values.size == 0:
        raise DataError(f"curve must be a non-empty 1-D array, got shape {values.shape}")
    if baseline is None:
        times = np.arange(1, values.size + 1, dtype=np.float64)
        base = float(values[0])
    else:
        base = float(baseline)
        if not math.isfinite(base):
            raise DataError(f"baseline must be finite, got {baseline!r}")
        values = np.concatenate([[base], values])
        times = np.arange(0, values.size, dtype=np.float64)
    peak = float(values.max())
    if not peak > base:
        return float("nan")
    threshold = base + fraction * (peak - base)
    i = int(np.argmax(values >= threshold))  # ≥ 1: values[0] = base < threshold
    before, after = values[i - 1], values[i]
    return float(times[i - 1] + (threshold - before) / (after - before))


def initial_rates(model: Any, batch_size: int = 1) -> Tensor | None:
    """The mean code before the first step, (batch_size, K), for FOND iterative models; else None.

    For an ``IterativeVAE`` (iP-VAE, iG-VAE, iB-VAE) it is the family's mean code of the learned initial
    state (rates e^{u_init} for Poisson), the same for every input. Other models (amortized, hybrid, sparse
    coding, predictive coding) have no input-independent state before step 1 that this function knows of.
    """
    from fond.models.iterative import IterativeVAE

    if not isinstance(model, IterativeVAE):
        return None
    with torch.no_grad():
        params = {name: p.detach() for name, p in model.family_params().items()}
        state = model.family.initial_state(params, batch_size)
        return model.family.mean_code(state, params).detach().clone()


@dataclass
class LatencyResult:
    """Response latency per contrast (``contrast_latency``).

    contrasts: (C,) ascending. latencies: (C, N) the latency (1-based fractional steps) of each stimulus's
    population response at each contrast, NaN where it never rises. median, q25, q75: (C,) over the finite
    latencies of each contrast (NaN where none is). curves: (C, steps) the population response per step,
    averaged over stimuli (mean rate of the selected neurons). baselines: (C,) the value of each curve at
    ``onset_step`` — step 0 (the pre-stimulus rates) or step 1 (the first recorded step, when the
    pre-stimulus rates were not known). curve_latencies: (C,) the latency of each averaged curve.
    n_selected: (N,) how many neurons each stimulus's population holds. spearman_rho, spearman_p: the rank
    correlation of latency with contrast over all finite (contrast, latency) pairs (NaN with fewer than 3
    pairs or constant latencies).
    """

    contrasts: np.ndarray
    latencies: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    curves: np.ndarray
    baselines: np.ndarray
    curve_latencies: np.ndarray
    onset_step: int
    fraction: float
    neurons: str
    n_selected: np.ndarray
    spearman_rho: float
    spearman_p: float

    @property
    def steps(self) -> int:
        return int(self.curves.shape[1])

    @property
    def falls_with_contrast(self) -> bool:
        """True when latency falls with contrast: Spearman ρ < 0 (see ``spearman_p`` for its significance)."""
        return bool(np.isfinite(self.spearman_rho) and self.spearman_rho < 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers (NaN → None)."""
        return {
            "contrasts": [float(c) for c in self.contrasts],
            "latency_median": none_if_nan(self.median),
            "latency_q25": none_if_nan(self.q25),
            "latency_q75": none_if_nan(self.q75),
            "latencies": none_if_nan(self.latencies),
            "curve_latencies": none_if_nan(self.curve_latencies),
            "curves": none_if_nan(self.curves),
            "baselines": none_if_nan(self.baselines),
            "onset_step": int(self.onset_step),
            "fraction": float(self.fraction),
            "steps": self.steps,
            "neurons": self.neurons,
            "n_selected": [int(n) for n in self.n_selected],
            "spearman_rho": none_if_nan(self.spearman_rho),
            "spearman_p": none_if_nan(self.spearman_p),
            "falls_with_contrast": self.falls_with_contrast,
        }


def _select_neurons(neurons: Any, rise: np.ndarray, n_responsive: int) -> tuple[list[np.ndarray], str]:
    """Per stimulus, the indices of the neurons whose rates make up the population response."""
    n_stimuli, k = rise.shape
    if isinstance(neurons, str):
        if neurons == "responsive":
            chosen = []
            for row in rise:
                order = np.argsort(-row, kind="stable")[:n_responsive]
                chosen.append(np.sort(order[row[order] > 0]))
            return chosen, f"top {n_responsive} responsive"
        if neurons == "all":
            return [np.arange(k)] * n_stimuli, "all"
        raise ConfigError(f"neurons must be 'responsive', 'all' or a sequence of neuron indices, got {neurons!r}")
    try:
        index = np.asarray(neurons)
    except (TypeError, ValueError):
        raise ConfigError(f"neurons must be 'responsive', 'all' or a sequence of neuron indices, "
                          f"got {neurons!r}") from None
    if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ConfigError("neurons must be a non-empty 1-D sequence of integer neuron indices")
    if index.min() < 0 or index.max() >= k:
        raise ConfigError(f"neuron indices must lie in 0..{k - 1}")
    index = np.unique(index)
    return [index] * n_stimuli, f"{index.size} given"


def contrast_latency(model: Any, stimuli: Any, contrasts: Any, *, steps: int = 100, seed: int = 0,
                     neurons: str | Sequence[int] = "responsive", n_responsive: int = 16, fraction: float = 0.5,
                     prestimulus_rates: Any = None) -> LatencyResult:
    """Latency of the population response to each stimulus at each contrast.

    stimuli: (N, D) inputs in the model's preprocessing (natural patches, gratings); each is scaled by
    every value of ``contrasts`` (C,) (positive, at least two distinct; sorted ascending in the result).
    All C·N inputs run as one batch: ``model.infer(x, steps, seed=seed, trace=False, record=1..steps)``.

    Population response of a stimulus: the mean rate (mean code, ``history["rates"]``) over its selected
    neurons, per step. ``neurons``: "responsive" (default) selects, per stimulus, the ``n_responsive``
    neurons whose final rate at the highest contrast rises most above their pre-stimulus rate (only those
    that rise at all); the same neurons are then read at every contrast, so the curves compare one
    population. "all": every neuron. A sequence of indices: those neurons for every stimulus.

    Baseline: the pre-stimulus rates, (K,) ``prestimulus_rates`` if given, else ``initial_rates(model)``
    (FOND iterative models: the initial state's rates); the latency is then counted from step 0, the
    stimulus onset (``onset_step`` = 0). A model without known pre-stimulus rates uses the rates after step
    1 instead (``onset_step`` = 1): latencies are then ≥ 1 and, for an exponential rise, exactly one step
    later than from step 0.

    Latency (``response_latency`` with ``fraction``, default the half-peak): per stimulus and contrast,
    summarised per contrast by the median and interquartile range over stimuli. ``spearman_rho`` < 0
    (``falls_with_contrast``): the latency falls with contrast, as in the paper.
    """
    steps = positive_int(steps, "steps")
    n_responsive = positive_int(n_responsive, "n_responsive")
    fraction = _check_fraction(fraction)
    x = _as_input(stimuli, "stimuli", 2)
    levels, batch = contrast_series(x, contrasts)
    recorded = range(1, steps + 1)
    rates = _recorded_rates(model.infer(batch, steps, seed=seed, trace=False, record=recorded), recorded)
    rates = rates.reshape(steps, levels.size, x.shape[0], rates.shape[-1])  # (steps, C, N, K)
    before, reference = _prestimulus(model, prestimulus_rates, rates)
    chosen, description = _select_neurons(neurons, rates[-1, -1] - reference, n_responsive)  # rise at top contrast
    curves, bases, latencies = _stimulus_latencies(rates, chosen, before, fraction)
    onset_step = 1 if before is None else 0
    mean_curves, mean_bases, curve_latencies = _mean_curves(rates, chosen, curves, bases, reference, onset_step,
                                                            fraction)
    median, q25, q75 = (np.full(levels.size, np.nan) for _ in range(3))
    for c in range(levels.size):
        finite = latencies[c][np.isfinite(latencies[c])]
        if finite.size:
            q25[c], median[c], q75[c] = np.percentile(finite, [25, 50, 75])
    rho, p_value = _spearman(levels, latencies)
    return LatencyResult(contrasts=levels, latencies=latencies, median=median, q25=q25, q75=q75,
                         curves=mean_curves, baselines=mean_bases, curve_latencies=curve_latencies,
                         onset_step=onset_step, fraction=fraction, neurons=description,
                         n_selected=np.array([index.size for index in chosen]), spearman_rho=rho,
                         spearman_p=p_value)


def _prestimulus(model: Any, prestimulus_rates: Any, rates: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(pre-stimulus rates (K,) or None when unknown, the reference (N, K) a rise is measured from: those rates,
    else the rates after step 1 at the highest contrast). rates: (steps, C, N, K)."""
    _, _, n_stimuli, k = rates.shape
    if prestimulus_rates is None:
        known = initial_rates(model, 1)
        prestimulus_rates = None if known is None else known[0]
    if prestimulus_rates is None:
        return None, rates[0, -1]
    before = float_array(prestimulus_rates, "prestimulus_rates", finite=True).reshape(-1)
    if before.size != k:
        raise DataError(f"prestimulus_rates must have {k} values (one per neuron), got {before.size}")
    return before, np.broadcast_to(before, (n_stimuli, k))


def _stimulus_latencies(rates: np.ndarray, chosen: list[np.ndarray], before: np.ndarray | None,
                        fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per contrast and stimulus: the population curve (C, N, steps) of its chosen neurons, its baseline (C, N)
    and its latency (C, N); NaN for a stimulus no neuron responds to."""
    steps, n_contrasts, n_stimuli, _ = rates.shape
    curves = np.full((n_contrasts, n_stimuli, steps), np.nan)
    bases = np.full((n_contrasts, n_stimuli), np.nan)
    latencies = np.full((n_contrasts, n_stimuli), np.nan)
    for n, index in enumerate(chosen):
        if index.size == 0:
            continue  # no neuron responds to this stimulus: its latency is undefined (NaN)
        for c in range(n_contrasts):
            curves[c, n] = rates[:, c, n, index].mean(-1)
            if before is not None:
                bases[c, n] = float(before[index].mean())
                latencies[c, n] = response_latency(curves[c, n], fraction, baseline=bases[c, n])
            else:
                bases[c, n] = curves[c, n, 0]
                latencies[c, n] = response_latency(curves[c, n], fraction)
    return curves, bases, latencies


def _mean_curves(rates: np.ndarray, chosen: list[np.ndarray], curves: np.ndarray, bases: np.ndarray,
                 reference: np.ndarray, onset_step: int, fraction: float) -> tuple[np.ndarray, ...]:
    """Per contrast, the curve (C, steps) and baseline (C,) averaged over the stimuli some neuron responds to,
    and the latency (C,) of that mean curve (NaN, with the mean over every neuron, when none responds)."""
    n_contrasts = rates.shape[1]
    used = np.array([index.size > 0 for index in chosen])
    if not used.any():
        mean_curves = rates.mean((2, 3)).T
        mean_bases = mean_curves[:, 0] if onset_step == 1 else np.full(n_contrasts, float(reference.mean()))
        return mean_curves, mean_bases, np.full(n_contrasts, np.nan)
    mean_curves = curves[:, used].mean(1)
    mean_bases = bases[:, used].mean(1)
    curve_latencies = np.array([
        response_latency(mean_curves[c], fraction, baseline=mean_bases[c] if onset_step == 0 else None)
        for c in range(n_contrasts)])
    return mean_curves, mean_bases, curve_latencies


def _spearman(levels: np.ndarray, latencies: np.ndarray) -> tuple[float, float]:
    """Spearman (ρ, p) of latency (C, N) against contrast over the finite pairs; NaN with fewer than three
    pairs or constant latencies."""
    pairs = np.isfinite(latencies)
    if pairs.sum() < 3 or np.unique(latencies[pairs]).size <= 1:
        return float("nan"), float("nan")
    contrast_of = np.broadcast_to(levels[:, None], latencies.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = stats.spearmanr(contrast_of[pairs], latencies[pairs])
    return float(test.statistic), float(test.pvalue)


def plot_contrast_latency(result: LatencyResult, path: str | os.PathLike[str]) -> Path:
    """Two panels: the averaged response curves normalised to their peaks ((r − baseline)/(peak − baseline)),
    coloured by contrast with the latency of each curve marked, and the median latency (IQR bars) vs contrast.
    Returns the written path."""
    fig = new_figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    cmap = colormaps["viridis"]
    n = len(result.contrasts)
    for c, level in enumerate(result.contrasts):
        colour = cmap(c / max(n - 1, 1))
        curve, base = result.curves[c], result.baselines[c]
        times = np.arange(1, curve.size + 1)
        if result.onset_step == 0:
            curve, times = np.concatenate([[base], curve]), np.arange(0, curve.size + 1)
        span = np.nanmax(curve) - base
        normalised = (curve - base) / span if span > 0 else np.zeros_like(curve)
        left.plot(times, normalised, color=colour, lw=1.5, label=f"contrast {level:g}")
        latency = result.curve_latencies[c]
        if np.isfinite(latency):
            left.plot([latency], [result.fraction], "o", color=colour, ms=6, mec="k", mew=0.5)
    left.axhline(result.fraction, color="0.5", lw=0.8, ls="--")
    left.set_xlabel("inference step")
    left.set_ylabel("response / peak (baseline removed)")
    left.set_title(f"population response\n({result.neurons} neurons)", fontsize=10)
    left.legend(fontsize=8)
    finite = np.isfinite(result.median)
    if finite.any():
        err = np.vstack([result.median - result.q25, result.q75 - result.median])[:, finite]
        right.errorbar(result.contrasts[finite], result.median[finite], yerr=err, fmt="o-", color="k", capsize=3)
    if result.contrasts.max() / result.contrasts.min() >= 10:
        right.set_xscale("log")
        right.xaxis.set_minor_locator(NullLocator())
    right.set_xticks(result.contrasts, labels=[f"{c:g}" for c in result.contrasts])
    right.set_xlabel("contrast")
    right.set_ylabel(f"latency to {result.fraction:g} of peak (steps)")
    rho = "n/a" if not np.isfinite(result.spearman_rho) else f"{result.spearman_rho:.2f}"
    p = "n/a" if not np.isfinite(result.spearman_p) else f"{result.spearman_p:.2g}"
    right.set_title(f"median latency (IQR)\nSpearman ρ = {rho}, p = {p}", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- serial dependence


@dataclass
class SerialDependenceResult:
    """How much the response to B is pulled toward the previous stimulus A (``serial_dependence``).

    steps: (steps_b,) the steps of the B period, 1..steps_b. bias: (steps_b, B) the bias index per step
    and input pair; bias_index: (steps_b,) its mean over pairs. distance: (steps_b,) mean ‖r_AB − r_B‖ (the
    history effect's size, in rate units). steps_a: how long A was shown.
    """

    steps: np.ndarray
    bias: np.ndarray
    bias_index: np.ndarray
    distance: np.ndarray
    steps_a: int

    @property
    def final_bias(self) -> float:
        """The mean bias index at the end of the B period (the posterior after B)."""
        return float(self.bias_index[-1])

    @property
    def half_decay_step(self) -> int | None:
        """First B step at which the mean bias index is ≤ half its value at B's first step; None if the
        first value is not positive or it never halves."""
        first = self.bias_index[0]
        if not first > 0:
            return None
        below = np.nonzero(self.bias_index <= 0.5 * first)[0]
        return int(self.steps[below[0]]) if below.size else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers."""
        return {
            "steps_a": int(self.steps_a),
            "steps_b": int(self.steps.size),
            "bias_index": [float(v) for v in self.bias_index],
            "bias_q25": [float(v) for v in np.percentile(self.bias, 25, axis=1)],
            "bias_q75": [float(v) for v in np.percentile(self.bias, 75, axis=1)],
            "distance": [float(v) for v in self.distance],
            "initial_bias": float(self.bias_index[0]),
            "final_bias": self.final_bias,
            "half_decay_step": self.half_decay_step,
        }


def serial_dependence(model: Any, stim_a: Any, stim_b: Any, *, steps_a: int = 50, steps_b: int = 50,
                      seed: int = 0) -> SerialDependenceResult:
    """Attraction of the belief about stimulus B toward the stimulus A shown just before it.

    stim_a, stim_b: (B, D) pairs of inputs. Two runs with the same ``seed``: one online rollout that shows
    A for ``steps_a`` steps then B for ``steps_b`` steps without a reset (a 3-D input of steps_a + steps_b
    frames), and B alone for ``steps_b`` steps from the initial state. With r_A the rates at the end of
    the A period, and r_AB(s), r_B(s) the rates s steps into B in the two runs (s = 1..steps_b), the bias
    index of each pair is

        b(s) = ⟨r_AB(s) − r_B(s), r_A − r_B(s)⟩ / ‖r_A − r_B(s)‖²,

    the history effect projected on the direction from where B alone is at step s toward A's response, as
    a fraction of that distance: 0 = no memory of A (a memoryless model), 1 = still at A's response, > 0
    attraction toward the previous stimulus, < 0 repulsion. It decays as B takes over; b(steps_b) measures
    the bias of the posterior after B. For a leaky integrator r_t = (1 − λ) r_{t−1} + λ x_t started at r_0,
    b(s) = (1 − λ)^s ⟨r_A − r_0, r_A − r_B(s)⟩ / ‖r_A − r_B(s)‖².

    A model that does not take a 3-D online input raises its own ``DataError`` (propagated). A pair whose
    responses coincide (‖r_A − r_B(s)‖ = 0) has no defined bias and raises ``DataError``.
    """
    steps_a = positive_int(steps_a, "steps_a")
    steps_b = positive_int(steps_b, "steps_b")
    a = _as_input(stim_a, "stim_a", 2)
    b = _as_input(stim_b, "stim_b", 2).to(a.dtype)
    sequence = pair_sequence(a, b, steps_a, steps_b)
    recorded_ab = range(steps_a, steps_a + steps_b + 1)
    after_a_then_b = _recorded_rates(
        model.infer(sequence, steps_a + steps_b, seed=seed, trace=False, record=recorded_ab), recorded_ab)
    recorded_b = range(1, steps_b + 1)
    b_alone = _recorded_rates(model.infer(b, steps_b, seed=seed, trace=False, record=recorded_b), recorded_b)
    r_a, r_ab = after_a_then_b[0], after_a_then_b[1:]  # (B, K), (steps_b, B, K)
    history_effect = r_ab - b_alone
    direction = r_a[None] - b_alone
    squared = (direction**2).sum(-1)
    scale = np.maximum((r_a**2).sum(-1).max(), (b_alone**2).sum(-1).max())
    degenerate = np.argwhere(squared <= 1e-12 * max(scale, 1e-300))
    if degenerate.size:
        step, pair = degenerate[0]
        raise DataError(f"stim_a and stim_b evoke the same response for pair {pair} at B step {step + 1}; "
                        "the bias index needs distinct responses")
    bias = (history_effect * direction).sum(-1) / squared
    return SerialDependenceResult(steps=np.arange(1, steps_b + 1), bias=bias, bias_index=bias.mean(1),
                                  distance=np.sqrt((history_effect**2).sum(-1)).mean(1), steps_a=steps_a)


def plot_serial_dependence(result: SerialDependenceResult, path: str | os.PathLike[str]) -> Path:
    """The bias index over the B period (mean over pairs, interquartile band) and the history effect's size."""
    fig = new_figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    q25, q75 = np.percentile(result.bias, [25, 75], axis=1)
    left.fill_between(result.steps, q25, q75, color="tab:blue", alpha=0.25, lw=0, label="interquartile range")
    left.plot(result.steps, result.bias_index, color="tab:blue", lw=1.5, label="mean")
    left.axhline(0.0, color="0.5", lw=0.8, ls="--")
    left.set_xlabel(f"step into B (after {result.steps_a} steps of A)")
    left.set_ylabel("bias index toward A")
    left.set_title("serial dependence\n(> 0: attraction toward the previous stimulus)", fontsize=10)
    left.legend(fontsize=8)
    right.plot(result.steps, result.distance, color="tab:red", lw=1.5)
    right.set_xlabel("step into B")
    right.set_ylabel("‖r_AB − r_B‖ (mean over pairs)")
    right.set_title("size of the history effect", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- tracking


@dataclass
class TrackingResult:
    """How well the code follows a changing input (``tracking``).

    steps: (T,) 1..T. r2_current: (T,) mean over the batch of the R² of the reconstruction g(rates_t) against
    the frame shown at step t; r2_previous: (T,) against the frame of step t − 1 (NaN at step 1, which has
    none). A reconstruction that lags the input scores higher against the previous frame.
    """

    steps: np.ndarray
    r2_current: np.ndarray
    r2_previous: np.ndarray

    @property
    def mean_r2_current(self) -> float:
        """Mean R² against the current frame over steps 2..T (the steps where both are defined)."""
        return float(self.r2_current[1:].mean()) if self.steps.size > 1 else float("nan")

    @property
    def mean_r2_previous(self) -> float:
        """Mean R² against the previous frame over steps 2..T."""
        return float(self.r2_previous[1:].mean()) if self.steps.size > 1 else float("nan")

    @property
    def lag_index(self) -> float:
        """mean R²(previous) − mean R²(current) over steps 2..T: > 0 when the reconstruction lags the input."""
        return self.mean_r2_previous - self.mean_r2_current

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers (NaN → None)."""
        return {
            "steps": int(self.steps.size),
            "r2_current": none_if_nan(self.r2_current),
            "r2_previous": none_if_nan(self.r2_previous),
            "mean_r2_current": none_if_nan(self.mean_r2_current),
            "mean_r2_previous": none_if_nan(self.mean_r2_previous),
            "lag_index": none_if_nan(self.lag_index),
        }


def tracking(model: Any, frames: Any, *, seed: int = 0) -> TrackingResult:
    """One online rollout over ``frames`` (T, B, D) (frame t − 1 drives step t, no reset) and the R² per step
    of the reconstruction ``model.decode(rates_t)`` against the current and the previous frame.

    R² per input as ``fond.metrics.r2_per_sample`` (1 − residual / variance about the frame's mean),
    averaged over the batch. A model that does not take a 3-D online input raises its own ``DataError``.
    """
    x = _as_input(frames, "frames", 3)
    n_steps = int(x.shape[0])
    recorded = range(1, n_steps + 1)
    rates = _recorded_rates(model.infer(x, n_steps, seed=seed, trace=False, record=recorded), recorded)
    with torch.no_grad():
        code = torch.as_tensor(rates.reshape(-1, rates.shape[-1]))
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        if param is not None:
            code = code.to(param.dtype)
        reconstruction = model.decode(code)
        reconstruction = torch.as_tensor(reconstruction).detach().cpu().to(torch.float64)
    reconstruction = reconstruction.reshape(n_steps, x.shape[1], x.shape[2])
    target = x.detach().cpu().to(torch.float64)
    r2_current = r2_per_sample(target, reconstruction).mean(-1).cpu().numpy()
    r2_previous = np.full(n_steps, np.nan)
    if n_steps > 1:
        r2_previous[1:] = r2_per_sample(target[:-1], reconstruction[1:]).mean(-1).cpu().numpy()
    return TrackingResult(steps=np.arange(1, n_steps + 1), r2_current=r2_current, r2_previous=r2_previous)


def plot_tracking(result: TrackingResult, path: str | os.PathLike[str]) -> Path:
    """R² of the reconstruction per step against the current and the previous frame (axis clipped at −1 when
    the R² falls below it). Returns the written path."""
    fig = new_figure(6.5, 4.0)
    ax = fig.subplots()
    ax.plot(result.steps, result.r2_current, color="tab:blue", lw=1.5, label="vs current frame")
    ax.plot(result.steps, result.r2_previous, color="tab:orange", lw=1.5, ls="--", label="vs previous frame")
    lowest = np.nanmin(np.concatenate([result.r2_current, result.r2_previous]))
    clipped = lowest < -1.0
    if clipped:  # a diverging reconstruction would flatten the informative range [−1, 1]
        ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("inference step (frame)")
    ax.set_ylabel("R² of g(rates)" + (" (axis clipped at −1)" if clipped else ""))
    ax.set_title(f"tracking a changing input (lag index {result.lag_index:+.3f})")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- spike raster


def spike_raster(model: Any, x: Any, steps: int = 200, *, seed: int = 0) -> np.ndarray:
    """The spike counts (steps, K) of the first input of ``x`` (B, D) after each inference step 1..steps
    (``result.history["spikes"]`` of ``model.infer(x, steps, seed=seed, record=1..steps)``)."""
    steps = positive_int(steps, "steps")
    result = model.infer(torch.as_tensor(x), steps, seed=seed, trace=False, record=range(1, steps + 1))
    return result.history["spikes"][:, 0].cpu().numpy()
