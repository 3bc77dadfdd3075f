"""The cost model (``fond.analysis.cost``, ``fond analyze cost``): operations counted on cases small enough to
check by hand, against the recorded rollouts they come from."""

import json

import numpy as np
import pytest
import torch

from fond.analysis.cost import ENERGY_PJ, Cost, count_operations, steps_to_reach
from fond.config import ModelConfig
from fond.errors import DataError
from fond.models import build_model


def _spiking():
    model = build_model(ModelConfig(n_inputs=4, n_latents=3, model="ipvae", init_scale=0.8), seed=0)
    with torch.no_grad():
        model.log_bias.fill_(-3.0)  # rates of a few per step: counts > 1 occur
    return model


def test_a_spiking_code_costs_k_events_per_spike_of_every_step_but_the_last():
    """Each spike of steps 1..T−1 reaches the K = 3 neurons once; chunks reuse evaluate's seeds (seed + i)."""
    model, x = _spiking(), torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    counted = count_operations(model, x, 6, seed=2, chunk_size=2)
    spikes = 0.0
    for i, begin in enumerate(range(0, 5, 2)):
        history = model.infer(x[begin:begin + 2], 6, seed=2 + i, record=range(1, 6)).history["spikes"]
        spikes += float(history.sum())
    assert counted == {"drive_macs": 12.0, "recurrent_events": pytest.approx(3 * spikes / 5), "recurrent_macs": 0.0}
    assert spikes > 5 * 5  # the case means something: several spikes per step


def test_a_real_valued_code_costs_k_macs_per_nonzero():
    """LCA: the code a_{t−1} times the Gram matrix, zeros skipped."""
    model = build_model(ModelConfig(n_inputs=4, n_latents=3, model="lca", method_options={"sparsity": 0.05}), seed=0)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    codes = model.infer(x, 4, record=range(1, 4)).history["rates"]
    counted = count_operations(model, x, 4)
    assert counted["recurrent_macs"] == pytest.approx(3 * float((codes != 0).sum()) / 3)
    assert counted["recurrent_events"] == 0.0 and 0 < float((codes != 0).float().mean()) < 1


def test_an_amortized_encoder_costs_its_layers():
    """A linear encoder D → 2K (mean and log σ of K Gaussians): D·2K MACs, no recurrent term."""
    model = build_model(ModelConfig(n_inputs=4, n_latents=3, model="gvae", encoder="linear"), seed=0)
    counted = count_operations(model, torch.randn(2, 4), 10)
    assert counted == {"drive_macs": 4 * 2 * 3, "recurrent_events": 0.0, "recurrent_macs": 0.0}


def test_steps_to_reach_and_energy_are_the_stated_arithmetic():
    assert steps_to_reach([0.1, 0.5, 0.4, 0.9], 0.45) == 2 and steps_to_reach([0.1, 0.2], 0.3) is None
    cost = Cost("ipvae", 0.5, 3, 0.55, drive_macs=10.0, recurrent_events=1000.0, recurrent_macs=2.0)
    energy = cost.energy_nj()
    assert energy["events_loihi_plus_float32_macs"] == pytest.approx((1000 * 23.6 + 12 * 4.6) * 1e-3)
    assert energy["events_loihi_plus_int8_macs"] == pytest.approx((1000 * 23.6 + 12 * 0.23) * 1e-3)
    assert energy["events_as_int8_adds_plus_int8_macs"] == pytest.approx((1000 * 0.03 + 12 * 0.23) * 1e-3)
    assert ENERGY_PJ["synaptic_event_loihi"] == 23.6


def test_models_it_cannot_count_are_one_line():
    with pytest.raises(DataError, match="does not count 'savae'"):
        count_operations(build_model(ModelConfig(n_inputs=4, n_latents=3, model="savae"), seed=0), torch.randn(2, 4), 3)
    with pytest.raises(DataError, match="counts linear decoders"):
        count_operations(build_model(ModelConfig(n_inputs=4, n_latents=3, model="ipvae", decoder="mlp"), seed=0),
                         torch.randn(2, 4), 3)


def test_fond_analyze_cost_costs_every_run_at_one_target(tmp_path, capsys):
    from fond.cli import main

    assert main(["analyze", "cost", "pretrained:ipvae-natural16", "pretrained:lca-natural16", "--out",
                 str(tmp_path), "--steps", "60", "--samples", "20", "--target-r2", "0.5"]) == 0
    result = json.loads((tmp_path / "cost.json").read_text())
    assert result["target_r2"] == 0.5 and (tmp_path / "cost.png").is_file()
    ipvae, lca = result["runs"]["ipvae-natural16"], result["runs"]["lca-natural16"]
    assert ipvae["recurrent_events"] > 0 and ipvae["recurrent_macs"] == 0 and lca["recurrent_macs"] > 0
    assert all(r["steps"] is None or r["r2"] >= 0.5 for r in (ipvae, lca))
    assert np.isfinite(ipvae["energy_nj_estimate"]["events_loihi_plus_float32_macs"])
