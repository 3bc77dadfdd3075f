"""Orientation tuning of a model's neurons to drifting gratings.

:func:`grating_tuning` shows sinusoidal gratings (:func:`fond.analysis.stimuli.gratings`) to a model (any object
with the shared ``infer`` interface) and reads orientation tuning curves, preferred orientations and orientation
selectivity from the rates; :func:`plot_tuning` draws the tuning curves of the most responsive neurons.
Conventions (pixel axes, orientation of the wave vector in [0, π), cycles/pixel) are those of
:mod:`fond.analysis.gabor`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fond.analysis.gabor import DEFAULT_GRATING_FREQUENCY, fit_dictionary
from fond.analysis.stimuli import gratings
from fond.analysis.summary import histogram, median_or_none, none_if_nan
from fond.errors import DataError
from fond.plots import new_figure, save_figure
from fond.validate import float_array, patch_dims, positive_int

__all__ = ["DEFAULT_FREQUENCY_MAX_ATOMS", "TuningResult", "grating_tuning", "plot_tuning"]

DEFAULT_FREQUENCY_MAX_ATOMS = 128  # atoms fitted to pick a model's grating frequency (bounds the cost)
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class TuningResult:
    """Orientation tuning of a model's neurons to drifting gratings.

    orientations: (n_o,) radians in [0, π) (wave-vector direction). phases: (n_p,) radians. frequency:
    cycles/pixel, with frequency_source "given", "dictionary" (median of the well-fit atoms) or "default".
    contrast: peak grating amplitude (see :func:`gratings`). steps, seed: of ``model.infer``.
    responses: (n_o, n_p, K) rates after ``steps``. response_measure: "rates" or "|rates|" (see
    :func:`grating_tuning`). tuning: (n_o, K) that measure of the responses averaged over phases.
    preferred_orientation: (K,) radians in [0, π), the angle of the doubled-angle vector sum (NaN for a
    silent neuron). osi: (K,) orientation selectivity index 1 − circular variance
    = |Σ_o r_o e^{2iθ_o}| / Σ_o r_o, in [0, 1] (0 for a silent neuron). It is computed on the tuning curve
    shifted up by its minimum where that is negative (signed codes such as iG-VAE's μ), unchanged otherwise.
    responsive: (K,) bool, the neuron responds to some orientation. peak_response: (K,) max of the tuning curve.
    """

    orientations: np.ndarray
    phases: np.ndarray
    frequency: float
    frequency_source: str
    contrast: float
    steps: int
    seed: int
    response_measure: str
    responses: np.ndarray
    tuning: np.ndarray
    preferred_orientation: np.ndarray
    osi: np.ndarray
    responsive: np.ndarray
    peak_response: np.ndarray

    @property
    def n_neurons(self) -> int:
        return int(self.tuning.shape[1])

    def most_responsive(self, n: int) -> np.ndarray:
        """Indices of the ``n`` neurons with the largest peak response, strongest first."""
        return np.argsort(-self.peak_response, kind="stable")[: max(0, int(n))]

    def to_dict(self, *, include_neurons: bool = True) -> dict[str, Any]:
        """JSON-ready population summary (and, if asked, each neuron's preferred orientation and OSI).

        Histograms: OSI of responsive neurons, 0–1 in 0.1 bins; preferred orientation of responsive neurons,
        one bin per stimulus orientation step over 0–180°. population_tuning: the mean tuning curve over
        neurons (an orientation bias of the whole population shows up here).
        """
        osi = self.osi[self.responsive]
        pref_deg = np.degrees(self.preferred_orientation[self.responsive])
        n_o = self.orientations.size
        out: dict[str, Any] = {
            "frequency": float(self.frequency),
            "frequency_source": self.frequency_source,
            "contrast": float(self.contrast),
            "steps": int(self.steps),
            "seed": int(self.seed),
            "response_measure": self.response_measure,
            "n_orientations": int(n_o),
            "n_phases": int(self.phases.size),
            "orientations_deg": [float(v) for v in np.degrees(self.orientations)],
            "n_neurons": self.n_neurons,
            "n_responsive": int(self.responsive.sum()),
            "osi_median": median_or_none(osi),
            "osi_mean": float(osi.mean()) if osi.size else None,
            "osi_quartiles": [float(q) for q in np.percentile(osi, [25, 75])] if osi.size else None,
            "fraction_osi_above_0.3": float((osi > 0.3).mean()) if osi.size else None,
            "population_tuning": [float(v) for v in self.tuning.mean(axis=1)],
            "histograms": {
                "osi": histogram(osi, np.linspace(0.0, 1.0, 11)),
                "preferred_orientation_deg": histogram(pref_deg, np.linspace(0.0, 180.0, n_o + 1)),
            },
        }
        if include_neurons:
            out["neurons"] = {
                "preferred_orientation_deg": [none_if_nan(math.degrees(v)) for v in self.preferred_orientation],
                "osi": [float(v) for v in self.osi],
                "peak_response": [float(v) for v in self.peak_response],
            }
        return out


def _orientation_statistics(tuning: np.ndarray, orientations: np.ndarray) -> tuple[np.ndarray, ...]:
    """(preferred orientation, OSI, responsive) of each column of an (n_o, K) tuning matrix."""
    shifted = tuning - np.minimum(tuning.min(axis=0, keepdims=True), 0.0)
    total = shifted.sum(axis=0)
    resultant = np.exp(2j * orientations) @ shifted  # (K,)
    responsive = total > 1e-12 * max(1.0, float(np.abs(tuning).max()))
    safe_total = np.where(responsive, total, 1.0)
    osi = np.where(responsive, np.clip(np.abs(resultant) / safe_total, 0.0, 1.0), 0.0)
    preferred = np.where(responsive, (np.angle(resultant) / 2.0) % math.pi, math.nan)
    return preferred, osi, responsive


def _model_dtype(model: Any):
    import torch

    try:
        for parameter in model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    except (AttributeError, TypeError):
        pass
    return torch.float32


def _default_frequency(model: Any, patch_shape: tuple[int, int]) -> tuple[float, str]:
    """The median frequency of the well-fit atoms of the model's linear dictionary, else the default."""
    phi = getattr(model, "dictionary", None)
    if phi is not None:
        summary = fit_dictionary(phi, patch_shape, max_atoms=DEFAULT_FREQUENCY_MAX_ATOMS)
        frequency = summary.frequency[summary.frequency > 0]
        if frequency.size:
            return float(np.clip(np.median(frequency), 1e-3, 0.5)), "dictionary"
    return DEFAULT_GRATING_FREQUENCY, "default"


def grating_tuning(model: Any, patch_shape: Sequence[int], *, n_orientations: int = 16, frequency: float | None = None,
                   n_phases: int = 8, contrast: float = 1.0, steps: int = 200, seed: int = 0,
                   magnitude: bool | None = None) -> TuningResult:
    """Orientation tuning curves of a model's neurons to drifting gratings.

    Shows ``n_orientations`` orientations θ = π·i/n_orientations at ``n_phases`` evenly spaced phases each
    (a drifting grating visits every phase) as one batch to ``model.infer(x, steps, seed=seed, trace=False)``
    and averages ``result.rates`` over phases into an (n_orientations, K) tuning matrix; see
    :class:`TuningResult` for the per-neuron statistics. model: any object with the shared interface whose
    ``n_inputs`` is h·w. frequency: cycles/pixel; None picks the median spatial frequency of the well-fit atoms
    of ``model.dictionary`` (first 128 atoms, see :func:`fit_dictionary`) when the model has a linear
    dictionary with well-fit atoms, else 0.15. contrast: peak amplitude of the gratings in input units
    (:func:`gratings`); the model's inputs are z-scored patches, so 1 is a typical contrast.
    magnitude: average |rates| over phases instead of the rates. None (default) does so exactly when some
    rate is negative: a signed code (iG-VAE's μ, LCA/ISTA/FISTA coefficients) that is odd in the input answers
    the grating at phase φ + π with the negated code, so its phase average is zero whatever its tuning.
    Non-negative codes (Poisson rates, ReLU) are averaged as they are.
    """
    import torch

    h, w = patch_dims(patch_shape)
    n_inputs = getattr(model, "n_inputs", None)
    if n_inputs is not None and int(n_inputs) != h * w:
        raise DataError(f"model has n_inputs = {n_inputs} but patch_shape {h}×{w} gives {h * w} pixels")
    n_orientations = positive_int(n_orientations, "n_orientations")
    n_phases = positive_int(n_phases, "n_phases")
    steps = positive_int(steps, "steps", error=DataError)
    if frequency is None:
        frequency, source = _default_frequency(model, (h, w))
    else:
        source = "given"
    orientations = math.pi * np.arange(n_orientations) / n_orientations
    phases = _TWO_PI * np.arange(n_phases) / n_phases
    stimuli = gratings((h, w), orientations, frequency, phases, contrast=contrast)
    x = torch.as_tensor(stimuli, dtype=_model_dtype(model))
    result = model.infer(x, int(steps), seed=int(seed), trace=False)
    rates = float_array(result.rates, "model rates")
    if rates.ndim != 2 or rates.shape[0] != stimuli.shape[0]:
        raise DataError(f"model rates must have shape ({stimuli.shape[0]}, K), got {rates.shape}")
    if not np.all(np.isfinite(rates)):
        raise DataError("model returned NaN or infinite rates for the gratings (diverged inference?)")
    responses = rates.reshape(n_orientations, n_phases, rates.shape[1])
    if magnitude is None:
        magnitude = bool((rates < 0).any())
    tuning = (np.abs(responses) if magnitude else responses).mean(axis=1)
    preferred, osi, responsive = _orientation_statistics(tuning, orientations)
    return TuningResult(
        orientations=orientations, phases=phases, frequency=float(frequency), frequency_source=source,
        contrast=float(contrast), steps=int(steps), seed=int(seed),
        response_measure="|rates|" if magnitude else "rates", responses=responses, tuning=tuning,
        preferred_orientation=preferred, osi=osi, responsive=responsive, peak_response=tuning.max(axis=0),
    )


def plot_tuning(result: TuningResult, path: str | os.PathLike[str], n_neurons: int = 16) -> Path:
    """One PNG of polar tuning curves of the ``n_neurons`` most responsive neurons (largest peak response).

    Orientation is π-periodic, so each curve is drawn over the full circle (θ and θ + π); the red spoke marks
    the preferred orientation. Each panel's title gives the neuron index, its OSI and its peak response (the
    radial scale). Returns the written path.
    """
    if not isinstance(result, TuningResult):
        raise DataError(f"result must be a TuningResult, got {type(result).__name__}")
    n_neurons = positive_int(n_neurons, "n_neurons")
    chosen = result.most_responsive(min(n_neurons, result.n_neurons))
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(2.6 * cols, 2.7 * rows + 0.4)
    angles = np.concatenate([result.orientations, result.orientations + math.pi, result.orientations[:1] + _TWO_PI])
    for slot, k in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, slot + 1, projection="polar")
        curve = result.tuning[:, k]
        ax.plot(angles, np.concatenate([curve, curve, curve[:1]]), color="#4a6fa5", marker=".")
        top = float(np.max(np.abs(curve))) or 1.0
        ax.set_yticklabels([])
        if result.responsive[k]:
            pref = result.preferred_orientation[k]
            for spoke in (pref, pref + math.pi):
                ax.plot([spoke, spoke], [0.0, top], color="#c0392b", linewidth=1.2)
        ax.set_title(f"#{k}  OSI {result.osi[k]:.2f}  peak {result.peak_response[k]:.3g}", fontsize="small")
        ax.set_xticks(np.radians([0, 45, 90, 135, 180, 225, 270, 315]))
        ax.set_xticklabels(["0°", "", "90°", "", "180°", "", "270°", ""], fontsize="x-small")
        ax.tick_params(axis="y", labelsize="xx-small")
    fig.suptitle(f"Orientation tuning, phase mean of {result.response_measure} ({result.frequency:.3g} cycles/pixel, "
                 f"contrast {result.contrast:g}, {result.steps} steps; {len(chosen)} most responsive of "
                 f"{result.n_neurons})")
    return save_figure(fig, path)
