"""The trace's fit (each input's ‖x − Φz‖² and Σ_d (x − Φz)_d²/σ_d² for the step's sample z) computed four ways, each
against the shipped decode (``poisson_trace_rows`` with the fit alone) in the same run, on the sample after 60 steps
of the shipped iP-VAE of that D (B 1000, K 512, its held-out inputs): the record of why the trace keeps the decode.

* ``decode`` (fond's): Φz over the non-zero counts, four rows of Φᵀ a pass, then the two residual sums;
* ``decode, 8 rows a pass``: fewer passes over the accumulator;
* ``decode, latent tiles``: the non-zero counts taken 128 latents at a time for all of a thread's inputs, so that
  a tile of Φᵀ's rows stays in L2 while the inputs use it;
* ``pair quadratics``: in K-space, ‖x‖² − 2 z·Φᵀx + zᵀGz and xᵀΣ⁻¹x − 2 z·ΦᵀΣ⁻¹x + zᵀWz (G = ΦᵀΦ, W = ΦᵀΣ⁻¹Φ,
  the linear terms precomputed per frame and not timed) over the pairs of non-zero counts, G and W interleaved.

Then the multiply-add rate of ``_axpy4`` (the decode's inner loop) with its four rows of Φᵀ held in L1, against
four rows drawn across Φᵀ as the decode draws them: the bound the decode runs at.

    python benchmarks/trace_fit_forms.py [D ...]      (default 256 784; threads as numba has them)
"""

import sys
import time

import numpy as np
import torch

from fond.bench import _inputs, _model, _shipped_run
from fond.families import kernels  # (numba as fond loads it: after the vector-width choice)
from fond.families.kernels import block_rows, row_blocks
from fond.families.sparse_kernels import _axpy, _axpy4, _residual_sums, accumulate_rows, poisson_trace_rows

nb = kernels.nb

TILE = 128


def best_ms(call, repeats: int = 20) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best * 1e3


@nb.njit(error_model="numpy", boundscheck=False)
def _nonzero(zb, index):
    m = 0
    for k in range(zb.size):
        index[m] = k
        m += zb[k] != 0
    return m


@nb.njit(fastmath={"contract"}, boundscheck=False)
def _axpy8(acc, v, w0, w1, w2, w3, w4, w5, w6, w7):
    for n in range(acc.size):
        acc[n] += (v[0] * w0[n] + v[1] * w1[n] + v[2] * w2[n] + v[3] * w3[n]) + (
            v[4] * w4[n] + v[5] * w5[n] + v[6] * w6[n] + v[7] * w7[n])


@nb.njit(parallel=True, error_model="numpy", boundscheck=False)
def decode8(spikes, w, x, precision, out):
    rows, k = spikes.shape
    for block in nb.prange(row_blocks(rows)):
        index, acc, v = np.empty(k, np.int64), np.empty(w.shape[1], w.dtype), np.empty(8, w.dtype)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            zb = spikes[b]
            m = _nonzero(zb, index)
            acc[:] = 0.0
            j = 0
            while j + 8 <= m:
                i = index[j:j + 8]
                for q in range(8):
                    v[q] = zb[i[q]]
                _axpy8(acc, v, w[i[0]], w[i[1]], w[i[2]], w[i[3]], w[i[4]], w[i[5]], w[i[6]], w[i[7]])
                j += 8
            while j < m:
                _axpy(acc, zb[index[j]], w[index[j]])
                j += 1
            out[b, 0], out[b, 1] = _residual_sums(x[b], acc, precision)


@nb.njit(parallel=True, error_model="numpy", boundscheck=False)
def decode_tiled(spikes, w, x, precision, groups, out):
    rows, k = spikes.shape
    size = (rows + groups - 1) // groups
    for g in nb.prange(groups):
        first, end = g * size, min(rows, g * size + size)
        n = max(end - first, 0)
        index, count, done = np.empty((n, k), np.int64), np.empty(n, np.int64), np.zeros(n, np.int64)
        acc = np.zeros((n, w.shape[1]), w.dtype)
        for r in range(n):
            count[r] = _nonzero(spikes[first + r], index[r])
        for top in range(TILE, k + TILE, TILE):
            for r in range(n):
                e = done[r]
                while e < count[r] and index[r, e] < top:
                    e += 1
                accumulate_rows(acc[r], spikes[first + r], w, index[r], done[r], e)
                done[r] = e
        for r in range(n):
            out[first + r, 0], out[first + r, 1] = _residual_sums(x[first + r], acc[r], precision)


@nb.njit(error_model="numpy", boundscheck=False, fastmath=True)
def _row_pairs(row, index, values, i, m):
    """(Σ_{l>i} z_l G[j, k_l], Σ_{l>i} z_l W[j, k_l]) for row = GW[j] (G and W interleaved), two chains each."""
    a0, a1, b0, b1 = np.float32(0), np.float32(0), np.float32(0), np.float32(0)
    la = i + 1
    while la + 2 <= m:
        k0, k1 = np.uint32(index[la]), np.uint32(index[la + 1])
        a0 += values[la] * row[2 * k0]
        b0 += values[la] * row[2 * k0 + 1]
        a1 += values[la + 1] * row[2 * k1]
        b1 += values[la + 1] * row[2 * k1 + 1]
        la += 2
    if la < m:
        k0 = np.uint32(index[la])
        a0 += values[la] * row[2 * k0]
        b0 += values[la] * row[2 * k0 + 1]
    return a0 + a1, b0 + b1


@nb.njit(parallel=True, error_model="numpy", boundscheck=False)
def pair_quadratics(spikes, gw, linear_plain, linear_weighted, square_plain, square_weighted, out):
    rows, k = spikes.shape
    for block in nb.prange(row_blocks(rows)):
        index, values = np.empty(k, np.uint32), np.empty(k, spikes.dtype)
        first, end = block_rows(block, rows)
        for b in range(first, end):
            zb = spikes[b]
            m = 0
            for q in range(k):
                index[m] = q
                values[m] = zb[q]
                m += zb[q] != 0
            plain, weighted = square_plain[b], square_weighted[b]
            for i in range(m):
                j, v = index[i], float(values[i])
                row = gw[j]
                sg, sw = _row_pairs(row, index, values, i, m)
                plain += v * (2.0 * sg + v * row[2 * j] - 2.0 * linear_plain[b, j])
                weighted += v * (2.0 * sw + v * row[2 * j + 1] - 2.0 * linear_weighted[b, j])
            out[b, 0], out[b, 1] = plain, weighted


@nb.njit(boundscheck=False)
def _axpy_rate(acc, w, passes, spread):
    """``passes`` calls of ``_axpy4`` on rows of w: the first four each time (spread 0) or four drawn across w."""
    k = w.shape[0]
    for p in range(passes):
        r = (p * 148 * spread) % (k - 4)
        _axpy4(acc, np.float32(1), np.float32(1), np.float32(1), np.float32(1), w[r], w[r + 1], w[r + 2], w[r + 3])


def _case(d: int):
    run = _shipped_run(d, 512)
    model = _model(run, d, 512)
    x = _inputs(run, 1000, d)
    with torch.no_grad():
        z = model.infer(x, 60, seed=0, trace=False).spikes.contiguous()
        phi = model.decoder.dictionary.detach().to(torch.float64)  # (D, K)
        precision = torch.exp(-2.0 * model.log_sigma_x.detach()).to(torch.float64)
    return z.numpy(), phi.numpy(), x.numpy(), precision.numpy()


def _measure(d: int) -> None:
    """Print the four forms against the decode, and the multiply-add rates, at D ``d``."""
    z, phi, x, precision = _case(d)
    atoms, x32, precision32 = phi.T.astype(np.float32).copy(), x.astype(np.float32), precision.astype(np.float32)
    total = np.ones(len(z))
    table, out = np.empty((len(z), 7)), np.empty((len(z), 2))
    gram, weighted = phi.T @ phi, phi.T @ (phi * precision[:, None])
    gw = np.stack([gram, weighted], -1).astype(np.float32).reshape(len(gram), -1).copy()
    linear = (x @ phi).astype(np.float32), ((x * precision) @ phi).astype(np.float32)
    squares = (x * x).sum(1), (x * x * precision).sum(1)
    reference = ((x - z @ phi.T) ** 2).sum(1)
    base = best_ms(lambda: poisson_trace_rows(z, z, z, atoms, x32, precision32, total, 0.0, 1e9, True, False, table))
    print(f"D {d}: density {np.mean(z != 0):.3f}, {nb.get_num_threads()} threads; decode (fond's) {base:.3f} ms")
    forms = {"decode, 8 rows a pass": lambda: decode8(z, atoms, x32, precision32, out),
             f"decode, latent tiles of {TILE}": lambda: decode_tiled(z, atoms, x32, precision32, 8, out),
             "pair quadratics (G, W)": lambda: pair_quadratics(z, gw, *linear, *squares, out)}
    for name, call in forms.items():
        ms = best_ms(call)
        error = np.abs(out[:, 0] - reference).max() / reference.mean()
        print(f"  {name}: {ms:.3f} ms ({ms / base:.2f}× the decode; largest error {error:.1e} of the mean)")
    acc = np.zeros(d, np.float32)
    rates = [4 * d * 20000 / (best_ms(lambda s=s: _axpy_rate(acc, atoms, 20000, s)) * 1e6) for s in (0, 1)]
    print(f"  _axpy4 on one core: {rates[0]:.1f} multiply-adds/ns with its rows in L1, {rates[1]:.1f} with rows "
          f"drawn across Φᵀ ({rates[1] / rates[0]:.2f}×)")


def main() -> None:
    for d in [int(a) for a in sys.argv[1:]] or [256, 784]:
        _measure(d)


if __name__ == "__main__":
    main()
