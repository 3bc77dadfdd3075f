"""Compiled (numba) products of a sparse code with a dense matrix: the iP-VAE's spike counts are mostly 0.

A trained iP-VAE's exact sample has ~90 % zero counts, so z·W (B×K by K×N) needs only the rows of W at each
input's non-zero counts: nnz·N multiply-adds instead of B·K·N. Each input's row is accumulated in a
contiguous buffer, four rows of W per pass (four independent multiply-adds per element: the pass is bound
by the cache's bandwidth, not by one addition chain), vectorised over N. Which product pays depends on the
density and the CPU (``fond.engine``: the dense float product, AMX's int8 limbs, or this).

* ``sparse_addmm(base, z, w, out)``: out = base + z·w.
* ``sparse_residuals(z, w, x, precision, squares, weighted)``: per input, ‖x − z·w‖² and
  Σ_d (x − z·w)_d² · precision_d, without writing z·w out (the trace's R² and Gaussian NLL of a sample).

Arrays are float32 or float64 NumPy views of contiguous tensors; sums are in the arrays' type, the two
residual sums in float64.
"""

from __future__ import annotations

import numpy as np

from fond.families.kernels import block_rows, row_blocks  # (before numba: its vector-width choice)

__all__ = ["sparse_addmm", "sparse_residuals", "SPARSE_RESIDUALS_BELOW"]

import numba as nb  # noqa: E402  (after fond.families.kernels: see there)

#: the trace takes ``sparse_residuals`` for a code with fewer non-zero entries than this fraction, a decode
#: otherwise (measured at B 1000, K 512, D 256 on an AVX-512 core: 1.2 ms at 0.09, 1.8 ms at 0.2, against
#: ~2 ms for the float decode and its residual)
SPARSE_RESIDUALS_BELOW = 0.25


@nb.njit(fastmath={"contract"}, boundscheck=False)
def _axpy4(acc, v0, v1, v2, v3, w0, w1, w2, w3):  # pragma: no cover - compiled
    for n in range(acc.size):
        acc[n] += v0 * w0[n] + v1 * w1[n] + v2 * w2[n] + v3 * w3[n]


@nb.njit(fastmath={"contract"}, boundscheck=False)
def _axpy(acc, v, w):  # pragma: no cover - compiled
    for n in range(acc.size):
        acc[n] += v * w[n]


@nb.njit(error_model="numpy", boundscheck=False)
def _accumulate(acc, zb, w, index):  # pragma: no cover - compiled
    """acc += Σ_k zb[k]·w[k] over the non-zero entries of zb (``index``: scratch of zb's size)."""
    m = 0
    for k in range(zb.size):  # branch-free compaction of the non-zero positions
        index[m] = k
        m += zb[k] != 0
    j = 0
    while j + 4 <= m:
        k0, k1, k2, k3 = index[j], index[j + 1], index[j + 2], index[j + 3]
        _axpy4(acc, zb[k0], zb[k1], zb[k2], zb[k3], w[k0], w[k1], w[k2], w[k3])
        j += 4
    while j < m:
        _axpy(acc, zb[index[j]], w[index[j]])
        j += 1


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


@nb.njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
def sparse_residuals(z, w, x, precision, squares, weighted):  # pragma: no cover - compiled
    """Per input b: squares[b] = ‖x_b − z_b·w‖², weighted[b] = Σ_d (x_b − z_b·w)_d² · precision_d (float64).

    z (B, K), w (K, D), x (B, D), precision (D,); only z's non-zero entries are visited.
    """
    rows = z.shape[0]
    for block in nb.prange(row_blocks(rows)):
        index = np.empty(z.shape[1], np.int64)
        acc = np.empty(w.shape[1], w.dtype)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            acc[:] = 0.0
            _accumulate(acc, z[b], w, index)
            squares[b], weighted[b] = _residual_sums(x[b], acc, precision)


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
