"""Oracles for the Poisson family: KL divergence and the relaxed (reparameterised) sampler."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fond import poisson_kl
from fond.families.poisson import n_terms_for, relaxed_poisson


def test_kl_matches_direct_sum_over_pmf():
    """The exact KL must equal Σ_k q(k) log(q(k)/p(k)) computed from scipy's Poisson pmf."""
    for u, u0 in [(-3.0, -2.0), (0.5, 1.5), (2.0, 0.3), (-6.0, -6.0 + 1e-3)]:
        k = np.arange(0, 400)
        log_q = stats.poisson(math.exp(u)).logpmf(k)
        log_p = stats.poisson(math.exp(u0)).logpmf(k)
        oracle = float(np.sum(np.exp(log_q) * (log_q - log_p)))
        ours = float(poisson_kl(torch.tensor(u, dtype=torch.float64), torch.tensor(u0, dtype=torch.float64)))
        assert ours == pytest.approx(oracle, rel=1e-6, abs=1e-12)


def test_kl_matches_monte_carlo():
    """A Monte-Carlo estimate E_q[log q(z) − log p(z)] agrees with the closed form (independent check)."""
    gen = torch.Generator().manual_seed(0)
    u, u0 = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    z = torch.poisson(torch.full((400_000,), float(u.exp()), dtype=torch.float64), generator=gen)
    log_ratio = z * (u - u0) - u.exp() + u0.exp()
    mc, se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(len(z)))
    assert abs(mc - float(poisson_kl(u, u0))) < 4 * se


def test_kl_nonnegative_zero_only_at_prior_and_reference_form_is_reweighted():
    """KL ≥ 0 with equality iff u = u₀; the reference form is e^Δ times the exact one (DESIGN §2.1)."""
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    u0 = torch.linspace(8, -8, 101, dtype=torch.float64)
    kl = poisson_kl(u, u0)
    assert (kl >= 0).all()
    assert torch.allclose(poisson_kl(u, u), torch.zeros_like(u))
    ref = poisson_kl(u, u0, form="reference")
    assert torch.allclose(ref, torch.exp(u - u0) * kl, rtol=1e-9, atol=1e-9)


def test_natural_gradient_of_kl_is_the_leak():
    """G(u)⁻¹ ∂KL/∂u = u − u₀ with G = diag(e^u): the leak term of the dynamics (and 0 at the online prior)."""
    u = torch.tensor([-2.0, 0.1, 1.3], dtype=torch.float64, requires_grad=True)
    u0 = torch.tensor([-1.0, 0.1, 2.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(poisson_kl(u, u0).sum(), u)
    assert torch.allclose(grad / u.detach().exp(), u.detach() - u0)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("indicator", ["sigmoid", "cubic", "straight_through"])
@pytest.mark.parametrize("rate", [0.05, 1.0, 4.0])
def test_relaxed_sampler_mean_and_variance_at_low_temperature(indicator, rate, backend):
    """At τ → 0 the relaxed sample is a Poisson count: mean and variance both equal the rate (the compiled
    kernel and the torch path, the GPU's, forced on the CPU)."""
    gen = torch.Generator().manual_seed(1)
    rates = torch.full((200_000,), rate, dtype=torch.float64)
    z = relaxed_poisson(rates, 0.01, gen, indicator=indicator, tail=1e-9, backend=backend)
    se = math.sqrt(rate / len(z))
    assert abs(float(z.mean()) - rate) < 5 * se + 1e-3
    assert float(z.var()) == pytest.approx(rate, rel=0.03)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("indicator", ["sigmoid", "cubic", "straight_through"])
def test_relaxed_sampler_pathwise_gradient_of_mean_is_one(indicator, backend):
    """d E[z]/d r = 1 for a Poisson count; the reparameterised gradient must recover it at small τ (both
    backends)."""
    gen = torch.Generator().manual_seed(2)
    rate = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    z = relaxed_poisson(rate.expand(100_000), 0.05, gen, indicator=indicator, tail=1e-9, backend=backend)
    (grad,) = torch.autograd.grad(z.mean(), rate)
    assert float(grad) == pytest.approx(1.0, abs=0.05)


def test_straight_through_forward_is_integer_counts():
    """The straight-through sample is a hard count in the forward pass (what the network really emits)."""
    rates = torch.full((1000,), 1.5, requires_grad=True)
    z = relaxed_poisson(rates, 0.5, torch.Generator().manual_seed(0), indicator="straight_through")
    assert torch.equal(z.detach(), z.detach().round())
    z.sum().backward()
    assert rates.grad.abs().sum() > 0


def test_sigmoid_indicator_is_biased_at_high_temperature():
    """Documented behaviour: the sigmoid relaxation overcounts at τ = 1, the cubic one far less."""
    gen = torch.Generator().manual_seed(3)
    rates = torch.full((100_000,), 0.5, dtype=torch.float64)
    sig = float(relaxed_poisson(rates, 1.0, gen, indicator="sigmoid").mean())
    cub = float(relaxed_poisson(rates, 1.0, gen, indicator="cubic").mean())
    assert sig - 0.5 > 0.1
    assert abs(cub - 0.5) < sig - 0.5


def test_number_of_terms_covers_the_tail():
    """n_exp is the smallest n with P(Pois(r_max) > n) < tail, so truncation is rarer than the tail."""
    rates = torch.tensor([0.1, 3.0, 12.0])
    n = n_terms_for(rates, tail=1e-3)
    assert stats.poisson(12.0).sf(n) < 1e-3 <= stats.poisson(12.0).sf(n - 1)
    assert n_terms_for(rates, tail=1e-3, max_terms=5) == 5


@pytest.mark.parametrize("indicator", ["sigmoid", "cubic", "straight_through"])
@pytest.mark.parametrize("n_terms", [None, 12])
def test_compiled_relaxed_sampler_equals_the_autograd_reference_on_the_same_draws(indicator, n_terms):
    """The training engine's fused sampler (count and ∂count/∂r in one pass, no (…, n) tensors kept) must
    give the value and the gradient that autograd of the written-out estimator gives on the same uniforms."""
    from fond.families.kernels import uniforms_reference
    from fond.families.poisson import _relaxed_from_uniforms, _term_table
    from fond.families.sampling import draw_key

    rates = torch.exp(torch.empty(50, 40, dtype=torch.float64).uniform_(-6, 3.2,
                                                                         generator=torch.Generator().manual_seed(1)))
    rates.requires_grad_(True)
    weights = torch.randn(50, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z = relaxed_poisson(rates, 0.3, torch.Generator().manual_seed(3), indicator=indicator, n_terms=n_terms)
    (grad,) = torch.autograd.grad((z * weights).sum(), rates)

    key1, key2 = draw_key(torch.Generator().manual_seed(3))  # the key relaxed_poisson drew
    n = rates.numel()
    limits, sizes = _term_table(1e-3, 1024, n_terms)
    terms = torch.as_tensor(sizes)[torch.bucketize(rates.detach().reshape(-1), torch.as_tensor(limits))]
    width = int(terms.max())
    counters = (np.arange(width, dtype=np.uint64)[None, :] * np.uint64(n) + np.arange(n, dtype=np.uint64)[:, None])
    uniforms = 1.0 - torch.from_numpy(uniforms_reference(int(key1), int(key2), counters))  # kernel: −log(1 − u)
    beyond = torch.arange(width)[None, :] >= terms[:, None]
    uniforms[beyond] = 1e-300  # an element's unused terms: arrival times far past 1, contributing nothing
    ref = _relaxed_from_uniforms(rates.reshape(-1), uniforms, 0.3, indicator).reshape(rates.shape)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), rates)
    assert torch.allclose(z.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert float(grad.abs().sum()) > 1.0  # a real gradient, not two zeros agreeing


def test_relaxed_screen_never_idles_an_element_whose_first_arrival_is_in_reach():
    """The training sampler's screen decides with a polynomial bound instead of an exponential: it may mark busy an
    element that its first round then closes, but never idle one whose first arrival T₁ = −log(1 − U)/r is at or
    before the stop, or that element's terms would be missing from its count."""
    from fond.families.kernels import _relaxed_screen, uniforms_reference

    rng = np.random.default_rng(7)
    rates = np.exp(rng.uniform(-14.0, 4.0, 200_000))
    stop, busy = 12.0, np.empty(rates.size, np.bool_)
    assert _relaxed_screen(rates, np.uint64(11), np.uint64(13), np.uint64(5), stop, busy) == 0
    uniforms = uniforms_reference(11, 13, np.arange(5, 5 + rates.size, dtype=np.uint64))
    in_reach = -np.log1p(-uniforms) / rates <= stop
    assert in_reach.sum() > 10_000 and busy[in_reach].all()
    assert (busy & ~in_reach).sum() < 0.01 * rates.size  # the bound's excess, ≈ (stop·r)⁴/24 where stop·r < 1


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_float32_relaxed_sampler_stops_its_terms_within_float32_resolution(temperature):
    """A float32 model's sampler draws terms only to 1 + 22τ (``RELAXED_REACH``, ~half of float64's 40τ): the count
    and gradient must still equal the float64 sampler's (every term to 1 + 40τ) on the same draws to float32's
    resolution (the gradient in u = log r), or the shortcut would bias training."""
    rates = torch.exp(torch.empty(60, 50, dtype=torch.float64).uniform_(-5, 3.5,
                                                                         generator=torch.Generator().manual_seed(4)))
    weights = torch.randn(60, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    values = {}
    for dtype in (torch.float32, torch.float64):
        r = rates.to(dtype).to(torch.float64).to(dtype).requires_grad_(True)
        z = relaxed_poisson(r, temperature, torch.Generator().manual_seed(6))
        (grad,) = torch.autograd.grad((z * weights.to(dtype)).sum(), r)
        values[dtype] = (z.detach().double(), grad.double())
    (z32, g32), (z64, g64) = values[torch.float32], values[torch.float64]
    assert float(z64.sum()) > 1000.0  # counts far from zero: the terms past 1 + 22τ are drawn in float64
    assert torch.allclose(z32, z64, rtol=2e-7, atol=1e-7)
    # in the state u = log r (what training differentiates): a left-out term moves r·∂z/∂r by < 23·e^{−22}/τ
    assert torch.allclose(g32 * rates, g64 * rates, rtol=1e-5, atol=1e-7)


def test_compiled_relaxed_sampler_keeps_one_tensor_for_backward():
    """Memory: the fused sampler saves one tensor of the rates' shape for the backward pass, whatever n_terms."""
    saved = []
    rates = torch.full((100, 30), 2.0, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        relaxed_poisson(rates, 0.3, torch.Generator().manual_seed(0), n_terms=64)
    assert sum(saved) == rates.numel()


def test_torch_relaxed_sampler_counts_each_element_with_its_own_terms():
    """The torch path draws the batch's widest number of arrival times but counts each element's own: beside
    rates of 60 (128 terms), a rate of 2 keeps its own 4 terms at tail 0.06 (P(Pois(2) > 4) = 0.053), so its
    hard counts are min(X, 4): at most 4, with mean E[min(X, 4)] — counting all 128 would give mean 2 and
    5 % of counts above 4."""
    from fond.families.poisson import _term_table

    limits, sizes = _term_table(0.06, 1024, None)
    assert sizes[int(np.searchsorted(limits, 2.0))] == 4  # the premise: rate 2's own bucket holds 4 terms
    gen = torch.Generator().manual_seed(8)
    rates = torch.cat([torch.full((100_000,), 2.0, dtype=torch.float64), torch.full((10,), 60.0, dtype=torch.float64)])
    z = relaxed_poisson(rates, 0.0, gen, backend="torch", tail=0.06)
    small = z[:100_000]
    capped = stats.poisson(2.0).pmf(np.arange(4)) @ np.arange(4) + 4 * stats.poisson(2.0).sf(3)
    assert float(small.max()) <= 4
    assert abs(float(small.mean()) - capped) < 5 * math.sqrt(2.0 / 100_000)
    assert float(z[100_000:].mean()) > 40


def test_torch_relaxed_sampler_gradient_equals_the_compiled_one_in_distribution():
    """Same estimator, different draws: the mean pathwise gradient of Σ w·z agrees between the backends."""
    rates = torch.exp(torch.linspace(-3, 2, 20, dtype=torch.float64)).repeat(20_000).requires_grad_(True)
    grads = []
    for backend in ("auto", "torch"):
        z = relaxed_poisson(rates, 0.3, torch.Generator().manual_seed(5), backend=backend)
        (grad,) = torch.autograd.grad(z.sum(), rates)
        grads.append(grad.reshape(20_000, 20).mean(0))
    torch.testing.assert_close(grads[0], grads[1], rtol=0.03, atol=0.01)


# A NaN or infinite rate (a diverged state) must stop training with one clear error, never become a count:
# the compiled kernel checks the rates in its first pass (any chunk), the torch path before it starts.
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_relaxed_sampler_refuses_a_non_finite_rate(bad, backend):
    from fond.families.poisson import relaxed_poisson

    rates = torch.full((3, 10_000), 0.2)
    rates[2, 9_999] = bad  # in the last chunk
    with pytest.raises(FloatingPointError, match="non-finite Poisson rate"):
        relaxed_poisson(rates.requires_grad_(), 0.5, torch.Generator().manual_seed(0), backend=backend)


# The training sampler's logarithm and exponential are written without libm (so its term loop vectorises):
# they must agree with math.log / math.exp to a few units in the last place over the whole range they see
# (1 − U from 2⁻⁵³ to 1, 1 + e^a up to e^20, rate ratios; −(1 − T)/τ from −700 to 700), or every relaxed count
# would drift.
def test_kernel_log_and_exp_match_libm():
    import numba

    from fond.families.kernels import _exp, _log

    log_all = numba.njit(lambda q: np.array([_log(v) for v in q]))
    exp_all = numba.njit(lambda y: np.array([_exp(v) for v in y]))
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.random(20_000), 2.0 ** -rng.uniform(0, 53, 20_000), 2.0 ** rng.uniform(-1000, 1000, 20_000),
                        rng.uniform(0.98, 1.02, 20_000), [2.0**-53, 0.5, 1.0, 1 - 2**-53, 1 + 2**-52, 2.0**-1022]])
    np.testing.assert_allclose(log_all(q), np.log(q), rtol=4e-16, atol=1e-300)
    assert log_all(np.array([1.0]))[0] == 0.0
    y = np.concatenate([rng.uniform(-700, 700, 20_000), rng.uniform(-1, 1, 20_000), [0.0, -700.0, 700.0]])
    np.testing.assert_allclose(exp_all(y), np.exp(y), rtol=4e-16)


# The float32 versions (the fused training step of float32 models) must be as good as float32 itself allows.
def test_kernel_float32_log_and_exp_match_libm():
    import numba

    from fond.families.kernels import _exp32, _log32

    log_all = numba.njit(lambda q: np.array([_log32(v) for v in q]))
    exp_all = numba.njit(lambda y: np.array([_exp32(v) for v in y]))
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.random(20_000), 2.0 ** -rng.uniform(0, 100, 20_000), rng.uniform(1, 1e6, 20_000),
                        [1.0, 0.5, 2.0]]).astype(np.float32)
    np.testing.assert_allclose(log_all(q), np.log(q.astype(np.float64)), rtol=3e-7, atol=1e-7)
    y = np.concatenate([rng.uniform(-87, 88, 20_000), rng.uniform(-1, 1, 20_000), [0.0, -87.0, 20.0]])
    y = y.astype(np.float32)
    np.testing.assert_allclose(exp_all(y), np.exp(y.astype(np.float64)), rtol=4e-7)


# The evaluation engine's e^{−d} comes from this pass instead of torch's clamp and exp: it must clamp like them, be as
# exact as the dtype allows, and let a NaN through (a NaN drive must surface, not become a finite rate).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamped_exp_equals_the_clamped_exponential(dtype):
    from fond.families.kernels import clamped_exp

    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-80, 20, 50_000), [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0]]).astype(dtype)
    low, high = dtype(-50.0), dtype(11.0)
    expected = np.exp(np.clip(a.astype(np.float64), -50.0, 11.0))
    clamped_exp(a, low, high)
    assert np.isnan(a[-6]) and np.isnan(expected[-6])
    np.testing.assert_allclose(a, expected, rtol=4e-7 if dtype == np.float32 else 4e-16)
