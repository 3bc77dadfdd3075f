"""V1 properties of a learned code: Gabor fits of dictionary atoms.

DESIGN.md §3 says the learned dictionary is Gabor-like (localised, oriented, band-pass). This module measures it:
:func:`gabor_patch` renders a 2-D Gabor; :func:`fit_gabor` fits one to an atom (bounded least squares from a few
deterministic starts); :func:`fit_dictionary` fits every column of a (D, K) dictionary and summarises the well-fit
atoms (orientation, spatial frequency, envelope size, aspect ratio); :func:`plot_gabor_summary` draws their
histograms. Orientation tuning to gratings is :mod:`fond.analysis.tuning`; the gratings themselves are built in
:mod:`fond.analysis.stimuli`.

Conventions shared by every function here:

* Pixel coordinates: ``x`` is the column index, ``y`` the row index (rows grow downwards, as in an image).
* Orientation ``theta`` (radians) is the direction of the carrier's wave vector, measured from the +x
  (column) axis towards +y (row): theta = 0 gives vertical stripes that vary along x, theta = π/2 horizontal
  stripes that vary along y. The stripes themselves run at theta + π/2. Orientations are π-periodic and are
  reported in [0, π).
* Spatial frequency is in cycles per pixel; sizes (σ) are in pixels.

The Gabor is

    g(x, y) = offset + amplitude · exp(−u²/(2σ_x²) − v²/(2σ_y²)) · cos(2π·frequency·u + phase)
    u = (x − x0)·cos θ + (y − y0)·sin θ     (along the wave vector, across the stripes)
    v = −(x − x0)·sin θ + (y − y0)·cos θ    (along the stripes)

so ``sigma_x`` is the envelope's width across the stripes (along the wave vector) and ``sigma_y`` its length
along the stripes; ``aspect_ratio = sigma_y / sigma_x`` and ``size = sqrt(sigma_x · sigma_y)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares

from fond.analysis.summary import histogram, median_or_none
from fond.errors import ConfigError, DataError
from fond.plots import new_figure, save_figure
from fond.validate import finite_float, float_array, patch_dims, positive_int

__all__ = [
    "DEFAULT_GRATING_FREQUENCY",
    "GaborFit",
    "GaborSummary",
    "MAX_FREQUENCY",
    "MIN_SIGMA",
    "MOST_ACTIVE_ATOMS",
    "fit_dictionary",
    "fit_gabor",
    "gabor_patch",
    "most_active_neurons",
    "plot_gabor_summary",
]

DEFAULT_GRATING_FREQUENCY = 0.15  # cycles/pixel, the first guess of a fit and a model's default grating frequency
_TWO_PI = 2.0 * math.pi
#: cycles/pixel: the Nyquist limit along a row or column; a faster carrier (up to the diagonal's 1/√2) only fits
#: the pixel noise of an atom, so a fit is judged inside this band (issue 16, DESIGN.md §7)
MAX_FREQUENCY = 0.5
#: pixels: the narrowest envelope a fit may use; a narrower one fits single-pixel noise
MIN_SIGMA = 0.5
#: the atoms examined by ``fond analyze gabor`` and ``fond reproduce``: those of the most active neurons
#: (a neuron that never fires keeps a near-random atom that says nothing about what the code learned)
MOST_ACTIVE_ATOMS = 128
_EARLY_STOP_R2 = 0.995  # restarts stop once a start explains this much variance
_PARAM_NAMES = ("x0", "y0", "theta", "frequency", "sigma_x", "sigma_y", "phase", "amplitude", "offset")


# --------------------------------------------------------------------------- the Gabor


def _wrap_phase(phase: float) -> float:
    """``phase`` wrapped to (−π, π]."""
    return float(math.pi - ((math.pi - phase) % _TWO_PI))


def _gabor_and_jacobian(params: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                        jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The Gabor at pixel coordinates ``xx``, ``yy`` (N,) and, if asked, its (N, 9) Jacobian (``_PARAM_NAMES``
    order)."""
    x0, y0, theta, frequency, sigma_x, sigma_y, phase, amplitude, offset = params
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = xx - x0, yy - y0
    u = dx * c + dy * s
    v = -dx * s + dy * c
    envelope = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    argument = _TWO_PI * frequency * u + phase
    cos_arg = np.cos(argument)
    value = offset + amplitude * envelope * cos_arg
    if not jacobian:
        return value, None
    sin_arg = np.sin(argument)
    ae = amplitude * envelope
    dg_du = ae * (-u * cos_arg / sigma_x**2 - _TWO_PI * frequency * sin_arg)
    dg_dv = ae * (-v * cos_arg / sigma_y**2)
    jac = np.empty((xx.size, 9))
    jac[:, 0] = -c * dg_du + s * dg_dv
    jac[:, 1] = -s * dg_du - c * dg_dv
    jac[:, 2] = v * dg_du - u * dg_dv
    jac[:, 3] = -ae * sin_arg * _TWO_PI * u
    jac[:, 4] = ae * cos_arg * u**2 / sigma_x**3
    jac[:, 5] = ae * cos_arg * v**2 / sigma_y**3
    jac[:, 6] = -ae * sin_arg
    jac[:, 7] = envelope * cos_arg
    jac[:, 8] = 1.0
    return value, jac


def gabor_patch(shape: Sequence[int], *, x0: float, y0: float, theta: float, frequency: float, sigma_x: float,
                sigma_y: float, phase: float, amplitude: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """A 2-D Gabor sampled on an (h, w) pixel grid, float64 (h, w).

    shape: (h, w). x0, y0: the envelope's centre in pixel coordinates (column, row; may be fractional).
    theta: orientation of the carrier's wave vector in radians (from the +x/column axis towards +y/row).
    frequency: carrier frequency in cycles/pixel. sigma_x, sigma_y: envelope standard deviations in pixels
    across the stripes (along the wave vector) and along the stripes. phase: carrier phase at the centre in
    radians (0: a cosine peak there). amplitude, offset: in the units of the output. See the module docstring
    for the formula.
    """
    h, w = patch_dims(shape)
    values = [finite_float(v, n) for v, n in zip(
        (x0, y0, theta, frequency, sigma_x, sigma_y, phase, amplitude, offset), _PARAM_NAMES, strict=True)]
    if values[4] <= 0 or values[5] <= 0:
        raise ConfigError(f"sigma_x and sigma_y must be > 0, got {sigma_x!r} and {sigma_y!r}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    value, _ = _gabor_and_jacobian(np.array(values), xx.ravel(), yy.ravel(), jacobian=False)
    return value.reshape(h, w)


def _canonical(params: Sequence[float]) -> tuple[float, ...]:
    """Equivalent parameters with positive sigmas/amplitude/frequency, theta in [0, π) and phase in (−π, π]."""
    x0, y0, theta, frequency, sigma_x, sigma_y, phase, amplitude, offset = (float(p) for p in params)
    sigma_x, sigma_y = abs(sigma_x), abs(sigma_y)
    if amplitude < 0:  # −A·cos(a) = A·cos(a + π)
        amplitude, phase = -amplitude, phase + math.pi
    if frequency < 0:  # cos(−2πfu + φ) = cos(2πfu − φ)
        frequency, phase = -frequency, -phase
    turns = math.floor(theta / math.pi)  # θ + π flips u, so cos(2πfu + φ) becomes cos(2πfu − φ)
    theta -= turns * math.pi
    if theta >= math.pi:  # rounding at the boundary
        theta, turns = theta - math.pi, turns + 1
    if turns % 2:
        phase = -phase
    return x0, y0, theta, frequency, sigma_x, sigma_y, _wrap_phase(phase), amplitude, offset


@dataclass(frozen=True)
class GaborFit:
    """A fitted Gabor (see the module docstring for the formula and the units) and its goodness of fit.

    theta in [0, π) radians, frequency ≥ 0 in cycles/pixel, sigmas > 0 in pixels, phase in (−π, π],
    amplitude ≥ 0 and offset in the atom's units. r2: fraction of the atom's variance (about its mean)
    explained by the fit, 1 − Σ(atom − fit)² / Σ(atom − mean)²; ≤ 1, and can be < 0 for a hopeless fit.
    """

    x0: float
    y0: float
    theta: float
    frequency: float
    sigma_x: float
    sigma_y: float
    phase: float
    amplitude: float
    offset: float
    r2: float

    @property
    def size(self) -> float:
        """Envelope size: geometric mean sqrt(σ_x·σ_y), pixels."""
        return math.sqrt(self.sigma_x * self.sigma_y)

    @property
    def aspect_ratio(self) -> float:
        """Envelope elongation σ_y / σ_x (length along the stripes over width across them)."""
        return self.sigma_y / self.sigma_x

    def params(self) -> dict[str, float]:
        """The nine Gabor parameters by name (the keyword arguments of :func:`gabor_patch`)."""
        return {name: float(getattr(self, name)) for name in _PARAM_NAMES}

    def render(self, shape: Sequence[int]) -> np.ndarray:
        """The fitted Gabor on an (h, w) grid."""
        return gabor_patch(shape, **self.params())

    def to_dict(self) -> dict[str, float]:
        """JSON-ready parameters plus r2, size, aspect ratio and the orientation in degrees."""
        out = self.params()
        out.update(r2=float(self.r2), size=self.size, aspect_ratio=self.aspect_ratio,
                   theta_deg=math.degrees(self.theta))
        return out


def _spectral_peaks(centred: np.ndarray, count: int) -> list[tuple[float, float]]:
    """Up to ``count`` (frequency, theta) peaks of the zero-padded power spectrum, strongest first."""
    h, w = centred.shape
    ph, pw = max(64, 4 * h), max(64, 4 * w)
    power = np.abs(np.fft.fft2(centred, s=(ph, pw))) ** 2
    fy = np.fft.fftfreq(ph)[:, None] * np.ones((1, pw))
    fx = np.fft.fftfreq(pw)[None, :] * np.ones((ph, 1))
    exclusion = 1.5 / max(h, w)  # about the spectral width of an envelope that fills the patch
    peaks = []
    for _ in range(count):
        index = np.unravel_index(int(np.argmax(power)), power.shape)
        if power[index] <= 0:
            break
        px, py = fx[index], fy[index]
        peaks.append((float(math.hypot(px, py)), float(math.atan2(py, px) % math.pi)))
        near = np.minimum(np.hypot(fx - px, fy - py), np.hypot(fx + px, fy + py)) < exclusion
        power = np.where(near, 0.0, power)
    return peaks


def _linear_part(xx: np.ndarray, yy: np.ndarray, values: np.ndarray,
                 shape_params: Sequence[float]) -> tuple[float, float, float]:
    """(phase, amplitude, offset) that best fit ``values`` given the other six parameters (linear least squares)."""
    x0, y0, theta, frequency, sigma_x, sigma_y = shape_params
    c, s = math.cos(theta), math.sin(theta)
    u = (xx - x0) * c + (yy - y0) * s
    v = -(xx - x0) * s + (yy - y0) * c
    envelope = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    design = np.stack([np.ones_like(u), envelope * np.cos(_TWO_PI * frequency * u),
                       envelope * np.sin(_TWO_PI * frequency * u)], axis=1)
    (offset, a_cos, a_sin), *_ = np.linalg.lstsq(design, values, rcond=None)
    # A·cos(w + φ) = A·cos φ·cos w − A·sin φ·sin w
    return math.atan2(-a_sin, a_cos), math.hypot(a_cos, a_sin), float(offset)


def _starting_shapes(atom: np.ndarray, n_starts: int, rng: np.random.Generator) -> list[tuple[float, ...]]:
    """``n_starts`` guesses of (x0, y0, theta, frequency, sigma_x, sigma_y) for a standardised (h, w) atom."""
    h, w = atom.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    energy = atom**2
    total = energy.sum()
    cx, cy = float((energy * xx).sum() / total), float((energy * yy).sum() / total)
    smooth = ndimage.gaussian_filter(energy, 1.0, mode="constant")
    my, mx = (float(i) for i in np.unravel_index(int(np.argmax(smooth)), smooth.shape))
    big = float(max(h, w))

    def moments(theta: float, x0: float, y0: float) -> tuple[float, float]:
        c, s = math.cos(theta), math.sin(theta)
        u = (xx - x0) * c + (yy - y0) * s
        v = -(xx - x0) * s + (yy - y0) * c
        # energy ≈ E² (the carrier's cos² averages to ½), and E² has standard deviation σ/√2
        sx = math.sqrt(2.0 * float((energy * u**2).sum() / total))
        sy = math.sqrt(2.0 * float((energy * v**2).sum() / total))
        return float(np.clip(sx, 1.0, big)), float(np.clip(sy, 1.0, big))

    peaks = _spectral_peaks(atom, 2) or [(DEFAULT_GRATING_FREQUENCY, 0.0)]
    f1, t1 = peaks[0]
    sx1, sy1 = moments(t1, cx, cy)
    starts = [(cx, cy, t1, f1, sx1, sy1),
              (mx, my, t1, f1, max(1.0, 0.6 * sx1), max(1.0, 0.6 * sy1))]
    if len(peaks) > 1:
        f2, t2 = peaks[1]
        starts.append((cx, cy, t2, f2, *moments(t2, cx, cy)))
    starts.append((mx, my, t1, f1, big / 2, big / 2))
    while len(starts) < n_starts:
        x0, y0, theta, f, sx, sy = starts[0]
        jitter = rng.uniform(-1.0, 1.0, size=6)
        starts.append((x0 + 2 * jitter[0], y0 + 2 * jitter[1], theta + 0.3 * jitter[2], f * math.exp(0.3 * jitter[3]),
                       sx * math.exp(0.5 * jitter[4]), sy * math.exp(0.5 * jitter[5])))
    return starts[:n_starts]


def fit_gabor(atom: Any, *, n_starts: int = 4, seed: int = 0) -> GaborFit:
    """Fit a 2-D Gabor to one (h, w) atom by bounded least squares (``scipy.optimize.least_squares``, TRF).

    Starts: (1) carrier frequency and orientation from the peak of the zero-padded power spectrum, envelope
    centre and widths from the centre of mass and second moments of the atom's energy; (2) the same carrier
    with a smaller envelope centred on the energy maximum; (3) the spectrum's second peak; (4) a wide envelope;
    further starts (``n_starts`` > 4) jitter start 1 with a generator seeded by ``seed``. For each start the
    phase, amplitude and offset are solved by linear least squares; the best final fit is kept, and the
    restarts stop early once r2 ≥ 0.995. The atom is standardised before fitting (the fit is scale
    invariant) and the parameters are returned canonicalised (see :class:`GaborFit`). Bounds: centre within
    two pixels of the patch, frequency in [0, ``MAX_FREQUENCY`` = 0.5] cycles/pixel (the Nyquist band), sigmas in
    [``MIN_SIGMA`` = 0.5, 2·max(h, w)] pixels: outside these bounds a fit explains pixel noise, not structure.

    atom: (h, w) finite array (or a torch tensor) with some spatial variation, else ``DataError``.
    About 5–40 ms for a 16×16 atom.
    """
    a = float_array(atom, "atom")
    if a.ndim != 2 or min(a.shape) < 2:
        raise DataError(f"atom must be a 2-D array of at least 2×2 pixels, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError("atom contains NaN or infinite values")
    n_starts = positive_int(n_starts, "n_starts")
    centred = a - a.mean()
    scale = float(np.sqrt(np.mean(centred**2)))
    if not scale > 1e-12 * max(1.0, float(np.abs(a).max())):
        raise DataError("atom has no spatial variation (constant or all zero): nothing to fit")
    z = centred / scale  # standardised: mean 0, RMS 1
    h, w = z.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy, target = xx.ravel(), yy.ravel(), z.ravel()
    total = float(target @ target)

    big = float(max(h, w))
    peak = float(np.abs(z).max())
    lower = np.array([-2.0, -2.0, -math.pi, 0.0, MIN_SIGMA, MIN_SIGMA, -3 * math.pi, 0.0, -peak])
    upper = np.array([w + 1.0, h + 1.0, 2 * math.pi, MAX_FREQUENCY, 2 * big, 2 * big, 3 * math.pi,
                      10.0 * peak + 1.0, peak])
    margin = 1e-6 * (upper - lower)

    def residual(p: np.ndarray) -> np.ndarray:
        return _gabor_and_jacobian(p, xx, yy, jacobian=False)[0] - target

    def jac(p: np.ndarray) -> np.ndarray:
        return _gabor_and_jacobian(p, xx, yy, jacobian=True)[1]

    best_params, best_cost = None, math.inf
    for shape_params in _starting_shapes(z, n_starts, np.random.default_rng(seed)):
        phase, amplitude, offset = _linear_part(xx, yy, target, shape_params)
        start = np.clip(np.array([*shape_params, phase, amplitude, offset]), lower + margin, upper - margin)
        solution = least_squares(residual, start, jac=jac, bounds=(lower, upper), method="trf",
                                 x_scale="jac", max_nfev=200, ftol=1e-8, xtol=1e-8, gtol=1e-8)
        cost = float(solution.fun @ solution.fun)
        if cost < best_cost:
            best_params, best_cost = solution.x, cost
        if 1.0 - best_cost / total >= _EARLY_STOP_R2:
            break
    params = list(_canonical(best_params))
    params[7] *= scale  # amplitude
    params[8] = params[8] * scale + float(a.mean())  # offset
    return GaborFit(*params, r2=float(1.0 - best_cost / total))


# --------------------------------------------------------------------------- dictionaries


@dataclass(frozen=True)
class GaborSummary:
    """Gabor fits of the columns of a dictionary and the properties of the well-fit ones.

    patch_shape: (h, w). min_r2: the well-fit threshold. atom_indices: (N,) columns examined, in the
    order examined (``fit_dictionary``'s ``columns`` and ``max_atoms``). fits: N entries, a
    :class:`GaborFit` or None for a skipped (near-zero or constant) atom. well_fit: (N,) bool, r2 ≥ min_r2
    (skipped atoms are False). The four property arrays hold one value per well-fit atom, in
    ``atom_indices`` order: orientation (radians in [0, π), the wave vector), frequency (cycles/pixel),
    size (pixels, sqrt(σ_x·σ_y)), aspect_ratio (σ_y/σ_x).
    """

    patch_shape: tuple[int, int]
    min_r2: float
    atom_indices: np.ndarray
    fits: tuple[GaborFit | None, ...]
    well_fit: np.ndarray
    orientation: np.ndarray
    frequency: np.ndarray
    size: np.ndarray
    aspect_ratio: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.fits)

    @property
    def n_skipped(self) -> int:
        return sum(fit is None for fit in self.fits)

    @property
    def fraction_well_fit(self) -> float:
        """Well-fit atoms over all examined atoms (skipped ones count as not well fit)."""
        return float(self.well_fit.mean()) if self.n_atoms else 0.0

    @property
    def r2(self) -> np.ndarray:
        """(N,) r2 of each examined atom; NaN marks a skipped atom."""
        return np.array([math.nan if fit is None else fit.r2 for fit in self.fits])

    def to_dict(self, *, include_fits: bool = True) -> dict[str, Any]:
        """JSON-ready summary: counts, fractions, medians and fixed-edge histograms of the well-fit atoms.

        Histogram edges: orientation 0–180° in 15° bins; frequency 0–0.5 cycles/pixel in 0.05 bins; size
        0–max(h, w) pixels in 12 bins; aspect ratio 0–4 in 0.25 bins; r2 (all fitted atoms) 0–1 in 0.05 bins
        (values beyond the last edge, or below the first, fall in the end bins). include_fits: add the
        per-atom fits (``None`` for skipped atoms).
        """
        h, w = self.patch_shape
        r2 = self.r2
        fitted_r2 = r2[np.isfinite(r2)]
        orientation_deg = np.degrees(self.orientation)
        # circular mean of the doubled angle: orientation bias of the population and its strength
        resultant = np.mean(np.exp(2j * self.orientation)) if self.orientation.size else 0j
        out: dict[str, Any] = {
            "patch_shape": [h, w],
            "min_r2": float(self.min_r2),
            "n_atoms": self.n_atoms,
            "n_skipped": self.n_skipped,
            "n_well_fit": int(self.well_fit.sum()),
            "fraction_well_fit": self.fraction_well_fit,
            "median_r2": median_or_none(fitted_r2),
            "median_frequency": median_or_none(self.frequency),
            "median_size": median_or_none(self.size),
            "median_aspect_ratio": median_or_none(self.aspect_ratio),
            "mean_orientation_deg": (math.degrees(np.angle(resultant) / 2) % 180.0) if self.orientation.size
            else None,
            "orientation_concentration": float(abs(resultant)),
            "histograms": {
                "orientation_deg": histogram(orientation_deg, np.linspace(0.0, 180.0, 13)),
                "frequency": histogram(self.frequency, np.linspace(0.0, MAX_FREQUENCY, 11)),
                "size": histogram(self.size, np.linspace(0.0, float(max(h, w)), 13)),
                "aspect_ratio": histogram(self.aspect_ratio, np.linspace(0.0, 4.0, 17)),
                "r2": histogram(fitted_r2, np.linspace(0.0, 1.0, 21)),
            },
        }
        if include_fits:
            out["atoms"] = [{"index": int(i), "fit": None if fit is None else fit.to_dict(), "well_fit": bool(ok)}
                            for i, fit, ok in zip(self.atom_indices, self.fits, self.well_fit, strict=True)]
        return out


def _column_indices(columns: Sequence[int] | None, n_columns: int) -> np.ndarray:
    """(N,) int64 column indices: ``columns`` checked against ``n_columns``, or all of them."""
    if columns is None:
        return np.arange(n_columns)
    indices = np.asarray(columns)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise ConfigError(f"columns must be a non-empty sequence of integers, got {columns!r}")
    if indices.min() < 0 or indices.max() >= n_columns:
        raise ConfigError(f"columns must lie in [0, {n_columns}), got {int(indices.min())}…{int(indices.max())}")
    return indices.astype(np.int64)


def most_active_neurons(model: Any, x: Any, *, count: int = MOST_ACTIVE_ATOMS, steps: int = 200,
                        seed: int = 0) -> np.ndarray:
    """The ``count`` neurons of ``model`` with the highest mean code on inputs ``x``, most active first.

    model: anything with ``infer(x, steps, seed=..., trace=False)`` returning ``rates`` (B, K) (every fond
    model: firing rates for iP-VAE). x: (B, D) held-out inputs (array or tensor). steps: inference steps.
    Returns (min(count, K),) int64 column indices into the model's dictionary (ties keep index order).
    """
    import torch

    count, steps = positive_int(count, "count"), positive_int(steps, "steps")
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        rates = model.infer(inputs, steps, seed=seed, trace=False).rates
    mean_rate = rates.detach().double().mean(0).cpu().numpy()
    return np.argsort(-mean_rate, kind="stable")[:count].astype(np.int64)


def fit_dictionary(dictionary: Any, patch_shape: Sequence[int], *, min_r2: float = 0.7, max_atoms: int | None = None,
                   columns: Sequence[int] | None = None, n_starts: int = 4,
                   rel_norm_tol: float = 1e-6) -> GaborSummary:
    """Fit a Gabor to every column of a (D, K) dictionary, each reshaped row-major to ``patch_shape``.

    dictionary: (D, K) finite array or tensor with D = h·w. min_r2: an atom is well fit if r2 ≥ min_r2.
    columns: the column indices to examine, in this order (e.g. :func:`most_active_neurons`); default all.
    max_atoms: examine only the first ``max_atoms`` of them (atom order carries no meaning, so without
    ``columns`` this is an unbiased subset). Atoms whose norm about their mean is ≤ ``rel_norm_tol`` × the
    largest column norm (dead or constant atoms) are skipped and count as not well fit. n_starts: see
    :func:`fit_gabor`.
    """
    h, w = patch_dims(patch_shape)
    phi = float_array(dictionary, "dictionary")
    if phi.ndim != 2:
        raise DataError(f"dictionary must be a 2-D (D, K) array, got shape {phi.shape}")
    if phi.shape[0] != h * w:
        raise DataError(f"dictionary has D = {phi.shape[0]} rows but patch_shape {h}×{w} needs {h * w}")
    if phi.shape[1] < 1:
        raise DataError("dictionary has no columns")
    if not np.all(np.isfinite(phi)):
        raise DataError("dictionary contains NaN or infinite values")
    min_r2 = finite_float(min_r2, "min_r2")
    if min_r2 > 1.0:
        raise ConfigError(f"min_r2 must be ≤ 1, got {min_r2}")
    if max_atoms is not None:
        max_atoms = positive_int(max_atoms, "max_atoms")
    rel_norm_tol = finite_float(rel_norm_tol, "rel_norm_tol")

    indices = _column_indices(columns, phi.shape[1])
    if max_atoms is not None:
        indices = indices[:max_atoms]
    largest = float(np.linalg.norm(phi, axis=0).max())
    fits: list[GaborFit | None] = []
    for k in indices:
        atom = phi[:, k].reshape(h, w)
        centred_norm = float(np.linalg.norm(atom - atom.mean()))
        if largest == 0.0 or centred_norm <= rel_norm_tol * largest:
            fits.append(None)
            continue
        fits.append(fit_gabor(atom, n_starts=n_starts, seed=int(k)))
    well = np.array([fit is not None and fit.r2 >= min_r2 for fit in fits], dtype=bool)
    good = [fit for fit, ok in zip(fits, well, strict=True) if ok]
    return GaborSummary(
        patch_shape=(h, w), min_r2=min_r2, atom_indices=indices, fits=tuple(fits), well_fit=well,
        orientation=np.array([f.theta for f in good], dtype=np.float64),
        frequency=np.array([f.frequency for f in good], dtype=np.float64),
        size=np.array([f.size for f in good], dtype=np.float64),
        aspect_ratio=np.array([f.aspect_ratio for f in good], dtype=np.float64),
    )


def plot_gabor_summary(summary: GaborSummary, path: str | os.PathLike[str]) -> Path:
    """One PNG: histograms of r2 (all fitted atoms) and of orientation, spatial frequency, envelope size and
    aspect ratio of the well-fit atoms; the title gives the fraction well fit. Returns the written path."""
    if not isinstance(summary, GaborSummary):
        raise DataError(f"summary must be a GaborSummary, got {type(summary).__name__}")
    hist = summary.to_dict(include_fits=False)["histograms"]
    panels = [
        ("r2", "r² (all fitted atoms)", "atoms"),
        ("orientation_deg", "orientation θ of the wave vector (deg)", "well-fit atoms"),
        ("frequency", "spatial frequency (cycles/pixel)", "well-fit atoms"),
        ("size", "envelope size √(σₓσᵧ) (pixels)", "well-fit atoms"),
        ("aspect_ratio", "aspect ratio σᵧ/σₓ", "well-fit atoms"),
    ]
    fig = new_figure(3.2 * len(panels), 3.0)
    axes = fig.subplots(1, len(panels))
    for ax, (key, xlabel, ylabel) in zip(axes, panels, strict=True):
        edges = np.asarray(hist[key]["edges"])
        counts = np.asarray(hist[key]["counts"])
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4a6fa5", edgecolor="white")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if key == "r2":
            ax.axvline(summary.min_r2, color="#c0392b", linestyle="--", label=f"min r² = {summary.min_r2:g}")
            ax.legend(fontsize="small")
        elif counts.sum() == 0:
            ax.text(0.5, 0.5, "no well-fit atoms", transform=ax.transAxes, ha="center", va="center")
    n_good = int(summary.well_fit.sum())
    fig.suptitle(f"Gabor fits: {n_good}/{summary.n_atoms} atoms well fit "
                 f"({100 * summary.fraction_well_fit:.1f} %, r² ≥ {summary.min_r2:g}; {summary.n_skipped} skipped)")
    return save_figure(fig, path)
