"""The fused evaluation engine (``fond.engine``) against the generic FOND step on the same draws."""

import numpy as np
import pytest
import torch

from fond import IGVAE, IPVAE, IterativeVAE
from fond.dynamics import rollout
from fond.engine import fused_engine


def _model(scale: float = 0.3):
    model = IPVAE(16, 24, seed=3, init_scale=scale).double()
    with torch.no_grad():
        model.log_bias.fill_(-1.5)
    return model


def _x(n=40, scale=1.0):
    return torch.from_numpy(np.random.default_rng(0).standard_normal((n, 16)) * scale)


def _both(model, x, steps, **kw):
    parts = model.components()
    with torch.no_grad():
        fast = rollout(parts, x, steps, generator=torch.Generator().manual_seed(7), **kw)
        slow = rollout(parts, x, steps, generator=torch.Generator().manual_seed(7), fused=False, **kw)
    return fast, slow


def test_fused_step_equals_the_generic_step_on_the_same_draws():
    """The rate-space rewrite of the clamped update (E = e^{−u}) is exact: float64 rollouts of 60 steps give
    the same spikes, rates, potentials and per-step trace as fond_step, draw for draw."""
    fast, slow = _both(_model(), _x(), 60, record=[1, 30, 60], trace=True)
    assert torch.equal(fast.spikes, slow.spikes)
    torch.testing.assert_close(fast.rates, slow.rates, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.state["u"], slow.state["u"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.history["rates"], slow.history["rates"], rtol=1e-12, atol=1e-14)
    for key in slow.trace:
        np.testing.assert_allclose(fast.trace[key], slow.trace[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert float(fast.spikes.sum()) > 0  # spiking, so the draws really were compared


def test_default_trace_takes_the_state_terms_from_the_rates_not_the_potentials(monkeypatch):
    """The default trace (every key but r2_rates) reads no potentials per step (the engine's u = −log E costs a
    pass and an allocation a step): u is computed once, for the read-out, and every key still equals the
    generic step's, whose terms come from u."""
    from fond.engine import PoissonLinearEngine

    calls = []
    original = PoissonLinearEngine.potentials
    monkeypatch.setattr(PoissonLinearEngine, "potentials", lambda self: calls.append(1) or original(self))
    fast, slow = _both(_model(), _x(), 40)
    assert len(calls) == 1
    assert set(fast.trace) == set(slow.trace) and "r2_rates" not in fast.trace and "kl" in fast.trace
    for key in slow.trace:
        np.testing.assert_allclose(fast.trace[key], slow.trace[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_a_dense_code_keeps_the_one_pass_state_terms_and_decodes_the_fit(monkeypatch):
    """Where the sample is too dense for the fit from its non-zero counts, the trace still takes the state terms
    from the engine's one pass and the R² and NLL from a decode: every key equals the generic step's."""
    import fond.families.sparse_kernels as sparse_kernels
    from fond.dynamics import FondSteps

    monkeypatch.setattr(sparse_kernels, "SPARSE_RESIDUALS_BELOW", 0.0)  # every code counts as dense
    answered = []
    rows = FondSteps.trace_rows

    def recorded(self, *args, fit, stats):
        table = rows(self, *args, fit=fit, stats=stats)
        answered.append((fit, stats, table is not None))
        return table

    monkeypatch.setattr(FondSteps, "trace_rows", recorded)
    fast, slow = _both(_model(), _x(), 30)
    assert (False, True, True) in answered and (True, True, True) not in answered  # state terms only, no fit
    for key in slow.trace:
        np.testing.assert_allclose(fast.trace[key], slow.trace[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_fused_step_saturates_exactly_like_the_soft_clamps():
    """Inputs 1000× too strong drive every neuron into both soft clamps and the hard floor: the engine's
    bounds (rates ≤ e^c) must agree with the family's softplus clamps, not just stay finite."""
    fast, slow = _both(_model(), _x(scale=1e3), 20)
    c = _model().family.clamp(1.0)
    assert float(fast.rates.max()) <= np.exp(c) * (1 + 1e-12)
    floor = _model().family.floor  # the floor, then the upper soft clamp: floor − log(1 + e^{floor − c})
    assert float(fast.state["u"].min()) >= floor - np.log1p(np.exp(floor - c)) - 1e-12
    assert float(fast.state["u"].min()) < floor + 1e-6  # the floor was reached
    torch.testing.assert_close(fast.state["u"], slow.state["u"], rtol=1e-10, atol=1e-10)
    assert torch.equal(fast.spikes, slow.spikes)


def test_bounding_the_drive_before_exp_changes_no_bit(monkeypatch):
    """The engine bounds −d before e^{−d} (exp is 20–100× slower where it underflows or overflows); the
    kernel caps e^{−d} at e^{−floor} and e^{−c−40} vanishes beside e^{−c}: float32 rollouts driven far past
    exp's range both ways (|d| up to ~10⁴) are bit for bit those without the bounds."""
    import fond.engine as engine

    model = IPVAE(16, 24, seed=3, init_scale=0.3)
    x = _x(scale=300.0).float()
    bounds = engine.exp_bounds(model.family.clamp(1.0), model.family.floor, torch.float32)
    with torch.no_grad():
        bounded = rollout(model.components(), x, 30, generator=torch.Generator().manual_seed(7), trace=False)
        monkeypatch.setattr(engine, "exp_bounds", lambda c, floor, dtype: (None, None))
        open_ = rollout(model.components(), x, 30, generator=torch.Generator().manual_seed(7), trace=False)
    for a, b in ((bounded.rates, open_.rates), (bounded.spikes, open_.spikes), (bounded.state["u"], open_.state["u"])):
        assert torch.equal(a, b)
    parts = model.components()
    with torch.no_grad():
        reach = torch.exp(parts.family_params["log_step_size"]) * parts.decoder.operators(x, parts.inv_variance).drive
    assert float(reach.max()) > 100 and float(reach.min()) < -100  # e^{∓d} would leave float32's range
    assert None not in bounds
    assert float(bounded.spikes.sum()) > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_trace_rows_state_terms_match_the_family_formulas(dtype):
    """The compiled per-input trace terms from the rates alone (δ = log(r/r'), a Taylor series near δ = 0, the
    rates away from it) equal the family's own KL, saturation and the generic norms, for steps from 1e-9 to 5
    nats: the default trace takes them from there, never computing the potentials."""
    from fond.families.poisson import poisson_kl
    from fond.families.sparse_kernels import poisson_trace_rows
    from fond.result import TRACE_ROW_KEYS

    model = _model()
    parts = model.components()
    g = torch.Generator().manual_seed(0)
    u_old = torch.empty(6, 50, dtype=torch.float64).uniform_(-3, 6, generator=g)
    u_old[3:, 0] = 9.5  # three inputs at the burst level (clamp_final − log 2 ≈ 9.31)
    delta = torch.logspace(-9, 0.7, 50, dtype=torch.float64) * torch.where(torch.rand(6, 50, generator=g) < 0.5, -1, 1)
    u = u_old + delta
    spikes = torch.poisson(torch.exp(u).clamp_max(50), generator=g)
    table = np.empty((6, 7))
    kind = torch.empty(0, dtype=dtype).numpy().dtype
    unused = (np.empty((1, 1), kind), np.empty((1, 1), kind), np.empty(1, kind), np.empty(6))  # no fit asked
    poisson_trace_rows(*(t.to(dtype).numpy() for t in (torch.exp(u), torch.exp(u_old), spikes)), *unused, 0.0,
                       model.family.saturation_rate(), False, True, table)
    terms = {key: torch.from_numpy(table[:, i]) for i, key in enumerate(TRACE_ROW_KEYS)}
    assert terms["r2"].isnan().all() and terms["nll"].isnan().all()  # not asked for
    tight = dict(rtol=1e-9, atol=0) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(terms["kl"].double(), poisson_kl(u, u_old, "exact").sum(-1), **tight)
    torch.testing.assert_close(terms["du_norm"].double(), delta.norm(dim=-1), rtol=1e-6, atol=0)
    assert torch.equal(terms["rate_max"], torch.exp(u).to(dtype).amax(-1).double())  # the kernel's row maximum
    assert torch.equal(terms["zeros"], (spikes == 0).double().mean(-1))  # (float64: the recorder's width)
    assert torch.equal(terms["saturated"].bool(), model.family.saturated((u.to(dtype),), parts.family_params))
    assert terms["saturated"].any() and not terms["saturated"].all()


def test_fused_online_input_equals_generic():
    """An online input changes the drive every frame; the engine must pick up each frame's drive."""
    frames = torch.stack([_x(30) * s for s in (0.5, 1.0, 2.0, 1.0, 0.3)])
    fast, slow = _both(_model(), frames, 5, trace=False, record=[1, 2, 3, 4, 5])
    torch.testing.assert_close(fast.history["rates"], slow.history["rates"], rtol=1e-12, atol=1e-14)
    assert torch.equal(fast.history["spikes"], slow.history["spikes"])


@pytest.mark.parametrize(("model", "expected"), [
    (lambda: IPVAE(16, 8), True),
    (lambda: IterativeVAE(16, 8, model="ipvae", decoder="mlp", decoder_hidden=8), False),
    (lambda: IGVAE(16, 8), False),
])
def test_engine_only_for_poisson_with_a_linear_decoder(model, expected):
    """The engine is a specialisation: other families or decoders keep the generic step."""
    m = model()
    parts = m.components()
    x = _x(4).float()
    with torch.no_grad():
        ops = parts.decoder.operators(x, parts.inv_variance)
        assert (fused_engine(parts, ops, x) is not None) == expected
    with torch.enable_grad():  # with autograd on, the engine (which bypasses it) is never used
        assert fused_engine(parts, ops, x) is None


def test_engine_lookup_walks_both_mros():
    """register_engine dispatches like pyro's register_kl: a subclass inherits its base's engine, a pair
    registered for the subclass wins over it, and a pair with no registered bases has none."""
    from dataclasses import dataclass

    from fond.decoders import DecoderOperators, LinearDecoderOperators
    from fond.engine import engine_factory, poisson_linear_engine, register_engine
    from fond.families.gaussian import GaussianFamily
    from fond.families.poisson import PoissonFamily

    @dataclass(frozen=True)
    class LoudPoisson(PoissonFamily):
        pass

    class TracedOperators(LinearDecoderOperators):
        pass

    assert engine_factory(LoudPoisson, TracedOperators) is poisson_linear_engine
    assert engine_factory(GaussianFamily, LinearDecoderOperators) is None
    assert engine_factory(PoissonFamily, DecoderOperators) is None

    @register_engine(LoudPoisson, LinearDecoderOperators)
    def loud_engine(parts, operators, x):
        return None

    assert engine_factory(LoudPoisson, TracedOperators) is loud_engine
    assert engine_factory(PoissonFamily, TracedOperators) is poisson_linear_engine
    with pytest.raises(TypeError):
        register_engine(PoissonFamily(), LinearDecoderOperators)


def _int8_exact() -> bool:
    from fond.engine import int8_product_exact

    return int8_product_exact()


needs_exact_int8 = pytest.mark.skipif(not _int8_exact(), reason="no oneDNN quantised linear with exact int8 sums "
                                      "here (VNNI or AMX)")


# oneDNN's int8 product saturates on CPUs without VNNI/AMX (AVX2 only): there the limb product must refuse, not run.
def test_limb_product_refuses_a_cpu_whose_int8_product_saturates(monkeypatch):
    import fond.engine as engine

    monkeypatch.setattr(engine, "int8_product_exact", lambda: False)
    with pytest.raises(RuntimeError, match="exact int8 sums"):
        engine.LimbProduct(torch.randn(8, 8))
    parts = IPVAE(16, 8, seed=0).components()
    with pytest.raises(RuntimeError, match="exact int8 sums"):
        engine.PoissonLinearEngine(parts.family, parts.family_params, parts.bias, torch.eye(8), product="limbs")
    assert not engine.limb_product_available()


# The probe must agree with the product it vouches for, on its worst case (pairs of 255·127 overflow int16).
@pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_prepack"), reason="no oneDNN quantised linear")
def test_int8_exactness_probe_agrees_with_a_saturating_product():
    import fond.engine as engine

    engine.int8_product_exact.cache_clear()
    exact = engine.int8_product_exact()
    packed = torch.ops.onednn.qlinear_prepack(torch.full((3, 512), 127, dtype=torch.int8), None)
    out = torch.zeros(1, 3)
    torch.ops.onednn.qlinear_pointwise.binary(torch.full((1, 512), 255, dtype=torch.uint8), 1.0, 0, packed,
                                              torch.ones(3), torch.zeros(3, dtype=torch.int64), out, None, 1.0, 0,
                                              torch.float32, 1.0, 0, "sum", 1.0, "none", [], "")
    assert bool((out == 255.0 * 127.0 * 512).all()) == exact


@needs_exact_int8
def test_limb_product_is_as_accurate_as_a_float32_product():
    """Four int8 limbs with exact int32 sums must lose no more than float32 itself: the evaluation engine
    swaps its one product for this one, so a coarser product would change every rollout."""
    from fond.engine import LimbProduct

    gen = torch.Generator().manual_seed(0)
    k = 512
    weight = torch.randn(k, k, generator=gen) * torch.logspace(-3, 1, k)[None, :]  # columns of very unequal size
    counts = torch.poisson(torch.rand(200, k, generator=gen) * 3.0, generator=gen)
    counts[0, :] = 255.0  # the largest count the uint8 matrix holds
    exact = counts.double() @ weight.double()
    limbs = LimbProduct(weight).accumulate(counts.to(torch.uint8), torch.zeros(200, k))
    float_error = (counts @ weight - exact).abs()
    limb_error = (limbs.double() - exact).abs()
    scale = counts.double().abs() @ weight.double().abs()
    assert float(limb_error.max()) <= 2.0 * float(float_error.max())
    assert float((limb_error / scale).max()) < 1e-6
    one_limb = LimbProduct(weight, limbs=1).accumulate(counts.to(torch.uint8), torch.zeros(200, k))
    assert float((one_limb.double() - exact).abs().max()) > 100 * float(float_error.max())  # limbs matter


def _engines(model, x, first_sample):
    from fond.engine import PoissonLinearEngine

    parts = model.components()
    ops = parts.decoder.operators(x, parts.inv_variance)
    out = []
    for product in ("float", "limbs"):
        engine = PoissonLinearEngine(parts.family, parts.family_params, parts.bias, ops.gram, product=product)
        engine.start(parts.family.initial_state(parts.family_params, x.shape[0])[0])
        out.append((engine, ops.drive))
    return out


@needs_exact_int8
def test_limb_engine_steps_like_the_float_engine():
    """Same draws, same state: the limb-product engine's rates agree with the float engine's to float32
    rounding and its spikes are the same counts (a rounding-level rate change flips a count only when U
    falls within ~1e-6 of a CDF level)."""
    model = IPVAE(16, 64, seed=3, init_scale=0.05)
    with torch.no_grad():
        x = _x(300).float()
        z = torch.poisson(torch.full((300, 64), 0.8), generator=torch.Generator().manual_seed(1))
        (fe, drive), (le, _) = _engines(model, x, z)
        for step in range(3):
            zf = z if step == 0 else fe.spikes
            zl = z if step == 0 else le.spikes
            rf, sf = fe.step(zf, drive, torch.Generator().manual_seed(step))
            rl, sl = le.step(zl, drive, torch.Generator().manual_seed(step))
            assert le._small_valid and le.small_counts.dtype == torch.uint8
            torch.testing.assert_close(rl, rf, rtol=1e-5, atol=1e-6)
            assert float((sl != sf).float().mean()) < 1e-3
            assert float(sf.sum()) > 0


@needs_exact_int8
def test_limb_engine_takes_the_float_product_for_counts_above_255():
    """A uint8 spike matrix cannot hold a count of 300: such a step must use the float product (and say so
    through the overflow count), not wrap the count around modulo 256."""
    model = IPVAE(16, 32, seed=3, init_scale=0.3)
    with torch.no_grad():
        x = _x(20).float()
        (fe, drive), (le, _) = _engines(model, x, None)
        z = torch.zeros(20, 32)
        z[3, 5] = 300.0  # too large for uint8
        assert le._small(z) is None
        rf, _ = fe.step(z, drive, torch.Generator().manual_seed(0))
        rl, _ = le.step(z, drive, torch.Generator().manual_seed(0))
        torch.testing.assert_close(rl, rf, rtol=0, atol=0)  # both took the float product
        le.inv_rates.fill_(1e-4)  # rates 1e4: counts far above 255 on the next draw
        le.step(le.spikes, drive, torch.Generator().manual_seed(1))
        assert not le._small_valid and float(le.spikes.max()) > 255
        assert int(le.small_counts.max()) == 255  # saturated, never wrapped


def _reference_relaxed(rates, temperature, generator=None, *, indicator="sigmoid", n_terms=None, tail=1e-3,
                       max_terms=1024):
    """The slow path: autograd through the written-out relaxed sampler on the compiled kernel's own draws."""
    from fond.families.kernels import uniforms_reference
    from fond.families.poisson import _relaxed_from_uniforms, _term_table
    from fond.families.sampling import draw_key

    key1, key2 = draw_key(generator)
    n = rates.numel()
    limits, sizes = _term_table(tail, max_terms, n_terms)
    terms = torch.as_tensor(sizes)[torch.bucketize(rates.detach().reshape(-1), torch.as_tensor(limits))]
    width = int(terms.max())
    counters = np.arange(width, dtype=np.uint64)[None, :] * np.uint64(n) + np.arange(n, dtype=np.uint64)[:, None]
    uniforms = 1.0 - torch.from_numpy(uniforms_reference(int(key1), int(key2), counters))
    uniforms[torch.arange(width)[None, :] >= terms[:, None]] = 1e-300
    return _relaxed_from_uniforms(rates.reshape(-1), uniforms.to(rates.dtype), temperature, indicator).reshape(
        rates.shape)


def test_training_gradient_of_the_fast_path_equals_the_slow_path(monkeypatch):
    """Issue 6: the training engine (compiled sampler, one saved tensor per sample) must give the BPTT gradient of
    the unfused autograd implementation on the same random draws, for every parameter, over a 6-step unroll."""
    import fond.families.poisson as poisson

    model, x = _model(), _x(20)

    def grads():
        model.zero_grad()
        out = model.unroll_loss(x, 6, beta=3.0, temperature=0.3, clamp_fraction=0.5,
                                generator=torch.Generator().manual_seed(11))
        out.loss.backward()
        return float(out.loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}

    fast_loss, fast = grads()
    monkeypatch.setattr(poisson, "relaxed_poisson", _reference_relaxed)
    slow_loss, slow = grads()
    assert fast_loss == pytest.approx(slow_loss, rel=1e-12)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-9, atol=1e-12, msg=name)
    assert float(fast["decoder.dictionary"].abs().sum()) > 0
