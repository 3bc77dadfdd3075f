"""MNIST bursts (README, "MNIST bursts"): the quick MNIST iP-VAE recipe trains without one, and the trainer
notices one while it trains (``fond.train.BurstMonitor``).

Oracle of the slow test: at the former quick lr 5e-3 (clip 300) the gradient norm of the quick MNIST iP-VAE
climbs from ~9 to 1.4·10³ by iteration 200 and 5·10⁴ by 220 (the unrolled dynamics turn unstable as the
dictionary outgrows the step size; measured on seed 0); at the recipe's lr 2e-3 it stays flat (~9). The test
runs the first ``STOP`` iterations of the recipe's own 1500-iteration schedule (same β, τ, clamp and lr
ramps) on 5,000 training digits and requires the gradient norm to stay within ``GROWTH`` of its start.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import warnings

import pytest

from fond.config import ModelConfig, preset, preset_model_options
from fond.train import BurstMonitor

STOP = 210
GROWTH = 30.0


def quick_mnist_grad_norms(tmp_path, **overrides) -> tuple[list[float], list[dict]]:
    """Train the quick MNIST iP-VAE recipe (``overrides`` replace TrainConfig fields) for ``STOP`` iterations;
    the logged gradient norms and every metrics row."""
    from fond.data.files import load_data
    from fond.train import train

    cfg = dataclasses.replace(preset("quick", "ipvae", "mnist"), n_train=5000, n_val=100, eval_every=10**6,
                              checkpoint_every=10**6, log_every=5, time_limit_minutes=None, **overrides)
    data = load_data("mnist", n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed)
    options = preset_model_options("quick", "ipvae")
    model_config = ModelConfig(n_inputs=data.n_inputs, n_latents=512, model="ipvae", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(data, cfg, tmp_path / "run", model_config=model_config, data_spec="mnist", progress=False,
              stop_at=STOP)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [row["grad_norm"] for row in rows if "grad_norm" in row], rows


@pytest.mark.slow
def test_a_short_quick_mnist_run_has_no_burst(tmp_path):
    norms, rows = quick_mnist_grad_norms(tmp_path)
    start = statistics.median(norms[:10])
    assert max(norms) < GROWTH * start, f"gradient norm grew from {start:.3g} to {max(norms):.3g}"
    assert not any(row.get("burst") or "burst_report" in row for row in rows)


def test_burst_monitor_reports_a_sustained_gradient_jump_once():
    monitor = BurstMonitor(None, window=3)
    reports = [monitor.observe(i, 10.0, 1.0) for i in range(1, 31)]
    reports += [monitor.observe(i, 1e6 if i % 2 else 20.0, 1.0) for i in range(31, 41)]
    found = [(i + 1, r) for i, r in enumerate(reports) if r is not None]
    assert len(found) == 1 and found[0][0] == 35
    assert found[0][1].startswith("training burst by iteration 35: gradient norm 1e+06")
    assert monitor.bursting
    for i in range(41, 47):
        assert monitor.observe(i, 10.0, 1.0) is None
    assert not monitor.bursting


def test_burst_monitor_ignores_a_single_spike_and_reports_rates_at_the_clamp():
    monitor = BurstMonitor(200.0, window=3)
    assert all(monitor.observe(i, 10.0, 5.0) is None for i in range(1, 30))
    assert monitor.observe(30, 1e6, 5.0) is None and monitor.observe(31, 10.0, 5.0) is None
    assert not monitor.bursting
    reports = [monitor.observe(i, 10.0, 300.0) for i in range(32, 36)]
    assert reports[0] is None and "rates at the clamp (rate_max 300 ≥ 200)" in reports[1]
    assert reports[2:] == [None, None]


def test_poisson_saturation_rate_is_half_the_final_clamp_rate():
    import math

    from fond.families.poisson import PoissonFamily

    assert PoissonFamily(clamp_final=6.0).saturation_rate() == pytest.approx(math.exp(6.0) / 2)


def test_rates_at_the_clamp_count_as_a_burst_only_for_recurrent_models():
    """An amortized P-VAE's encoder sits at its clamp by design (quick clamp 2: e²/2 = 3.7 rates is ordinary);
    only the iP-VAE's recurrent dynamics can burst there."""
    import math

    from fond.models.amortized import AmortizedVAE
    from fond.models.iterative import IPVAE
    from fond.train import _saturation_rate

    assert _saturation_rate(IPVAE(16, 8)) == pytest.approx(IPVAE(16, 8).family.saturation_rate())
    assert _saturation_rate(IPVAE(16, 8)) > math.exp(1.0)
    assert _saturation_rate(AmortizedVAE(16, 8, model="pvae")) is None
