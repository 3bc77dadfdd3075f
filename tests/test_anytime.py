"""Anytime inference (``infer(x, steps, tol=)``, ``fond.rollout.Convergence``): each input freezes once its
mean code has settled and the rollout stops when all have. Oracles: the same rollout without ``tol`` (every
input draws exactly what it would have until it freezes), the criterion recomputed in NumPy from that
rollout's recorded mean codes, and a deterministic toy method whose code converges geometrically."""

import numpy as np
import pytest
import torch

from fond.config import ModelConfig
from fond.dynamics import FondSteps
from fond.errors import DataError
from fond.models import build_model
from fond.rollout import InferenceSteps, Step, run_inference

STEPS, WINDOW = 240, 20


def _first_converged_step(rates: np.ndarray, window: int, tol: float) -> np.ndarray:
    """(B,) the first window end t ≥ 2w where the criterion holds on ``rates`` (T, B, K), else T."""
    steps, batch, _ = rates.shape
    means = rates[: steps // window * window].reshape(steps // window, window, batch, -1).mean(axis=1)
    found = np.full(batch, steps)
    for k in range(1, len(means)):
        change = np.linalg.norm(means[k] - means[k - 1], axis=-1)
        scale = np.maximum(np.linalg.norm(means[k], axis=-1), np.linalg.norm(means[k - 1], axis=-1))
        newly = (change <= tol * scale) & (found == steps)
        found[newly] = (k + 1) * window
    return found


@pytest.fixture(scope="module", params=["ipvae", "igvae-relu"])
def spiking(request):
    """An iP-VAE (linear decoder: the fused engine path) spiking at rates up to ~14 (R² 0.13: not at a clamp,
    where a code is trivially constant), or an iG_relu-VAE (the step-by-step path); the fixed rollout with
    every step recorded."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_inputs=16, n_latents=12, model=request.param), seed=3)
    with torch.no_grad():
        model.decoder.dictionary.normal_(0.0, 0.1)
    x = torch.randn(10, 16)
    fixed = model.infer(x, STEPS, seed=1, record=range(1, STEPS + 1))
    return model, x, fixed


class Unnarrowed(FondSteps):
    """FOND's steps without ``select``: anytime inference keeps converged inputs in the batch, held."""

    def select(self, step, rows, frame):
        return None


def _unnarrowed(model, x, seed, **options):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return run_inference(Unnarrowed(model.components()), x, STEPS, generator=generator, **options)


def _check_frozen_inputs_stay_put(res):
    for b, t in enumerate(res.steps_used.numpy()):
        assert (res.history["rates"][t - 1:, b] == res.history["rates"][t - 1, b]).all(), b
        assert (res.history["spikes"][t - 1:, b] == res.history["spikes"][t - 1, b]).all(), b
        assert torch.equal(res.rates[b], res.history["rates"][t - 1, b]), b
        assert torch.equal(res.spikes[b], res.history["spikes"][t - 1, b]), b


@pytest.mark.parametrize("tol", [0.05, 0.1, 0.2])  # iP-VAE: 1, 7 and all 10 inputs settle (stop at 140)
def test_held_in_the_batch_each_input_runs_as_without_tol_until_it_freezes(spiking, tol):
    """Without narrowing, freezing one input must not disturb the others' draws; a frozen belief stays put."""
    model, x, fixed = spiking
    res = _unnarrowed(model, x, 1, record=range(1, STEPS + 1), tol=tol, window=WINDOW)
    assert res.steps_run == res.steps_used.max() and res.steps == STEPS and len(res.history["rates"]) == STEPS
    for b, t in enumerate(res.steps_used.numpy()):
        assert torch.equal(res.history["rates"][:t, b], fixed.history["rates"][:t, b]), b
        assert torch.equal(res.history["spikes"][:t, b], fixed.history["spikes"][:t, b]), b
    _check_frozen_inputs_stay_put(res)
    expected = _first_converged_step(fixed.history["rates"].numpy().astype(np.float64), WINDOW, tol)
    assert res.steps_used.tolist() == expected.tolist()


@pytest.mark.parametrize("tol", [0.05, 0.1, 0.2])
def test_narrowed_inputs_run_as_without_tol_until_the_first_freeze_and_never_change_after(spiking, tol):
    """Converged inputs leave the batch (the others then draw other numbers): up to the first freeze the
    rollout is the fixed one; afterwards every frozen belief stays put."""
    model, x, fixed = spiking
    res = model.infer(x, STEPS, seed=1, record=range(1, STEPS + 1), tol=tol, window=WINDOW)
    first = int(res.steps_used.min())
    assert first < STEPS and res.steps_run == res.steps_used.max() and len(res.history["rates"]) == STEPS
    assert torch.equal(res.history["rates"][:first], fixed.history["rates"][:first])
    assert torch.equal(res.history["spikes"][:first], fixed.history["spikes"][:first])
    _check_frozen_inputs_stay_put(res)


@pytest.mark.parametrize("tol", [0.05, 0.1, 0.2])
def test_an_input_stops_exactly_when_the_stated_criterion_first_holds(spiking, tol):
    """The documented criterion is the one applied: NumPy recomputes it from the rollout's own recorded codes."""
    model, x, _ = spiking
    res = model.infer(x, STEPS, seed=1, tol=tol, window=WINDOW, record=range(1, STEPS + 1))
    expected = _first_converged_step(res.history["rates"].numpy().astype(np.float64), WINDOW, tol)
    assert res.steps_used.tolist() == expected.tolist()
    assert 0 < (expected < STEPS).sum()  # the test means something: some inputs converge


@pytest.mark.parametrize("trace", [False, "default", True])
def test_a_frozen_inputs_state_is_the_one_its_code_came_from(spiking, trace):
    """The read-out's state of every input, frozen early or not, is the state of its final mean code (rates =
    mean_code(state)), whatever the trace: the engine may skip the state per step only where nothing reads it."""
    model, x, _ = spiking
    res = model.infer(x, STEPS, seed=1, tol=0.2, window=WINDOW, trace=trace)
    assert (res.steps_used < STEPS).any()
    parts = model.components()
    state = tuple(res.state[name] for name in parts.family.state_names)
    torch.testing.assert_close(parts.family.mean_code(state, parts.family_params), res.rates, rtol=1e-5, atol=1e-6)


def test_a_tolerance_of_zero_freezes_only_a_code_that_has_not_moved(spiking):
    """A spiking code never repeats itself exactly: at tol 0 only a silent code (all-zero relu) can freeze."""
    model, x, fixed = spiking
    res = model.infer(x, STEPS, seed=1, tol=0.0, window=WINDOW)
    frozen = res.steps_used < STEPS
    assert res.steps_run == STEPS and (res.rates[frozen] == 0).all()
    assert model.config.model != "ipvae" or (not frozen.any() and torch.equal(res.rates, fixed.rates))


class Halving(InferenceSteps):
    """a ← a + (x − a)/2 from a = 0, identity decoder: a_t = x(1 − 2^−t), so windows settle geometrically."""

    state_names = ("a",)

    def __init__(self):
        super().__init__()
        self.log_sigma = torch.zeros(3, dtype=torch.float64)

    def start(self, frame, generator, *, trace):
        return Step((torch.zeros_like(frame),))

    def step(self, previous, frame, generator):
        a = previous.state[0] + (frame - previous.state[0]) / 2
        return Step((a,), a, a)

    def decode(self, code):
        return code

    def prior_term(self, new, previous):
        return new.state[0].pow(2).sum(-1)


def test_the_rollout_stops_once_every_input_has_converged_and_the_trace_has_the_steps_run():
    """Closed form: the window means of x(1 − 2^−t) differ by a factor ~2^−w, so w = 2, tol 0.01 stops at
    the first window end t = 2k with 2^−(2k−2)·(3/8)/(1 − ...) small enough — recomputed in NumPy."""
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    res = run_inference(Halving(), x, 100, trace=True, tol=0.01, window=2)
    t = np.arange(1, 101)
    codes = (1 - 2.0 ** -t)[:, None, None] * x.numpy()[None]
    expected = _first_converged_step(codes, 2, 0.01)
    assert res.steps_used.tolist() == expected.tolist() and expected[1] == 4  # a silent code has converged
    assert res.steps_run == expected.max() < 100
    fixed = run_inference(Halving(), x, 100, trace=True, record=[3, 100])
    for key, values in res.trace.items():  # held after the stop: what the frozen codes give
        assert len(values) == 100 and (values[res.steps_run:] == values[-1]).all(), key
        assert key in ("du_norm", "kl", "nelbo") or values[res.steps_run - 1] == values[-1], key
        assert np.array_equal(values[:expected[1]], fixed.trace[key][:expected[1]]), key
    assert res.trace["du_norm"][-1] == 0
    assert res.trace["kl"][-1] == pytest.approx(float(res.rates.pow(2).sum(-1).mean()))
    assert torch.allclose(res.rates, x * (1 - 2.0 ** -torch.tensor(expected, dtype=torch.float64))[:, None])


class Relaxing(Halving):
    """a ← a + ρ(x)(x − a) with ρ(x) = 1/(1 + ‖x‖₁): each input settles at its own pace."""

    def step(self, previous, frame, generator):
        rate = 1.0 / (1.0 + frame.abs().sum(-1, keepdim=True))
        a = previous.state[0] + rate * (frame - previous.state[0])
        return Step((a,), a, a)


class NarrowedRelaxing(Relaxing):
    """``Relaxing`` that lets anytime inference narrow its batch, counting the inputs it steps."""

    def __init__(self):
        super().__init__()
        self.stepped = 0

    def step(self, previous, frame, generator):
        self.stepped += len(frame)
        return super().step(previous, frame, generator)

    def select(self, step, rows, frame):
        return Step((step.state[0][rows],), step.rates[rows], step.decoded[rows])


def test_narrowing_a_deterministic_method_changes_nothing_but_the_work():
    """Dropping converged inputs is bookkeeping: a deterministic rollout gives the same codes, steps, trace and
    history as holding them in the batch, and each input is stepped exactly its steps_used times."""
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [4.0, 3.0, -1.0], [0.1, 0.0, 0.2]], dtype=torch.float64)
    options = dict(trace=True, tol=0.01, window=2, record=range(1, 101))
    held, narrowed = Relaxing(), NarrowedRelaxing()
    res_held, res = run_inference(held, x, 100, **options), run_inference(narrowed, x, 100, **options)
    assert len(set(res.steps_used.tolist())) > 2  # inputs leave at different steps
    assert torch.equal(res.steps_used, res_held.steps_used) and torch.equal(res.rates, res_held.rates)
    assert torch.equal(res.history["rates"], res_held.history["rates"])
    for key, values in res.trace.items():
        np.testing.assert_allclose(values, res_held.trace[key], rtol=1e-12, atol=1e-15, err_msg=key)
    assert narrowed.stepped == int(res.steps_used.sum())


def test_an_amortized_posterior_converges_at_the_second_window():
    """A fixed input's amortized posterior does not move: the second window's mean equals the first's."""
    model = build_model(ModelConfig(n_inputs=16, n_latents=6, model="pvae"), seed=0)
    x = torch.randn(4, 16)
    res = model.infer(x, 500, tol=1e-9, window=10, record=[500])
    assert res.steps_run == 20 and (res.steps_used == 20).all()
    assert torch.equal(res.history["rates"][0], res.rates) and torch.equal(res.rates, model.infer(x, 30).rates)


@pytest.mark.parametrize("kwargs, message", [
    ({"tol": -0.1}, "tol must be a finite number ≥ 0"), ({"tol": float("nan")}, "tol must be a finite number"),
    ({"tol": "0.1"}, "tol must be a finite number"), ({"tol": 0.1, "window": 0}, "window must be an integer ≥ 1"),
    ({"tol": 0.1, "window": 2.5}, "window must be an integer ≥ 1")])
def test_bad_anytime_values_are_one_line(kwargs, message):
    model = build_model(ModelConfig(n_inputs=16, n_latents=6, model="ipvae"), seed=0)
    with pytest.raises(DataError, match=message):
        model.infer(torch.randn(2, 16), 10, **kwargs)


def test_anytime_inference_refuses_an_online_input():
    model = build_model(ModelConfig(n_inputs=16, n_latents=6, model="ipvae"), seed=0)
    with pytest.raises(DataError, match="needs a fixed input"):
        model.infer(torch.randn(10, 2, 16), 10, tol=0.1)


def test_evaluate_reports_the_steps_inputs_used_and_the_steps_the_chunks_ran(spiking):
    """evaluate's averages are the per-input steps of infer, chunk by chunk (chunk i seeded seed + i)."""
    from fond.evaluate import evaluate

    model, x, _ = spiking
    ev = evaluate(model, x, STEPS, seed=1, chunk_size=4, tol=0.1, window=WINDOW)
    parts = [model.infer(x[i:i + 4], STEPS, seed=1 + k, tol=0.1, window=WINDOW)
             for k, i in enumerate(range(0, len(x), 4))]
    assert ev.steps_used == pytest.approx(sum(float(p.steps_used.sum()) for p in parts) / len(x))
    assert ev.steps_run == pytest.approx(sum(p.steps_run * len(p.rates) for p in parts) / len(x))
    assert ev.r2 == pytest.approx(sum(p.trace["r2"][-1] * len(p.rates) for p in parts) / len(x))
    assert "steps_used" in ev.summary() and "steps_used" not in evaluate(model, x, 5).summary()


def test_fond_eval_until_converged_prints_the_steps_and_leaves_the_report_alone(spiking, tmp_path, capsys):
    import json

    from fond.cli import main

    model, x, _ = spiking
    model.save(tmp_path / "model")
    np.save(tmp_path / "x.npy", x.numpy())
    args = ["eval", str(tmp_path / "model"), "--data", str(tmp_path / "x.npy"), "--steps", str(STEPS)]
    assert main([*args, "--until-converged", "0.2", "--window", str(WINDOW), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 2 * WINDOW <= summary["steps_used"] <= summary["steps_run"] <= STEPS and summary["steps"] == STEPS
    assert not (tmp_path / "model" / "report").exists()
    assert main([*args, "--until-converged", "0.2"]) == 0 and "anytime: inputs froze after" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--until-converged", "-1"])
    assert "must be a finite number ≥ 0" in capsys.readouterr().err


@pytest.mark.parametrize("name, tol", [("savae", 0.05), ("iavae", 0.2)])  # the untrained iA-VAE moves more
def test_a_hybrid_refinement_narrows_its_batch_by_the_stated_criterion(name, tol):
    """The hybrids' refinement also drops converged inputs: stops recomputed from the rollout's own codes,
    and every frozen belief stays put."""
    model = build_model(ModelConfig(n_inputs=16, n_latents=6, model=name), seed=0)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))  # (not the global stream: test order)
    res = model.infer(x, 120, seed=2, tol=tol, window=10, record=range(1, 121))
    expected = _first_converged_step(res.history["rates"].numpy().astype(np.float64), 10, tol)
    assert res.steps_used.tolist() == expected.tolist() and len(set(expected.tolist())) > 1
    _check_frozen_inputs_stay_put(res)


def test_inputs_freezing_at_the_last_step_leave_a_complete_read_out(spiking):
    """A freeze at the very last step must not narrow the batch (the read-out comes from it): stopped right
    where the first input freezes, the result is the rollout without tol."""
    model, x, fixed = spiking
    used = model.infer(x, STEPS, seed=1, tol=0.1, window=WINDOW).steps_used
    first = int(used.min())
    assert 0 < int((used == first).sum()) < len(x)  # some inputs, not all, freeze at the last step below
    res = model.infer(x, first, seed=1, tol=0.1, window=WINDOW)
    assert torch.equal(res.rates, fixed.history["rates"][first - 1])
    assert torch.equal(res.spikes, fixed.history["spikes"][first - 1])
