"""Numerical safety across the paper's sweep ranges (issue 7): no NaN or Inf in training or in a 1000-step
rollout for any model at the extremes β ∈ {0.5, 4}·T_train, T_train ∈ {8, 128} (β relative to T_train as in
the paper's MNIST convention, DESIGN.md §2.4), nor from parameters pushed into bad but legal corners; where a
rollout does blow up, evaluation reports ``diverged`` with finite numbers instead of NaN.

Models without a β (the point estimates pc, lca, ista, fista) sweep their own knob instead: λ ∈ {0.01, 4}
for sparse coding (0.02× and 8× the paper's 0.5: an almost unregularised dense code and an almost silent
one) and the prior variance σ_p² ∈ {100, 0.01} for predictive coding (weak and strong prior); their T_train is
the number of inference steps before each dictionary update. Amortized models ignore T_train (one encoder
pass) and take β on their single KL; SA-VAE's refinement steps follow T_train.

Small on purpose (2 shared cores): 8×8 whitened patches of the bundled photos (validation from the held-out
photos), K = 64, batch 16, four iterations of the quick preset's schedule with β and the clamps at full strength
(the paper's clamp e^10) from the second iteration, linear dictionaries initialised at 0.02 instead of 1e-4 so
the network is active from the first step (rates up to ~50 per step) and the extreme β has something to act on;
torch runs single-threaded here (see ``_single_thread``). T_train 128 is the slow half.
"""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fond.checkpoint import load_tensors
from fond.config import MODELS, POINT_ESTIMATE_MODELS, ModelConfig, preset
from fond.data import load_data
from fond.evaluate import diverged_inputs, evaluate
from fond.families.bernoulli import bernoulli_kl
from fond.families.gaussian import gaussian_kl
from fond.families.poisson import poisson_kl
from fond.models import build_model
from fond.models.sparse_coding import FISTA, LCA, largest_eigenvalue
from fond.train import TrainingDiverged, train

D, K = 64, 64
ITERATIONS = 4
ROLLOUT_STEPS = 1000
T_SWEEP = (8, 128)
BETA_SWEEP = (0.5, 4.0)  # β / T_train
#: the point estimates' knob at the low (β 0.5·T) and high (β 4·T) end of the sweep
KNOBS = {"lca": ("sparsity", {0.5: 0.01, 4.0: 4.0}), "ista": ("sparsity", {0.5: 0.01, 4.0: 4.0}),
         "fista": ("sparsity", {0.5: 0.01, 4.0: 4.0}), "pc": ("prior_variance", {0.5: 100.0, 4.0: 0.01})}
#: every model with its linear decoder, and iP-VAE with a nonlinear (MLP) decoder, whose pull-back is a vjp
CASES = [(model, "linear") for model in MODELS] + [("ipvae", "mlp")]
CASE_IDS = [f"{model}-{decoder}" for model, decoder in CASES]
FINAL_BETA = BETA_SWEEP[-1] * T_SWEEP[-1]  # 512: the largest β of the sweep
def _sweep_params():
    params = []
    for model, decoder in CASES:
        for steps in T_SWEEP:
            for ratio in BETA_SWEEP:
                marks = [pytest.mark.slow] if steps == 128 else []
                params.append(pytest.param(model, decoder, steps, ratio, marks=marks,
                                           id=f"{model}-{decoder}-T{steps}-beta{ratio:g}T"))
    return params


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """One torch thread and one thread for the compiled kernels: on 2 busy shared cores every kernel call
    otherwise waits at a barrier for a descheduled OpenMP worker, and a 1000-step rollout of the fused Poisson
    engine took 5–15 s instead of 0.3 s. Results do not depend on the thread count (counter-based samplers)."""
    import numba

    threads, kernel_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(kernel_threads)


@pytest.fixture(scope="module")
def patches():
    """Whitened 8×8 patches: training from the bundled photos, validation from the two held-out photos."""
    return load_data("natural8", n_train=256, n_val=32, seed=0)


# -- building models and runs ------------------------------------------------------------------------------


def _model_config(model: str, decoder: str = "linear", *, steps: int = 16, beta_ratio: float = 1.0,
                  **overrides) -> ModelConfig:
    kw = dict(n_inputs=D, n_latents=K, model=model, decoder=decoder, decoder_hidden=32, encoder_hidden=32)
    if decoder == "linear" and model not in POINT_ESTIMATE_MODELS:
        kw["init_scale"] = 0.02  # active from the first step (the default 1e-4 is silent for many iterations)
    if model in KNOBS:
        key, values = KNOBS[model]
        kw["method_options"] = {key: values[beta_ratio]} if beta_ratio in values else {}
    elif model == "iavae":
        kw["method_options"] = {"hidden": 32}
    elif model == "savae":
        kw["method_options"] = {"refine_steps": steps}
    kw.update(overrides)
    return ModelConfig(**kw)


def _train_config(model: str, steps: int, beta: float, iterations: int = ITERATIONS):
    """The quick preset's learning rate, warm-up and temperature schedule, cut to a few iterations, with β and
    the clamp bounds at full strength from the second iteration (the preset would ramp them over half the run)."""
    if model in POINT_ESTIMATE_MODELS:
        beta = 0.0
    return replace(preset("quick", model), steps=steps, beta=beta, iterations=iterations, batch_size=16,
                   log_every=1, eval_every=iterations, eval_steps=20, eval_samples=16,
                   checkpoint_every=iterations, beta_const_fraction=0.0, beta_ramp_fraction=0.0,
                   time_limit_minutes=None)


def _metric_rows(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _numbers(item)]
    return [float(value)]


def _assert_rows_finite(rows: list[dict]) -> None:
    for row in rows:
        for key, value in row.items():
            assert all(math.isfinite(v) for v in _numbers(value)), f"step {row.get('step')}: {key} = {value}"


def _assert_parameters_finite(model) -> None:
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), f"parameter {name} is not finite"


def _rollout(model, x, monkeypatch, steps: int = ROLLOUT_STEPS):
    """``evaluate`` over ``steps`` steps, keeping the ``InferenceResult`` it saw; checks that every returned
    tensor, every per-step trace and every summary number is finite and that a blow-up is reported."""
    seen = []
    infer = model.infer

    def spy(*args, **kwargs):
        seen.append(infer(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(model, "infer", spy)
    ev = evaluate(model, x, steps)
    monkeypatch.undo()
    (res,) = seen
    tensors = {"rates": res.rates, "spikes": res.spikes, "reconstruction": res.reconstruction,
               "reconstruction_from_rates": res.reconstruction_from_rates,
               **{f"state.{k}": v for k, v in res.state.items()}}
    for name, tensor in tensors.items():
        assert torch.isfinite(tensor).all(), f"{name} is not finite after {steps} steps"
    for key, values in res.trace.items():
        assert len(values) == steps and np.isfinite(values).all(), f"trace {key} is not finite"
    summary = ev.summary()
    for key in ("r2", "r2_rates", "zeros", "nelbo", "rate_distortion", "diverged_fraction", "rate_max"):
        assert math.isfinite(summary[key]), f"evaluation {key} = {summary[key]}"
    assert isinstance(ev.diverged, bool)
    # an input whose reconstruction blew up must make the rollout's numbers suspect, and be reported
    blown_up = float(diverged_inputs(torch.as_tensor(x), res).float().mean())
    assert ev.diverged_fraction == pytest.approx(blown_up) and (ev.diverged or blown_up == 0)
    return ev, res


# -- (a)+(b) training at the sweep extremes, then a 1000-step rollout of what was trained --------------------


@pytest.mark.parametrize("model, decoder, steps, beta_ratio", _sweep_params())
def test_training_and_1000_step_rollout_are_finite_at_the_sweep_extremes(tmp_path, monkeypatch, patches, model,
                                                                         decoder, steps, beta_ratio):
    # The definition of done: a sweep over β and T_train must not lose a point to NaN/Inf, in training
    # (losses, KL, gradient norms, parameters) or in the 1000-step evaluation that scores it.
    beta = beta_ratio * steps
    cfg = _train_config(model, steps, beta)
    result = train(patches, cfg, tmp_path / "run", model_config=_model_config(model, decoder, steps=steps,
                                                                              beta_ratio=beta_ratio),
                   progress=False)
    assert result.iterations == ITERATIONS
    rows = _metric_rows(tmp_path / "run")
    _assert_rows_finite(rows)
    losses = [row for row in rows if "loss" in row]
    assert len(losses) == ITERATIONS and any("eval_r2" in row for row in rows)
    assert all(row["beta"] == pytest.approx(cfg.beta) for row in losses[1:])  # the extreme β did act
    _assert_parameters_finite(result.model)
    _rollout(result.model, patches.val, monkeypatch)


# -- (b) 1000-step rollouts from parameters pushed into bad but legal corners --------------------------------

_INITIAL_STATE = {"loud": {"u_init": 9.0, "mu_init": 6.5, "log_sigma_init": 1.9, "logit_init": 9.0},
                  "quiet": {"u_init": -7.5, "mu_init": -6.5, "log_sigma_init": -1.9, "logit_init": -9.0}}


@torch.no_grad()
def _push(model, corner: str):
    """``loud``: everything that drives activity up at once (decoder and encoder ×10, log σ_x at its lower
    clamp, no leak, step sizes e², initial states near the upper clamps, β 512 for the hybrids' refinement).
    ``quiet``: the opposite (×0.1, log σ_x at its upper clamp, b = e⁵, step sizes e⁻⁵, initial states at the
    floor, β 0). ``coherent``: every atom of a linear dictionary is 80 % one shared direction (norms kept;
    renormalised to unit atoms for sparse coding), so λ_max(ΦᵀΦ) grows ∝ K."""
    if corner == "coherent":
        phi = model.dictionary
        common = phi[:, :1] / phi[:, :1].norm()
        private = phi / phi.norm(dim=0, keepdim=True)
        phi.copy_((0.8 * common + 0.2 * private) * phi.norm(dim=0, keepdim=True))
        if hasattr(model, "after_update"):
            model.after_update()
        return model
    loud = corner == "loud"
    for name, param in model.named_parameters():
        if name.startswith(("decoder.", "encoder.", "update_network.")):
            param.mul_(10.0 if loud else 0.1)
        elif name == "log_sigma_x":
            param.fill_(-20.0 if loud else 20.0)
        elif name == "log_bias":
            param.fill_(-10.0 if loud else 5.0)
        elif name == "log_step_size":
            param.fill_(2.0 if loud else -5.0)
        elif name in _INITIAL_STATE[corner]:
            param.fill_(_INITIAL_STATE[corner][name])
    if hasattr(model, "refine_beta"):
        model.refine_beta.fill_(FINAL_BETA if loud else 0.0)
    return model


CORNER_CASES = [pytest.param(model, decoder, corner, id=f"{model}-{decoder}-{corner}")
                for model, decoder in CASES for corner in ("loud", "quiet", "coherent")
                if not (corner == "coherent" and decoder != "linear")]


@pytest.mark.parametrize("model, decoder, corner", CORNER_CASES)
def test_1000_step_rollout_from_a_bad_corner_is_finite_and_flags_divergence(monkeypatch, patches, model, decoder,
                                                                             corner):
    # Trained parameters end up anywhere legal; evaluation must then report a blow-up (diverged, with finite
    # numbers) rather than poison the sweep's tables and plots with NaN.
    m = _push(build_model(_model_config(model, decoder), seed=0), corner)
    _assert_parameters_finite(m)
    ev, _ = _rollout(m, patches.val, monkeypatch)
    if corner == "loud" and m.config.family_name == "poisson":
        # rates driven to the clamp: a population burst, which evaluation must call divergence
        assert ev.diverged and ev.diverged_fraction > 0


# -- β ≈ 0 and large β: the KL terms ------------------------------------------------------------------------


@pytest.mark.parametrize("corner", ["default", "loud", "quiet"])
@pytest.mark.parametrize("model, decoder", CASES, ids=CASE_IDS)
def test_training_objective_and_kl_are_finite_at_beta_zero_and_large_beta(patches, model, decoder, corner):
    # β ≈ 0 is the start of every β ramp and β = 4·128 the top of the sweep; neither end may turn a KL term,
    # the loss or its gradient into NaN/Inf, from the default initialisation or from a pushed corner.
    x = torch.from_numpy(patches.train[:16])
    for beta in (0.0, 1e-4, FINAL_BETA):
        m = build_model(_model_config(model, decoder), seed=0)
        if corner != "default":
            _push(m, corner)
        out = m.unroll_loss(x, 8, beta=beta, temperature=0.01, clamp_fraction=1.0,
                            generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out.loss.detach()), f"β {beta}: loss {float(out.loss.detach())}"
        assert np.isfinite(out.kl).all() and (out.kl >= 0).all(), f"β {beta}: KL {out.kl}"
        assert np.isfinite(out.nll).all() and math.isfinite(out.rate_max)
        m.zero_grad()
        out.loss.backward()
        for name, param in m.named_parameters():
            assert param.grad is None or torch.isfinite(param.grad).all(), f"β {beta}: gradient of {name}"


def test_family_kl_is_finite_and_nonnegative_over_every_state_the_clamps_allow():
    # The KL of a step is taken between two states anywhere inside the clamps (a rollout can jump from the
    # floor to the ceiling in one step); at β = 512 a NaN or negative KL there would dominate the loss.
    for dtype in (torch.float32, torch.float64):
        u = torch.linspace(-8.0, 10.0, 181, dtype=dtype)  # Poisson: hard floor to the paper's clamp
        for form in ("exact", "reference"):
            kl = poisson_kl(u[:, None], u[None, :], form)
            assert torch.isfinite(kl).all() and (kl >= 0).all(), (form, dtype)
            assert torch.equal(kl.diagonal(), torch.zeros_like(u))
        mu = torch.linspace(-7.0, 7.0, 15, dtype=dtype)  # Gaussian: |μ| < 7, |log σ| < 2
        xi = torch.linspace(-2.0, 2.0, 9, dtype=dtype)
        m, s, m0, s0 = torch.meshgrid(mu, xi, mu, xi, indexing="ij")
        kl = gaussian_kl(m, s, m0, s0)
        assert torch.isfinite(kl).all() and (kl >= -1e-6).all(), dtype
        logit = torch.linspace(-10.0, 10.0, 201, dtype=dtype)  # Bernoulli: ±clamp_final
        kl = bernoulli_kl(logit[:, None], logit[None, :])
        assert torch.isfinite(kl).all() and (kl >= 0).all() and torch.equal(kl.diagonal(), torch.zeros_like(logit))


# -- LCA: the Euler step is capped at 1/L (fix in fond.models.sparse_coding) ----------------------------------


def _coherent_lca(n_latents: int, weight: float, **options) -> LCA:
    model = LCA(D, n_latents, seed=0, **options)
    with torch.no_grad():
        common = torch.randn(D, 1, generator=torch.Generator().manual_seed(9))
        model.dictionary.copy_(weight * common / common.norm() + (1 - weight) * model.dictionary)
        model.after_update()
    return model


@pytest.mark.parametrize("n_latents, weight", [(64, 0.5), (256, 0.9)])
def test_lca_stays_finite_with_coherent_unit_norm_atoms(patches, n_latents, weight):
    # Unit-norm atoms that share a component (the mean image of raw digits, say) make λ_max(ΦᵀΦ) ∝ K; LCA's
    # Euler step with dt/τ = 0.1 then ran off to Inf/NaN. It must stay finite and still descend the Lasso
    # energy it shares with ISTA/FISTA (slowly when L is large: the capped step is 1/L).
    model = _coherent_lca(n_latents, weight)
    phi = model.dictionary.detach()
    assert 0.1 * float(largest_eigenvalue(phi.T @ phi)) > 2  # the old step was unstable here
    x = torch.from_numpy(patches.val)
    res = model.infer(x, ROLLOUT_STEPS)
    for tensor in (res.rates, res.state["u"], res.reconstruction):
        assert torch.isfinite(tensor).all()
    assert all(np.isfinite(v).all() for v in res.trace.values())
    fista = FISTA(D, n_latents, seed=0)
    with torch.no_grad():
        fista.dictionary.copy_(phi)
    optimum = float(fista.infer(x, 3000).trace["nelbo"][-1])
    start = float((0.5 * x.pow(2).sum(-1)).mean()) + 0.5 * D * math.log(2 * math.pi)  # the energy at a = 0
    assert res.trace["nelbo"][-1] - optimum < 0.5 * (start - optimum)  # at least halfway down from a = 0


def test_lca_largest_documented_step_size_is_stable_and_the_cap_changes_nothing_below_it(patches):
    # step_size may be set up to 1 (validated); at 1 a random complete dictionary (L ≈ 4) diverged. Below the
    # cap (L ≤ 1/step_size) the dynamics must be exactly the textbook Euler step, so earlier results stand.
    x = torch.from_numpy(patches.val)
    res = LCA(D, K, seed=0, method_options={"step_size": 1.0}).infer(x, ROLLOUT_STEPS)
    assert torch.isfinite(res.rates).all() and np.isfinite(res.trace["nelbo"]).all()
    model = LCA(D, K, seed=0)
    phi = model.dictionary.detach()
    assert float(largest_eigenvalue(phi.T @ phi)) < 10
    drive, gram, lam = x @ phi, phi.T @ phi, model.sparsity
    u = torch.zeros_like(drive)
    a = torch.zeros_like(drive)
    for _ in range(25):
        u = u + 0.1 * (drive - u - a @ gram + a)
        a = u - u.clamp(-lam, lam)
    torch.testing.assert_close(model.infer(x, 25, trace=False).state["u"], u, rtol=0, atol=0)


# -- BPTT through a population burst: the paper's model at T_train 128 (fix needed in fond.dynamics.unroll) ----


@pytest.fixture(scope="module")
def burst_run(tmp_path_factory, patches):
    """Four iterations of iP-VAE (linear dictionary, init 0.1: the population bursts to the clamp as soon as
    the clamp reaches e^10) at T_train 128, β 64: the outcome (TrainingDiverged or None) and the directory."""
    directory = tmp_path_factory.mktemp("burst") / "run"
    try:
        train(patches, _train_config("ipvae", 128, 64.0), directory,
              model_config=_model_config("ipvae", "linear", init_scale=0.1), progress=False)
    except TrainingDiverged as exc:
        return exc, directory
    return None, directory


@pytest.mark.slow
def test_non_finite_gradient_never_reaches_the_parameters(burst_run):
    # Whatever the BPTT gradient does, train() must stop before applying a non-finite update, so that no NaN
    # is ever written to a model, a checkpoint or the metrics a sweep reads back.
    _, directory = burst_run
    files = list(directory.glob("*.safetensors"))
    assert files
    for path in files:
        tensors, _ = load_tensors(path)
        assert all(torch.isfinite(t).all() for t in tensors.values()), path.name
    _assert_rows_finite(_metric_rows(directory))


@pytest.mark.slow
def test_training_through_a_population_burst_at_t_train_128_keeps_a_finite_gradient(burst_run):
    # T_train 128 is the top of the sweep (and the paper's MNIST iP-VAE); a burst in one batch must cost a
    # clipped update, not the run.
    failure, _ = burst_run
    assert failure is None, str(failure)


def test_state_gradient_bound_leaves_an_unsaturated_unroll_untouched(monkeypatch):
    # The bound exists only for exploding unrolls: on an ordinary model the BPTT gradient must be bit for bit
    # what it is without it, or the bound would silently change training.
    import fond.dynamics as dynamics
    from fond import IPVAE

    model = IPVAE(16, 24, seed=0, init_scale=0.1)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))

    def gradient():
        model.zero_grad()
        out = model.unroll_loss(x, 16, beta=1.0, temperature=0.5, generator=torch.Generator().manual_seed(1))
        out.loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    bounded = gradient()
    monkeypatch.setattr(dynamics, "STATE_GRADIENT_BOUND", float("inf"))
    free = gradient()
    assert len(bounded) == len(free) > 0
    assert all(torch.equal(a, b) for a, b in zip(bounded, free, strict=True))
    monkeypatch.setattr(dynamics, "STATE_GRADIENT_BOUND", 1e-12)  # the hook is really on the path
    assert any(not torch.equal(a, b) for a, b in zip(gradient(), free, strict=True))
