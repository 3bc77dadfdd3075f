"""Sparse coding baselines (LCA, ISTA, FISTA): the Lasso they solve, how fast, what they learn, the interface."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

import fond
from fond.config import ModelConfig
from fond.errors import ConfigError, DataError
from fond.models import MODEL_CLASSES, build_model
from fond.models.sparse_coding import FISTA, ISTA, LCA, SparseCodingOptions
from fond.result import TRACE_KEYS

CLASSES = {"lca": LCA, "ista": ISTA, "fista": FISTA}
D, K = 20, 30


def _problem(model, n=4, seed=0):
    """Inputs drawn from the model's own (unit-norm) dictionary with sparse codes, plus a little noise."""
    rng = np.random.default_rng(seed)
    phi = model.dictionary.detach().double().numpy()
    codes = rng.standard_normal((n, model.n_latents)) * 2.0 * (rng.random((n, model.n_latents)) < 0.2)
    return codes @ phi.T + 0.1 * rng.standard_normal((n, model.n_inputs)), phi


def _lasso(phi, x, lam):
    """scikit-learn's Lasso with alpha = λ/D: the same minimiser as ½‖x − Φa‖² + λ‖a‖₁ (module docstring)."""
    fit = Lasso(alpha=lam / phi.shape[0], fit_intercept=False, tol=1e-10, max_iter=100000)
    return np.stack([fit.fit(phi, xi).coef_.copy() for xi in x])


def _energy(phi, x, a, lam):
    """Mean over inputs of ½‖x − Φa‖² + λ‖a‖₁."""
    return float(np.mean(0.5 * ((x - a @ phi.T) ** 2).sum(-1) + lam * np.abs(a).sum(-1)))


@pytest.mark.parametrize("name, steps", [("lca", 3000), ("ista", 3000), ("fista", 500)])
def test_fixed_point_is_the_lasso_solution(name, steps):
    """All three are solvers of one objective; their fixed point must be sklearn's Lasso(alpha=λ/D) optimum."""
    lam = 0.5
    model = CLASSES[name](D, K, seed=1, method_options={"sparsity": lam}).double()
    x, phi = _problem(model)
    result = model.infer(torch.from_numpy(x), steps, trace=False)
    reference = _lasso(phi, x, lam)
    assert 0 < (reference == 0).mean() < 1  # a nontrivial support
    np.testing.assert_allclose(result.rates.numpy(), reference, atol=1e-4)
    assert ((result.rates.numpy() == 0) == (reference == 0)).all()  # exactly the same support


def test_fista_reaches_the_optimum_in_fewer_steps_than_ista():
    """FISTA's momentum is its reason to exist: it must reach a 1e-6 objective gap sooner than ISTA."""
    lam = 0.05  # a large support: slow, ill-conditioned enough for momentum to matter (ISTA ~600, FISTA ~160)
    ista = ISTA(D, K, seed=2, method_options={"sparsity": lam}).double()
    fista = FISTA(D, K, seed=2, method_options={"sparsity": lam}).double()
    x, phi = _problem(ista, n=3, seed=1)
    optimum = _energy(phi, x, _lasso(phi, x, lam), lam)
    constant = 0.5 * D * np.log(2 * np.pi)  # the trace's nelbo = energy + the Gaussian constant
    first_hit = {}
    for name, model in (("ista", ista), ("fista", fista)):
        energy = model.infer(torch.from_numpy(x), 1500).trace["nelbo"] - constant
        assert energy.min() >= optimum * (1 - 1e-9)  # nothing beats the optimum
        reached = np.nonzero(energy - optimum <= 1e-6 * optimum)[0]
        assert reached.size, f"{name} never reached the gap"
        first_hit[name] = int(reached[0]) + 1
    assert first_hit["fista"] < first_hit["ista"] / 2, first_hit  # O(1/k²) against O(1/k) in the worst case


def test_dictionary_learning_recovers_a_known_dictionary():
    """Learning must find the generating atoms (up to sign and order) from data made of them, or the learned
    dictionaries the paper compares against mean nothing."""
    rng = np.random.default_rng(0)
    d, k, n = 16, 8, 400
    true = rng.standard_normal((d, k))
    true /= np.linalg.norm(true, axis=0)
    codes = np.zeros((n, k))
    for i in range(n):
        active = rng.choice(k, 2, replace=False)
        codes[i, active] = rng.choice([-1.0, 1.0], 2) * rng.uniform(1.0, 2.0, 2)
    x = torch.from_numpy(codes @ true.T + 0.02 * rng.standard_normal((n, d))).float()
    model = FISTA(d, k, seed=0, method_options={"sparsity": 0.1})
    before = np.abs(true.T @ model.dictionary.detach().double().numpy()).max(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(400):
        out = model.unroll_loss(x, 30, beta=0.0, temperature=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.after_update()
    cosines = np.abs(true.T @ model.dictionary.detach().double().numpy()).max(1)
    assert before.min() < 0.95
    assert cosines.min() > 0.95, cosines


def test_unroll_loss_trains_only_the_dictionary_and_reports_its_terms():
    """The loss is the dictionary-learning objective at the detached code: gradient to Φ only, terms reported."""
    model = ISTA(D, K, seed=0).double()
    x, phi = _problem(model, n=5)
    x = torch.from_numpy(x)
    out = model.unroll_loss(x, 200, beta=3.0, temperature=0.5, clamp_fraction=0.2,
                            generator=torch.Generator().manual_seed(0))
    a = model.infer(x, 200, trace=False).rates.numpy()
    reconstruction = 0.5 * ((x.numpy() - a @ phi.T) ** 2).sum(-1).mean()
    penalty = 0.5 * np.abs(a).sum(-1).mean()
    assert out.nll.shape == out.kl.shape == (1,)
    assert out.nll[0] == pytest.approx(reconstruction, rel=1e-12) and out.kl[0] == pytest.approx(penalty, rel=1e-12)
    assert float(out.loss.detach()) == pytest.approx((reconstruction + penalty) * 256 / D, rel=1e-12)
    assert out.rate_max == pytest.approx(np.abs(a).max(), rel=1e-12)
    out.loss.backward()
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    assert names == ["decoder.dictionary"] and model.n_params() == D * K


@pytest.mark.parametrize("name", CLASSES)
def test_after_update_keeps_atoms_unit_norm(name):
    """The L1 penalty is only meaningful at fixed atom scale: atoms start and stay at unit norm."""
    model = CLASSES[name](D, K, seed=3)
    torch.testing.assert_close(model.dictionary.norm(dim=0), torch.ones(K))
    with torch.no_grad():
        model.dictionary.mul_(torch.linspace(0.1, 5.0, K)).add_(0.3)
        model.after_update()
    torch.testing.assert_close(model.dictionary.norm(dim=0), torch.ones(K))


def test_exact_zeros_grow_with_sparsity():
    """Sparse coding's point is silent units: the codes must hold exact zeros, more of them as λ grows."""
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((16, D)))
    zeros = [ISTA(D, K, seed=5, method_options={"sparsity": lam}).double().infer(x, 300).trace["zeros"][-1]
             for lam in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert 0 < zeros[0] and zeros[-1] < 1
    assert (np.diff(zeros) >= 0).all() and zeros[-1] > zeros[0] + 0.3, zeros


@pytest.mark.parametrize("name", CLASSES)
def test_infer_returns_the_common_result(name):
    """Evaluation, reports and the CLI read every model through the same InferenceResult fields and trace keys."""
    model = CLASSES[name](D, K, seed=0)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    res = model.infer(x, 25, trace=True)
    assert res.steps == 25 and res.rates.shape == (6, K) and res.spikes is res.rates
    assert set(res.trace) == set(TRACE_KEYS) and all(len(v) == 25 for v in res.trace.values())
    assert list(res.state) == (["u"] if name == "lca" else ["a"])
    torch.testing.assert_close(res.reconstruction, res.rates @ model.dictionary.detach().T)
    torch.testing.assert_close(res.reconstruction_from_rates, res.reconstruction)
    np.testing.assert_allclose(res.trace["nelbo"], res.trace["nll"] + res.trace["kl"], rtol=1e-6)
    assert (res.trace["saturated"] == 0).all() and np.array_equal(res.trace["r2"], res.trace["r2_rates"])
    assert model.family is None and model.config.model == name
    again = model.infer(x, 25, seed=9, trace=False)  # deterministic: the seed changes nothing
    assert again.trace == {} and torch.equal(again.rates, res.rates)
    if name == "lca":
        torch.testing.assert_close(res.rates, res.state["u"] - res.state["u"].clamp(-0.5, 0.5))


@pytest.mark.parametrize("name", CLASSES)
def test_save_load_round_trip(name, tmp_path):
    """A saved model must come back (through fond.load and MODEL_CLASSES) inferring exactly as before."""
    assert MODEL_CLASSES[name] == f"fond.models.sparse_coding:{CLASSES[name].__name__}"
    model = CLASSES[name](D, K, seed=7, method_options={"sparsity": 0.3, "step_size": 0.5})
    model.save(tmp_path / "m")
    loaded = fond.load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.options == model.options
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.infer(x, 40).rates, model.infer(x, 40).rates)
    assert type(build_model(model.config)) is type(model)


@pytest.mark.parametrize("options, key", [
    ({"sparsity": -0.1}, "sparsity"), ({"sparsity": 0}, "sparsity"), ({"sparsity": float("nan")}, "sparsity"),
    ({"sparsity": "big"}, "sparsity"), ({"sparsity": True}, "sparsity"), ({"step_size": 1.5}, "step_size"),
    ({"step_size": 0.0}, "step_size"), ({"step_size": float("inf")}, "step_size"), ({"lambda": 1.0}, "lambda"),
])
def test_bad_options_raise_config_error_naming_the_key(options, key):
    """A bad config must fail at construction with the offending key named, not deep inside inference."""
    with pytest.raises(ConfigError, match=rf"method_options\.{key}"):
        ModelConfig(n_inputs=D, n_latents=K, model="lca", method_options=options)
    with pytest.raises(ConfigError, match=rf"method_options\.{key}"):
        FISTA(D, K, method_options=options)


def test_options_defaults_and_mismatched_models():
    """Defaults are the documented ones; a class refuses a config for another model or decoder."""
    assert SparseCodingOptions() == SparseCodingOptions(sparsity=0.5, step_size=None)
    assert LCA(D, K).options.step(0.1) == 0.1 and ISTA(D, K).options.sparsity == 0.5
    with pytest.raises(ConfigError, match="'model'"):
        LCA(config=ModelConfig(n_inputs=D, n_latents=K, model="ista"))
    with pytest.raises(ConfigError, match="'decoder'"):
        ISTA(D, K, decoder="mlp")


@pytest.mark.parametrize("bad", [
    np.zeros((2, D + 1)), np.zeros((0, D)), np.zeros(D), np.full((2, D), np.nan), np.zeros((2, D), dtype=np.int64),
    "pixels",
])
def test_bad_input_raises_data_error(bad):
    """Malformed input must fail with a one-line DataError in both inference and learning."""
    model = LCA(D, K)
    with pytest.raises(DataError):
        model.infer(bad, 5)
    with pytest.raises(DataError):
        model.unroll_loss(bad, 5, beta=1.0, temperature=1.0)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps_raise_data_error(steps):
    """A step count that is not a positive integer is a user error, not a silent empty rollout."""
    with pytest.raises(DataError):
        ISTA(D, K).infer(np.zeros((2, D), dtype=np.float32), steps)
