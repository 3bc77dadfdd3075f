"""``--preset paper`` is the authors' recipe (issue 16), checked value by value.

Oracles: the recipe written out below as tables, one comment line per value citing DESIGN.md §7 ("The
authors' recipe and numbers, checked against their code"; §2 where §7 leaves a value to it); the authors'
schedules computed as their code computes them (``np.ceil`` windows, ``np.linspace`` ramps, the closed form of
their cosine); their relaxed sampler written out with ``torch.distributions``; the Poisson KL as a sum over
the Poisson pmf (``scipy.stats.poisson``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fond.train
from fond.config import PAPER_DATA, ModelConfig, TrainConfig, data_kind, preset, preset_model_options, take_latents
from fond.data import PatchData
from fond.families.poisson import PoissonFamily, n_terms_for, poisson_kl, relaxed_poisson
from fond.train import Schedule, build_optimizer

#: the authors' training recipe on natural 16×16 patches (their vH16), TrainConfig field by field
NATURAL = {
    # §7 Optimiser: "lr 5e-3"
    "lr": 5e-3,
    # §7 Optimiser: "linear warm-up over 0.5 % then cosine to 1e-5"
    "lr_min": 1e-5,
    # §7 Optimiser: "linear warm-up over 0.5 %"
    "warmup_fraction": 0.005,
    # §7 Optimiser: "weight decay 3e-4"
    "weight_decay": 3e-4,
    # §7 Optimiser: "on *every* parameter (u_init, log b, log σ_x included)"
    "decay_log_params": True,
    # §7 Optimiser: "gradient clip 300 (×3 during warm-up)"
    "grad_clip": 300.0,
    # §7 Optimiser: "batch 200"
    "batch_size": 200,
    # §7 Optimiser: "300 epochs" — of natural16's 100,000 training patches, 500 batches each
    "iterations": 300 * (100_000 // 200),
    # the 100,000 training patches those epochs pass over (natural16's default draw)
    "n_train": 100_000,
    # §7 Optimiser: "β 1e-4 for 0.1 %"
    "beta_min": 1e-4,
    # §7 Optimiser: "β 1e-4 for 0.1 %"
    "beta_const_fraction": 1e-3,
    # §7 Optimiser: "then a linear ramp over 10 %"
    "beta_ramp_fraction": 0.1,
    # §7 Optimiser: "τ 1 → 0.01 over the first half"
    "temp_start": 1.0,
    # §7 Optimiser: "τ 1 → 0.01 over the first half"
    "temp_stop": 0.01,
    # §7 Optimiser: "τ 1 → 0.01 over the first half"
    "temp_anneal_fraction": 0.5,
}

#: the authors' MNIST recipe: the natural one with these values changed
MNIST = {
    **NATURAL,
    # §7 MNIST: "lr 2e-3"
    "lr": 2e-3,
    # §7 MNIST: "clip 3000"
    "grad_clip": 3000.0,
    # §7 MNIST: "batch 100"
    "batch_size": 100,
    # §7 MNIST: "400 epochs over 60k digits" — 600 batches each
    "iterations": 400 * (60_000 // 100),
    # §7 MNIST: "60k digits"
    "n_train": 60_000,
}
RECIPES = {"natural": NATURAL, "mnist": MNIST}

#: (T_train, β) per model and data kind
STEPS_BETA = {
    # §2.4: "β: 24 for iP-VAE ... on 16×16 patches"; "Unroll T_train steps from u_init (default 16)"
    ("ipvae", "natural"): (16, 24.0),
    # §2.4: "8 for iG/iG_relu on 16×16 patches (K = 512)"
    ("igvae", "natural"): (16, 8.0),
    # §2.4: "8 for iG/iG_relu on 16×16 patches (K = 512)"
    ("igvae-relu", "natural"): (16, 8.0),
    # §7 MNIST: "T_train/β 128/128 (iP)"
    ("ipvae", "mnist"): (128, 128.0),
    # §7 MNIST: "64/64 (iG)"
    ("igvae", "mnist"): (64, 64.0),
    # §7 MNIST: "32/32 (iG_relu)"
    ("igvae-relu", "mnist"): (32, 32.0),
}

#: the iP-VAE family options of the paper preset
POISSON = {
    # §7 KL: "every paper number used exp(u)·(1 + e^Δ(Δ−1)) ... A `paper` preset must use this form"
    "kl_form": "reference",
    # §7 Relaxed sampler: n_exp from the batch's maximum rate, the same for every element
    "n_exp_rule": "batch",
    # §2.1: "n_exp large enough that P(Pois(r_max) > n_exp) < 1e-3"
    "n_exp_tail": 1e-3,
    # §7 Optimiser: "clamp 2 → 10 on β's ramp"
    "clamp_init": 2.0,
    # §7 Optimiser: "clamp 2 → 10 on β's ramp"
    "clamp_final": 10.0,
    # §2.1: "u_init (per neuron, init U(−6, −4))"
    "u_init_low": -6.0,
    # §2.1: "u_init (per neuron, init U(−6, −4))"
    "u_init_high": -4.0,
    # §2.1: "soft upper clamps ... after a hard floor at −8"
    "floor": -8.0,
    # §2.1: "z = Σ_j σ((1 − T_j)/τ)" (the sigmoid indicator)
    "indicator": "sigmoid",
}

#: the iG-VAE / iG_relu-VAE family options of the paper preset
GAUSSIAN = {
    # §2.2: "|μ| < 7"
    "mu_clamp": 7.0,
    # §2.2: "|ξ| < 2"
    "log_sigma_clamp": 2.0,
    # §2.2: "|Δμ| < 7"
    "delta_mu_clamp": 7.0,
    # §2.2: "|Δξ| < 3"
    "delta_log_sigma_clamp": 3.0,
    # the authors' main/layers.py get_c: the Gaussian clamps ramp from 1 on β's ramp (§7 "clamp ... on β's ramp")
    "clamp_init": 1.0,
}

#: the model's own numbers, every model
MODEL = {
    # §2.1: "Φ (init N(0, 1e-4²), no bias)"
    "init_scale": 1e-4,
    # §2.1: "log b (per neuron, init −3)"
    "log_bias_init": -3.0,
    # §2.1: "log σ_x (per pixel, tanh-clamped at ±3.45)"
    "sigma_clamp": 3.45,
    # §2.1: "g(z) = Φ f(z)" (a linear dictionary)
    "decoder": "linear",
}

MODELS = ("ipvae", "igvae", "igvae-relu")


@pytest.mark.parametrize("kind", ["natural", "mnist"])
@pytest.mark.parametrize("model", MODELS)
def test_paper_preset_is_the_authors_training_recipe(model, kind):
    """preset("paper", model, the recipe's data) carries every value of the recipe's table."""
    cfg = preset("paper", model, PAPER_DATA[kind])
    assert data_kind(PAPER_DATA[kind]) == kind and cfg.preset == "paper"
    for key, value in RECIPES[kind].items():
        assert getattr(cfg, key) == value, key
    assert (cfg.steps, cfg.beta) == STEPS_BETA[(model, kind)]
    assert cfg.time_limit_minutes is None  # the whole schedule, however long it takes


def test_paper_preset_data_are_the_authors():
    """§7 vH16 data: "local contrast normalisation (13-px kernel), per-image z-score, 4-px crop"; §7 MNIST:
    "60k digits, pixels in [0, 1], not centred" — the --data the recipe names."""
    from fond.data.files import MNIST_SPECS
    from fond.data.natural import LCN_CROP, LCN_F0, LCN_KERNEL

    assert PAPER_DATA == {"natural": "natural16-lcn", "mnist": "mnist-raw-60k"}
    assert (LCN_F0, LCN_KERNEL, LCN_CROP) == (0.5, 13, 4)  # §7: "whitening f·exp(−(f/0.5)⁴)", 13 px, 4 px
    assert PAPER_DATA["mnist"] in MNIST_SPECS


@pytest.mark.parametrize("model", MODELS)
def test_paper_model_options_are_the_authors(model):
    """The paper preset's ModelConfig: the family's options (Poisson: the authors' KL form and sampler), the
    model's initial values, K 512 (the CLI default), Adamax β (0.9, 0.999) and eps 1e-8 (§7 Optimiser)."""
    from fond.cli import build_parser

    config = ModelConfig(n_inputs=256, n_latents=512, model=model, **preset_model_options("paper", model))
    family = config.family
    for key, value in (POISSON if model == "ipvae" else GAUSSIAN).items():
        assert getattr(family, key) == value, key
    for key, value in MODEL.items():
        assert getattr(config, key) == value, key
    default = build_parser().parse_args(["train", "--out", "x"]).latents
    assert take_latents(preset_model_options("paper", model), default) == 512  # §2.4: "(K = 512)"
    from fond.models import build_model

    optimizer = build_optimizer(build_model(ModelConfig(n_inputs=16, n_latents=8, model=model)), preset("paper"))
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert type(optimizer) is torch.optim.Adamax


def test_fond_preset_keeps_fonds_own_choices():
    """--preset fond: the same T_train, β and β/τ/clamp/lr shapes, with the exact KL, decay on the dictionary
    only, and on MNIST 150,000 updates on 50k digits at lr 5e-3 and clip 300 (the paper preset before issue 16)."""
    for data in ("natural16", "mnist"):
        paper, ours = preset("paper", "ipvae", data), preset("fond", "ipvae", data)
        assert (ours.steps, ours.beta) == (paper.steps, paper.beta) and not ours.decay_log_params
        assert (ours.lr, ours.grad_clip, ours.iterations) == (5e-3, 300.0, 150_000)
    assert preset("fond", "ipvae", "mnist").n_train == 50_000
    assert preset_model_options("fond", "ipvae") == {}
    assert ModelConfig(n_inputs=4, n_latents=2).family.kl_form == "exact"


# -- the KL ------------------------------------------------------------------------------------------------

GRID = torch.tensor([-8.0, -5.0, -2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 6.0], dtype=torch.float64)


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (u, u₀) of GRID × GRID, flattened."""
    u, u0 = torch.meshgrid(GRID, GRID, indexing="ij")
    return u.reshape(-1), u0.reshape(-1)


def test_reference_kl_is_its_closed_form():
    """poisson_kl(form="reference") = exp(u)·(1 + e^Δ(Δ − 1)), Δ = u − u₀ (§7 KL), written out in NumPy."""
    u, u0 = _pairs()
    delta = u.numpy() - u0.numpy()
    closed = np.exp(u.numpy()) * (1.0 + np.exp(delta) * (delta - 1.0))
    np.testing.assert_allclose(poisson_kl(u, u0, "reference").numpy(), closed, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("rate, prior_rate", [(0.3, 0.3), (0.007, 0.14), (2.0, 0.5), (0.5, 4.0), (12.0, 7.0)])
def test_exact_kl_is_the_sum_over_the_poisson_pmf(rate, prior_rate):
    """fond's exact KL(Pois(r) ‖ Pois(r₀)) = Σ_k p(k; r)·(log p(k; r) − log p(k; r₀)), summed far into the tail."""
    k = np.arange(0, int(stats.poisson.ppf(1 - 1e-15, max(rate, prior_rate))) + 60)
    p = stats.poisson.pmf(k, rate)
    oracle = float(np.sum(p * (stats.poisson.logpmf(k, rate) - stats.poisson.logpmf(k, prior_rate))))
    got = float(poisson_kl(torch.tensor(math.log(rate), dtype=torch.float64),
                           torch.tensor(math.log(prior_rate), dtype=torch.float64)))
    assert got == pytest.approx(oracle, rel=1e-9, abs=1e-15)


def test_reference_kl_is_e_delta_times_the_exact_kl():
    """The authors' form is e^Δ × the exact KL: 20× to 400× larger on the first spikes out of u_init ≈ −5
    (Δ 3 to 6, §7 KL); the paper preset's family computes it."""
    u, u0 = _pairs()
    exact, reference = poisson_kl(u, u0, "exact"), poisson_kl(u, u0, "reference")
    torch.testing.assert_close(reference, torch.exp(u - u0) * exact, rtol=1e-9, atol=1e-12)
    first = poisson_kl(torch.tensor([-2.0, 1.0], dtype=torch.float64), torch.tensor([-5.0, -5.0], dtype=torch.float64),
                       "reference") / poisson_kl(torch.tensor([-2.0, 1.0], dtype=torch.float64),
                                                 torch.tensor([-5.0, -5.0], dtype=torch.float64))
    assert [round(float(r)) for r in first] == [20, 403]
    family = ModelConfig(n_inputs=4, n_latents=2, **preset_model_options("paper", "ipvae")).family
    torch.testing.assert_close(family.kl((u,), (u0,)), reference)


# -- the schedules -----------------------------------------------------------------------------------------


def _anneal_linear(n: int, final: float, ramp: float, const: float, low: float) -> np.ndarray:
    """The authors' anneal_linear (base/utils_model.py): ``low`` for ceil(const·n) iterations, then a linspace to
    ``final`` ending at iteration ceil((const + ramp)·n) − 1."""
    values = np.full(n, final)
    a, b = math.ceil(const * n), math.ceil((const + ramp) * n)
    values[:a] = low
    values[a:b] = np.linspace(low, final, b - a)
    return values


def _authors_schedule(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """β, clamp ramp ε (0 → 1), τ, learning rate and gradient clip per iteration, as the authors' trainer
    computes them (main/train.py; lr: linear warm-up lr·progress/0.5 %, then the closed form of their cosine,
    CosineAnnealingLR with T_max = (1 − 0.5 %) of the run and η_min 1e-5)."""
    n = cfg.iterations
    i = np.arange(n)
    temps = np.full(n, cfg.temp_stop)
    half = math.ceil(cfg.temp_anneal_fraction * n)
    temps[:half] = np.linspace(cfg.temp_start, cfg.temp_stop, half)
    warm = i / n < cfg.warmup_fraction
    n_warm, period = math.ceil(cfg.warmup_fraction * n), n * (1 - cfg.warmup_fraction)
    cosine = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + np.cos(np.pi * (i - n_warm) / period))
    return {"beta": _anneal_linear(n, cfg.beta, cfg.beta_ramp_fraction, cfg.beta_const_fraction, cfg.beta_min),
            "eps": _anneal_linear(n, 1.0, cfg.beta_ramp_fraction, cfg.beta_const_fraction, 0.0),
            "temperature": temps, "lr": np.where(warm, cfg.lr * (i / n) / cfg.warmup_fraction, cosine),
            "clip": np.where(warm, 3 * cfg.grad_clip, cfg.grad_clip)}


@pytest.mark.parametrize("kind", ["natural", "mnist"])
def test_schedules_follow_the_authors_at_every_turn(kind):
    """β, the clamp bound, τ, the learning rate and the gradient clip of fond's Schedule under the paper preset
    against the authors' per-iteration arrays, at the starts, turns and ends of every phase. The authors'
    linspace ramps end one iteration earlier than fond's linear functions, so β, the clamp and τ may differ by
    one iteration's increment; the learning rate is the same except at the first iterations, where fond's
    warm-up starts at lr·10⁻³ instead of 0 (iteration 0 on patches, 0 and 1 on MNIST)."""
    cfg = preset("paper", "ipvae", PAPER_DATA[kind])
    schedule, authors, n = Schedule(cfg), _authors_schedule(cfg), cfg.iterations
    family = ModelConfig(n_inputs=4, n_latents=2, **preset_model_options("paper", "ipvae")).family
    a, b = math.ceil(cfg.beta_const_fraction * n), math.ceil((cfg.beta_const_fraction + cfg.beta_ramp_fraction) * n)
    n_warm, half = math.ceil(cfg.warmup_fraction * n), math.ceil(cfg.temp_anneal_fraction * n)
    ramp_step, temp_step = 1.0 / (b - a - 1), (cfg.temp_start - cfg.temp_stop) / (half - 1)
    for i in sorted({0, 1, 2, a - 1, a, a + 1, (a + b) // 2, b - 1, b, n_warm - 1, n_warm, n_warm + 1, n // 4,
                     half - 1, half, n - 1}):
        assert schedule.beta(i) == pytest.approx(authors["beta"][i], abs=(cfg.beta - cfg.beta_min) * ramp_step), i
        clamp = 2.0 + authors["eps"][i] * (10.0 - 2.0)
        assert family.clamp(schedule.clamp_fraction(i)) == pytest.approx(clamp, abs=8.0 * ramp_step), i
        assert schedule.temperature(i) == pytest.approx(authors["temperature"][i], abs=temp_step), i
        assert schedule.grad_clip(i) == authors["clip"][i], i
        if i / n / cfg.warmup_fraction >= 1e-3:
            assert schedule.lr(i) == pytest.approx(authors["lr"][i], rel=1e-9), i
        else:
            assert authors["lr"][i] <= schedule.lr(i) <= cfg.lr * 1e-3, i
    assert schedule.grad_clip(n_warm - 1) == 3 * cfg.grad_clip and schedule.grad_clip(n_warm) == cfg.grad_clip
    assert schedule.beta(b) == cfg.beta and family.clamp(schedule.clamp_fraction(b)) == 10.0
    assert schedule.temperature(half) == cfg.temp_stop and schedule.lr(n - 1) == pytest.approx(cfg.lr_min, rel=1e-3)


# -- weight decay --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_weight_decay_of_the_paper_preset_reaches_every_parameter(model, monkeypatch, tmp_path):
    """§7 Optimiser: weight decay 3e-4 "on *every* parameter (u_init, log b, log σ_x included)": the optimizer
    the trainer builds (recorded while ``train`` runs one iteration) decays every parameter of the model; under
    the fond preset only the dictionary decays."""
    built = []

    def recording(module, cfg):
        built.append((module, build_optimizer(module, cfg)))
        return built[-1][1]

    monkeypatch.setattr(fond.train, "build_optimizer", recording)
    rng = np.random.default_rng(0)
    data = PatchData(rng.standard_normal((40, 16)).astype(np.float32), rng.standard_normal((8, 16)).astype(np.float32),
                     (4, 4), "toy")
    for name, decayed in (("paper", None), ("fond", {"decoder.dictionary"})):
        cfg = TrainConfig(**{**preset(name, model).__dict__, "iterations": 1, "batch_size": 8, "steps": 2,
                             "eval_steps": 2, "eval_samples": 8})
        config = ModelConfig(n_inputs=16, n_latents=8, model=model, **preset_model_options(name, model))
        fond.train.train(data, cfg, tmp_path / name, model_config=config, progress=False)
        module, optimizer = built[-1]
        names = {id(p): n for n, p in module.named_parameters()}
        decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 3e-4 for p in g["params"]}
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
        assert decay == (set(names.values()) if decayed is None else decayed), name
    assert {"log_sigma_x", "log_bias", "log_step_size"} <= set(names.values())


# -- the relaxed sampler -------------------------------------------------------------------------------------


def _authors_relaxed(rates: torch.Tensor, temperature: float, n_exp: int) -> torch.Tensor:
    """The authors' Poisson.rsample (main/distributions.py): n_exp exponential inter-arrival times per element,
    their cumulative sums, Σ sigmoid((1 − T)/τ)."""
    times = torch.cumsum(torch.distributions.Exponential(rates).rsample((n_exp,)), dim=0)
    return torch.sigmoid((1 - times) / temperature).sum(0)


def test_batch_rule_gives_every_element_the_terms_of_the_batch_maximum():
    """n_exp_rule="batch" draws exactly relaxed_poisson with n_terms = n_terms_for(the batch's rates), the
    authors' scipy ppf(1 − 1e-3) of the largest rate."""
    u = torch.log(torch.tensor([[0.01, 1.0, 7.0, 21.0]], dtype=torch.float64))
    family = PoissonFamily(n_exp_rule="batch")
    draw = family.sample((u,), {}, torch.Generator().manual_seed(5), 0.7).value
    n_terms = n_terms_for(torch.exp(u), 1e-3, family.max_terms)
    assert n_terms == int(stats.poisson.ppf(1 - 1e-3, 21.0))
    torch.testing.assert_close(draw, relaxed_poisson(torch.exp(u), 0.7, torch.Generator().manual_seed(5),
                                                     n_terms=n_terms))


@pytest.mark.parametrize("temperature, rule_matters", [(1.0, True), (0.05, False)])
def test_batch_rule_is_the_authors_sampler_where_it_matters(temperature, rule_matters):
    """A rate of 7 in a batch whose largest rate is 21: the batch rule's mean count is the authors' (same number
    of terms); fond's per-element rule gives it fewer terms, which at τ = 1 loses over one spike of sigmoid
    tail mass (the authors' note: it "only matters early, at high τ"); at τ = 0.05 all three agree."""
    torch.manual_seed(0)
    n, n_exp = 200_000, int(stats.poisson.ppf(1 - 1e-3, 21.0))
    rates = torch.cat([torch.full((n,), 7.0, dtype=torch.float64), torch.tensor([21.0], dtype=torch.float64)])
    authors = float(_authors_relaxed(rates[:n], temperature, n_exp).mean())
    means = {}
    for rule in ("batch", "element"):
        family = PoissonFamily(n_exp_rule=rule)
        sample = family.sample((torch.log(rates),), {}, torch.Generator().manual_seed(1), temperature).value
        means[rule] = float(sample[:n].mean())
    assert means["batch"] == pytest.approx(authors, abs=0.05)
    assert (abs(means["element"] - authors) > 1.0) == rule_matters
