"""The model registry: one spec per model, read by presets, configs, build_model, the CLI and the reports.

Oracle for the presets: the table below was written from ``fond.config.preset`` / ``preset_model_options``
as they were before the registry existed (every model × data kind × preset), so the registry must give
the same TrainConfig and ModelConfig values.
"""

import dataclasses
from pathlib import Path

import pytest

from fond.config import ModelConfig, preset, preset_model_options

PAPER_MODELS = ("ipvae", "igvae", "igvae-relu", "ibvae", "pvae", "gvae", "gvae-relu", "savae", "iavae", "pc", "lca",
                "ista", "fista")
AMORTIZED_LIKE = {"pvae": 1.5, "gvae": 0.5, "gvae-relu": 0.5, "savae": 0.5, "iavae": 0.5}
POINT = ("pc", "lca", "ista", "fista")


def _steps_beta(model: str, kind: str, name: str) -> tuple[int, float]:
    """(T_train, β) of the pre-registry presets, written out model by model."""
    if model in POINT:
        return 100, 0.0
    if kind == "natural":
        if model in AMORTIZED_LIKE:
            return 16, AMORTIZED_LIKE[model]
        return (32 if model == "ipvae" and name == "quick" else 16), (24.0 if model == "ipvae" else 8.0)
    if model in AMORTIZED_LIKE:
        return 16, 1.0
    paper = {"ipvae": (128, 128.0), "igvae": (64, 64.0), "igvae-relu": (32, 32.0), "ibvae": (64, 64.0)}[model]
    return (32, 32.0) if name == "quick" else paper


#: the fields every model shares, per (data kind, preset), from the pre-registry code
BASE = {
    ("natural", "quick"): dict(preset="quick", iterations=1500, batch_size=200, lr=0.005, lr_min=0.0001,
                               weight_decay=0.0003, decay_log_params=False, warmup_fraction=0.02, grad_clip=300.0,
                               beta_min=0.0001, beta_const_fraction=0.05, beta_ramp_fraction=0.5, temp_start=1.0,
                               temp_stop=0.01, temp_anneal_fraction=0.6, seed=0, checkpoint_every=200, eval_every=500,
                               log_every=10, eval_steps=100, eval_samples=500, time_limit_minutes=15.0,
                               n_train=60000, n_val=2000),
    ("natural", "paper"): dict(preset="paper", iterations=150000, batch_size=200, lr=0.005, lr_min=1e-05,
                               weight_decay=0.0003, decay_log_params=False, warmup_fraction=0.005, grad_clip=300.0,
                               beta_min=0.0001, beta_const_fraction=0.001, beta_ramp_fraction=0.1, temp_start=1.0,
                               temp_stop=0.01, temp_anneal_fraction=0.5, seed=0, checkpoint_every=1000,
                               eval_every=5000, log_every=10, eval_steps=100, eval_samples=2000,
                               time_limit_minutes=None, n_train=100000, n_val=5000),
}
BASE[("mnist", "quick")] = {**BASE[("natural", "quick")], "batch_size": 100, "n_train": 50000}
BASE[("mnist", "paper")] = {**BASE[("natural", "paper")], "batch_size": 100, "n_train": 50000, "n_val": 10000}
DATA_SPECS = {"natural": (None, "natural16", "patches.npy"), "mnist": ("mnist", "mnist-test", "mnist-raw")}


@pytest.mark.parametrize("name", ["quick", "paper"])
@pytest.mark.parametrize("kind", ["natural", "mnist"])
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_presets_are_unchanged_for_every_model_and_data_kind(model, kind, name):
    """preset() gives the pre-registry TrainConfig for every built-in model × data kind × preset."""
    steps, beta = _steps_beta(model, kind, name)
    for spec in DATA_SPECS[kind]:
        assert dataclasses.asdict(preset(name, model, spec)) == {**BASE[(kind, name)], "steps": steps, "beta": beta}


@pytest.mark.parametrize("name", ["quick", "paper"])
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_preset_model_options_are_unchanged(model, name):
    """Only the quick preset of the Poisson models lowers clamp_final (to 6); the ModelConfig round-trips."""
    expected = {"family_options": {"clamp_final": 6.0}} if name == "quick" and model in ("ipvae", "pvae") else {}
    assert preset_model_options(name, model) == expected
    config = ModelConfig(n_inputs=16, n_latents=8, model=model, **preset_model_options(name, model))
    assert dataclasses.asdict(config)["family_options"] == expected.get("family_options", {})


def test_plain_family_models_keep_their_presets():
    """A registered family used as a model name: β 8 / T_train 16 on natural data, (16, 1) on MNIST,
    and the Poisson family's quick clamp."""
    assert (preset("quick", "poisson").steps, preset("quick", "poisson").beta) == (16, 8.0)
    assert (preset("paper", "bernoulli", "mnist").steps, preset("paper", "bernoulli", "mnist").beta) == (16, 1.0)
    assert preset_model_options("quick", "poisson") == {"family_options": {"clamp_final": 6.0}}
    assert preset_model_options("quick", "gaussian") == {}


HERE = Path(__file__).parent
