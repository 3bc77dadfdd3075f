"""Temporal analyses (fond.analysis.temporal): latency, serial dependence, tracking, moving-input generators.

Most tests drive small fake models whose dynamics have closed forms (a first-order low-pass, a leaky
integrator), so every number has an independent oracle; one smoke test runs a real untrained iP-VAE.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fond.analysis.stimuli import rotating_sequence, shifting_sequence
from fond.analysis.temporal import (
    contrast_latency,
    plot_contrast_latency,
    plot_serial_dependence,
    plot_tracking,
    response_latency,
    serial_dependence,
    tracking,
)
from fond.errors import ConfigError, DataError

# --------------------------------------------------------------------------- fake models


def _history(rates: torch.Tensor, record) -> dict:
    steps = np.asarray(sorted(set(int(t) for t in record)), dtype=np.int64)
    chosen = rates[torch.as_tensor(steps - 1)]
    return {"steps": steps, "rates": chosen, "spikes": chosen.clone()}


class LowPassModel:
    """Rates r∞·(1 − e^{−t/τ}) from 0 at step 0, τ = tau0/‖x‖ (faster for stronger input), r∞ = |xW|.

    Takes a fixed input (B, D) only: a 3-D input raises DataError, like a non-iterative model.
    """

    def __init__(self, n_inputs: int = 6, n_latents: int = 5, tau0: float = 8.0) -> None:
        self.n_inputs, self.n_latents, self.tau0 = n_inputs, n_latents, tau0
        self.weights = torch.as_tensor(np.random.default_rng(1).standard_normal((n_inputs, n_latents)))

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2:
            raise DataError("LowPassModel takes a fixed input (B, D)")
        tau = self.tau0 / x.norm(dim=1)
        t = torch.arange(1, steps + 1, dtype=torch.float64)
        rates = (x @ self.weights).abs()[None] * (1 - torch.exp(-t[:, None, None] / tau[None, :, None]))
        return SimpleNamespace(rates=rates[-1], history=_history(rates, record) if record is not None else None)


class LeakyModel:
    """r_t = (1 − leak)·r_{t−1} + leak·x_t from r_0 = ``start`` (K = D); decode is the identity.

    leak = 1 is memoryless (r_t = x_t exactly). Takes a fixed (B, D) or an online (steps, B, D) input.
    """

    def __init__(self, n_inputs: int, leak: float, start: np.ndarray | None = None) -> None:
        self.n_inputs = self.n_latents = n_inputs
        self.leak = leak
        self.start = torch.zeros(n_inputs, dtype=torch.float64) if start is None else torch.as_tensor(start)

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        x = torch.as_tensor(x, dtype=torch.float64)
        frames = x if x.ndim == 3 else x.expand(steps, -1, -1)
        assert frames.shape[0] == steps
        r = self.start.expand(frames.shape[1], -1).clone()
        out = []
        for t in range(steps):
            r = (1 - self.leak) * r + self.leak * frames[t]
            out.append(r)
        rates = torch.stack(out)
        return SimpleNamespace(rates=r, history=_history(rates, record) if record is not None else None)

    def decode(self, code):
        return code


class DelayModel(LeakyModel):
    """A code exactly one frame behind: r_t = x_{t−1} (r_1 = 0); decode is the identity."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__(n_inputs, 1.0)

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        frames = torch.as_tensor(x, dtype=torch.float64)
        rates = torch.cat([torch.zeros_like(frames[:1]), frames[:-1]])
        return SimpleNamespace(rates=rates[-1], history=_history(rates, record))


# --------------------------------------------------------------------------- response_latency


def test_latency_of_piecewise_linear_ramp_is_exact():
    """A ramp sampled at whole steps is linear between them, so interpolation must give its half-point exactly."""
    t = np.arange(1, 41, dtype=float)
    onset, duration, peak = 3.25, 10.0, 2.0
    curve = peak * np.clip((t - onset) / duration, 0.0, 1.0)
    assert abs(response_latency(curve) - (onset + 0.5 * duration)) < 1e-6
    assert abs(response_latency(curve, 0.5, baseline=0.0) - (onset + 0.5 * duration)) < 1e-6
    assert abs(response_latency(curve, 0.8) - (onset + 0.8 * duration)) < 1e-6
    shifted = curve + 5.0  # the baseline is the first value, so an offset must not move the latency
    assert abs(response_latency(shifted) - (onset + 0.5 * duration)) < 1e-6


def test_latency_of_step_response_follows_documented_convention():
    """A jump at step n crosses a fraction f of the rise at n − 1 + f (interpolating from the step before)."""
    curve = np.where(np.arange(1, 21) >= 7, 3.0, 1.0)
    assert abs(response_latency(curve) - 6.5) < 1e-12
    assert abs(response_latency(curve, 0.25) - 6.25) < 1e-12
    assert abs(response_latency(np.full(5, 4.0), baseline=1.0) - 0.5) < 1e-12  # jump at step 1 from step 0


@pytest.mark.parametrize("tau", [2.0, 5.0, 12.0])
@pytest.mark.parametrize("delay", [0.0, 3.5, 10.0])
def test_latency_of_delayed_exponential_is_delay_plus_tau_ln2(tau, delay):
    """r(t) = 1 − e^{−(t−d)/τ} reaches half its peak at d + τ ln 2; interpolation may err by a fraction of a step."""
    t = np.arange(1, int(delay + 25 * tau) + 1, dtype=float)
    curve = np.where(t > delay, 1.0 - np.exp(-(t - delay) / tau), 0.0)
    expected = delay + tau * math.log(2.0)
    latency = response_latency(curve, baseline=0.0) if delay == 0.0 else response_latency(curve)
    assert abs(latency - expected) < 0.1


def test_latency_is_nan_when_response_never_rises():
    """Flat or falling responses have no latency; returning a number would invent one."""
    assert math.isnan(response_latency(np.ones(10)))
    assert math.isnan(response_latency(np.linspace(2.0, 0.0, 10)))
    assert math.isnan(response_latency(np.linspace(0.0, 1.0, 10), baseline=5.0))


def test_latency_rejects_bad_input():
    """Bad curves and fractions are user errors with one-line messages, not silent NaN."""
    with pytest.raises(DataError):
        response_latency(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(DataError):
        response_latency(np.ones((2, 3)))
    with pytest.raises(ConfigError):
        response_latency(np.arange(5.0), fraction=0.0)


# --------------------------------------------------------------------------- contrast_latency


def _unit_stimuli(n: int = 3, d: int = 6) -> torch.Tensor:
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((n, d)))
    return x / x.norm(dim=1, keepdim=True)


def test_contrast_latency_falls_with_contrast_and_matches_tau_ln2(tmp_path):
    """With τ = τ0/contrast the half-peak latency from stimulus onset is τ0·ln 2/contrast, and it must fall."""
    model, contrasts, steps = LowPassModel(tau0=8.0), np.array([4.0, 0.5, 1.0, 2.0]), 200
    result = contrast_latency(model, _unit_stimuli(), contrasts, steps=steps,
                              prestimulus_rates=np.zeros(model.n_latents))
    np.testing.assert_allclose(result.contrasts, np.sort(contrasts))
    expected = 8.0 / result.contrasts * math.log(2.0)
    np.testing.assert_allclose(result.median, expected, atol=0.1)
    np.testing.assert_allclose(result.curve_latencies, expected, atol=0.1)
    assert result.onset_step == 0 and result.curves.shape == (4, steps)
    assert result.falls_with_contrast and result.spearman_rho < -0.9 and result.spearman_p < 1e-3
    info = result.to_dict()
    assert info["falls_with_contrast"] is True and len(info["latency_median"]) == 4
    assert plot_contrast_latency(result, tmp_path / "latency.png").stat().st_size > 0


def test_contrast_latency_without_prestimulus_rates_counts_from_step_one():
    """Unknown pre-stimulus rates: the first step is the baseline, and an exponential rise is exactly 1 step later."""
    model = LowPassModel(tau0=8.0)
    result = contrast_latency(model, _unit_stimuli(2), [1.0, 2.0], steps=200, neurons="all")
    assert result.onset_step == 1
    np.testing.assert_allclose(result.median, 1.0 + 8.0 / result.contrasts * math.log(2.0), atol=0.1)


def test_contrast_latency_responsive_selection_reads_the_strongest_risers():
    """"responsive" must pick the neurons with the largest rise; a fixed index list must be honoured."""
    model = LowPassModel(n_latents=5)
    x = _unit_stimuli(1)
    top = np.argsort(-(x @ model.weights).abs().numpy()[0])[:2]
    chosen = contrast_latency(model, x, [1.0, 2.0], steps=30, n_responsive=2,
                              prestimulus_rates=np.zeros(5))
    given = contrast_latency(model, x, [1.0, 2.0], steps=30, neurons=sorted(top.tolist()),
                             prestimulus_rates=np.zeros(5))
    np.testing.assert_allclose(chosen.curves, given.curves)
    assert chosen.n_selected.tolist() == [2]
    with pytest.raises(ConfigError):
        contrast_latency(model, x, [1.0], steps=10)
    with pytest.raises(ConfigError):
        contrast_latency(model, x, [1.0, 2.0], steps=10, neurons="loudest")


# --------------------------------------------------------------------------- serial_dependence


def test_serial_dependence_matches_leaky_integrator_closed_form(tmp_path):
    """For r_t = (1−λ)r_{t−1} + λx_t the bias is (1−λ)^s⟨r_A−r_0, r_A−r_B(s)⟩/‖r_A−r_B(s)‖², decaying to 0."""
    rng = np.random.default_rng(2)
    d, leak, steps_a, steps_b = 4, 0.2, 6, 15
    start = rng.standard_normal(d)
    a, b = rng.standard_normal((3, d)), rng.standard_normal((3, d))
    result = serial_dependence(LeakyModel(d, leak, start), a, b, steps_a=steps_a, steps_b=steps_b)
    keep = 1.0 - leak
    r_a = keep**steps_a * start + (1 - keep**steps_a) * a
    s = np.arange(1, steps_b + 1)[:, None, None]
    r_b = keep**s * start + (1 - keep**s) * b[None]
    direction = r_a[None] - r_b
    expected = keep ** s[..., 0] * ((r_a - start)[None] * direction).sum(-1) / (direction**2).sum(-1)
    np.testing.assert_allclose(result.bias, expected, rtol=1e-9, atol=1e-12)
    assert result.bias_index[0] > 0.5 and abs(result.final_bias) < 0.05
    assert result.half_decay_step is not None and result.to_dict()["steps_b"] == steps_b
    assert plot_serial_dependence(result, tmp_path / "serial.png").stat().st_size > 0


def test_serial_dependence_of_memoryless_model_is_zero():
    """A model that forgets at once (λ = 1) carries nothing from A, so every bias must be exactly 0."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    result = serial_dependence(LeakyModel(5, 1.0), a, b, steps_a=4, steps_b=6)
    np.testing.assert_array_equal(result.bias, 0.0)
    np.testing.assert_array_equal(result.distance, 0.0)


def test_serial_dependence_propagates_model_error_for_online_input():
    """A model that takes no 3-D input must fail with its own DataError, not a confusing downstream error."""
    x = _unit_stimuli(2)
    with pytest.raises(DataError, match="fixed input"):
        serial_dependence(LowPassModel(), x, -x, steps_a=3, steps_b=3)


def test_serial_dependence_rejects_identical_stimuli():
    """A = B leaves no direction to project on; the bias would be 0/0, so it must be a DataError."""
    x = np.ones((1, 3))
    with pytest.raises(DataError, match="same response"):
        serial_dependence(LeakyModel(3, 1.0), x, x, steps_a=2, steps_b=2)


# --------------------------------------------------------------------------- tracking and generators


def test_tracking_static_sequence_scores_current_and_previous_equally(tmp_path):
    """When every frame is the same, the current and the previous frame are one target: equal R² at each step."""
    frames = np.repeat(np.random.default_rng(4).standard_normal((1, 2, 9)), 8, axis=0)
    result = tracking(LeakyModel(9, 0.4), frames)
    np.testing.assert_array_equal(result.r2_current[1:], result.r2_previous[1:])
    assert math.isnan(result.r2_previous[0]) and result.to_dict()["r2_previous"][0] is None
    assert plot_tracking(result, tmp_path / "tracking.png").stat().st_size > 0


def test_tracking_shows_lag_of_delayed_code_only():
    """A code one frame behind must match the previous frame perfectly and the current one less; no lag, the reverse."""
    images = np.zeros((2, 8, 8))
    images[:, 2:5, 1:3] = 1.0
    images[1, 5, 2] = 2.0
    frames = shifting_sequence(images, 1.0, 6, mode="grid-wrap")
    delayed = tracking(DelayModel(64), frames)
    instant = tracking(LeakyModel(64, 1.0), frames)
    np.testing.assert_allclose(delayed.r2_previous[1:], 1.0)
    assert delayed.lag_index > 0.5 and delayed.mean_r2_current < 0.5
    np.testing.assert_allclose(instant.r2_current, 1.0)
    assert instant.lag_index == pytest.approx(-delayed.lag_index)


def test_rotating_sequence_at_zero_degrees_returns_copies():
    """No rotation must reproduce each image exactly, in new memory (editing frames must not edit the images)."""
    images = np.random.default_rng(5).standard_normal((2, 5, 7)).astype(np.float32)
    frames = rotating_sequence(images, 0.0, 3)
    assert frames.shape == (3, 2, 35) and frames.dtype == np.float32
    for t in range(3):
        np.testing.assert_array_equal(frames[t], images.reshape(2, -1))
    frames[0, 0, 0] += 1.0
    assert images[0, 0, 0] != frames[0, 0, 0]


def test_rotating_and_shifting_match_exact_grid_moves():
    """Quarter turns and whole-pixel shifts land on the grid, so they must equal rot90 and roll."""
    images = np.random.default_rng(6).standard_normal((1, 6, 6))
    turned = rotating_sequence(images, 90.0, 3)
    np.testing.assert_allclose(turned[1, 0].reshape(6, 6), np.rot90(images[0], 1), atol=1e-9)
    np.testing.assert_allclose(turned[2, 0].reshape(6, 6), np.rot90(images[0], 2), atol=1e-9)
    moved = shifting_sequence(images, (1.0, -2.0), 3, mode="grid-wrap")
    np.testing.assert_allclose(moved[2, 0].reshape(6, 6), np.roll(images[0], (2, -4), axis=(0, 1)), atol=1e-9)
    with pytest.raises(DataError):
        rotating_sequence(images[0], 10.0, 2)


# --------------------------------------------------------------------------- real model


def test_smoke_ipvae_on_online_input(tiny_model):
    """The analyses must run end to end on a real iP-VAE with record= and a 3-D input."""
    model = tiny_model  # conftest: IPVAE(16, 24) with a dictionary strong enough to drive responses
    x = torch.as_tensor(np.random.default_rng(7).standard_normal((2, 16)), dtype=torch.float32)
    try:
        model.infer(x.expand(3, -1, -1).contiguous(), 3, trace=False, record=[1, 3])
    except (TypeError, DataError) as exc:
        pytest.skip(f"record= / online input not available yet: {exc}")
    latency = contrast_latency(model, x, [0.5, 2.0], steps=30)
    assert latency.onset_step == 0 and latency.curves.shape == (2, 30)
    assert np.isfinite(latency.median).all() and latency.n_selected.min() > 0
    serial = serial_dependence(model, x, -x, steps_a=5, steps_b=5)
    assert serial.bias.shape == (5, 2) and np.isfinite(serial.bias).all()
    moving = tracking(model, shifting_sequence(x.numpy().reshape(2, 4, 4), 1.0, 5))
    assert np.isfinite(moving.r2_current).all()
