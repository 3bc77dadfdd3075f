"""The one inference loop (``fond.rollout``): frames, trace keys, history and result, for a toy method and
for every model behind ``infer``. Oracles: hand-computed values of a deterministic toy method; the trace
definitions in ``fond.result.TRACE_MEANINGS`` recomputed from the returned result."""

import numpy as np
import pytest
import torch

from fond.config import MODELS, ModelConfig
from fond.metrics import gaussian_nll, r2_per_sample
from fond.models import build_model
from fond.result import DEFAULT_TRACE_KEYS, TRACE_KEYS, TRACE_MEANINGS
from fond.rollout import InferenceSteps, Step, run_inference

D, K, B = 4, 4, 3


class HalfWay(InferenceSteps):
    """a ← a + (x − a)/2 from a = 0 (identity decoder, K = D); prior term ‖a‖², "clamp" at |a| ≥ 0.45."""

    state_names = ("a",)

    def __init__(self):
        super().__init__()
        self.log_sigma = torch.zeros(D, dtype=torch.float64)
        self.prepared = []

    def prepare(self, frame):
        self.prepared.append(frame)
        return frame

    def start(self, frame, generator, *, trace):
        return Step((torch.zeros_like(frame),))

    def step(self, previous, frame, generator):
        target = self.constants(frame)
        a = previous.state[0] + (target - previous.state[0]) / 2
        return Step((a,), a, a)

    def decode(self, code):
        return code

    def prior_term(self, new, previous):
        return new.state[0].pow(2).sum(-1)

    def saturated(self, step):
        return step.state[0].abs().max(-1).values >= 0.45


def _frames():
    return torch.arange(3 * B * D, dtype=torch.float64).reshape(3, B, D) / 40


def test_toy_method_trace_is_the_documented_one():
    """A fixed input: a_t = x(1 − 2^−t); every trace key equals its definition computed by hand."""
    x = _frames()[1]
    res = run_inference(HalfWay(), x, 3, record=[2], trace=True)
    a = [x * (1 - 0.5 ** t) for t in range(4)]
    assert set(res.trace) == set(TRACE_KEYS) == set(TRACE_MEANINGS)
    for t in (1, 2, 3):
        nll = gaussian_nll(x, a[t], torch.zeros(D, dtype=torch.float64))
        assert res.trace["du_norm"][t - 1] == pytest.approx(float((a[t] - a[t - 1]).norm(dim=-1).mean()))
        assert res.trace["kl"][t - 1] == pytest.approx(float(a[t].pow(2).sum(-1).mean()))
        assert res.trace["nll"][t - 1] == pytest.approx(float(nll.mean()))
        assert res.trace["r2"][t - 1] == res.trace["r2_rates"][t - 1]
        assert res.trace["rate_max"][t - 1] == pytest.approx(float(a[t].max()))
    # only the last input reaches 0.45, at t = 3
    np.testing.assert_allclose(res.trace["saturated"], [0.0, 0.0, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(res.trace["nelbo"], res.trace["nll"] + res.trace["kl"])
    torch.testing.assert_close(res.history["rates"][0], a[2])
    torch.testing.assert_close(res.rates, a[3])
    assert res.reconstruction is res.reconstruction_from_rates and res.state["a"] is res.rates


class Expecting(HalfWay):
    """HalfWay that notes what ``expect_steps`` told it."""

    def expect_steps(self, per_frame):
        self.per_frame = per_frame


# A method may build per-frame constants that pay only over many steps (``fond.residual_basis``): it must be told
# how many steps a frame drives, and an online frame drives one.
@pytest.mark.parametrize("online, tol, expected", [(False, None, 3), (True, None, 1), (False, 0.1, 3)])
def test_the_loop_tells_the_method_how_many_steps_each_frame_drives(online, tol, expected):
    method = Expecting()
    run_inference(method, _frames() if online else _frames()[1], 3, trace=False, tol=tol, window=1)
    assert method.per_frame == expected


def test_online_input_gives_each_step_its_frame_and_prepares_each_frame_once():
    """Frame t − 1 drives step t; the per-frame constants are computed once per frame, not once per step."""
    frames = _frames()
    method = HalfWay()
    res = run_inference(method, frames, 3, record=[1, 2, 3])
    a = torch.zeros(B, D, dtype=torch.float64)
    for t in range(3):
        a = a + (frames[t] - a) / 2
        torch.testing.assert_close(res.history["rates"][t], a)
        r2 = float(r2_per_sample(frames[t], a).mean())
        assert res.trace["r2"][t] == pytest.approx(r2)
    assert len(method.prepared) == 3
    fixed = HalfWay()
    run_inference(fixed, frames[0], 5, trace=False)
    assert len(fixed.prepared) == 1


def test_an_unmoved_state_reports_zero_change_and_keeps_its_terms():
    """A step that returns its previous state object says nothing moved: du_norm 0, the same kl every step."""

    class Frozen(HalfWay):
        def step(self, previous, frame, generator):
            a = previous.state[0]
            return Step(previous.state, a, a + 0.0)

        def start(self, frame, generator, *, trace):
            return Step((frame / 2,))

    res = run_inference(Frozen(), _frames()[2], 4)
    assert (res.trace["du_norm"] == 0).all() and np.ptp(res.trace["kl"]) == 0 and res.trace["kl"][0] > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_model_reports_the_same_trace_quantities(name):
    """One meaning per key across methods: the last step's r2, r2_rates, rate_max and nelbo, recomputed from
    the returned result, equal the trace's (a check of the documented definitions, for every model)."""
    model = build_model(ModelConfig(n_inputs=16, n_latents=12, model=name), seed=1)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    res = model.infer(x, 4, seed=2, trace=True)
    assert set(res.trace) == set(TRACE_KEYS) and all(v.shape == (4,) for v in res.trace.values())
    assert res.trace["r2"][-1] == pytest.approx(float(r2_per_sample(x, res.reconstruction).mean()), rel=1e-5)
    assert res.trace["r2_rates"][-1] == pytest.approx(float(r2_per_sample(x, res.reconstruction_from_rates).mean()),
                                                      rel=1e-5)
    assert res.trace["rate_max"][-1] == pytest.approx(float(res.rates.max()))
    np.testing.assert_allclose(res.trace["nelbo"], res.trace["nll"] + res.trace["kl"], rtol=1e-5)
    assert (res.trace["du_norm"] >= 0).all() and ((0 <= res.trace["saturated"]) & (res.trace["saturated"] <= 1)).all()


# ---- trace subsets: record only what the caller asks for -------------------------------------------------------


@pytest.mark.parametrize("name", ["ipvae", "lca"])
def test_the_default_trace_leaves_out_only_the_per_step_mean_code_fit(name):
    """By default every key but r2_rates (a dense decode per step) is recorded, with the values of the full
    trace; asking for the missing key says how to record it, in one line; the final mean-code fit stays in the
    read-out (reconstruction_from_rates)."""
    model = build_model(ModelConfig(n_inputs=16, n_latents=12, model=name), seed=1)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    default, full = model.infer(x, 4, seed=2).trace, model.infer(x, 4, seed=2, trace=True).trace
    assert tuple(default) == DEFAULT_TRACE_KEYS == tuple(k for k in TRACE_KEYS if k != "r2_rates")
    for key in default:
        np.testing.assert_array_equal(default[key], full[key])
    with pytest.raises(KeyError, match="'r2_rates' was not recorded.*trace=True"):
        default["r2_rates"]
    with pytest.raises(KeyError, match="unknown trace key 'r3'"):
        default["r3"]
    assert model.infer(x, 4, seed=2, trace="default").trace.keys() == default.keys()




@pytest.mark.parametrize("model", ["ipvae", "igvae", "lca", "pvae"])
@pytest.mark.parametrize("keys", [("r2",), ("zeros", "du_norm", "kl"), ("nelbo", "rate_max"),
                                  ("r2_rates", "saturated")])
def test_a_trace_subset_holds_exactly_the_full_traces_values(model, keys):
    """Asking for some keys changes what is computed, never a value: each equals the full trace's (same draws)."""
    net = build_model(ModelConfig(n_inputs=16, n_latents=8, model=model), seed=1)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    full = net.infer(x, 6, seed=3, trace=True).trace
    part = net.infer(x, 6, seed=3, trace=keys).trace
    assert tuple(part) == keys  # in TRACE_KEYS order
    for key in keys:
        np.testing.assert_array_equal(part[key], full[key])


def test_a_trace_subset_under_anytime_inference_matches_the_full_one():
    net = build_model(ModelConfig(n_inputs=16, n_latents=8, model="ipvae"), seed=1)
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    full = net.infer(x, 120, seed=3, tol=0.2, window=10).trace
    part = net.infer(x, 120, seed=3, tol=0.2, window=10, trace=("du_norm", "kl", "nelbo")).trace
    for key in part:
        np.testing.assert_array_equal(part[key], full[key])


def test_a_trace_without_fit_keys_never_decodes_inside_the_loop(monkeypatch):
    """The cost claim: ("zeros", "kl") adds no decoder pass; the read-out at the end decodes twice at most."""
    from fond.dynamics import FondSteps

    calls = []
    original = FondSteps.decode
    monkeypatch.setattr(FondSteps, "decode", lambda self, code: calls.append(1) or original(self, code))
    net = build_model(ModelConfig(n_inputs=16, n_latents=8, model="ipvae"), seed=1)
    net.infer(torch.randn(4, 16), 30, trace=("zeros", "kl"))
    assert len(calls) <= 2
    calls.clear()
    rows = FondSteps.trace_rows
    monkeypatch.setattr(FondSteps, "trace_rows", lambda self, *args, fit, stats: (
        calls.append(1) if fit else None) or rows(self, *args, fit=fit, stats=stats))
    net.infer(torch.randn(4, 16), 30, trace=("r2",))
    assert len(calls) >= 30  # R² needs each step's residual: from the sparse counts or a decode


@pytest.mark.parametrize("name", ["ipvae-natural16", "ipvae-mnist"])
def test_sparse_residuals_give_the_decoded_trace(monkeypatch, name):
    """The trace's R² and NLL from the sample's non-zero counts (``FondSteps.trace_rows``, by the panel kernel)
    equal those of a decode of the same sample, step by step (same draws), on a trained model's sparse codes."""
    import fond
    from fond.dynamics import FondSteps

    model = fond.pretrained(name)
    x = torch.rand(64, model.n_inputs, generator=torch.Generator().manual_seed(0))
    by_panels, panel_sums = [], FondSteps._panel_fit_sums
    monkeypatch.setattr(FondSteps, "_panel_fit_sums", lambda self, *args: (
        lambda sums: by_panels.append(sums is not None) or sums)(panel_sums(self, *args)))
    sparse = model.infer(x, 20, seed=3, trace=("r2", "nll"))
    assert sum(by_panels) >= 15  # float32, D a multiple of 16: the panel kernel (``panel_kernels``) on most steps
    used = []
    original = FondSteps._sparse_fit_arrays
    monkeypatch.setattr(FondSteps, "_sparse_fit_arrays", lambda self, code, frame: used.append(
        original(self, code, frame) is not None) and None)
    decoded = model.infer(x, 20, seed=3, trace=("r2", "nll"))
    assert sum(used) >= 15  # the sparse path was taken on most steps
    np.testing.assert_allclose(sparse.trace["r2"], decoded.trace["r2"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(sparse.trace["nll"], decoded.trace["nll"], rtol=1e-5)


@pytest.mark.parametrize("bad", [("r3",), 5, ["r2", "nope"]])
def test_an_unknown_trace_key_is_one_clear_error(bad):
    from fond.errors import DataError

    net = build_model(ModelConfig(n_inputs=16, n_latents=8, model="ipvae"), seed=1)
    with pytest.raises(DataError, match="trace"):
        net.infer(torch.randn(2, 16), 3, trace=bad)


def test_one_key_may_be_given_as_a_string():
    net = build_model(ModelConfig(n_inputs=16, n_latents=8, model="ipvae"), seed=1)
    assert tuple(net.infer(torch.randn(2, 16), 3, trace="zeros").trace) == ("zeros",)
