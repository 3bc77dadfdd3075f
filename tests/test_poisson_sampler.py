"""Tests of the exact Poisson sampler (``fond.families.sampling``) and of ``poisson_tail_cutoff``."""

import math
import threading

import numpy as np
import pytest
import torch
from scipy import stats

from fond.families import sampling
from fond.families.sampling import poisson_tail_cutoff, sample_poisson

P_MIN = 1e-3  # goodness-of-fit threshold; every seed below is fixed, so the outcomes are deterministic


def chi_square_pvalue(counts: np.ndarray, rate: float) -> float:
    """Pearson chi-square p-value of integer draws against Pois(rate), pooling bins with expected < 5.

    Bins 0, 1, …, n_max and a final "> n_max" bin; adjacent bins are merged left to right until each
    expects ≥ 5 draws, and a short remainder is merged into the last pooled bin.
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    n = counts.size
    n_max = int(max(counts.max(), stats.poisson.isf(1e-12, rate)))
    observed = np.bincount(counts, minlength=n_max + 1)[: n_max + 1].astype(float)
    observed = np.append(observed, (counts > n_max).sum())
    expected = np.append(stats.poisson.pmf(np.arange(n_max + 1), rate), stats.poisson.sf(n_max, rate)) * n
    pooled_obs, pooled_exp, acc_obs, acc_exp = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_obs, acc_exp = acc_obs + o, acc_exp + e
        if acc_exp >= 5.0:
            pooled_obs.append(acc_obs)
            pooled_exp.append(acc_exp)
            acc_obs = acc_exp = 0.0
    if pooled_obs:
        pooled_obs[-1] += acc_obs
        pooled_exp[-1] += acc_exp
    else:
        pooled_obs, pooled_exp = [acc_obs], [acc_exp]
    obs, exp = np.array(pooled_obs), np.array(pooled_exp)
    if obs.size < 2:
        return 1.0
    statistic = float(((obs - exp) ** 2 / exp).sum())
    return float(stats.chi2.sf(statistic, obs.size - 1))


def draw(rate: float, n: int, seed: int, dtype: torch.dtype = torch.float32, **kwargs) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return sample_poisson(torch.full((n,), rate, dtype=dtype), gen, **kwargs).numpy()


# Exactness in every regime, 1e-4 to 1e3: screened zeros, the inverse-CDF loop, both sides of the cutoff, PTRS.
@pytest.mark.parametrize(
    ("rate", "n"),
    [
        (1e-4, 200_000),
        (1e-2, 200_000),
        (0.3, 200_000),
        (1.0, 200_000),
        (3.0, 200_000),
        (9.9, 200_000),
        (10.0, 100_000),
        (19.9, 100_000),
        (20.0, 100_000),
        (30.0, 50_000),
        (1e3, 50_000),
    ],
)
def test_chi_square_goodness_of_fit(rate, n):
    counts = draw(rate, n, seed=1234)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    assert chi_square_pvalue(counts, rate) > P_MIN


# The torch path (the GPU's sampler, forced here on the CPU) must pass the same test in every regime.
@pytest.mark.parametrize("rate", [1e-2, 1.0, 9.9, 30.0, 1e3])
def test_chi_square_goodness_of_fit_of_the_torch_backend(rate):
    counts = draw(rate, 100_000, seed=4321, backend="torch")
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    assert chi_square_pvalue(counts, rate) > P_MIN


def test_backends_are_named_and_the_compiled_one_is_cpu_only():
    """An unknown backend or the compiled kernels off the CPU are one clear error, not a silent fallback."""
    with pytest.raises(ValueError, match="backend must be one of"):
        sample_poisson(torch.ones(3), backend="numba")
    with pytest.raises(ValueError, match="compiled samplers run on the CPU"):
        sample_poisson(torch.ones(3, device="meta"), backend="compiled")


# The same holds in float64 (the kernel is compiled separately for the dtype).
@pytest.mark.parametrize("rate", [0.05, 2.0])
def test_chi_square_float64(rate):
    counts = draw(rate, 200_000, seed=99, dtype=torch.float64)
    assert chi_square_pvalue(counts, rate) > P_MIN


# The check must have power: a sampler 5 % off in rate has to be rejected, or a pass means nothing.
@pytest.mark.parametrize("rate", [0.3, 1.0, 3.0, 30.0])
def test_chi_square_rejects_biased_sampler(rate):
    n = 200_000 if rate < 10 else 50_000
    biased = draw(rate * 1.05, n, seed=1234)
    assert chi_square_pvalue(biased, rate) < P_MIN


# Tiny rates hinge on the uniform's resolution near the top (float32 uniforms would be 6e-4 off here).
def test_tiny_rate_nonzero_fraction():
    rate, n = 1e-4, 4_000_000
    counts = draw(rate, n, seed=7)
    nonzero = int((counts > 0).sum())
    ci = stats.binomtest(nonzero, n, -math.expm1(-rate)).proportion_ci(confidence_level=0.999)
    assert ci.low <= -math.expm1(-rate) <= ci.high
    assert counts.max() <= 2


# Rates far below float32 resolution near 1 still give (almost always) zero, and never garbage.
def test_extremely_small_rates():
    counts = draw(1e-30, 100_000, seed=3)
    assert counts.sum() == 0
    counts = draw(1e-7, 1_000_000, seed=3)
    assert counts.max() <= 1 and counts.sum() <= 10


# Each element gets its own rate even when rates are interleaved (the compaction/scatter bookkeeping).
def test_mixed_rates_per_element_mean():
    levels = np.concatenate([[0.0], np.logspace(-4, np.log10(50.0), 39)])  # spans the cutoff
    reps = 5_000
    rng = np.random.default_rng(0)
    which = rng.permutation(np.repeat(np.arange(levels.size), reps))
    rates = torch.from_numpy(levels[which].astype(np.float32)).reshape(-1, 40)
    counts = sample_poisson(rates, torch.Generator().manual_seed(5)).numpy().ravel()
    for i, rate in enumerate(levels.astype(np.float32).astype(float)):
        group = counts[which == i]
        if rate == 0.0:
            assert np.all(group == 0)
            continue
        z = (group.mean() - rate) / math.sqrt(rate / reps)
        assert abs(z) < 5.0, (rate, group.mean())


# Reproducibility: same generator seed → identical output; different seeds → different output.
def test_determinism():
    rates = torch.exp(torch.empty(300, 64).uniform_(-8, 2.5, generator=torch.Generator().manual_seed(0)))
    rates[0, :4] = torch.tensor([9.0, 30.0, 1e3, 0.0])  # include the fallback path and zeros
    a = sample_poisson(rates, torch.Generator().manual_seed(11))
    b = sample_poisson(rates, torch.Generator().manual_seed(11))
    c = sample_poisson(rates, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# Only the given generator is used: the global RNG state is left untouched.
def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    sample_poisson(torch.full((50_000,), 2.0), torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


# The kernel draws exactly the documented counter-based stream: zero counts are u < e^{-r} with u the reference
# uniform of the element's counter, so the documentation of the generator is checked, not just its statistics.
# Rates on both sides of the unrolled levels' switch (1.5) and the loop beyond them: every count must be
# the inverse CDF of the element's own reference uniform.
@pytest.mark.parametrize("rate", [0.7, 1.49, 1.5, 6.0, 19.0])
def test_kernel_uses_the_documented_stream(rate):
    from fond.families import kernels

    rates = np.full(50_000, rate, dtype=np.float64)
    out = np.empty_like(rates)
    key1, key2 = np.uint64(12345), np.uint64(67890)
    kernels.poisson_counts(rates, out, key1, key2, 20.0, sampling.RECIPROCALS)
    u = kernels.uniforms_reference(12345, 67890, np.arange(rates.size, dtype=np.uint64))
    cdf = stats.poisson.cdf(np.arange(80), rate)
    expected = (u[:, None] >= cdf[None, :]).sum(1)
    assert np.array_equal(out, expected)


# PTRS (rates ≥ cutoff) draws its uniforms from counters beyond the first n: results stay exact and distinct.
def test_large_rates_are_exact_and_vary():
    counts = draw(250.0, 50_000, seed=4)
    assert chi_square_pvalue(counts, 250.0) > P_MIN
    assert counts.std() > 10


# Counter-based draws do not depend on how many threads run the kernel.
def test_thread_count_does_not_change_draws():
    import numba

    rates = torch.exp(torch.empty(300, 200).uniform_(-8, 4, generator=torch.Generator().manual_seed(0)))
    previous = numba.get_num_threads()
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sample_poisson(rates, torch.Generator().manual_seed(9))
        torch.set_num_threads(max(2, torch_threads))
        many = sample_poisson(rates, torch.Generator().manual_seed(9))
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(previous)
    assert torch.equal(one, many)


# The kernel keeps no shared state: concurrent calls give the same results as sequential ones.
def test_thread_safety():
    rates = torch.exp(torch.empty(400, 128).uniform_(-6, 2, generator=torch.Generator().manual_seed(1)))
    expected = [sample_poisson(rates, torch.Generator().manual_seed(s)) for s in range(4)]
    results: dict[int, list[torch.Tensor]] = {}

    def work(seed: int) -> None:
        results[seed] = [sample_poisson(rates, torch.Generator().manual_seed(seed)) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(4):
        assert all(torch.equal(r, expected[s]) for r in results[s])


# Zero rates give exactly zero, without randomness.
def test_zeros_give_zeros():
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_poisson(torch.zeros(50, 7), gen), torch.zeros(50, 7))
    rates = torch.zeros(20_000)
    rates[::2] = 0.5
    out = sample_poisson(rates, gen)
    assert torch.all(out[1::2] == 0) and out[::2].sum() > 0


# Callers rely on shape and dtype being preserved (also non-contiguous and half input) and integer values.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_shape_dtype_preserved(dtype):
    for shape in [(60, 50, 8), (6, 5, 4)]:
        rates = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype) * 3
        out = sample_poisson(rates.transpose(0, 2), torch.Generator().manual_seed(1))
        assert out.shape == shape[::-1] and out.dtype == dtype
        assert torch.equal(out, out.round()) and bool((out >= 0).all())
    assert sample_poisson(torch.empty(0, 3, dtype=dtype)).shape == (0, 3)


# Evaluation runs under inference_mode, and a draw must never leak a gradient path.
def test_no_grad_and_inference_mode():
    u = torch.zeros(200, 100, requires_grad=True)
    out = sample_poisson(torch.exp(u), torch.Generator().manual_seed(0))
    assert not out.requires_grad and out.grad_fn is None
    with torch.inference_mode():
        rates = torch.exp(torch.zeros(200, 100))
        inference_out = sample_poisson(rates, torch.Generator().manual_seed(0))
    assert torch.equal(inference_out, out)


# Invalid rates are reported with a one-line ValueError instead of silently producing garbage.
@pytest.mark.parametrize("bad", [-1.0, -1e-6, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_invalid_rates_raise(bad, dtype):
    rates = torch.ones(10, 10, dtype=dtype)
    rates[3, 4] = bad
    with pytest.raises(ValueError) as info:
        sample_poisson(rates, torch.Generator().manual_seed(0))
    assert "\n" not in str(info.value)


# Wrong argument types and an out-of-range cutoff are rejected up front.
def test_invalid_arguments():
    with pytest.raises(TypeError):
        sample_poisson(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        sample_poisson(torch.ones(3), small_rate_cutoff=-1.0)
    with pytest.raises(ValueError):
        sample_poisson(torch.ones(3), small_rate_cutoff=float("nan"))
    with pytest.raises(ValueError):
        sample_poisson(torch.ones(3), small_rate_cutoff=100.0)
    with pytest.raises(ValueError):
        sample_poisson(torch.ones(3), small_rate_cutoff=5.0)  # PTRS is exact only from 10


# The cutoff only moves work between two exact samplers: the law is the same for any cutoff.
@pytest.mark.parametrize("cutoff", [10.0, 20.0, 64.0])
def test_cutoff_does_not_change_the_law(cutoff):
    counts = draw(12.0, 100_000, seed=17, small_rate_cutoff=cutoff)
    assert chi_square_pvalue(counts, 12.0) > P_MIN


# poisson_tail_cutoff follows its definition (smallest n with P(X > n) < tail) exactly.
@pytest.mark.parametrize("rate", [0.0, 1e-6, 0.01, 0.5, 1.0, 3.0, 7.9, 40.0, 22026.0])
@pytest.mark.parametrize("tail", [0.5, 1e-3, 1e-9, 1e-200])
def test_tail_cutoff_matches_definition(rate, tail):
    n = poisson_tail_cutoff(rate, tail)
    assert isinstance(n, int) and n >= 0
    assert stats.poisson.sf(n, rate) < tail
    assert n == 0 or stats.poisson.sf(n - 1, rate) >= tail


# More mass needs more terms: the cutoff never decreases with the rate (nor with a smaller tail).
def test_tail_cutoff_monotone():
    rates = np.concatenate([[0.0], np.logspace(-5, 4, 300)])
    cut = [poisson_tail_cutoff(r) for r in rates]
    assert all(a <= b for a, b in zip(cut, cut[1:], strict=False))
    assert poisson_tail_cutoff(5.0, 1e-6) >= poisson_tail_cutoff(5.0, 1e-3)


# Invalid tail-cutoff inputs raise ValueError.
@pytest.mark.parametrize(
    ("rate", "tail"),
    [
        (-1.0, 1e-3),
        (float("inf"), 1e-3),
        (float("nan"), 1e-3),
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, float("nan")),
        (1.0, -0.1),
    ],
)
def test_tail_cutoff_invalid(rate, tail):
    with pytest.raises(ValueError):
        poisson_tail_cutoff(rate, tail)


def test_vectorisable_exponential_matches_libm_to_double_precision():
    """The SIMD passes build the CDF from their own e^{−r} (table × Taylor polynomial, no libm call): it must
    be as accurate as libm's, or every count near a CDF level would shift."""
    import numba as nb

    from fond.families.kernels import WIDE_RATE, _exp_neg

    @nb.njit
    def many(r):
        out = np.empty_like(r)
        for i in range(r.size):
            out[i] = _exp_neg(r[i])
        return out

    r = np.concatenate([np.linspace(0.0, WIDE_RATE, 200_001), np.arange(0, 321) / 16.0,
                        np.random.default_rng(0).uniform(0, WIDE_RATE, 100_000)])
    relative = np.abs(many(r) / np.exp(-r) - 1.0)
    assert float(relative.max()) < 4e-16


def test_wide_vector_choice_only_on_avx512_and_only_when_not_opted_out():
    """The 512-bit preference is set for numba only on AVX-512 hosts, before numba loads, and never against
    the user's own NUMBA_CPU_FEATURES or the FOND_NUMBA_256_BIT opt-out."""
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm

    probe = "import os, fond.families.kernels; print(os.environ.get('NUMBA_CPU_FEATURES', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES", "FOND_NUMBA_256_BIT")}

    def features(**extra):
        done = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                              check=True)
        return done.stdout.strip()

    host = llvm.get_host_cpu_features().flatten()
    expected = host + ",-prefer-256-bit" if "+avx512f" in host.split(",") else "unset"
    assert features() == expected
    assert features(FOND_NUMBA_256_BIT="1") == "unset"
    assert features(NUMBA_CPU_FEATURES="+avx2") == "+avx2"


# The screen (U < 1 − r − margin ⇒ count 0, no exponential) settles only counts that are truly 0: rates set so
# that each element's F(0) = e^{−r} lies a relative 1e-9 above or below its own reference uniform put every
# element at the screen's edge (including U near 1, r near 0, where 1 − r is closest to e^{−r}); every count
# must still be the inverse CDF of its uniform, for the plain sampler and the fused rate step.
@pytest.mark.parametrize("side", [1.0, -1.0])
def test_screen_settles_only_zero_counts(side):
    from fond.families import kernels

    n = 50_000
    u = kernels.uniforms_reference(12345, 67890, np.arange(n, dtype=np.uint64))
    rates = -np.log(np.maximum(u, 1e-300)) * (1.0 + side * 1e-9)
    expected = (u >= np.exp(-rates)).astype(np.float64)  # F(0) = e^{−r}; r < 1e-3 except a few: F(1) ≫ u there
    expected += (u >= np.exp(-rates) * (1.0 + rates)) & (rates > 0)
    out = np.empty(n)
    kernels.poisson_counts(rates, out, np.uint64(12345), np.uint64(67890), 20.0, sampling.RECIPROCALS)
    big = rates > 0.5  # the exact CDF for the few large rates
    cdf = stats.poisson.cdf(np.arange(40), rates[big][:, None])
    expected[big] = (u[big][:, None] >= cdf).sum(1)
    assert np.array_equal(out, expected)
    assert (expected == 1).sum() > n // 3 if side > 0 else (expected[~big] == 0).all()
