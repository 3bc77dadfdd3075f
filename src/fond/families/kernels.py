"""Compiled (numba) kernels for the Poisson samplers: one pass over the elements, no scratch tensors.

Random numbers come from a counter-based generator, so every element can draw its own uniforms in any
order on any number of threads and the result depends only on the key: the 64 random bits of counter c
under the 128-bit key (k₁, k₂) are ``mix(mix(k₁ + (c + 1)·γ) ⊕ k₂)``, ``mix`` the SplitMix64 finaliser
and γ its golden-ratio increment (for fixed k₁ the inner values are SplitMix64's stream, which passes
BigCrush; the outer keyed mix keeps streams of different keys independent even where their counter
ranges overlap). A uniform is the top 53 bits times 2⁻⁵³, on the grid of ``torch.rand(dtype=float64)``.
Element i's j-th uniform has counter ``j·n + i`` (n elements), so the first uniform of every element
comes from one contiguous counter range. The wrappers in ``fond.families.sampling`` and
``fond.families.poisson`` draw the key from a ``torch.Generator``, which makes results reproducible from
the generator's state and advances it, like any torch sampler.

``uniforms_reference`` recomputes the stream in NumPy: tests use it to check the kernels draw what this
docstring says and to run a slow reference implementation on the very same draws.
"""

from __future__ import annotations

import math
import os
import sys


def _prefer_wide_vectors() -> None:
    """On AVX-512 hosts let LLVM vectorise with 512-bit registers (its tuning for Intel server cores asks for
    256-bit ones): the SIMD passes below run ~25 % faster (BENCHMARKS.md). Done through numba's documented
    NUMBA_CPU_FEATURES (the host's features plus ``-prefer-256-bit``), which numba reads when it is first
    imported — so only if numba is not imported yet, the variable is not set, and FOND_NUMBA_256_BIT is not
    set (the opt-out). Only the vector width changes, never a result beyond floating-point contraction."""
    if "numba" in sys.modules or "NUMBA_CPU_FEATURES" in os.environ or os.environ.get("FOND_NUMBA_256_BIT"):
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"


_prefer_wide_vectors()

import numba as nb  # noqa: E402  (after the vector-width choice above)
import numpy as np  # noqa: E402
from numba.extending import overload  # noqa: E402

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
_TO_UNIT = 2.0**-53

#: indicator codes of ``relaxed_counts``
SIGMOID, CUBIC, STRAIGHT_THROUGH = 0, 1, 2

#: The exact samplers run vectorised passes over chunks of ``CHUNK`` elements (SIMD, no branch on the
#: data), then a scalar pass over what is left. The screen takes every element: U < 1 − r − ``SCREEN_MARGIN``
#: implies U < e^{−r} = F(0), so the count is 0 (on a trained iP-VAE ~90 % of the elements, settled by one
#: subtraction and a compare). The tiers gather the rest: ``FAST_LEVELS`` CDF levels for r < ``FAST_RATE``,
#: then ``MID_LEVELS`` for r < ``MID_RATE``, then ``WIDE_LEVELS`` for r < min(cutoff, ``WIDE_RATE``); the
#: scalar ``_poisson_draw`` (PTRS from the cutoff) finishes the few that remain. Every pass applies the same
#: rule X = #{k : F(k) ≤ U} to the same U.
FAST_LEVELS, FAST_RATE = 4, 1.0
MID_LEVELS, MID_RATE = 12, 6.0
WIDE_LEVELS, WIDE_RATE = 32, 20.0
CHUNK = 8192
#: rows per parallel task of the row-wise kernels: their scratch buffers are allocated once per block, not once
#: per row (an allocation costs ~60 ns, a row of 512 elements a few hundred); small, so that prange's equal
#: shares of blocks stay equal shares of rows (B 200: 50 blocks, 25 a thread on 2 threads)
ROW_BLOCK = 4
#: the relaxed sampler's chunk: larger, since its busy elements' last rounds (the few largest rates) cost per
#: round and chunk, not per element
RELAXED_CHUNK = 32768
#: the relaxed sampler's rounds drop their closed elements once at most this fraction is still open (closed
#: ones left in the list add nothing: their arrival times only grow and their terms stay spent)
COMPACT_BELOW = 0.75
#: e^{−r} ≥ 1 − r exactly; the margin covers the rounding of 1 − r and of the tiers' e^{−r} (≤ 2.3e-16)
SCREEN_MARGIN = 1e-15
#: e^{−j/16}, j = 0 … 16·WIDE_RATE: ``_exp_neg``'s table
_EXP_STEP = 16.0
_EXP_TABLE = np.exp(-np.arange(int(WIDE_RATE * _EXP_STEP) + 1) / _EXP_STEP)
#: (−1)^k / k!, the Taylor coefficients of e^{−f}
_NEG_TAYLOR = np.array([(-1.0) ** k / math.factorial(k) for k in range(10)])
_LEVEL_RECIPROCALS = np.concatenate([[0.0], 1.0 / np.arange(1, WIDE_LEVELS + 1, dtype=np.float64)])


@nb.njit(inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(inline="always")
def random_bits(key1, key2, counter):
    """The 64 random bits (uint64) of ``counter`` under the key (key1, key2): every compiled sampler's stream,
    float and integer (SplitMix64's finaliser over a Weyl sequence, keyed twice)."""
    return _mix(_mix(key1 + (counter + _ONE) * GAMMA) ^ key2)


#: 2⁵² and 2⁸⁴ as float64 bit patterns: OR-ing a 32-bit integer into the low mantissa of one gives 2⁵² + m (2⁸⁴ +
#: m·2³²) exactly; ``_integer_float`` subtracts them again
_MAGIC52, _MAGIC84 = np.uint64(0x4330000000000000), np.uint64(0x4530000000000000)
_TWO52, _TWO84 = 2.0**52, 2.0**84
_LOW32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)


@nb.njit(inline="always")
def _integer_float(m):
    """float(m) for a uint64 m < 2⁶⁴ exactly when m < 2⁵³, from two halves through the float64 bit patterns: AVX2
    has no 64-bit integer → float conversion (LLVM extracts each lane to a scalar one), these are four vector ops."""
    high = np.uint64((m >> _S32) | _MAGIC84).view(np.float64) - _TWO84
    return high + (np.uint64((m & _LOW32) | _MAGIC52).view(np.float64) - _TWO52)


@nb.njit(inline="always")
def _uniform(key1, key2, counter):
    """A uniform on [0, 1) with 53 random bits: the counter's draw under the key."""
    return _integer_float(random_bits(key1, key2, counter) >> _S11) * _TO_UNIT


def random_bits_reference(key1: int, key2: int, counters: np.ndarray) -> np.ndarray:
    """``random_bits`` of ``counters`` (uint64 array) computed in NumPy (slow; for tests): uint64."""
    with np.errstate(over="ignore"):
        c = np.asarray(counters, dtype=np.uint64)

        def mix(z):
            z = (z ^ (z >> _S30)) * _M1
            z = (z ^ (z >> _S27)) * _M2
            return z ^ (z >> _S31)

        return mix(mix(np.uint64(key1) + (c + _ONE) * GAMMA) ^ np.uint64(key2))


def uniforms_reference(key1: int, key2: int, counters: np.ndarray) -> np.ndarray:
    """The kernels' uniforms for ``counters`` (uint64 array), computed in NumPy (slow; for tests)."""
    return (random_bits_reference(key1, key2, counters) >> _S11).astype(np.float64) * _TO_UNIT


@nb.njit(inline="always")
def _ptrs(lam, key1, key2, counter, stride):
    """Hörmann's transformed rejection with squeeze (PTRS, 1993), exact for λ ≥ 10 — NumPy's algorithm.

    Uniforms at counter, counter + stride, …; returns the count."""
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_invalpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _uniform(key1, key2, counter) - 0.5
        v = _uniform(key1, key2, counter + stride)
        counter += stride + stride
        us = 0.5 - abs(u)
        if us == 0.0:  # u = −0.5 exactly (probability 2⁻⁵³): the transform is undefined, draw again
            continue
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + log_invalpha - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1.0):
            return k


@nb.njit(inline="always")
def _inverse_cdf(r, u, reciprocals):
    """#{k ≥ 0 : F(k) ≤ u} for Poisson(r), F accumulated in float64 (p_k = p_{k−1}·(r·(1/k))).

    The first levels are evaluated without branching on u (a data-dependent loop exit costs a mispredicted
    branch per element): three for r < 1.5 (most counts 0–3), eight above; the loop takes over beyond.
    """
    p = math.exp(-r)
    s = p
    count = 0.0
    if r < 1.5:
        for k in range(1, 4):
            count += 1.0 if u >= s else 0.0
            p *= r * reciprocals[k]
            s += p
        levels = 3
    else:
        for k in range(1, 9):
            count += 1.0 if u >= s else 0.0
            p *= r * reciprocals[k]
            s += p
        levels = 8
    if u >= s:
        k = levels
        while u >= s and p > 0.0:  # p → 0 ends the (probability ~1e-16) case of u above the summed CDF
            k += 1
            p *= r * reciprocals[k] if k < reciprocals.size else r / k
            s += p
        count = float(k)
    return count


@nb.njit(inline="always")
def _poisson_draw(r, key1, key2, counter, stride, cutoff, reciprocals):
    """One exact Poisson(r) count from the element's counters (counter, counter + stride, …)."""
    if r >= cutoff:
        return _ptrs(r, key1, key2, counter + stride, stride)
    u = _uniform(key1, key2, counter)
    return 0.0 if u < 1.0 - r else _inverse_cdf(r, u, reciprocals)


@nb.njit(inline="always")
def _exp_neg(r):
    """e^{−r} for 0 ≤ r ≤ WIDE_RATE without a libm call (so loops over it vectorise): the table entry at
    the multiple of 1/16 below r times a degree-9 Taylor polynomial of the rest (relative error ≤ 2.3e-16)."""
    j = int(r * _EXP_STEP)
    f = r - j * (1.0 / _EXP_STEP)
    q = _NEG_TAYLOR[9]
    for k in range(8, -1, -1):  # Horner: one multiply-add per term
        q = q * f + _NEG_TAYLOR[k]
    return _EXP_TABLE[j] * q


@nb.njit(inline="always")
def _levels(r, u, levels, limit):
    """(#{k < levels : F(k) ≤ u}, unresolved) for Poisson(min(r, limit)): unresolved when r ≥ limit or
    u ≥ F(levels − 1), i.e. when the count is not settled by the first ``levels`` CDF levels."""
    rc = min(r, limit)
    p = _exp_neg(rc)
    s = p
    count = 0.0
    for k in range(1, levels + 1):
        count += 1.0 if u >= s else 0.0
        p *= rc * _LEVEL_RECIPROCALS[k]
        s += p
    return count, (r >= limit) | (u >= s)


@nb.njit(inline="always")
def _screened(r, u):
    """Whether the count of Poisson(r) at uniform u is not settled as 0 by the screen (see ``CHUNK``)."""
    return u >= 1.0 - r - SCREEN_MARGIN


@nb.njit(error_model="numpy", fastmath={"contract"})
def _screen_pass(rates, out, key1, key2, counter0, unresolved):  # pragma: no cover - compiled
    """The screen over one chunk (vectorised): count 0 where U < 1 − r − margin, flags for the rest (whose
    uniforms ``_finish_chunk`` draws again: cheaper than storing every element's)."""
    for i in range(unresolved.size):
        u = _uniform(key1, key2, counter0 + np.uint64(i))
        out[i] = 0.0
        unresolved[i] = _screened(float(rates[i]), u)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _fast_tier(rates, uniforms, out, unresolved):  # pragma: no cover - compiled
    """Tier 1 over gathered elements (vectorised): FAST_LEVELS levels for r < FAST_RATE."""
    for j in range(unresolved.size):
        count, flag = _levels(rates[j], uniforms[j], FAST_LEVELS, FAST_RATE)
        out[j] = count
        unresolved[j] = flag


@nb.njit(error_model="numpy", fastmath={"contract"})
def _mid_tier(rates, uniforms, out, unresolved):  # pragma: no cover - compiled
    """Tier 2 over gathered elements (vectorised): MID_LEVELS levels for r < MID_RATE."""
    for j in range(unresolved.size):
        count, flag = _levels(rates[j], uniforms[j], MID_LEVELS, MID_RATE)
        out[j] = count
        unresolved[j] = flag


@nb.njit(error_model="numpy", fastmath={"contract"})
def _wide_tier(rates, uniforms, out, unresolved, limit):  # pragma: no cover - compiled
    """Tier 3 over gathered elements (vectorised): WIDE_LEVELS levels for r < limit. (One function per
    tier: the number of levels must be a compile-time constant for LLVM to unroll and vectorise.)"""
    for j in range(unresolved.size):
        count, flag = _levels(rates[j], uniforms[j], WIDE_LEVELS, limit)
        out[j] = count
        unresolved[j] = flag


@nb.njit(error_model="numpy")
def _compact(flags, index):  # pragma: no cover - compiled
    """index[:m] = positions of the true flags (branch-free); returns m."""
    m = 0
    for i in range(flags.size):
        index[m] = i
        m += flags[i]
    return m


@nb.njit(error_model="numpy")
def _flagged(flags):  # pragma: no cover - compiled
    """The positions of the true flags, in order."""
    index = np.empty(flags.size, np.int64)
    return index[:_compact(flags, index)]


@nb.njit(error_model="numpy")
def _gather(index, rates, uniforms):  # pragma: no cover - compiled
    """(index, rates, uniforms, counts, open flags) of the elements at ``index``, gathered (counts and flags
    empty, to be filled by a tier)."""
    m = index.size
    r, u = np.empty(m), np.empty(m)
    for j in range(m):
        r[j] = rates[index[j]]
        u[j] = uniforms[index[j]]
    return index, r, u, np.empty(m), np.empty(m, np.bool_)


@nb.njit(error_model="numpy")
def _finish_chunk(rates, out, key1, key2, counter0, stride, cutoff, reciprocals, unresolved, packed_index,
                  packed_values):  # pragma: no cover - compiled
    """The tiers and the scalar pass for the elements of a chunk the screen left unresolved; returns how
    many of their counts are non-zero (the screened ones are all 0). With ``packed_index`` and
    ``packed_values`` of the chunk's size (int32, out's dtype; else empty), the non-zero counts' positions in
    the chunk and values, in increasing order, are also written to their first entries."""
    index = _flagged(unresolved)
    if index.size == 0:
        return 0
    r1, u1 = np.empty(index.size), np.empty(index.size)
    for j in range(index.size):
        r1[j] = rates[index[j]]
        u1[j] = _uniform(key1, key2, counter0 + np.uint64(index[j]))  # drawn again: the screen keeps none
    count1, open1 = np.empty(index.size), np.empty(index.size, np.bool_)
    _fast_tier(r1, u1, count1, open1)
    index2, r2, u2, count2, open2 = _gather(_flagged(open1), r1, u1)
    if index2.size > 0:
        _mid_tier(r2, u2, count2, open2)
        index3, r3, u3, count3, open3 = _gather(_flagged(open2), r2, u2)
        if index3.size > 0:
            _wide_tier(r3, u3, count3, open3, min(cutoff, WIDE_RATE))
            for j in range(index3.size):
                if open3[j]:
                    element = counter0 + np.uint64(index[index2[index3[j]]])
                    count3[j] = _poisson_draw(r3[j], key1, key2, element, stride, cutoff, reciprocals)
                count2[index3[j]] = count3[j]
        for j in range(index2.size):
            count1[index2[j]] = count2[j]
    nonzero = 0
    packed = packed_index.size == out.size
    for j in range(index.size):
        out[index[j]] = count1[j]
        if packed:  # branch-free packing: every entry is written, only non-zero ones advance
            packed_index[nonzero] = index[j]
            packed_values[nonzero] = count1[j]
        nonzero += count1[j] != 0.0
    return nonzero


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_counts(rates, out, key1, key2, cutoff, reciprocals):  # pragma: no cover - compiled
    """Exact Poisson(rates[i]) → out[i] for a flat array (float32/float64, finite, ≥ 0).

    r < cutoff: inverse CDF of one uniform U, X = #{k : F(k) ≤ U} with F accumulated in float64 (a screen
    and three tiers, see ``CHUNK``). r ≥ cutoff (≥ 10): PTRS. ``reciprocals[k]`` = 1/k (a table: a multiplication
    instead of a division per term).
    """
    n = rates.size
    stride = np.uint64(n)
    not_packed = np.empty(0, np.int32)
    for c in nb.prange((n + CHUNK - 1) // CHUNK):
        a = c * CHUNK
        b = min(n, a + CHUNK)
        unresolved = np.empty(b - a, np.bool_)
        _screen_pass(rates[a:b], out[a:b], key1, key2, np.uint64(a), unresolved)
        _finish_chunk(rates[a:b], out[a:b], key1, key2, np.uint64(a), stride, cutoff, reciprocals, unresolved,
                      not_packed, out[:0])


#: 1 + 2⁻⁵⁰: the screen's bound's margin over its own rounding (a few ulp) and the rounds' (the rounds decide)
_SCREEN_SLACK = 1.0 + 2.0**-50


@nb.njit(error_model="numpy", fastmath={"contract"})
def _relaxed_screen(rates, key1, key2, counter0, stop, busy):  # pragma: no cover - compiled
    """Pass 1 over one chunk (vectorised, no exponential): busy[i] unless element i's first arrival time
    T_1 = −log(1 − U)/r surely falls past ``stop``; those add nothing, so their count and derivative are 0. T_1 ≤
    stop iff U ≤ 1 − e^{−y}, y = stop·r, and 1 − e^{−y} ≤ y − y²/2 + y³/6 for every y ≥ 0 (the Taylor remainder
    has the sign of −y⁴): an element above that bound is idle. The few between (probability ≈ y⁴/24) are marked
    busy and closed by their first round in ``_relaxed_busy`` before any term, so the result is that of the
    exact screen; the rounds decide every busy element. Returns how many rates are not finite (NaN or ±inf: the
    caller's error)."""
    bad = 0
    for i in range(busy.size):
        r = float(rates[i])
        finite = abs(r) < math.inf  # False for NaN too
        y = stop * r if finite else 0.0
        bound = y * (1.0 - y * (0.5 - y * (1.0 / 6.0))) * _SCREEN_SLACK
        busy[i] = finite & (r > 0.0) & (_uniform(key1, key2, counter0 + np.uint64(i)) <= bound)
        bad += not finite
    return bad


#: coefficients of the minimax polynomial R(z) in log(1 + f) = f − f²/2 + s·(f²/2 + R(s²)), s = f/(2 + f), for
#: f + 1 in [√½, √2) (the classic fdlibm/Cephes reduction; error below one unit in the last place)
_LOG_COEFFICIENTS = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
                     2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
                     1.479819860511658591e-01)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_MANTISSA, _EXPONENT_ONE = np.uint64(0x000FFFFFFFFFFFFF), np.uint64(0x3FF0000000000000)
_S52 = np.uint64(52)


@nb.njit(inline="always")
def _log(q):
    """log q for a normal float64 q > 0 without a libm call (so loops over it vectorise; within ~1 ulp of
    math.log): q = 2^k·x with x in [√½, √2), then the minimax polynomial of ``_LOG_COEFFICIENTS``; k read as a float
    from the exponent's bits (no integer → float conversion, which AVX2 lacks)."""
    bits = np.float64(q).view(np.uint64)
    k = np.uint64((bits >> _S52) | _MAGIC52).view(np.float64) - (_TWO52 + 1023.0)  # the exponent, as a float
    x = np.uint64((bits & _MANTISSA) | _EXPONENT_ONE).view(np.float64)  # in [1, 2)
    high = x > 1.4142135623730951
    x = 0.5 * x if high else x
    dk = k + 1.0 if high else k
    f = x - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    c = _LOG_COEFFICIENTS
    tail = w * (c[1] + w * (c[3] + w * c[5])) + z * (c[0] + w * (c[2] + w * (c[4] + w * c[6])))
    half_square = 0.5 * f * f
    return dk * _LN2_HI - ((half_square - (s * (half_square + tail) + dk * _LN2_LO)) - f)


#: 1.5·2⁵²: y + it rounds y to an integer (to even, as ``round``) and holds 2⁵¹ + that integer in its low mantissa bits
_SHIFTER = 1.5 * 2.0**52
_LOW52, _BIAS = np.uint64((1 << 52) - 1), np.uint64((1 << 51) - 1023)
#: 1/k!, k = 0 … 13: the Taylor coefficients of e^r (the first left out, |r|¹⁴/14! ≤ 4e-18 for |r| ≤ ln2/2)
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(14))


@nb.njit(inline="always")
def _exp(y):
    """e^y for y ≤ 709 without a libm call or a table (so loops over it vectorise: a table's gather made LLVM's Zen 3
    cost model keep them scalar; within ~1 ulp of math.exp), e^{−700} for y < −700: y = n·ln2 + r, |r| ≤ ln2/2,
    e^y = 2ⁿ · (the degree-13 Taylor polynomial of e^r). n is rounded by adding ``_SHIFTER`` and read from the sum's
    bits: a float→int64 conversion has no AVX2 instruction (LLVM emulates it; measured 1.3–1.6× slower loops on an
    AMD EPYC without AVX-512)."""
    y = max(y, -700.0)
    shifted = y * (1.0 / (_LN2_HI + _LN2_LO)) + _SHIFTER
    n = shifted - _SHIFTER
    bits = np.float64(shifted).view(np.uint64) & _LOW52  # 2⁵¹ + n
    r = (y - n * _LN2_HI) - n * _LN2_LO
    c = _EXP_TAYLOR
    poly = c[13]
    for k in range(12, -1, -1):  # Horner: one multiply-add per term
        poly = c[k] + r * poly
    return np.uint64((bits - _BIAS) << _S52).view(np.float64) * poly  # 2ⁿ · e^r


@nb.njit(error_model="numpy", fastmath={"contract"})
def _exponential_steps(index, steps, key1, key2, counter):  # pragma: no cover - compiled
    """steps[p] = E = −log(1 − U), U the uniform of counter ``counter`` + index[p]: each open element's next
    inter-arrival time in units of 1/r (1 − U is exact: U is on the 2⁻⁵³ grid). A pass of its own, before the round
    that uses it: in one loop with the round's exponential, the constants of both spilled out of AVX2's sixteen
    registers (1.7× slower on an AMD EPYC)."""
    for p in range(steps.size):
        steps[p] = -_log(1.0 - _uniform(key1, key2, counter + np.uint64(index[p])))


@nb.njit(error_model="numpy", fastmath={"contract"})
def _sigmoid_round(steps, inv_r, arrival, soft, slope, left, keep, inv_tau, stop):  # pragma: no cover - compiled
    """One arrival for each open element (vectorised over them): its arrival time T after the step
    (``_exponential_steps``), and, while T ≤ stop and terms are left, its sigmoid term added. keep[p]: whether
    element p has a next term."""
    for p in range(keep.size):
        arrival[p] += steps[p]
        t = arrival[p] * inv_r[p]
        live = (t <= stop) & (left[p] > 0)
        g = 1.0 / (1.0 + _exp((t - 1.0) * inv_tau))
        soft[p] += g if live else 0.0
        slope[p] += g * (1.0 - g) * t if live else 0.0
        left[p] -= 1
        keep[p] = live & (left[p] > 0)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _straight_through_round(steps, inv_r, arrival, soft, slope, hard, left, keep, inv_tau,
                            stop):  # pragma: no cover - compiled
    """``_sigmoid_round`` that also counts the hard arrivals T < 1 (the sigmoid alone skips that array: ~4 %). The
    rounds repeat their first lines rather than share an inlined helper: with one, LLVM left the loop scalar
    (``tests/test_vectorisation.py``)."""
    for p in range(keep.size):
        arrival[p] += steps[p]
        t = arrival[p] * inv_r[p]
        live = (t <= stop) & (left[p] > 0)
        g = 1.0 / (1.0 + _exp((t - 1.0) * inv_tau))
        soft[p] += g if live else 0.0
        slope[p] += g * (1.0 - g) * t if live else 0.0
        hard[p] += 1.0 if live and t < 1.0 else 0.0
        left[p] -= 1
        keep[p] = live & (left[p] > 0)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _cubic_round(steps, inv_r, arrival, soft, slope, left, keep, inv_tau, stop):  # pragma: no cover - compiled
    """``_sigmoid_round`` with the cubic smooth step (a function of its own: a branch on the indicator inside
    the loop would stop LLVM from vectorising it)."""
    for p in range(keep.size):
        arrival[p] += steps[p]
        t = arrival[p] * inv_r[p]
        live = (t <= stop) & (left[p] > 0)
        v = min(max(0.5 * (1.0 - t) * inv_tau + 0.5, 0.0), 1.0)
        soft[p] += v * v * (3.0 - 2.0 * v) if live else 0.0
        slope[p] += 3.0 * v * (1.0 - v) * t if live else 0.0
        left[p] -= 1
        keep[p] = live & (left[p] > 0)


@nb.njit(error_model="numpy")
def _relaxed_busy(rates, counts, derivative, busy, a, key1, key2, stride, inv_tau, stop, limits, sizes,
                  indicator):  # pragma: no cover - compiled
    """The busy elements of the chunk starting at ``a``: term by term for all of them at once (one vectorised
    round per term, ``_sigmoid_round`` or ``_cubic_round``), the ones that stopped dropped after each round;
    writes their count and ∂count/∂r."""
    index = _flagged(busy) + a
    m = index.size
    r, inv_r = np.empty(m), np.empty(m)
    for p in range(m):
        r[p] = float(rates[index[p]])
        inv_r[p] = 1.0 / r[p]
    level = np.zeros(m, np.int64)  # the first size whose limit covers r: sizes[#limits below r]
    for b in range(limits.size):  # (limits ascending; one vectorised pass per limit)
        for p in range(m):
            level[p] += r[p] > limits[b]
    left = sizes[level]
    arrival, soft, slope, hard = np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m)
    keep, steps = np.empty(m, np.bool_), np.empty(m)
    j = 0
    while m > 0:
        _exponential_steps(index[:m], steps[:m], key1, key2, np.uint64(j) * stride)
        if indicator == CUBIC:
            _cubic_round(steps[:m], inv_r[:m], arrival[:m], soft[:m], slope[:m], left[:m], keep[:m], inv_tau, stop)
        elif indicator == STRAIGHT_THROUGH:
            _straight_through_round(steps[:m], inv_r[:m], arrival[:m], soft[:m], slope[:m], hard[:m], left[:m],
                                    keep[:m], inv_tau, stop)
        else:
            _sigmoid_round(steps[:m], inv_r[:m], arrival[:m], soft[:m], slope[:m], left[:m], keep[:m], inv_tau, stop)
        open_now = 0
        for p in range(m):
            open_now += keep[p]
        if open_now <= m * COMPACT_BELOW:  # write every element's values (final for the closed ones), keep the open
            _relaxed_write(index, inv_r, soft, slope, hard, m, counts, derivative, inv_tau, indicator)
            kept = 0
            for p in range(m):
                index[kept], inv_r[kept], arrival[kept], left[kept] = index[p], inv_r[p], arrival[p], left[p]
                soft[kept], slope[kept], hard[kept] = soft[p], slope[p], hard[p]
                kept += keep[p]
            m = kept
        j += 1


@nb.njit(error_model="numpy")
def _relaxed_write(index, inv_r, soft, slope, hard, m, counts, derivative, inv_tau, indicator):  # pragma: no cover
    """counts and derivative of the first m listed elements from their sums so far."""
    for p in range(m):
        count = hard[p] if indicator == STRAIGHT_THROUGH else soft[p]
        grad = slope[p] * inv_tau * inv_r[p]
        # below 1e-30 store 0: float32 denormals (< 1.2e-38) would make every later product ~40× slower
        counts[index[p]] = count if count >= 1e-30 else 0.0
        derivative[index[p]] = grad if abs(grad) >= 1e-30 else 0.0


@nb.njit(parallel=True, cache=True, error_model="numpy")
def relaxed_counts(rates, counts, derivative, key1, key2, temperature, limits, sizes, indicator, reach,
                   threads):  # pragma: no cover - compiled
    """Relaxed Poisson counts and their derivative in the rate, for a flat array of rates.

    Arrival times T_j = S_j / r, S_j = Σ_{i≤j} E_i (E_i = −log(1 − U_i), Exp(1)); the count is
    Σ_j g((1 − T_j)/τ) over the element's own number of terms (the first of ``sizes`` whose ``limits``
    entry — the largest rate whose Poisson tail beyond that size is below the chosen tail mass — covers
    r; the last size otherwise), and ∂count/∂r = Σ_j g'((1 − T_j)/τ)·T_j/(τ r). g: SIGMOID σ, CUBIC the
    smooth step s²(3 − 2s) of s = clamp((x + 1)/2, 0, 1), STRAIGHT_THROUGH the hard count #{T_j < 1} with
    the sigmoid's derivative. Terms stop at the first T_j > 1 + ``reach``·τ, before its indicator is computed
    (sigmoid: it and every later term add less than e^{−reach}, below the output's resolution for the reach of
    its width, ``fond.families.poisson.RELAXED_REACH``; cubic: stop at 1 + τ, exactly 0); a zero rate gives count
    0 and derivative 0. Counts and derivatives below 1e-30 are stored as 0 (float32 denormals slow every later
    matrix product down by an order of magnitude). Per chunk, a vectorised screen (``_relaxed_screen``) finds the
    elements whose first arrival already lies past the stop (most of them: small rates) without a logarithm; the
    rest run their terms together, one vectorised round per term (``_relaxed_busy``; logarithm and exponential
    without libm: ``_log``, ``_exp``), each element's sums in term order; equal chunks of up to ``RELAXED_CHUNK``
    elements, the same number for each of the ``threads`` threads (the rounds of the few largest rates cost per
    round, not per element). Returns how many rates are not finite (their count and derivative are 0; the caller
    raises).
    """
    n = rates.size
    stride = np.uint64(n)
    inv_tau = 1.0 / temperature
    stop = 1.0 + (temperature if indicator == CUBIC else reach * temperature)
    bad = 0
    # equal chunks, as many for each of the ``threads`` threads (prange hands each an equal share of the chunks)
    chunks = threads * max(1, (n + threads * RELAXED_CHUNK - 1) // (threads * RELAXED_CHUNK))
    size = (n + chunks - 1) // chunks
    for c in nb.prange(chunks):
        a = min(n, c * size)
        b = min(n, a + size)
        busy = np.empty(b - a, np.bool_)
        bad += _relaxed_screen(rates[a:b], key1, key2, np.uint64(a), stop, busy)
        counts[a:b] = 0.0
        derivative[a:b] = 0.0
        _relaxed_busy(rates, counts, derivative, busy, a, key1, key2, stride, inv_tau, stop, limits, sizes, indicator)
    return bad


@nb.njit(error_model="numpy", fastmath={"contract"})
def _rate_screen_pass(exp_neg_drive, inv_rates, rates, spikes, key1, key2, ceiling, floor_factor, counter0,
                      unresolved):  # pragma: no cover - compiled
    """``poisson_rate_step``'s update fused with the screen over one chunk (vectorised)."""
    for i in range(unresolved.size):
        e = min(float(exp_neg_drive[i]), floor_factor) + ceiling
        e = min(float(inv_rates[i]) * e, floor_factor) + ceiling
        inv_rates[i] = e
        rates[i] = 1.0 / float(inv_rates[i])
        # the stored (float32) rate is the one sampled
        u = _uniform(key1, key2, counter0 + np.uint64(i))
        spikes[i] = 0.0
        unresolved[i] = _screened(float(rates[i]), u)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_rate_step(exp_neg_drive, inv_rates, rates, spikes, small_counts, key1, key2, ceiling, floor_factor,
                      cutoff, reciprocals, packed_index, packed_values, chunk_nonzero):  # pragma: no cover - compiled
    """One iP-VAE state update in rate space, then an exact Poisson draw, fused (flat arrays, in place).

    With E = e^{−u}: the soft-clamped update u ← c − softplus(c − max(u + Δu, floor)), Δu = c −
    softplus(c − max(d, floor)), becomes E ← min(E·(min(e^{−d}, e^{−floor}) + e^{−c}), e^{−floor}) + e^{−c}
    (``floor_factor`` = e^{−floor}, ``ceiling`` = e^{−c}): no transcendental left once ``exp_neg_drive`` =
    e^{−d} is given. Writes E to ``inv_rates``, r = 1/E to ``rates`` and a Poisson(r) count to ``spikes``
    (the same algorithm and stream as ``poisson_counts``). If ``small_counts`` (uint8) is not empty, the
    counts are also written there, saturated at 255. If ``packed_index`` (int32) and ``packed_values`` (the
    counts' dtype) hold n entries, each chunk c of ``CHUNK`` elements also writes its non-zero counts, positions
    in the chunk and values, from entry c·CHUNK on, and their number to ``chunk_nonzero[c]``
    (``fond.families.panel_kernels.rows_from_chunks`` makes compressed rows of them). Returns (how many counts
    exceed 255, how many are non-zero).
    """
    n = rates.size
    stride = np.uint64(n)
    with_small = small_counts.size == n
    packed = packed_index.size == n
    overflow = 0
    nonzero = 0
    for c in nb.prange((n + CHUNK - 1) // CHUNK):
        a = c * CHUNK
        b = min(n, a + CHUNK)
        unresolved = np.empty(b - a, np.bool_)
        _rate_screen_pass(exp_neg_drive[a:b], inv_rates[a:b], rates[a:b], spikes[a:b], key1, key2, ceiling,
                          floor_factor, np.uint64(a), unresolved)
        found = _finish_chunk(rates[a:b], spikes[a:b], key1, key2, np.uint64(a), stride, cutoff, reciprocals,
                              unresolved, packed_index[a:b] if packed else packed_index[:0],
                              packed_values[a:b] if packed else packed_values[:0])
        if packed:
            chunk_nonzero[c] = found
        nonzero += found
        if with_small:
            overflow += _saturate(spikes[a:b], small_counts[a:b])
    return overflow, nonzero


@nb.njit(error_model="numpy")
def _saturate(counts, small):  # pragma: no cover - compiled
    """small[i] = min(counts[i], 255) (uint8); returns #{counts > 255}."""
    over = 0
    for i in range(counts.size):
        value = counts[i]
        small[i] = np.uint8(min(value, 255.0))
        over += value > 255.0
    return over


@nb.njit(fastmath=True, error_model="numpy")
def _poisson_rate_row_stats(rates_new, rates_old, spikes):  # pragma: no cover - compiled
    """``rate_row_stats`` of one float64 row: (kl, δ², zeros), δ = log(r/r') with the libm-free ``_log`` (so the
    loop vectorises; a running max in it does not: ``_row_max_bits`` is a loop of its own). The KL in the exact
    form r·(e^{−δ} − 1 + δ): e^{−δ} = r'/r away from δ = 0, a Taylor series near it."""
    divergence, squares, silent = 0.0, 0.0, 0.0
    for k in range(rates_new.size):
        rate, rate_old = rates_new[k], rates_old[k]
        delta = _log(rate / rate_old)
        # e^{−δ} − 1 + δ = δ²/2 − δ³/6 + … + δ⁶/720 for |δ| < 0.01 (relative error < 1e-13), else from the rates
        series = delta * delta * (0.5 - delta * (1.0 / 6.0 - delta * (1.0 / 24.0 - delta * (
            1.0 / 120.0 - delta / 720.0))))
        divergence += rate * series if abs(delta) < 0.01 else rate_old - rate + rate * delta
        squares += delta * delta
        silent += 1.0 if spikes[k] == 0 else 0.0
    return divergence, squares, silent


@nb.njit(fastmath=True, error_model="numpy")
def _poisson_rate_row_stats32(rates_new, rates_old, spikes):  # pragma: no cover - compiled
    """``_poisson_rate_row_stats`` of a float32 row in float32 (16 lanes): the series up to |δ| < 0.1 (relative
    error < 5e-9; the direct form r' − r + rδ loses ~10⁻⁶ of the term above it), sums of 512 terms in lanes."""
    divergence, squares, silent = _F32(0.0), _F32(0.0), _F32(0.0)
    for k in range(rates_new.size):
        rate, rate_old = rates_new[k], rates_old[k]
        delta = _log32(rate / rate_old)
        series = delta * delta * (_F32(0.5) - delta * (_F32(1.0 / 6.0) - delta * (_F32(1.0 / 24.0) - delta * (
            _F32(1.0 / 120.0) - delta / _F32(720.0)))))
        divergence += rate * series if abs(delta) < _F32(0.1) else rate_old - rate + rate * delta
        squares += delta * delta
        silent += _F32(1.0) if spikes[k] == 0 else _F32(0.0)
    return divergence, squares, silent


@nb.njit(error_model="numpy")
def _row_max_bits(bits):  # pragma: no cover - compiled
    """The largest of a non-empty row of unsigned integers: the bit patterns of positive floats, which order
    as the floats do (an integer maximum vectorises; LLVM leaves a float one scalar)."""
    largest = bits[0]
    for k in range(bits.size):
        largest = max(largest, bits[k])
    return largest


def rate_row_stats(rates_new, rates_old, spikes):
    """The trace statistics of one input's Poisson step from the rates ``rates_old`` to (``rates_new``,
    ``spikes``), (K,) each: (Σ_k KL(Pois(r_k) ‖ Pois(r'_k)), Σ_k δ_k², #{spikes = 0}, max_k r_k) as floats,
    δ = log(r/r').

    In compiled code (numba), the rates' own precision: ``_poisson_rate_row_stats`` (float64) or
    ``_poisson_rate_row_stats32`` (float32) and an integer maximum over the rates' bit patterns. Called from
    Python: the same quantities in NumPy, in float64."""
    rates, rates_before = np.asarray(rates_new, np.float64), np.asarray(rates_old, np.float64)
    delta = np.log(rates / rates_before)
    divergence = float(np.sum(rates * (np.expm1(-delta) + delta)))  # r·(e^{−δ} − 1 + δ)
    return divergence, float(np.sum(delta * delta)), float(np.sum(np.asarray(spikes) == 0)), float(rates.max())


@overload(rate_row_stats, jit_options={"error_model": "numpy"})
def _rate_row_stats_compiled(rates_new, rates_old, spikes):  # pragma: no cover - compiled
    """``rate_row_stats`` in compiled code, by the rates' dtype."""
    if rates_new.dtype == nb.types.float32:
        def row_stats32(rates_new, rates_old, spikes):
            divergence, squares, silent = _poisson_rate_row_stats32(rates_new, rates_old, spikes)
            largest = np.uint32(_row_max_bits(rates_new.view(np.uint32))).view(np.float32)
            return float(divergence), float(squares), float(silent), float(largest)
        return row_stats32

    def row_stats64(rates_new, rates_old, spikes):
        divergence, squares, silent = _poisson_rate_row_stats(rates_new, rates_old, spikes)
        largest = np.uint64(_row_max_bits(rates_new.view(np.uint64))).view(np.float64)
        return divergence, squares, silent, largest
    return row_stats64


@nb.njit(inline="always")
def _soft_clamp(v, c, floor):
    """(c − softplus(c − max(v, floor)), its derivative in v) in float64, without libm (vectorises). softplus as
    torch's (threshold 20: softplus(a) = a above it, derivative 1); the floor's derivative as torch's clamp_min
    (passes at v = floor); a NaN v gives NaN."""
    a = c - (floor if v < floor else v)  # (NaN stays NaN: it fails the comparison)
    e = _exp(a if a < 20.0 else 20.0)
    big = a > 20.0
    y = (c - (a if big else _log(1.0 + e))) if v == v else v
    return y, ((1.0 if big else e / (1.0 + e)) if v >= floor else 0.0)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _soft_clamp_pass(x, y, slope, c, floor):  # pragma: no cover - compiled
    """``soft_clamp_forward`` over one chunk (vectorised)."""
    for i in range(x.size):
        y[i], slope[i] = _soft_clamp(float(x[i]), c, floor)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def soft_clamp_forward(x, y, slope, c, floor):  # pragma: no cover - compiled
    """y = c − softplus(c − max(x, floor)) and slope = ∂y/∂x (``_soft_clamp``) for flat arrays, in one pass."""
    n = x.size
    for chunk in nb.prange((n + CHUNK - 1) // CHUNK):
        a = chunk * CHUNK
        b = min(n, a + CHUNK)
        _soft_clamp_pass(x[a:b], y[a:b], slope[a:b], c, floor)


@nb.njit(inline="always")
def row_blocks(rows):
    """How many blocks of ``ROW_BLOCK`` rows the row-wise kernels' prange runs over ``rows`` rows."""
    return (rows + ROW_BLOCK - 1) // ROW_BLOCK


@nb.njit(inline="always")
def block_rows(block, rows):
    """(first, end) of block ``block``'s rows (``row_blocks``)."""
    first = block * ROW_BLOCK
    return first, min(rows, first + ROW_BLOCK)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _update_row(u, rates_in, pull, bias, eta, c, floor, u_new, rates_out, s1, s2, terms):  # pragma: no cover
    """``poisson_update_forward`` for one input's row (vectorised: the KL terms go to ``terms``, summed apart —
    a sum inside the loop would keep LLVM from vectorising it)."""
    for k in range(u.size):
        old = float(u[k])
        du, slope1 = _soft_clamp(eta * (float(pull[k]) - float(bias[k])), c, floor)
        new, slope2 = _soft_clamp(old + du, c, floor)
        delta = new - old
        rate, rate_old = _exp(new), float(rates_in[k])
        rates_out[k] = rate
        # KL(Pois(e^new) ‖ Pois(e^old)) = r'(e^{−Δ} − 1 + Δ): a Taylor series for |Δ| < 0.01, else r − r' + r'Δ
        series = delta * delta * (0.5 - delta * (1.0 / 6.0 - delta * (1.0 / 24.0 - delta * (
            1.0 / 120.0 - delta / 720.0))))
        terms[k] = rate * series if abs(delta) < 0.01 else rate_old - rate + rate * delta
        u_new[k], s1[k], s2[k] = new, slope1, slope2


@nb.njit(fastmath=True, error_model="numpy")
def row_sum(values):  # pragma: no cover - compiled
    """Σ values in float64, reassociated into vector lanes (one chain of dependent additions would take the
    adder's latency per element: ~0.15 ms for a B 200 × K 512 kernel call, as much as its arithmetic)."""
    total = 0.0
    for k in range(values.size):
        total += values[k]
    return total


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_update_forward(u, rates_in, pull, bias, eta, c, floor, u_new, rates_out, s1, s2,
                           kl):  # pragma: no cover - compiled
    """The iP-VAE training update of (B, K) arrays and its KL to the previous state, in one pass:
    u' = G(u + G(η(pull − b))), G the soft clamp (``_soft_clamp``), the new rates e^{u'} (``rates_out``),
    kl[b] = Σ_k KL(Pois(e^{u'}) ‖ Pois(e^u)) with e^u given (``rates_in``: the previous step's ``rates_out``).
    Writes what the backward pass needs beyond its inputs and outputs: the two clamps' slopes s1, s2 (the KL's
    derivatives r'(u' − u) and r − r' it recomputes from u, u', r, r')."""
    rows = u.shape[0]
    for block in nb.prange(row_blocks(rows)):
        terms = np.empty(u.shape[1])
        first, end = block_rows(block, rows)
        for b in range(first, end):
            _update_row(u[b], rates_in[b], pull[b], bias, eta, c, floor, u_new[b], rates_out[b], s1[b], s2[b], terms)
            kl[b] = row_sum(terms)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _update_back_row(grad_new, grad_rate, grad_kl, u, u_new, rates_in, rates, s1, s2, pull, bias, bound, grad_u,
                     grad_g, terms):  # pragma: no cover - compiled
    """``poisson_update_backward`` for one row (vectorised; ∂L/∂g_k · (pull_k − b_k) to ``terms``)."""
    for k in range(s1.size):
        rate = float(rates[k])
        # ∂KL/∂u' = r'(u' − u), ∂KL/∂u = r − r'
        at_new = float(grad_new[k]) + grad_kl * rate * (float(u_new[k]) - float(u[k])) + float(grad_rate[k]) * rate
        at_new = min(max(at_new, -bound), bound)  # the state-gradient bound (fond.dynamics.STATE_GRADIENT_BOUND)
        at_sum = at_new * float(s2[k])
        g = at_sum * float(s1[k])
        grad_u[k] = at_sum + grad_kl * (float(rates_in[k]) - rate)
        grad_g[k] = g
        terms[k] = g * (float(pull[k]) - float(bias[k]))


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_update_backward(grad_new, grad_rate, grad_kl, u, u_new, rates_in, rates, s1, s2, pull, bias, bound,
                            grad_u, grad_g, step_terms):  # pragma: no cover - compiled
    """The backward pass of ``poisson_update_forward`` (its inputs u, r = ``rates_in``, its outputs u', r' =
    ``rates``, the slopes s1, s2): from ∂L/∂u' and ∂L/∂r' (B, K) and
    ∂L/∂kl (B,), ∂L/∂u and ∂L/∂g (g = η(pull − b); the caller turns it into ∂L/∂pull, ∂L/∂b and ∂L/∂log η),
    step_terms[b] = Σ_k ∂L/∂g·(pull − b). The whole gradient reaching u' is bounded by ``bound``."""
    rows = s1.shape[0]
    for block in nb.prange(row_blocks(rows)):
        terms = np.empty(s1.shape[1])
        first, end = block_rows(block, rows)
        for b in range(first, end):
            _update_back_row(grad_new[b], grad_rate[b], grad_kl[b], u[b], u_new[b], rates_in[b], rates[b], s1[b], s2[b],
                             pull[b], bias, bound, grad_u[b], grad_g[b], terms)
            step_terms[b] = row_sum(terms)


# -- float32 arithmetic for float32 models: twice the vector lanes of the float64 versions above ----------------

_F32 = np.float32
_S23 = np.uint32(23)
_MANTISSA32, _EXPONENT_ONE32 = np.uint32(0x007FFFFF), np.uint32(0x3F800000)
#: fdlibm logf's minimax coefficients (single precision)
_LOG32_COEFFICIENTS = (_F32(0.66666662693), _F32(0.40000972152), _F32(0.28498786688), _F32(0.24279078841))
_LN2_HI32, _LN2_LO32 = _F32(6.9313812256e-01), _F32(9.0580006145e-06)
#: ln 2 split so that n · hi is exact for |n| < 2¹⁵ (hi has 9 significant bits)
_LN2_HI32_EXACT, _LN2_LO32_EXACT = _F32(0.693359375), _F32(math.log(2.0) - 0.693359375)
_LOG2E32 = _F32(1.0 / math.log(2.0))
#: Cephes expf's minimax coefficients of (e^r − 1 − r)/r² on |r| ≤ ln2/2, highest degree first
_EXP_COEFFICIENTS32 = (_F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3), _F32(4.1665795894e-2),
                       _F32(1.6666665459e-1), _F32(5.0000001201e-1))


@nb.njit(inline="always")
def _exp32(y):
    """e^y in float32 for y ≤ 88 (e^{−87} below −87), within 1 ulp: y = n·ln2 + r, |r| ≤ ln2/2, e^y = 2^n · (1 + r +
    r²·P(r)), P Cephes expf's degree-5 minimax polynomial. No table, and n rounded in float (``np.rint``): a table
    lookup is a gather and a float→int64 ``round`` has no AVX2 instruction, and either keeps LLVM from vectorising
    the loop around it on AVX2 CPUs (measured 10× slower on an AMD EPYC without AVX-512)."""
    y = max(y, _F32(-87.0))
    n = np.rint(y * _LOG2E32)
    r = (y - n * _LN2_HI32_EXACT) - n * _LN2_LO32_EXACT
    c = _EXP_COEFFICIENTS32
    poly = ((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]
    scale = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)  # 2^n
    return scale * (poly * (r * r) + r + _F32(1.0))


def exp_of(y):
    """e^y in ``y``'s precision: float32 by ``_exp32`` (y ≤ 88), float64 by ``_exp`` (y ≤ 700) in compiled code;
    ``math.exp`` from Python."""
    return math.exp(y)


@overload(exp_of, inline="always")
def _exp_of_compiled(y):  # pragma: no cover - compiled
    if y == nb.types.float32:
        return lambda y: _exp32(y)
    return lambda y: _exp(y)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _clamped_exp_pass(a, low, high):  # pragma: no cover - compiled
    """``clamped_exp`` over one chunk (vectorised)."""
    for i in range(a.size):
        a[i] = exp_of(min(max(a[i], low), high))  # (min and max keep a NaN: a NaN gives NaN)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def clamped_exp(a, low, high):  # pragma: no cover - compiled
    """a ← e^{min(max(a, low), high)} in place, for a flat float32 or float64 array (``low``, ``high``: scalars of
    its dtype, inside ``exp_of``'s range; NaN stays NaN), in vectorised chunks: float32 in 8 lanes on AVX2 (about
    twice as fast as torch's clamp and ``exp_`` on an AMD EPYC; within 1 ulp of them)."""
    n = a.size
    for chunk in nb.prange((n + CHUNK - 1) // CHUNK):
        first = chunk * CHUNK
        _clamped_exp_pass(a[first:min(n, first + CHUNK)], low, high)


@nb.njit(inline="always")
def _log32(q):
    """``_log`` in float32 for a normal q > 0 (fdlibm logf's reduction and coefficients)."""
    bits = np.float32(q).view(np.uint32)
    x = np.uint32((bits & _MANTISSA32) | _EXPONENT_ONE32).view(np.float32)
    high = x > _F32(1.4142135)
    x = _F32(0.5) * x if high else x
    # k in float32 from an int32 (k as a Python int would be int64: no int64→float32 conversion on AVX2)
    dk = _F32(np.int32(bits >> _S23)) - (_F32(126.0) if high else _F32(127.0))
    f = x - _F32(1.0)
    s = f / (_F32(2.0) + f)
    z = s * s
    w = z * z
    c = _LOG32_COEFFICIENTS
    tail = w * (c[1] + w * c[3]) + z * (c[0] + w * c[2])
    half_square = _F32(0.5) * f * f
    return dk * _LN2_HI32 - ((half_square - (s * (half_square + tail) + dk * _LN2_LO32)) - f)


_NAN32 = np.float32(np.nan)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _update_row32(u, rates_in, pull, bias, eta, ceiling, floor_factor, floor, u_new, rates_out, s1, s2,
                  terms):  # pragma: no cover - compiled
    """``_update_row`` for float32 arrays in float32 arithmetic, in rate space as the evaluation engine steps
    (``ceiling`` = e^{−c}, ``floor_factor`` = e^{−floor}, all float32): the soft clamp G(v) = c − softplus(c −
    max(v, floor)) is e^{−G(v)} = e^{−c} + min(e^{−v}, e^{−floor}), so with x = min(e^{−g}, e^{−floor}), g = η(pull
    − b): e^{−Δu} = A = x + e^{−c}, e^{−u'} = E' = min(E·A, e^{−floor}) + e^{−c} (E = 1/r), u' = −log E', r' = 1/E',
    and the clamps' slopes σ(c − max(v, floor)) are x/A and (E' − e^{−c})/E' (0 below the floor). One exponential
    and one logarithm an element instead of three and two, and closer to float64 than the log-space form (u'
    within 5e-7 against 2e-6). NaN in g, u or r gives NaN in u' and r' (slopes 0), as the log-space form does.
    The KL's Taylor series covers |Δ| < 0.1 (to Δ⁷: relative error < 1e-8), so the direct form r − r' + r'Δ
    cancels at most a factor 20."""
    for k in range(u.size):
        old, rate_old = u[k], rates_in[k]
        g = eta * (pull[k] - bias[k])
        x = _exp32(-(g if g > floor else floor))  # min(e^{−g}, e^{−floor})
        above = x + ceiling
        slope1 = x / above if g >= floor else _F32(0.0)
        y = above / rate_old  # e^{−(u + Δu)}
        inside = y <= floor_factor  # u + Δu ≥ floor
        y = y if inside else floor_factor
        inverse = y + ceiling
        slope2 = y / inverse if inside else _F32(0.0)
        bad = (g != g) | (old != old) | (rate_old != rate_old)
        new = _NAN32 if bad else -_log32(inverse)
        rate = _NAN32 if bad else _F32(1.0) / inverse
        rates_out[k] = rate
        delta = new - old
        series = delta * delta * (_F32(0.5) - delta * (_F32(1.0 / 6.0) - delta * (_F32(1.0 / 24.0) - delta * (
            _F32(1.0 / 120.0) - delta * (_F32(1.0 / 720.0) - delta * _F32(1.0 / 5040.0))))))
        terms[k] = rate * series if abs(delta) < _F32(0.1) else rate_old - rate + rate * delta
        u_new[k] = new
        s1[k] = _F32(0.0) if bad else slope1
        s2[k] = _F32(0.0) if bad else slope2


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_update_forward32(u, rates_in, pull, bias, eta, c, floor, u_new, rates_out, s1, s2,
                             kl):  # pragma: no cover - compiled
    """``poisson_update_forward`` for float32 arrays in float32 arithmetic, in rate space (``_update_row32``; the
    KL rows summed in float64)."""
    rows = u.shape[0]
    ceiling, floor_factor = _F32(math.exp(-c)), _F32(math.exp(-floor))
    for block in nb.prange(row_blocks(rows)):
        terms = np.empty(u.shape[1], np.float32)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            _update_row32(u[b], rates_in[b], pull[b], bias, _F32(eta), ceiling, floor_factor, _F32(floor), u_new[b],
                          rates_out[b], s1[b], s2[b], terms)
            kl[b] = row_sum(terms)
