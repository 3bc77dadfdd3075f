"""Compiled (numba) products of a sparse code with a dense matrix: the iP-VAE's spike counts are mostly 0.

A trained iP-VAE's exact sample has ~90 % zero counts, so z·W (B×K by K×N) needs only the rows of W at each
input's non-zero counts: nnz·N multiply-adds instead of B·K·N. Each input's row is accumulated in a
contiguous buffer, four rows of W per pass (four independent multiply-adds per element: the pass is bound
by the cache's bandwidth, not by one addition chain), vectorised over N. Which product pays depends on the
density and the CPU (``fond.engine``: the dense float product, AMX's int8 limbs, this, or for float32 and N a
multiple of 16 ``fond.families.panel_kernels``, which keeps W in L1-sized panels).

* ``sparse_addmm(base, z, w, out)``: out = base + z·w.
* ``poisson_trace_rows(...)``: an iP-VAE step's per-input trace values in one pass: R² and NLL of the sample from
  ‖x − z·w‖² and Σ_d (x − z·w)_d² · σ_d⁻² over its non-zero counts, without writing z·w out, and the rate
  statistics (``fond.families.kernels.rate_row_stats``).

Arrays are float32 or float64 NumPy views of contiguous tensors; sums are in the arrays' type, the two
residual sums in float64.
"""

from __future__ import annotations

import numpy as np

from fond.families.kernels import block_rows, rate_row_stats, row_blocks  # (before numba: its vector width)

__all__ = ["sparse_addmm", "poisson_trace_rows", "accumulate_rows", "SPARSE_RESIDUALS_BELOW"]

import numba as nb  # noqa: E402  (after fond.families.kernels: see there)

#: the trace takes the sample's fit from its non-zero counts (``poisson_trace_rows``) for a code with fewer non-zero
#: entries than this fraction, a decode otherwise (measured at B 1000, K 512, D 256 on an AVX-512 core: 1.2 ms at
#: 0.09, 1.8 ms at 0.2, against ~2 ms for the float decode and its residual)
SPARSE_RESIDUALS_BELOW = 0.25


@nb.njit(fastmath={"contract"}, boundscheck=False)
def _axpy4(acc, v0, v1, v2, v3, w0, w1, w2, w3):  # pragma: no cover - compiled
    for n in range(acc.size):
        acc[n] += v0 * w0[n] + v1 * w1[n] + v2 * w2[n] + v3 * w3[n]


@nb.njit(fastmath={"contract"}, boundscheck=False)
def _axpy(acc, v, w):  # pragma: no cover - compiled
    for n in range(acc.size):
        acc[n] += v * w[n]


@nb.njit(error_model="numpy", boundscheck=False, inline="always")
def accumulate_rows(acc, zb, w, index, first, end):  # pragma: no cover - compiled
    """acc += Σ_j zb[k]·w[k] for k = index[j], first ≤ j < end: four rows of w a pass."""
    j = first
    while j + 4 <= end:
        k0, k1, k2, k3 = index[j], index[j + 1], index[j + 2], index[j + 3]
        _axpy4(acc, zb[k0], zb[k1], zb[k2], zb[k3], w[k0], w[k1], w[k2], w[k3])
        j += 4
    while j < end:
        _axpy(acc, zb[index[j]], w[index[j]])
        j += 1


@nb.njit(error_model="numpy", boundscheck=False)
def _accumulate(acc, zb, w, index):  # pragma: no cover - compiled
    """acc += Σ_k zb[k]·w[k] over the non-zero entries of zb (``index``: scratch of zb's size)."""
    m = 0
    for k in range(zb.size):  # branch-free compaction of the non-zero positions
        index[m] = k
        m += zb[k] != 0
    accumulate_rows(acc, zb, w, index, 0, m)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def sparse_addmm(base, z, w, out):  # pragma: no cover - compiled
    """out (B, N) = base (B, N) + z (B, K) · w (K, N), visiting only z's non-zero entries."""
    rows = z.shape[0]
    for block in nb.prange(row_blocks(rows)):
        index = np.empty(z.shape[1], np.int64)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            row = out[b]
            row[:] = base[b]
            _accumulate(row, z[b], w, index)


@nb.njit(fastmath=True, boundscheck=False)
def _residual_sums(x, acc, precision):  # pragma: no cover - compiled
    """(Σ_d (x_d − acc_d)², Σ_d (x_d − acc_d)² · precision_d) in float64, summed in vector lanes (reassociated:
    one chain of dependent additions per sum would bound the loop by the adder's latency)."""
    plain, scaled = 0.0, 0.0
    for d in range(acc.size):
        r = np.float64(x[d]) - np.float64(acc[d])
        plain += r * r
        scaled += r * r * np.float64(precision[d])
    return plain, scaled


@nb.njit(parallel=True, cache=True, error_model="numpy")
def poisson_trace_rows(rates_new, rates_old, spikes, w, x, precision, total, constant, saturation, fit, stats,
                       table):  # pragma: no cover - compiled
    """The trace's per-input values of an iP-VAE step, one row per input, in one pass over the inputs.

    rates_old → (rates_new, spikes): the step's rates and counts (B, K), float32 or float64; w: the linear
    decoder's atoms Φᵀ (K, D); x: the frame (B, D); precision: σ⁻² (D,); total: Σ_d (x − x̄)² per input (B,)
    float64; constant: the NLL's Σ_d log σ_d + D/2 log 2π; saturation: the rate of a saturated input. Writes
    table (B, 7) float64, the columns ``fond.result.TRACE_ROW_KEYS``: with ``fit``, R² and the Gaussian NLL of the
    sample's decode z·w, from its non-zero counts only (‖x − z·w‖² and Σ_d (x − z·w)_d²·σ_d⁻² in float64, z·w never
    written out); with ``stats``, the zeros' fraction, ‖δ‖, the KL (``rate_row_stats``, δ = u − u' = log(r/r')),
    the largest rate and whether it reaches ``saturation``. Columns not asked for are NaN (and w, x, precision,
    total, or the rates, are not read).
    """
    rows, k = spikes.shape
    for block in nb.prange(row_blocks(rows)):
        index = np.empty(k, np.int64)
        acc = np.empty(w.shape[1], w.dtype)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            row = table[b]
            row[:] = np.nan
            if fit:
                acc[:] = 0.0
                _accumulate(acc, spikes[b], w, index)
                squares, weighted = _residual_sums(x[b], acc, precision)
                row[0] = 1.0 - squares / total[b]
                row[3] = 0.5 * weighted + constant
            if stats:
                kl, du2, silent, largest = rate_row_stats(rates_new[b], rates_old[b], spikes[b])
                row[1] = silent / k
                row[2] = np.sqrt(du2)
                row[4] = kl
                row[5] = largest
                row[6] = 1.0 if largest >= saturation else 0.0
