"""Training by BPTT: schedules, learning actually happens, and an interrupted run resumes exactly."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import fond
from fond.config import ModelConfig, TrainConfig, preset
from fond.data import PatchData
from fond.errors import ConfigError
from fond.train import Schedule, train


def _data(n=400, d=16, seed=0):
    """Inputs made of a few sparse causes: something a dictionary can learn."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((6, d))
    codes = rng.poisson(0.3, (n, 6)) * rng.uniform(0.5, 1.5, (n, 6))
    x = codes @ atoms + 0.1 * rng.standard_normal((n, d))
    x = (x / x.std()).astype(np.float32)
    return PatchData(train=x[:-50], val=x[-50:], patch_shape=(4, 4), name="synthetic")


def _cfg(**kw):
    base = TrainConfig(steps=4, beta=1.0, iterations=40, batch_size=32, checkpoint_every=10, eval_every=20,
                       log_every=5, eval_steps=10, eval_samples=20, beta_ramp_fraction=0.3, warmup_fraction=0.05)
    return replace(base, **kw)


def test_schedule_shapes():
    """β holds at β_min, then ramps linearly to β; τ anneals linearly then holds; lr warms up then decays."""
    cfg = TrainConfig(iterations=1000, beta=10.0, beta_min=0.0, beta_const_fraction=0.1, beta_ramp_fraction=0.2,
                      temp_start=1.0, temp_stop=0.1, temp_anneal_fraction=0.5, warmup_fraction=0.01,
                      lr=1e-2, lr_min=1e-4)
    s = Schedule(cfg)
    assert s.beta(50) == 0.0 and s.beta(200) == pytest.approx(5.0) and s.beta(900) == 10.0
    assert s.clamp_fraction(0) == 0.0 and s.clamp_fraction(200) == pytest.approx(0.5) and s.clamp_fraction(999) == 1.0
    assert s.temperature(0) == 1.0 and s.temperature(250) == pytest.approx(0.55) and s.temperature(800) == 0.1
    assert s.lr(5) == pytest.approx(5e-3) and s.lr(10) == pytest.approx(1e-2) and s.lr(1000) == pytest.approx(1e-4)


def test_training_learns_to_reconstruct_and_writes_a_loadable_model(tmp_path):
    """Learning must happen: held-out R² goes from ≈ 0 (random dictionary) to well above it, and the run
    leaves config.json + model.safetensors + metrics.jsonl that fond.load reads back."""
    data = _data()
    mc = ModelConfig(n_inputs=16, n_latents=12, init_scale=0.05)
    untrained = fond.IPVAE(config=mc).infer(torch.from_numpy(data.val), 10).trace["r2"][-1]
    result = train(data, _cfg(iterations=150, lr=2e-2, beta=0.5, eval_every=50), tmp_path / "run",
                   model_config=mc, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    learned = [r["eval_r2"] for r in rows if "eval_r2" in r][-1]
    assert untrained < 0.05 and learned > 0.3
    loaded = fond.load(tmp_path / "run")
    assert torch.equal(loaded.dictionary, result.model.dictionary)


def test_resume_continues_exactly(tmp_path):
    """Stopping after 20 iterations and resuming to 40 gives the same parameters as one 40-iteration run."""
    data = _data()
    mc = ModelConfig(n_inputs=16, n_latents=12, init_scale=0.05)
    straight = train(data, _cfg(), tmp_path / "a", model_config=mc, progress=False).model
    first = train(data, _cfg(), tmp_path / "b", model_config=mc, progress=False, stop_at=23)
    assert first.iterations == 23 and first.stopped_early
    resumed = train(data, _cfg(), tmp_path / "b", model_config=mc, progress=False).model
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set((s, i) for i, s in enumerate(steps)))
    assert sorted(set(steps)) == sorted(set(
        json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()))


def test_other_configuration_in_run_directory_is_refused(tmp_path):
    """Resuming into a directory trained with another config would silently mix runs: refuse it."""
    data = _data()
    mc = ModelConfig(n_inputs=16, n_latents=12)
    train(data, _cfg(iterations=10), tmp_path / "r", model_config=mc, progress=False)
    with pytest.raises(fond.FondError, match="different configuration"):
        train(data, _cfg(iterations=10, beta=2.0), tmp_path / "r", model_config=mc, progress=False)


@pytest.mark.parametrize("key, value", [("beta", -1.0), ("steps", 0), ("iterations", 0), ("lr", 0.0),
                                        ("batch_size", 0), ("temp_stop", 0.0), ("beta_ramp_fraction", 2.0),
                                        ("lr", float("nan"))])
def test_bad_train_config_names_the_key(key, value):
    """Out-of-range config values are rejected with the key named."""
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})


@pytest.mark.parametrize("key, value", [("n_latents", 0), ("n_inputs", -3), ("model", "vae"), ("decoder", "rnn"),
                                        ("decoder_hidden", 0), ("family_options.kl_form", "approx"),
                                        ("family_options.indicator", "step"), ("family_options.clamp_init", 20.0)])
def test_bad_model_config_names_the_key(key, value):
    """Bad model options (K < 1, unknown family/model/decoder, bad family options) name the key."""
    if key.startswith("family_options."):
        kwargs = {"n_inputs": 16, "n_latents": 8, "family_options": {key.split(".")[1]: value}}
    else:
        kwargs = {"n_inputs": 16, "n_latents": 8, key: value}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig(**kwargs)


def test_presets_are_valid_and_paper_matches_reference():
    """The paper preset carries the reference values (DESIGN §2.4)."""
    p = preset("paper")
    assert (p.steps, p.beta, p.batch_size, p.lr, p.weight_decay, p.grad_clip) == (16, 24.0, 200, 5e-3, 3e-4, 300.0)
    assert preset("quick").time_limit_minutes <= 15
    with pytest.raises(ConfigError, match="preset"):
        preset("fast")


def test_config_files_missing_corrupt_or_with_unknown_keys(tmp_path):
    """Config files: missing, binary, invalid JSON and unknown keys each give a ConfigError naming the problem."""
    from fond.config import config_from_dict, load_json

    with pytest.raises(ConfigError, match="file not found"):
        load_json(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\x81\x82\x83\x84")
    with pytest.raises(ConfigError, match="not a text file"):
        load_json(tmp_path / "bin.json")
    (tmp_path / "bad.json").write_text("{\"beta\": 3,")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_json(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown config key 'betta'"):
        config_from_dict(TrainConfig, {"betta": 3.0})
    assert config_from_dict(TrainConfig, {"beta": 3.0}).beta == 3.0


def test_quick_ipvae_presets_unroll_their_own_steps():
    """The quick iP-VAE's T_train (32 on natural images, the issue-6 quality-per-minute choice; 64 on MNIST, where 32
    drifts past the trained steps) must not leak into the other models' quick presets or the paper's, whose
    numbers were measured at their own T_train."""
    assert preset("quick", "ipvae").steps == 32
    assert preset("quick", "igvae").steps == 16 and preset("quick", "igvae-relu").steps == 16
    assert (preset("quick", "ipvae", "mnist").steps, preset("quick", "ipvae", "mnist").beta) == (64, 64.0)
    assert preset("quick", "igvae", "mnist").steps == 32 and preset("paper", "ipvae").steps == 16


def test_run_configuration_reads_back_what_the_run_was_trained_with(tmp_path):
    """`fond train --resume DIR` rebuilds the run from its checkpoint alone: the stored train and model
    configurations must read back equal, or the resumed run would be refused (or, worse, differ)."""
    from fond.train import run_configuration

    mc = ModelConfig(n_inputs=16, n_latents=12, init_scale=0.05, family_options={"clamp_final": 6.0})
    cfg = _cfg(iterations=6, time_limit_minutes=3.0)
    train(_data(), cfg, tmp_path / "r", model_config=mc, data_spec="synthetic.npy", progress=False, stop_at=3)
    (tmp_path / "r" / "config.json").unlink()  # not needed: the checkpoint is self-contained
    got_cfg, got_mc, data_info = run_configuration(tmp_path / "r")
    assert got_cfg == cfg and got_mc == mc and data_info["spec"] == "synthetic.npy"
    resumed = train(_data(), got_cfg, tmp_path / "r", model_config=got_mc, data_spec="synthetic.npy", progress=False)
    assert resumed.iterations == 6
    with pytest.raises(fond.FondError, match="no checkpoint to resume"):
        run_configuration(tmp_path)


def test_momentum_sets_adamax_beta1_and_is_validated():
    """`momentum` is Adamax's β1 (the dictionary's noise averaging); out of [0, 1) it is one config error."""
    from fond.train import build_optimizer

    model = fond.IPVAE(16, 4)
    optimizer = build_optimizer(model, TrainConfig(momentum=0.99))
    assert all(group["betas"] == (0.99, 0.999) for group in optimizer.param_groups)
    assert build_optimizer(model, TrainConfig()).param_groups[0]["betas"] == (0.9, 0.999)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="momentum"):
            TrainConfig(momentum=bad)


def test_optimizer_sgd_takes_plain_steps_with_momentum_and_others_are_refused():
    """``optimizer="sgd"`` is torch's SGD at the config's lr and momentum, weight decay on the decoder only (the
    sparse-coding presets' dictionary learning); an unknown name is one config error naming the key."""
    from fond.train import build_optimizer

    model = fond.IPVAE(16, 4)
    optimizer = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, momentum=0.8, weight_decay=1e-3))
    assert type(optimizer) is torch.optim.SGD
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (0.5, 0.8, 1e-3), (0.5, 0.8, 0.0)]
    assert type(build_optimizer(model, TrainConfig())) is torch.optim.Adamax
    for bad in ("adam", "SGD", None):
        with pytest.raises(ConfigError, match="optimizer"):
            TrainConfig(optimizer=bad)
