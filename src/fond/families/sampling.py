"""Exact Poisson sampling for evaluation rollouts, and the tail cutoff the relaxed sampler uses.

``sample_poisson`` draws one Poisson count per element of a rate tensor, exactly in distribution,
about 2–4× faster than ``torch.poisson`` on CPU when most rates are small (the regime of the
iterative Poisson VAE, where ~75 % of the counts are zero; ``benchmarks/bench_poisson_sampler.py``).
``poisson_tail_cutoff`` gives the number of exponential arrival times a truncated (relaxed) sampler
needs.

Algorithm (CPU). Each element with rate r < ``small_rate_cutoff`` is inverted from ONE uniform U:
X = #{k ≥ 0 : F(k) ≤ U}, F the Poisson(r) CDF accumulated in float64 from p_k = p_{k-1}·r/k. U's
bits are drawn lazily from the given generator, most significant first, only where still needed:

1. Screen, 10 bits per element (three elements per 31-bit draw). U lies in [j/1024, (j+1)/1024),
   and the count is certainly 0 when (j+1)/1024 ≤ e^{-r}, i.e. r ≤ R[j] := −log((j+1)/1024), a
   1024-entry table rounded down (errs towards "maybe"). One table gather and one comparison settle
   most zeros; the rest, the candidates (≈ P(X ≥ 1) of the elements), go on.
2. Candidates draw 15 more bits: U_lo = (j·2^15 + w)·2^-25. The inverse-CDF loop runs on them only,
   in levels: on a level every element held takes part (a count accumulates [U_lo ≥ F(k)]) until
   fewer than 30 % go on; those are compacted out by index and form the next level, so later
   iterations touch few elements. It stops when none is left.
3. U lies in the cell [U_lo, U_lo + 2^-25). The count is the same for every U in the cell unless the
   first CDF value above U_lo falls inside it; those elements (~1e-6 of the candidates) draw U's
   remaining 28 bits (U on the 2^-53 grid, like ``torch.rand(dtype=float64)``) and are redone.

So every count is the exact inverse-CDF image of a 53-bit uniform: its law differs from Poisson(r)
only by the float64 rounding of the CDF (≲ 1e-15 absolute). Rates ≥ ``small_rate_cutoff`` are drawn
by ``torch.poisson`` on just those elements, with the same generator, and so are inputs of fewer
than 2^14 elements (there the fixed cost of ~0.2 ms of numpy calls outweighs the gain). The work is
serial numpy (no thread-pool contention), and scratch arrays are kept per thread and reused across
calls, because a fresh multi-megabyte array costs a page fault per 4 KiB.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_SMALL_RATE_CUTOFF", "poisson_tail_cutoff", "sample_poisson"]

#: Largest accepted ``small_rate_cutoff``: the inverse-CDF loop takes ≈ r iterations, and above
#: ~10 ``torch.poisson``'s transformed-rejection sampler is faster per element anyway.
MAX_SMALL_RATE_CUTOFF = 30.0

_SCREEN_BITS = 10  # bits of U used by the screen; three 10-bit fields per 31-bit draw
_SCREEN_LEVELS = 1 << _SCREEN_BITS
_REFINE_BITS = 15  # further bits of U drawn for every candidate (two fields per 31-bit draw)
_TOTAL_BITS = 53  # resolution of U once fully drawn: the float64 uniform grid
_SPARSE_FRACTION = 0.3  # the inverse-CDF loop compacts once fewer than this share of elements go on
_MIN_ELEMENTS = 1 << 14  # smaller inputs go to torch.poisson: ~0.2 ms of fixed numpy-call cost here
_CHUNK = 1 << 19  # elements per pass: bounds the per-thread scratch memory (~13 MB typical, 40 MB at most)
_TAIL_LOG = -60.0 * math.log(2.0)  # safety cap of the inverse-CDF loop: where log pmf < this, past the mode


def _screen_table(dtype: np.dtype) -> np.ndarray:
    """R[j] ≤ −log((j+1)/2^b), rounded down in ``dtype``: r ≤ R[j] ⇒ e^{-r} ≥ (j+1)/2^b."""
    levels = np.arange(1, _SCREEN_LEVELS + 1, dtype=np.float64) / _SCREEN_LEVELS
    exact = -np.log(levels) * (1.0 - 1e-9)  # float64 log is within 1 ulp; the factor covers it
    table = exact.astype(dtype)
    too_big = table.astype(np.float64) > exact
    table[too_big] = np.nextafter(table[too_big], dtype.type(0))
    table[-1] = 0.0  # j = 2^b − 1: every positive rate is a candidate
    return table


_SCREEN_TABLES = {np.dtype(t): torch.from_numpy(_screen_table(np.dtype(t))) for t in (np.float32, np.float64)}


class _Workspace(threading.local):
    """Per-thread scratch arrays, grown on demand and reused across calls (no page faults)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, dtype: type | np.dtype, n: int) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != np.dtype(dtype) or buf.size < n:
            size = n if buf is None or buf.dtype != np.dtype(dtype) else max(n, buf.size + buf.size // 4)
            buf = np.empty(size, dtype=dtype)
            self.buffers[name] = buf
        return buf[:n]


_WORKSPACE = _Workspace()


def _validate_rates(rates: Tensor) -> tuple[float, float]:
    """Raise ValueError for NaN, negative or infinite rates; return (min, max) ((0, 0) if empty)."""
    if not isinstance(rates, Tensor):
        raise TypeError(f"Poisson rates must be a torch.Tensor, got {type(rates).__name__}")
    if not rates.is_floating_point():
        raise TypeError(f"Poisson rates must be a floating-point tensor, got dtype {rates.dtype}")
    if rates.numel() == 0:
        return 0.0, 0.0
    if rates.device.type == "cpu" and rates.dtype in (torch.float32, torch.float64):
        values = rates.detach().reshape(-1).numpy()  # numpy's serial reductions dodge thread contention
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in torch.aminmax(rates.detach()))
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("Poisson rates contain NaN")
    if lo < 0.0:
        raise ValueError(f"Poisson rates must be ≥ 0, got a minimum of {lo}")
    if math.isinf(hi):
        raise ValueError("Poisson rates must be finite, got +inf")
    return lo, hi


def _loop_stop(rate_max: float) -> int:
    """First k > rate_max with Pois(k; rate_max) < 2^-60: a safety cap for the inverse-CDF loop."""
    k = max(1, math.ceil(rate_max))
    if rate_max <= 0.0:
        return k
    log_r = math.log(rate_max)
    while -rate_max + k * log_r - math.lgamma(k + 1.0) >= _TAIL_LOG:
        k += 1
    return k


def _draw_int(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> np.ndarray:
    """n uniform non-negative integers: 31 random bits (int32) or 63 (int64)."""
    return torch.empty(n, dtype=dtype).random_(generator=generator).numpy()


def _draw_fields(
    dst: np.ndarray, generator: torch.Generator | None, bits: int, stride: int, lanes: int, ws: _Workspace
) -> None:
    """Fill the int32 array ``dst`` with independent uniform ``bits``-bit integers.

    Each 31-bit draw from ``generator`` feeds ``lanes`` elements (fields at bit offsets 0, stride,
    …), lane i filling the i-th contiguous block of ``dst``; lanes·stride ≤ 31 and bits ≤ stride.
    """
    n = dst.size
    n_draws = -(-n // lanes)
    draws = ws.get("draws", np.int32, n_draws)
    torch.from_numpy(draws).random_(generator=generator)
    mask = (1 << bits) - 1
    for lane in range(lanes):
        start, stop = lane * n_draws, min(n, (lane + 1) * n_draws)
        if stop <= start:
            break
        block, src = dst[start:stop], draws[: stop - start]
        if lane:
            np.right_shift(src, lane * stride, out=block)
            np.bitwise_and(block, mask, out=block)
        else:
            np.bitwise_and(src, mask, out=block)


def _inverse_cdf(rate: np.ndarray, u: np.ndarray, k_stop: int) -> np.ndarray:
    """#{k ≥ 0 : F(k) ≤ u} elementwise (float64 in and out), capped at ``k_stop``; for small inputs."""
    count = np.zeros(rate.size)
    idx = np.arange(rate.size)
    p = np.exp(-rate)
    resid = u - p
    k = 0
    while idx.size and k < k_stop:
        keep = np.flatnonzero(resid >= 0.0)
        idx, rate, p, resid = idx[keep], rate[keep], p[keep], resid[keep]
        k += 1
        count[idx] = k
        p *= rate
        p *= 1.0 / k
        resid -= p
    return count


def _small_rate_counts(
    rates: np.ndarray,
    out: np.ndarray,
    generator: torch.Generator | None,
    cutoff: float,
    rate_max: float,
    refine_bits: int = _REFINE_BITS,
) -> None:
    """Exact inverse-CDF counts for the elements of the flat array ``rates`` below ``cutoff``.

    ``rates``: (N,) float32/float64; ``out``: (N,) zeros of the same dtype, written in place.
    ``rate_max``: an upper bound on ``rates``. ``refine_bits`` < 15 coarsens step 2 (tests use it to
    exercise the lazy step 3).
    """
    n = rates.size
    ws = _WORKSPACE
    # 1. screen: three 10-bit fields of U's leading bits per 31-bit draw
    lead = ws.get("lead", np.int32, n)
    _draw_fields(lead, generator, _SCREEN_BITS, _SCREEN_BITS, 3, ws)
    table = _SCREEN_TABLES[rates.dtype]
    bound = ws.get("bound_" + rates.dtype.name, rates.dtype, n)
    torch.index_select(table, 0, torch.from_numpy(lead), out=torch.from_numpy(bound))
    maybe = ws.get("maybe", np.bool_, n)
    np.greater(rates, bound, out=maybe)
    cand = np.flatnonzero(maybe)
    if rate_max >= cutoff and cand.size:
        cand = cand[rates[cand] < cutoff]
    m = cand.size
    if m == 0:
        return
    # 2. candidates: 15 more bits of U (two fields per draw), then the inverse-CDF loop in float64
    total_bits = _SCREEN_BITS + refine_bits
    width = 2.0**-total_bits  # the cell width h: U ∈ [U_lo, U_lo + h)
    rate, p, resid = (ws.get(name, np.float64, m) for name in ("rate", "p", "resid"))
    np.copyto(rate, rates[cand])
    cell = lead[cand]  # integer index of U's cell on the 2^-total_bits grid (< 2^25)
    if refine_bits:
        low = ws.get("low", np.int32, m)
        _draw_fields(low, generator, refine_bits, _REFINE_BITS, 2, ws)
        np.left_shift(cell, refine_bits, out=cell)
        cell += low
    u_lo = ws.get("u_lo", np.float64, m)
    np.multiply(cell, width, out=u_lo)
    np.negative(rate, out=p)
    np.exp(p, out=p)
    np.subtract(u_lo, p, out=resid)  # U_lo − F(0)
    k_stop = _loop_stop(min(cutoff, rate_max))
    near_bound = -1.0625 * width  # h plus a margin for the rounding of resid
    # Levels: on each, every element held takes part and count accumulates [U_lo ≥ F(k)] (cheap
    # while most are still going); once few go on, compact to them and start the next level.
    pos = cand
    count = ws.get("count_" + out.dtype.name, out.dtype, m)
    count.fill(0)
    go_buf = ws.get("go", np.bool_, m)
    near_buf = ws.get("near", np.bool_, m)
    ambiguous: list[np.ndarray] = []
    k = 0
    while True:
        size = pos.size
        go, near = go_buf[:size], near_buf[:size]
        while True:
            np.greater_equal(resid, 0.0, out=go)  # U_lo ≥ F(k): the count exceeds k
            n_go = int(np.count_nonzero(go))
            np.greater_equal(resid, near_bound, out=near)  # F(k) < U_lo + h: a U in the cell may pass it
            if int(np.count_nonzero(near)) != n_go:
                ambiguous.append(pos[near & ~go])
            np.add(count, go, out=count)
            if n_go < _SPARSE_FRACTION * size or k >= k_stop:
                break
            k += 1
            p *= rate
            p *= 1.0 / k
            resid -= p
        out[pos] = count
        if n_go == 0 or k >= k_stop:
            break
        keep = np.flatnonzero(go)
        pos, rate, p, resid, count = pos[keep], rate[keep], p[keep], resid[keep], count[keep]
        k += 1
        p *= rate
        p *= 1.0 / k
        resid -= p
    # 3. the rare elements whose cell straddles a CDF value: draw U's remaining bits and redo
    if ambiguous:
        amb = np.unique(np.concatenate(ambiguous))
        where = np.searchsorted(cand, amb)
        extra_bits = _TOTAL_BITS - total_bits
        extra = _draw_int(amb.size, generator, torch.int64) >> (63 - extra_bits)
        u_fine = (u_lo[where] / width) * float(1 << extra_bits) + extra  # exact: < 2^53
        u_fine *= 2.0**-_TOTAL_BITS
        out[amb] = _inverse_cdf(rates[amb].astype(np.float64), u_fine, k_stop)


def sample_poisson(
    rates: Tensor,
    generator: torch.Generator | None = None,
    *,
    small_rate_cutoff: float = 8.0,
) -> Tensor:
    """Exact Poisson(rates) draws, same shape/dtype/device as rates (float tensor of integer values).

    ``rates``: any shape (e.g. (B, K)), floating dtype, every entry finite and ≥ 0 (rate 0 gives 0);
    NaN, negative or infinite entries raise ValueError. Returns a tensor of ``rates``' shape, dtype
    and device holding the counts. The result carries no gradient (it is built under ``no_grad``;
    use the relaxed sampler to differentiate through a draw); works under ``torch.inference_mode``.

    Randomness comes only from ``generator`` (None: torch's default generator for the device), so
    the same generator state gives the same output. On CPU, rates below ``small_rate_cutoff`` (in
    [0, 30]) are inverted from one lazily-drawn 53-bit uniform each (module docstring), the others
    go to ``torch.poisson`` with the same generator; inputs of fewer than 2^14 elements, and inputs
    on other devices, go to ``torch.poisson`` entirely. float16/bfloat16 rates are processed in
    float32.
    """
    rate_min, rate_max = _validate_rates(rates)
    if not 0.0 <= small_rate_cutoff <= MAX_SMALL_RATE_CUTOFF:
        raise ValueError(
            f"small_rate_cutoff must lie in [0, {MAX_SMALL_RATE_CUTOFF}], got {small_rate_cutoff}"
        )
    with torch.no_grad():
        rates = rates.detach()
        work = rates if rates.dtype in (torch.float32, torch.float64) else rates.float()
        if rates.device.type != "cpu" or rate_min >= small_rate_cutoff or rates.numel() < _MIN_ELEMENTS:
            return torch.poisson(work, generator=generator).to(rates.dtype)
        if rate_max == 0.0:
            return torch.zeros_like(rates)
        flat = work.reshape(-1)
        rates_np = flat.numpy()
        out = np.zeros(rates_np.size, dtype=rates_np.dtype)
        result = torch.from_numpy(out)
        for start in range(0, rates_np.size, _CHUNK):
            chunk = slice(start, start + _CHUNK)
            _small_rate_counts(rates_np[chunk], out[chunk], generator, small_rate_cutoff, rate_max)
        if rate_max >= small_rate_cutoff:
            big = torch.from_numpy(np.flatnonzero(rates_np >= small_rate_cutoff))
            result[big] = torch.poisson(flat[big], generator=generator)
        return result.view(rates.shape).to(rates.dtype)


def poisson_tail_cutoff(rate_max: float, tail: float = 1e-3) -> int:
    """Smallest integer n ≥ 0 with P(Pois(rate_max) > n) < ``tail``.

    ``rate_max`` ≥ 0 and finite; 0 < ``tail`` < 1. Used to choose how many exponential arrival
    times a truncated (relaxed) Poisson sampler needs so that at most ``tail`` of the mass is cut.
    """
    rate_max, tail = float(rate_max), float(tail)
    if not (math.isfinite(rate_max) and rate_max >= 0.0):
        raise ValueError(f"rate_max must be finite and ≥ 0, got {rate_max}")
    if not 0.0 < tail < 1.0:
        raise ValueError(f"tail must lie in (0, 1), got {tail}")
    if rate_max == 0.0:
        return 0
    from scipy.special import pdtrc  # pdtrc(n, r) = P(Pois(r) > n)
    from scipy.stats import poisson

    def cut(n: int) -> bool:
        return n >= 0 and bool(pdtrc(n, rate_max) < tail)

    guess = poisson.isf(tail, rate_max)
    hi = int(guess) if math.isfinite(guess) else math.ceil(rate_max + 40.0 * math.sqrt(rate_max) + 40.0)
    hi = max(hi, 0)
    while not cut(hi):  # isf's inequality is non-strict and floating point: settle it exactly
        hi = 2 * hi + 1
    lo = hi - 1
    if cut(lo):  # the guess overshot: bisect (cut is monotone in n; cut(-1) is False)
        lo = -1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if cut(mid) else (mid, hi)
    return hi
