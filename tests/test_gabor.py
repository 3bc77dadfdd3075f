"""Tests for fond.analysis.gabor: Gabor fits recover known parameters, gratings are what they claim, and tuning
analysis returns the preferred orientations and selectivity of a fake model whose tuning is known exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import approx_fprime
from scipy.special import ive

from fond.analysis.gabor import (
    MAX_FREQUENCY,
    MIN_SIGMA,
    GaborFit,
    _canonical,
    _gabor_and_jacobian,
    fit_dictionary,
    fit_gabor,
    gabor_patch,
    most_active_neurons,
    plot_gabor_summary,
)
from fond.analysis.stimuli import gratings
from fond.analysis.tuning import grating_tuning, plot_tuning
from fond.errors import ConfigError, DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (16, 16)


def _orientation_error(a: float, b: float) -> float:
    """Smallest angle between two π-periodic orientations, radians."""
    return abs((a - b + math.pi / 2) % math.pi - math.pi / 2)


def _pixel_grid(shape=SHAPE):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return xx, yy


# --------------------------------------------------------------------------- gabor_patch


def test_gabor_patch_matches_the_documented_formula():
    """The rendered Gabor is the module docstring's formula (x = column, y = row, θ = wave-vector direction)."""
    xx, yy = _pixel_grid((12, 15))
    x0, y0, theta, f, sx, sy, phase, amp, off = 6.2, 5.1, 0.7, 0.21, 2.0, 3.5, 0.4, 1.7, -0.3
    along = (xx - x0) * math.cos(theta) + (yy - y0) * math.sin(theta)
    across = -(xx - x0) * math.sin(theta) + (yy - y0) * math.cos(theta)
    expected = off + amp * np.exp(-along**2 / (2 * sx**2) - across**2 / (2 * sy**2)) * np.cos(
        2 * math.pi * f * along + phase)
    got = gabor_patch((12, 15), x0=x0, y0=y0, theta=theta, frequency=f, sigma_x=sx, sigma_y=sy, phase=phase,
                      amplitude=amp, offset=off)
    assert got.shape == (12, 15)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_gabor_patch_orientation_is_the_fft_peak_direction():
    """θ is the direction of the carrier's wave vector in (column, row) frequency space, so orientation analyses
    and the FFT agree; theta = 0 varies along columns only."""
    flat = dict(x0=8.0, y0=8.0, sigma_x=1e4, sigma_y=1e4, phase=0.0)
    vertical_stripes = gabor_patch(SHAPE, theta=0.0, frequency=0.25, **flat)
    np.testing.assert_allclose(vertical_stripes, vertical_stripes[:1].repeat(16, axis=0), atol=1e-6)
    # wave vector (fx, fy) = (2, 3) cycles per patch → θ = atan2(3, 2), f = √13 / 16
    theta, f = math.atan2(3, 2), math.hypot(2, 3) / 16
    spectrum = np.abs(np.fft.fft2(gabor_patch(SHAPE, theta=theta, frequency=f, **flat)))
    row, col = np.unravel_index(np.argmax(spectrum[:, :8]), spectrum[:, :8].shape)
    assert (row, col) == (3, 2)


def test_gabor_patch_sigma_x_is_the_width_across_stripes():
    """σ_x is measured along the wave vector and σ_y along the stripes (the envelope's second moments)."""
    theta, sx, sy = 0.4, 1.5, 3.0
    env = gabor_patch((41, 41), x0=20, y0=20, theta=theta, frequency=0.0, sigma_x=sx, sigma_y=sy, phase=0.0)
    xx, yy = _pixel_grid((41, 41))
    along = (xx - 20) * math.cos(theta) + (yy - 20) * math.sin(theta)
    across = -(xx - 20) * math.sin(theta) + (yy - 20) * math.cos(theta)
    assert math.sqrt((env * along**2).sum() / env.sum()) == pytest.approx(sx, rel=1e-3)
    assert math.sqrt((env * across**2).sum() / env.sum()) == pytest.approx(sy, rel=1e-3)


def test_gabor_jacobian_matches_finite_differences():
    """The analytic Jacobian the fitter relies on is the derivative of the model (else fits stall or drift)."""
    xx, yy = (a.ravel() for a in _pixel_grid((9, 11)))
    params = np.array([4.3, 5.2, 0.9, 0.17, 2.1, 3.3, 0.6, 1.4, 0.2])
    _, jac = _gabor_and_jacobian(params, xx, yy, jacobian=True)
    for pixel in (0, 17, 50, 98):
        numeric = approx_fprime(params, lambda p, i=pixel: _gabor_and_jacobian(p, xx, yy, False)[0][i], 1e-7)
        np.testing.assert_allclose(jac[pixel], numeric, atol=2e-5)


def test_canonical_parameters_describe_the_same_gabor():
    """Canonicalisation (θ in [0, π), positive σ and amplitude, wrapped phase) never changes the image."""
    rng = np.random.default_rng(3)
    names = ("x0", "y0", "theta", "frequency", "sigma_x", "sigma_y", "phase", "amplitude", "offset")
    for _ in range(20):
        raw = [rng.uniform(3, 12), rng.uniform(3, 12), rng.uniform(-10, 10), rng.uniform(-0.4, 0.4),
               rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-10, 10), rng.uniform(-2, 2), rng.uniform(-1, 1)]
        raw[4] += math.copysign(0.5, raw[4])
        raw[5] += math.copysign(0.5, raw[5])
        canon = _canonical(raw)
        assert 0 <= canon[2] < math.pi and canon[3] >= 0 and canon[4] > 0 and canon[5] > 0 and canon[7] >= 0
        assert -math.pi < canon[6] <= math.pi
        xx, yy = (a.ravel() for a in _pixel_grid())
        np.testing.assert_allclose(_gabor_and_jacobian(np.array(canon), xx, yy, False)[0],
                                   _gabor_and_jacobian(np.array(raw), xx, yy, False)[0], atol=1e-10)
        assert dict(zip(names, canon, strict=True))["sigma_x"] == abs(raw[4])


# --------------------------------------------------------------------------- fit_gabor


@pytest.mark.parametrize("theta", [0.3, 0.9, 1.6, 2.2, 2.8])
@pytest.mark.parametrize("phase", [0.0, 1.2, -2.0])
def test_fit_recovers_a_noisy_synthetic_gabor(theta, phase):
    """A Gabor with 2 % noise is recovered: orientation within 3°, frequency within 5 %, centre within half a
    pixel, phase within 0.2 rad, r2 > 0.95 — the basis of every dictionary statistic."""
    rng = np.random.default_rng(int(100 * theta + 10 * phase) % 2**32)
    true = dict(x0=7.3, y0=8.6, theta=theta, frequency=0.16, sigma_x=2.4, sigma_y=3.6, phase=phase, amplitude=3.0,
                offset=0.5)
    atom = gabor_patch(SHAPE, **true) + 0.02 * 3.0 * rng.standard_normal(SHAPE)
    fit = fit_gabor(atom)
    assert isinstance(fit, GaborFit)
    assert math.degrees(_orientation_error(fit.theta, theta)) < 3.0
    assert fit.frequency == pytest.approx(0.16, rel=0.05)
    assert math.hypot(fit.x0 - 7.3, fit.y0 - 8.6) < 0.5
    assert abs(math.remainder(fit.phase - phase, 2 * math.pi)) < 0.2
    assert fit.amplitude == pytest.approx(3.0, rel=0.05)
    assert fit.offset == pytest.approx(0.5, abs=0.05)
    assert fit.sigma_x == pytest.approx(2.4, rel=0.1) and fit.sigma_y == pytest.approx(3.6, rel=0.1)
    assert fit.r2 > 0.95
    residual = atom - fit.render(SHAPE)
    assert fit.r2 == pytest.approx(1 - (residual**2).sum() / ((atom - atom.mean()) ** 2).sum(), abs=1e-9)


def test_fit_accepts_torch_tensors_and_scales_with_the_atom():
    """Scaling an atom by c scales the fitted amplitude by c and leaves the shape parameters and r2 unchanged."""
    atom = gabor_patch(SHAPE, x0=6.0, y0=9.0, theta=1.0, frequency=0.22, sigma_x=2.0, sigma_y=2.5, phase=0.3)
    small, big = fit_gabor(torch.tensor(atom * 1e-4)), fit_gabor(atom * 50.0)
    assert big.amplitude / small.amplitude == pytest.approx(5e5, rel=1e-4)
    assert (small.theta, small.frequency, small.r2) == pytest.approx((big.theta, big.frequency, big.r2), abs=1e-5)


def test_pure_noise_gets_a_low_r2():
    """White noise is not Gabor-like: its best Gabor explains little variance (so min_r2 separates the two)."""
    rng = np.random.default_rng(7)
    r2 = [fit_gabor(rng.standard_normal(SHAPE)).r2 for _ in range(4)]
    assert max(r2) < 0.35


def test_fits_stay_in_the_nyquist_band_with_envelopes_of_half_a_pixel():
    """Issue 16: a carrier above 0.5 cycles/pixel or an envelope under half a pixel fits pixel noise, so the fit
    may not use one; a checkerboard (0.707 cycles/pixel along the diagonal) is then no longer a perfect fit."""
    rng = np.random.default_rng(3)
    checkerboard = np.indices(SHAPE).sum(0) % 2 * 2.0 - 1.0
    for atom in [rng.standard_normal(SHAPE) for _ in range(4)] + [checkerboard]:
        fit = fit_gabor(atom)
        assert fit.frequency <= MAX_FREQUENCY + 1e-9 and min(fit.sigma_x, fit.sigma_y) >= MIN_SIGMA - 1e-9
    assert MAX_FREQUENCY == 0.5 and MIN_SIGMA == 0.5 and fit_gabor(checkerboard).r2 < 0.5


@pytest.mark.parametrize("atom, message", [
    (np.zeros(16), "2-D"),
    (np.full(SHAPE, np.nan), "NaN"),
    (np.full(SHAPE, 3.0), "no spatial variation"),
])
def test_fit_gabor_rejects_bad_atoms(atom, message):
    """Malformed atoms fail loudly with DataError instead of returning a meaningless fit."""
    with pytest.raises(DataError, match=message):
        fit_gabor(atom)


# --------------------------------------------------------------------------- fit_dictionary


def _half_gabor_dictionary(rng: np.random.Generator):
    """(256, 16): columns 0, 2, 4, … Gabors with known orientations, odd columns white noise."""
    thetas = np.linspace(0.1, 3.0, 8)
    columns = []
    for i, theta in enumerate(thetas):
        gabor = gabor_patch(SHAPE, x0=5.0 + i, y0=10.0 - 0.5 * i, theta=theta, frequency=0.12 + 0.02 * i,
                            sigma_x=2.2, sigma_y=3.0, phase=0.7 * i, amplitude=0.1)
        columns += [gabor.ravel() + 0.003 * rng.standard_normal(256), 0.05 * rng.standard_normal(256)]
    return np.stack(columns, axis=1), thetas


def test_fit_dictionary_separates_gabors_from_noise():
    """Half Gabors, half noise gives a well-fit fraction of 0.5, and the well-fit orientations are the Gabors'."""
    phi, thetas = _half_gabor_dictionary(np.random.default_rng(0))
    summary = fit_dictionary(torch.tensor(phi), SHAPE)
    assert summary.n_atoms == 16 and summary.n_skipped == 0
    assert summary.fraction_well_fit == pytest.approx(0.5, abs=1 / 16)
    np.testing.assert_array_equal(summary.well_fit, np.arange(16) % 2 == 0)
    assert max(_orientation_error(a, b) for a, b in zip(summary.orientation, thetas, strict=True)) < math.radians(3)
    np.testing.assert_allclose(summary.frequency, 0.12 + 0.02 * np.arange(8), rtol=0.05)
    np.testing.assert_allclose(summary.size, math.sqrt(2.2 * 3.0), rtol=0.1)
    np.testing.assert_allclose(summary.aspect_ratio, 3.0 / 2.2, rtol=0.15)


def test_fit_dictionary_skips_dead_atoms_and_limits_the_count():
    """All-zero and constant atoms are skipped but counted as not well fit; max_atoms takes the first columns."""
    phi, _ = _half_gabor_dictionary(np.random.default_rng(1))
    phi = np.concatenate([np.zeros((256, 1)), np.full((256, 1), 0.2), phi[:, :2]], axis=1)
    summary = fit_dictionary(phi, SHAPE)
    assert summary.n_skipped == 2 and summary.fits[0] is None and summary.fits[1] is None
    assert summary.fraction_well_fit == pytest.approx(0.25)
    assert np.isnan(summary.r2[:2]).all()
    limited = fit_dictionary(phi, SHAPE, max_atoms=3)
    np.testing.assert_array_equal(limited.atom_indices, [0, 1, 2])
    assert limited.fraction_well_fit == pytest.approx(1 / 3)
    all_zero = fit_dictionary(np.zeros((256, 3)), SHAPE)
    assert all_zero.n_skipped == 3 and all_zero.fraction_well_fit == 0.0


def test_fit_dictionary_examines_the_columns_asked_for_in_that_order():
    """columns= picks and orders the atoms (the most active neurons'); out-of-range columns are refused."""
    phi, _ = _half_gabor_dictionary(np.random.default_rng(4))
    summary = fit_dictionary(phi, SHAPE, columns=[3, 0, 2])
    np.testing.assert_array_equal(summary.atom_indices, [3, 0, 2])
    np.testing.assert_array_equal(summary.well_fit, [False, True, True])
    with pytest.raises(ConfigError, match="columns"):
        fit_dictionary(phi, SHAPE, columns=[16])


class _FixedRates:
    """A fake model whose mean code is ``rates`` (K,) for every input."""

    def __init__(self, rates):
        self.rates = torch.as_tensor(rates, dtype=torch.float32)

    def infer(self, x, steps, seed=0, trace=True):
        return SimpleNamespace(rates=self.rates.expand(x.shape[0], -1))


def test_most_active_neurons_are_those_with_the_highest_mean_rate():
    """Most active first, ties in index order, at most ``count`` of them."""
    model = _FixedRates([0.1, 3.0, 0.0, 3.0, 2.0])
    np.testing.assert_array_equal(most_active_neurons(model, np.zeros((4, 256)), count=3), [1, 3, 4])
    np.testing.assert_array_equal(most_active_neurons(model, np.zeros((2, 256))), [1, 3, 4, 0, 2])


def test_gabor_summary_to_dict_is_json_ready():
    """The summary serialises to strict JSON (no NaN) with counts that add up to the atoms examined."""
    phi, _ = _half_gabor_dictionary(np.random.default_rng(2))
    phi[:, 1] = 0.0
    data = json.loads(json.dumps(fit_dictionary(phi, SHAPE).to_dict(), allow_nan=False))
    assert data["n_atoms"] == 16 and data["n_skipped"] == 1 and data["n_well_fit"] == 8
    assert data["fraction_well_fit"] == pytest.approx(0.5)
    assert sum(data["histograms"]["orientation_deg"]["counts"]) == 8
    assert sum(data["histograms"]["r2"]["counts"]) == 15
    assert data["atoms"][1]["fit"] is None and data["atoms"][0]["well_fit"] is True
    assert data["median_frequency"] == pytest.approx(np.median(0.12 + 0.02 * np.arange(8)), rel=0.05)


@pytest.mark.parametrize("phi, shape, error, message", [
    (np.zeros((256,)), SHAPE, DataError, "2-D"),
    (np.zeros((255, 4)), SHAPE, DataError, "patch_shape"),
    (np.full((256, 2), np.nan), SHAPE, DataError, "NaN"),
    (np.zeros((256, 2)), (16, -16), DataError, "patch_shape"),
    (np.zeros((256, 2)), (16,), DataError, "patch_shape"),
])
def test_fit_dictionary_rejects_bad_inputs(phi, shape, error, message):
    """Wrong shapes and NaN raise DataError naming the problem."""
    with pytest.raises(error, match=message):
        fit_dictionary(phi, shape)


def test_fit_dictionary_rejects_bad_options():
    """Nonsense option values raise ConfigError."""
    with pytest.raises(ConfigError, match="max_atoms"):
        fit_dictionary(np.ones((256, 2)), SHAPE, max_atoms=0)
    with pytest.raises(ConfigError, match="min_r2"):
        fit_dictionary(np.ones((256, 2)), SHAPE, min_r2=float("nan"))


def test_plot_gabor_summary_writes_a_png_atomically(tmp_path: Path):
    """The summary figure is a PNG at the requested path with no temporary files left behind, even when no
    atom is well fit."""
    phi, _ = _half_gabor_dictionary(np.random.default_rng(4))
    out = plot_gabor_summary(fit_dictionary(phi[:, :4], SHAPE), tmp_path / "figs" / "gabor.png")
    assert out == tmp_path / "figs" / "gabor.png" and out.read_bytes()[:8] == PNG_SIGNATURE
    empty = plot_gabor_summary(fit_dictionary(np.zeros((256, 2)), SHAPE), tmp_path / "figs" / "empty.png")
    assert empty.read_bytes()[:8] == PNG_SIGNATURE
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"gabor.png", "empty.png"}


# --------------------------------------------------------------------------- gratings


def test_gratings_have_the_requested_orientation():
    """Each grating's FFT peak lies along its orientation at its frequency, rows ordered orientation-major."""
    orientations = [0.0, 0.5, 1.2, 2.0, 2.7]
    stimuli = gratings((32, 32), orientations, 0.2, [0.0, 1.0, 2.5])
    assert stimuli.shape == (15, 32 * 32)
    fy = np.fft.fftfreq(128)[:, None] * np.ones((1, 128))
    fx = np.fft.fftfreq(128)[None, :] * np.ones((128, 1))
    for i, theta in enumerate(orientations):
        for j in range(3):
            power = np.abs(np.fft.fft2(stimuli[3 * i + j].reshape(32, 32), s=(128, 128)))
            peak = np.unravel_index(np.argmax(power), power.shape)
            assert math.degrees(_orientation_error(math.atan2(fy[peak], fx[peak]), theta)) < 3.0
            assert math.hypot(fx[peak], fy[peak]) == pytest.approx(0.2, abs=1 / 128)


def test_gratings_contrast_is_the_peak_amplitude():
    """With a whole number of cycles per patch, a grating is an exact zero-mean cosine of amplitude `contrast`
    (phase measured from the patch centre), and it scales linearly with contrast."""
    stimuli = gratings(SHAPE, [0.0, math.pi / 2], 0.25, [0.0, math.pi / 4], contrast=0.3)
    xx, yy = _pixel_grid()
    np.testing.assert_allclose(stimuli[0], 0.3 * np.cos(2 * math.pi * 0.25 * (xx - 7.5)).ravel(), atol=1e-12)
    np.testing.assert_allclose(stimuli[3], 0.3 * np.cos(2 * math.pi * 0.25 * (yy - 7.5) + math.pi / 4).ravel(),
                               atol=1e-12)
    np.testing.assert_allclose(np.sqrt((stimuli**2).mean(axis=1)), 0.3 / math.sqrt(2), rtol=1e-9)  # RMS = c/√2
    odd = gratings(SHAPE, [0.3], 0.13, [0.4], contrast=2.0)
    assert abs(odd.mean()) < 1e-12
    np.testing.assert_allclose(odd, 2.0 * gratings(SHAPE, [0.3], 0.13, [0.4]), atol=1e-12)


@pytest.mark.parametrize("kwargs, error", [
    (dict(orientations=[], frequency=0.2, phases=[0.0]), DataError),
    (dict(orientations=[0.0, np.nan], frequency=0.2, phases=[0.0]), DataError),
    (dict(orientations=[0.0], frequency=0.0, phases=[0.0]), ConfigError),
    (dict(orientations=[0.0], frequency=0.7, phases=[0.0]), ConfigError),
    (dict(orientations=[0.0], frequency=0.2, phases=[0.0], contrast=-1.0), ConfigError),
])
def test_gratings_reject_bad_inputs(kwargs, error):
    """Empty or non-finite stimulus lists and impossible frequencies or contrasts are refused."""
    with pytest.raises(error):
        gratings(SHAPE, **kwargs)


# --------------------------------------------------------------------------- grating_tuning


class VonMisesModel:
    """A fake model whose neuron k fires gain·exp(κ_k(cos 2(θ̂ − μ_k) − 1)) + baseline, θ̂ being the input's
    orientation decoded independently (doubled-angle vector sum of quadrature-pair energies over 36 orientations)."""

    def __init__(self, preferred, kappa, shape=SHAPE, frequency=0.15, baseline=0.05, signed=False, dictionary=None):
        self.preferred, self.kappa = np.asarray(preferred, float), np.asarray(kappa, float)
        self.n_inputs, self.n_latents = shape[0] * shape[1], len(self.preferred)
        self.baseline, self.signed, self.dictionary = baseline, signed, dictionary
        xx, yy = _pixel_grid(shape)
        self.bank = np.linspace(0, math.pi, 36, endpoint=False)
        u = np.cos(self.bank)[:, None] * xx.ravel() + np.sin(self.bank)[:, None] * yy.ravel()
        self.cos_bank, self.sin_bank = np.cos(2 * math.pi * frequency * u), np.sin(2 * math.pi * frequency * u)
        self.calls = []

    def decode(self, x: np.ndarray) -> np.ndarray:
        energy = (x @ self.cos_bank.T) ** 2 + (x @ self.sin_bank.T) ** 2  # (B, 36)
        return (np.angle(energy @ np.exp(2j * self.bank)) / 2) % math.pi

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        self.calls.append(dict(steps=steps, seed=seed, trace=trace, dtype=x.dtype, shape=tuple(x.shape)))
        theta = self.decode(x.double().numpy())[:, None]
        tuning = np.cos(2 * (theta - self.preferred[None, :]))
        rates = tuning if self.signed else np.exp(self.kappa * (tuning - 1)) + self.baseline
        return SimpleNamespace(rates=torch.tensor(rates, dtype=torch.float32))


def test_grating_tuning_recovers_known_preferred_orientations():
    """Preferred orientations (between the stimulus grid points too) come back within 2°, and the model is
    called once with the documented arguments."""
    preferred = [0.1, 0.7, 1.3, 2.0, 2.9]
    model = VonMisesModel(preferred, kappa=[2.0] * 5)
    result = grating_tuning(model, SHAPE, frequency=0.15, n_orientations=16, n_phases=4, steps=7, seed=3)
    assert model.calls == [dict(steps=7, seed=3, trace=False, dtype=torch.float32, shape=(64, 256))]
    assert result.tuning.shape == (16, 5) and result.responses.shape == (16, 4, 5)
    np.testing.assert_allclose(result.tuning, result.responses.mean(axis=1))
    for got, want in zip(result.preferred_orientation, preferred, strict=True):
        assert math.degrees(_orientation_error(got, want)) < 2.0
    assert result.responsive.all() and result.frequency_source == "given" and result.response_measure == "rates"
    np.testing.assert_array_equal(np.argmax(result.tuning, axis=0),
                                  np.round(np.asarray(preferred) / (math.pi / 16)).astype(int) % 16)


def test_osi_matches_the_von_mises_oracle_and_grows_with_sharpness():
    """For r ∝ exp(κ cos 2(θ − μ)) the OSI (1 − circular variance) is I₁(κ)/I₀(κ): sharper tuning, higher OSI."""
    kappas = [0.5, 1.0, 2.0, 4.0]
    model = VonMisesModel([0.4, 1.1, 1.9, 2.5], kappa=kappas, baseline=0.0)
    result = grating_tuning(model, SHAPE, frequency=0.15, n_phases=2, steps=1)
    np.testing.assert_allclose(result.osi, [ive(1, k) / ive(0, k) for k in kappas], atol=0.02)
    assert np.all(np.diff(result.osi) > 0.05)


def test_signed_rates_are_shifted_before_computing_selectivity():
    """A signed tuning curve (magnitude=False) still gets the right preferred orientation and an OSI in [0, 1]."""
    model = VonMisesModel([0.6, 2.2], kappa=[1.0, 1.0], signed=True)
    result = grating_tuning(model, SHAPE, frequency=0.15, n_phases=2, steps=1, magnitude=False)
    assert result.response_measure == "rates"
    assert max(_orientation_error(a, b) for a, b in zip(result.preferred_orientation, [0.6, 2.2], strict=True)) \
        < math.radians(2)
    assert np.all((result.osi > 0.3) & (result.osi <= 1.0))


class LinearGaborModel:
    """A fake signed, odd-symmetric code: rates = x·Φ with Gabor columns of known orientation (like LCA or μ)."""

    def __init__(self, thetas, frequency=0.15):
        self.n_inputs, self.n_latents, self.dictionary = 256, len(thetas), None
        self.phi = np.stack([gabor_patch(SHAPE, x0=7.5, y0=7.5, theta=t, frequency=frequency, sigma_x=2.5,
                                         sigma_y=3.5, phase=0.0).ravel() for t in thetas], axis=1)

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        return SimpleNamespace(rates=torch.tensor(x.double().numpy() @ self.phi))


def test_signed_odd_codes_are_measured_by_magnitude():
    """A code that flips sign with the grating's phase averages to zero over a drifting grating; by default its
    |rates| are averaged instead, which recovers the orientation of each linear Gabor filter."""
    thetas = [0.25, 1.0, 1.9, 2.75]
    model = LinearGaborModel(thetas)
    result = grating_tuning(model, SHAPE, frequency=0.15, n_phases=8, steps=1)
    assert result.response_measure == "|rates|"
    for got, want in zip(result.preferred_orientation, thetas, strict=True):
        assert math.degrees(_orientation_error(got, want)) < 3.0
    assert np.all(result.osi > 0.5)
    plain = grating_tuning(model, SHAPE, frequency=0.15, n_phases=8, steps=1, magnitude=False)
    assert np.abs(plain.tuning).max() < 1e-9 * np.abs(plain.responses).max()


def test_default_frequency_comes_from_the_dictionary():
    """Without a frequency, gratings use the median frequency of the model's well-fit atoms, else 0.15."""
    atoms = [gabor_patch(SHAPE, x0=8, y0=7, theta=t, frequency=0.2, sigma_x=2.5, sigma_y=3.0, phase=0.5).ravel()
             for t in (0.3, 1.5, 2.6)]
    with_dict = VonMisesModel([0.5], [1.0], frequency=0.2, dictionary=torch.tensor(np.stack(atoms, axis=1)))
    result = grating_tuning(with_dict, SHAPE, n_phases=2, steps=1)
    assert result.frequency_source == "dictionary" and result.frequency == pytest.approx(0.2, rel=0.03)
    noise = VonMisesModel([0.5], [1.0], dictionary=np.random.default_rng(0).standard_normal((256, 2)))
    no_dict = VonMisesModel([0.5], [1.0])
    for model in (noise, no_dict):
        result = grating_tuning(model, SHAPE, n_phases=2, steps=1)
        assert (result.frequency, result.frequency_source) == (0.15, "default")


def test_tuning_to_dict_is_json_ready():
    """The population summary serialises to strict JSON with consistent counts."""
    result = grating_tuning(VonMisesModel([0.2, 1.0, 2.0], [1.0, 2.0, 3.0]), SHAPE, frequency=0.15, n_phases=2,
                            steps=1)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["n_neurons"] == 3 and data["n_responsive"] == 3
    assert sum(data["histograms"]["osi"]["counts"]) == 3
    assert len(data["population_tuning"]) == 16 and len(data["neurons"]["osi"]) == 3
    assert data["osi_median"] == pytest.approx(float(np.median(result.osi)))


def test_grating_tuning_rejects_bad_inputs():
    """Size mismatches, bad counts and non-finite model output raise DataError / ConfigError."""
    model = VonMisesModel([0.5], [1.0])
    with pytest.raises(DataError, match="n_inputs"):
        grating_tuning(model, (8, 8), frequency=0.15)
    with pytest.raises(ConfigError, match="n_orientations"):
        grating_tuning(model, SHAPE, frequency=0.15, n_orientations=0)
    with pytest.raises(DataError, match="steps"):
        grating_tuning(model, SHAPE, frequency=0.15, steps=0)

    class NaNModel(VonMisesModel):
        def infer(self, x, steps, *, seed=0, trace=True, record=None):
            return SimpleNamespace(rates=torch.full((x.shape[0], 1), float("nan")))

    with pytest.raises(DataError, match="NaN"):
        grating_tuning(NaNModel([0.5], [1.0]), SHAPE, frequency=0.15)


def test_plot_tuning_writes_a_png(tmp_path: Path):
    """The tuning figure is written atomically as a PNG, even when fewer neurons exist than requested."""
    result = grating_tuning(VonMisesModel([0.2, 1.0, 2.0], [1.0, 2.0, 3.0]), SHAPE, frequency=0.15, n_phases=2,
                            steps=1)
    out = plot_tuning(result, tmp_path / "tuning.png", n_neurons=16)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["tuning.png"]
    np.testing.assert_array_equal(result.most_responsive(2), np.argsort(-result.tuning.max(axis=0))[:2])


def test_grating_tuning_runs_on_a_real_ipvae():
    """Smoke test: an untrained iP-VAE goes through the whole analysis and yields finite, bounded statistics."""
    from fond import IPVAE

    model = IPVAE(64, 6, seed=0)
    result = grating_tuning(model, (8, 8), n_orientations=4, n_phases=2, steps=3)
    assert result.tuning.shape == (4, 6) and np.isfinite(result.tuning).all()
    assert np.all((result.osi >= 0) & (result.osi <= 1))
    assert result.frequency_source in ("dictionary", "default")
