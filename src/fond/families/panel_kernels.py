"""Compiled products of sparse spike counts with a matrix held in panels of 16 columns (float32).

``fond.families.sparse_kernels`` adds, for each input, whole rows of W (N floats) at its non-zero counts: at K
512 those rows come from L2/L3, and the product runs at the rate the cache delivers them. Here W (K, N) is kept
as N/16 panels of K × 16 floats (32 KB at K 512, an L1's worth): a thread takes one panel at a time and runs
all its inputs through it, each input's 16 outputs held in two 8-lane registers over its non-zero counts (four
pairs of accumulators, so the multiply-adds do not wait on each other). The counts are visited in compressed
rows (``compact_counts``: the positions and values of each input's non-zero counts), built once per draw and
shared by the next step's product and the trace's fit. 1.5–2.0× faster than the row form on one AVX2 core at
B 1000, K 512, 10 % non-zero (BENCHMARKS.md, session 35).

The 8-lane vectors are LLVM's ``<8 x float>`` reached through numba's ``@intrinsic`` (numba has no vector type
of its own); on CPUs without 256-bit vectors LLVM splits them, so every path stays correct.

* ``panel_layout(w)``: W (K, N) → panels (N/16, K, 16).
* ``compact_counts(z, index, values, start, end, blocks)``: the non-zero counts of z (B, K) in compressed rows;
  ``rows_from_chunks`` makes them from what the sampler packed; ``CompressedCounts`` holds them between steps.
* ``panel_addmm(base, panels, index, values, start, end, out, blocks)``: out = base + z·W.
* ``panel_fit_sums(panels, x, precision, index, values, start, end, squares, weighted, blocks)``: Σ_d (x − z·W)_d²
  and Σ_d (x − z·W)_d²·precision_d per input (float64), z·W never written out.
* ``compressed_dots(index, values, start, end, vectors, out)``: z_b·v_b per input from the compressed rows.

``blocks``: the threads, each taking a contiguous range of inputs (``fond.families.sampling.kernel_threads``).
"""

from __future__ import annotations

from fond.families.kernels import CHUNK  # (before numba: its vector-width choice)

__all__ = ["PANEL", "panel_layout", "panels_fit", "packs_by_chunk", "compact_counts", "rows_from_chunks", "panel_addmm",
           "panel_fit_sums", "compressed_dots", "CompressedCounts"]

import numba as nb  # noqa: E402  (after fond.families.kernels: see there)
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, models, register_model  # noqa: E402

#: the columns of a panel: two 8-lane float32 registers
PANEL = 16
#: how many inputs ahead the panel loops ask for the cache lines of their rows
AHEAD = 8

_F32, _F64, _I32 = ir.FloatType(), ir.DoubleType(), ir.IntType(32)
_V8, _V8D = ir.VectorType(_F32, 8), ir.VectorType(_F64, 8)


class _Float32x8(types.Type):
    """Eight float32 lanes held in one register (LLVM ``<8 x float>``)."""

    def __init__(self) -> None:
        super().__init__(name="float32x8")


_float32x8 = _Float32x8()


@register_model(_Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _address(builder, base, offset, element):
    """A pointer to element ``offset`` of type ``element`` at the integer address ``base``."""
    return builder.gep(builder.inttoptr(base, element.as_pointer()), [offset])


def _splat(builder, scalar):
    lanes = builder.insert_element(ir.Constant(_V8, ir.Undefined), scalar, _I32(0))
    return builder.shuffle_vector(lanes, ir.Constant(_V8, ir.Undefined), ir.Constant(ir.VectorType(_I32, 8), [0] * 8))


def _horizontal_sum(builder, vector):
    """The sum of an ``<8 x double>``'s lanes (a tree of three additions)."""
    width = 8
    while width > 1:
        width //= 2
        low = builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        high = builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(_I32, width),
                                                                  list(range(width, 2 * width))))
        vector = builder.fadd(low, high)
    return builder.extract_element(vector, _I32(0))


@intrinsic
def _load8(typingctx, base, offset):
    """The 8 floats at element ``offset`` of the float32 array at address ``base``."""
    def codegen(context, builder, signature, args):
        return builder.load(builder.bitcast(_address(builder, *args, _F32), _V8.as_pointer()), align=4)
    return _float32x8(types.intp, types.intp), codegen


@intrinsic
def _store8(typingctx, base, offset, value):
    def codegen(context, builder, signature, args):
        builder.store(args[2], builder.bitcast(_address(builder, args[0], args[1], _F32), _V8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, _float32x8), codegen


@intrinsic
def _splat8(typingctx, base, offset):
    """The float32 at element ``offset`` of address ``base`` in all 8 lanes."""
    def codegen(context, builder, signature, args):
        return _splat(builder, builder.load(_address(builder, *args, _F32), align=4))
    return _float32x8(types.intp, types.intp), codegen


@intrinsic
def _int32_at(typingctx, base, offset):
    """The int32 at element ``offset`` of address ``base`` (unchecked: no negative-index wrap-around)."""
    def codegen(context, builder, signature, args):
        return builder.sext(builder.load(_address(builder, *args, _I32), align=4), ir.IntType(64))
    return types.intp(types.intp, types.intp), codegen


def _prefetcher(write: int):
    @intrinsic
    def prefetch(typingctx, base, offset):
        def codegen(context, builder, signature, args):
            i8p = ir.IntType(8).as_pointer()
            signature_ = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
            call = cgutils.get_or_insert_function(builder.module, signature_, "llvm.prefetch.p0i8")
            builder.call(call, [builder.bitcast(_address(builder, *args, _F32), i8p), _I32(write), _I32(3), _I32(1)])
            return context.get_dummy_value()
        return types.void(types.intp, types.intp), codegen
    return prefetch


#: ask for the cache line of float32 element ``offset`` at address ``base``, to read it or to write it (a
#: prefetch never traps: out-of-bounds addresses are fine)
_prefetch, _prefetch_write = _prefetcher(0), _prefetcher(1)


@intrinsic
def _zero8(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V8, [0.0] * 8)
    return _float32x8(), codegen


@intrinsic
def _fma8(typingctx, a, b, c):
    """a·b + c lane by lane (one fused multiply-add where the CPU has it)."""
    def codegen(context, builder, signature, args):
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * 3), "llvm.fmuladd.v8f32")
        return builder.call(fmuladd, args)
    return _float32x8(_float32x8, _float32x8, _float32x8), codegen


@intrinsic
def _add8(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return _float32x8(_float32x8, _float32x8), codegen


@intrinsic
def _residual_sums8(typingctx, x, offset, fit, precision, precision_offset):
    """(Σ r², Σ r²·p) in float64 over 8 lanes, r = x − fit (x, p: float32 arrays at addresses ``x``, ``precision``)."""
    def codegen(context, builder, signature, args):
        x_address, x_offset, lanes, p_address, p_offset = args
        xs = builder.load(builder.bitcast(_address(builder, x_address, x_offset, _F32), _V8.as_pointer()), align=4)
        ps = builder.load(builder.bitcast(_address(builder, p_address, p_offset, _F32), _V8.as_pointer()), align=4)
        residual = builder.fsub(builder.fpext(xs, _V8D), builder.fpext(lanes, _V8D))
        square = builder.fmul(residual, residual)
        weighted = builder.fmul(square, builder.fpext(ps, _V8D))
        pair = (_horizontal_sum(builder, square), _horizontal_sum(builder, weighted))
        return context.make_tuple(builder, signature.return_type, pair)
    return types.UniTuple(types.float64, 2)(types.intp, types.intp, _float32x8, types.intp, types.intp), codegen


def panel_layout(w: np.ndarray) -> np.ndarray:
    """W (K, N) float32, N a multiple of ``PANEL`` → its panels (N/16, K, 16), contiguous, starting on a cache line
    (each panel row is then one line: NumPy's large arrays start 16 bytes into one, and a row across two lines
    costs its second 8-lane load twice)."""
    k, n = w.shape
    if n % PANEL:
        raise ValueError(f"panels need a multiple of {PANEL} columns, got {n}")
    panels = _on_cache_line((n // PANEL, k, PANEL))
    panels[...] = np.asarray(w, np.float32).reshape(k, n // PANEL, PANEL).transpose(1, 0, 2)
    return panels


def _on_cache_line(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised C-contiguous float32 array of ``shape`` whose first element starts a 64-byte line."""
    size = int(np.prod(shape)) * 4
    raw = np.empty(size + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + size].view(np.float32).reshape(shape)


def panels_fit(k: int, n: int) -> bool:
    """Whether a float32 (k, n) matrix takes the panel kernels (n a multiple of 16)."""
    return n % PANEL == 0 and n > 0 and k > 0


@nb.njit(inline="always")
def _thread_rows(block, blocks, rows):
    """(first, end) of the contiguous rows thread ``block`` of ``blocks`` takes."""
    return block * rows // blocks, (block + 1) * rows // blocks


def packs_by_chunk(k: int) -> bool:
    """Whether the sampler's chunks hold whole rows of k counts (``rows_from_chunks`` needs it)."""
    return 0 < k <= CHUNK and CHUNK % k == 0


@nb.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def rows_from_chunks(chunk_nonzero, packed_index, k, start, end):  # pragma: no cover - compiled
    """Compressed rows from the counts ``kernels.poisson_rate_step`` packed chunk by chunk: its positions in a
    chunk become columns in place, and input b's entries are ``start[b]:end[b]`` (``CHUNK`` a multiple of k)."""
    rows = start.size
    per = CHUNK // k
    for c in nb.prange(chunk_nonzero.size):
        at, found, j = c * CHUNK, chunk_nonzero[c], 0
        for r in range(c * per, min(rows, (c + 1) * per)):
            offset = (r - c * per) * k
            start[r] = at + j
            while j < found and packed_index[at + j] < offset + k:
                packed_index[at + j] -= offset
                j += 1
            end[r] = at + j


@nb.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def compact_counts(z, index, values, start, end, blocks):  # pragma: no cover - compiled
    """The non-zero entries of z (B, K) float32 in compressed rows: for input b, positions ``index[start[b]:end[b]]``
    (int32, increasing) and values ``values[...]`` (float32); index and values hold B·K entries (each of the
    ``blocks`` threads packs its rows from ``first·K`` on)."""
    rows, k = z.shape
    for block in nb.prange(blocks):
        first, last = _thread_rows(block, blocks, rows)
        m = first * k
        for b in range(first, last):
            start[b] = m
            row = z[b]
            for j in range(k):  # branch-free: every entry is written, only non-zero ones advance m
                index[m] = j
                values[m] = row[j]
                m += row[j] != 0
            end[b] = m


@nb.njit(inline="always")
def _panel_row(panel, ia, va, first, end, a0, a1):  # pragma: no cover - compiled
    """(a0, a1) + Σ_j values[j]·panel[index[j], 0:16] over first ≤ j < end, four rows in flight."""
    c0, c1, d0, d1, e0, e1 = _zero8(), _zero8(), _zero8(), _zero8(), _zero8(), _zero8()
    j = first
    while j + 4 <= end:
        r0, r1 = _int32_at(ia, j) * PANEL, _int32_at(ia, j + 1) * PANEL
        r2, r3 = _int32_at(ia, j + 2) * PANEL, _int32_at(ia, j + 3) * PANEL
        v0, v1, v2, v3 = _splat8(va, j), _splat8(va, j + 1), _splat8(va, j + 2), _splat8(va, j + 3)
        a0, a1 = _fma8(v0, _load8(panel, r0), a0), _fma8(v0, _load8(panel, r0 + 8), a1)
        c0, c1 = _fma8(v1, _load8(panel, r1), c0), _fma8(v1, _load8(panel, r1 + 8), c1)
        d0, d1 = _fma8(v2, _load8(panel, r2), d0), _fma8(v2, _load8(panel, r2 + 8), d1)
        e0, e1 = _fma8(v3, _load8(panel, r3), e0), _fma8(v3, _load8(panel, r3 + 8), e1)
        j += 4
    while j < end:
        r0, v0 = _int32_at(ia, j) * PANEL, _splat8(va, j)
        a0, a1 = _fma8(v0, _load8(panel, r0), a0), _fma8(v0, _load8(panel, r0 + 8), a1)
        j += 1
    return _add8(_add8(a0, c0), _add8(d0, e0)), _add8(_add8(a1, c1), _add8(d1, e1))


@nb.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def panel_addmm(base, panels, index, values, start, end, out, blocks):  # pragma: no cover - compiled
    """out (B, N) = base (B, N) + z·W, z in compressed rows (``compact_counts``), W as ``panel_layout`` panels;
    all float32, base and out C-contiguous; ``blocks`` threads, each a contiguous range of inputs."""
    rows, n = out.shape
    ia, va, bo, oo = index.ctypes.data, values.ctypes.data, base.ctypes.data, out.ctypes.data
    for block in nb.prange(blocks):
        first, last = _thread_rows(block, blocks, rows)
        for p in range(panels.shape[0]):
            panel = panels[p].ctypes.data
            for b in range(first, last):
                at = b * n + p * PANEL
                _prefetch(bo, at + AHEAD * n)  # the rows' lines lie n floats apart: the hardware will not guess
                _prefetch_write(oo, at + AHEAD * n)
                low, high = _panel_row(panel, ia, va, start[b], end[b], _load8(bo, at), _load8(bo, at + 8))
                _store8(oo, at, low)
                _store8(oo, at + 8, high)


@nb.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def panel_fit_sums(panels, x, precision, index, values, start, end, squares, weighted, blocks):  # pragma: no cover
    """squares[b] = Σ_d (x − z·W)_b,d², weighted[b] = Σ_d (x − z·W)_b,d²·precision_d (float64), from z's compressed
    rows and W's panels (float32; x (B, N) C-contiguous, precision (N,)); z·W is never written out."""
    rows, n = x.shape
    ia, va, xo, po = index.ctypes.data, values.ctypes.data, x.ctypes.data, precision.ctypes.data
    for block in nb.prange(blocks):
        first, last = _thread_rows(block, blocks, rows)
        squares[first:last] = 0.0
        weighted[first:last] = 0.0
        for p in range(panels.shape[0]):
            panel = panels[p].ctypes.data
            for b in range(first, last):
                at = b * n + p * PANEL
                _prefetch(xo, at + AHEAD * n)
                low, high = _panel_row(panel, ia, va, start[b], end[b], _zero8(), _zero8())
                s0, w0 = _residual_sums8(xo, at, low, po, p * PANEL)
                s1, w1 = _residual_sums8(xo, at + 8, high, po, p * PANEL + 8)
                squares[b] += s0 + s1
                weighted[b] += w0 + w1


@nb.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def compressed_dots(index, values, start, end, vectors, out):  # pragma: no cover - compiled
    """out[b] = Σ_j values[j]·vectors[b, index[j]] over input b's compressed row (float64 sums): z_b·v_b from the
    non-zero counts only."""
    for b in nb.prange(start.size):
        total = 0.0
        for j in range(start[b], end[b]):
            total += values[j] * vectors[b, index[j]]
        out[b] = total


class CompressedCounts:
    """Reused buffers for compressed rows of a (B, K) float32 count array (``compact_counts``), which the exact
    sampler can fill while it draws (``kernels.poisson_rate_step``'s packed output, ``rows_from_chunks``).

    ``sampler_arrays()`` gives the sampler its three outputs (empty where K does not divide ``CHUNK``) and marks
    the buffers as holding that draw; ``of_draw(z, blocks)`` returns (index, values, start, end) of the draw;
    ``of(z, blocks)`` compacts any other z (the buffers then hold it, not the draw).
    """

    def __init__(self, rows: int, k: int) -> None:
        self.index, self.values = np.empty(rows * k, np.int32), np.empty(rows * k, np.float32)
        self.start, self.end = np.empty(rows, np.int64), np.empty(rows, np.int64)
        self.by_chunk = packs_by_chunk(k)
        self.chunk_nonzero = np.empty(-(-rows * k // CHUNK) if self.by_chunk else 0, np.int64)
        self._holds = None  # "chunks": a draw as the sampler packed it; "rows": a draw in compressed rows

    def sampler_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._holds = "chunks" if self.by_chunk else None
        if self.by_chunk:
            return self.index, self.values, self.chunk_nonzero
        return self.index[:0], self.values[:0], self.chunk_nonzero

    def of_draw(self, z: np.ndarray, blocks: int) -> tuple[np.ndarray, ...]:
        """The compressed rows of the last draw z (its counts as the sampler packed them where it did)."""
        if self._holds == "chunks":
            rows_from_chunks(self.chunk_nonzero, self.index, z.shape[1], self.start, self.end)
            self._holds = "rows"
        if self._holds != "rows":
            compact_counts(z, self.index, self.values, self.start, self.end, blocks)
            self._holds = "rows"
        return self.index, self.values, self.start, self.end

    def of(self, z: np.ndarray, blocks: int) -> tuple[np.ndarray, ...]:
        """The compressed rows of any z of the buffers' shape."""
        compact_counts(z, self.index, self.values, self.start, self.end, blocks)
        self._holds = None
        return self.index, self.values, self.start, self.end
