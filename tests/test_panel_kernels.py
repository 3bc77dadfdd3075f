"""The panel kernels (``fond.families.panel_kernels``) against dense float64 oracles, and the sampler's packed output
against the counts it draws."""

import numpy as np
import pytest
import torch

from fond.families.kernels import CHUNK, poisson_rate_step
from fond.families.panel_kernels import (
    CompressedCounts,
    compact_counts,
    compressed_dots,
    packs_by_chunk,
    panel_addmm,
    panel_fit_sums,
    panel_layout,
    rows_from_chunks,
)
from fond.families.sampling import RECIPROCALS, SMALL_RATE_CUTOFF, draw_key


def _counts(rng, rows, k):
    """float32 counts (rows, k) whose rows hold 0 … k non-zero entries (every remainder of the four-row loop, an
    empty row, a full row), values 1 … ~10."""
    z = (rng.poisson(2.0, (rows, k)) + 1).astype(np.float32)
    for b in range(rows):
        z[b, rng.permutation(k)[b % (k + 1):]] = 0
    return z


def _compressed(z, blocks=2):
    rows, k = z.shape
    index, values = np.empty(rows * k, np.int32), np.empty(rows * k, np.float32)
    start, end = np.empty(rows, np.int64), np.empty(rows, np.int64)
    compact_counts(z, index, values, start, end, blocks)
    return index, values, start, end


# The compressed rows are what both panel kernels read: each input's non-zero positions in order and their values,
# whatever the number of threads' blocks.
@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_compressed_rows_hold_each_inputs_non_zero_counts(blocks):
    z = _counts(np.random.default_rng(0), 21, 20)
    index, values, start, end = _compressed(z, blocks)
    for b in range(21):
        positions = np.flatnonzero(z[b])
        np.testing.assert_array_equal(index[start[b]:end[b]], positions)
        np.testing.assert_array_equal(values[start[b]:end[b]], z[b, positions])


# The recurrent input of the engine's sparse step: base + z·W to float32 rounding, for every row's number of counts;
# a row without counts is the base itself.
@pytest.mark.parametrize("n", [16, 48])
def test_panel_addmm_equals_the_dense_product(n):
    rng = np.random.default_rng(1)
    z, w = _counts(rng, 37, 33), rng.normal(size=(33, n)).astype(np.float32)
    base = rng.normal(size=(37, n)).astype(np.float32)
    out = np.full_like(base, np.nan)
    panel_addmm(base, panel_layout(w), *_compressed(z), out, 2)
    exact = base.astype(np.float64) + z.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    assert np.array_equal(out[0], base[0])


# The trace's R² and NLL come from these two sums: they must equal the written-out residuals of the decode.
def test_panel_fit_sums_equal_the_written_out_residuals():
    rng = np.random.default_rng(2)
    z, w = _counts(rng, 19, 25), rng.normal(size=(25, 32)).astype(np.float32)
    x = rng.normal(size=(19, 32)).astype(np.float32)
    precision = rng.uniform(0.5, 4.0, 32).astype(np.float32)
    squares, weighted = np.full(19, np.nan), np.full(19, np.nan)
    panel_fit_sums(panel_layout(w), x, precision, *_compressed(z), squares, weighted, 2)
    residual = x.astype(np.float64) - z.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(squares, (residual**2).sum(1), rtol=1e-5)
    np.testing.assert_allclose(weighted, (residual**2 * precision).sum(1), rtol=1e-5)


# The linear term of the residual basis's weighted sum (``fond.residual_basis``) is z_b·g_b from the counts alone.
def test_compressed_dots_are_the_rows_dot_products():
    rng = np.random.default_rng(3)
    z, vectors = _counts(rng, 23, 21), rng.normal(size=(23, 21))
    out = np.full(23, np.nan)
    compressed_dots(*_compressed(z), vectors, out)
    np.testing.assert_allclose(out, (z.astype(np.float64) * vectors).sum(1), rtol=1e-12, atol=1e-12)


# Each panel row (16 floats) must be one cache line: a row across two lines costs the kernels a second load.
@pytest.mark.parametrize("k", [3, 33, 512])
def test_panel_layout_is_the_columns_in_panels_on_cache_lines(k):
    w = np.random.default_rng(4).normal(size=(k, 48)).astype(np.float32)
    panels = panel_layout(w)
    assert panels.ctypes.data % 64 == 0 and panels.flags.c_contiguous and panels.shape == (3, k, 16)
    np.testing.assert_array_equal(np.concatenate(list(panels), axis=1), w)


def test_panel_layout_needs_whole_panels():
    with pytest.raises(ValueError, match="multiple of 16"):
        panel_layout(np.zeros((4, 20), np.float32))


def _rate_step(rates, packed):
    """One ``poisson_rate_step`` from e^{−d} = 1 (the rates stay, but for the floor e^{−3}) with a fixed key; returns
    the spikes."""
    n = rates.size
    spikes, inv = np.empty(n, np.float32), (1.0 / rates).astype(np.float32)
    poisson_rate_step(np.ones(n, np.float32), inv, np.empty(n, np.float32), spikes, np.empty(0, np.uint8),
                      *draw_key(torch.Generator().manual_seed(7)), np.exp(-10.0), np.exp(3.0), SMALL_RATE_CUTOFF,
                      RECIPROCALS, *packed)
    return spikes


# The sampler's packed output, made into rows, is the counts it drew; and asking for it changes no draw.
@pytest.mark.parametrize("k", [64, 512])
def test_the_samplers_packed_counts_are_its_draws(k):
    rows = 2 * CHUNK // k + 3  # two whole chunks and a partial one
    rates = np.random.default_rng(3).gamma(0.3, 0.5, rows * k).astype(np.float32)
    counts = CompressedCounts(rows, k)
    assert counts.by_chunk and packs_by_chunk(k)
    spikes = _rate_step(rates, counts.sampler_arrays())
    plain = _rate_step(rates, (np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.int64)))
    np.testing.assert_array_equal(spikes, plain)
    z = spikes.reshape(rows, k)
    assert 0.05 < np.mean(z != 0) < 0.5
    index, values, start, end = counts.of_draw(z, 2)
    for b in range(rows):
        positions = np.flatnonzero(z[b])
        np.testing.assert_array_equal(index[start[b]:end[b]], positions)
        np.testing.assert_array_equal(values[start[b]:end[b]], z[b, positions])


# K that does not divide the sampler's chunk: no packing, the draw compacted on demand instead.
def test_counts_without_whole_rows_per_chunk_are_compacted_on_demand():
    counts = CompressedCounts(6, 48)
    assert not counts.by_chunk
    assert counts.sampler_arrays()[0].size == 0
    z = _counts(np.random.default_rng(4), 6, 48)
    index, values, start, end = counts.of_draw(z, 1)
    for b in range(6):
        np.testing.assert_array_equal(index[start[b]:end[b]], np.flatnonzero(z[b]))


# rows_from_chunks turns positions in a chunk into columns of rows; rows of a chunk without any count are empty.
def test_rows_from_chunks_on_a_hand_made_chunk():
    k = CHUNK // 2
    index = np.zeros(CHUNK, np.int32)
    index[:3] = [5, k + 1, k + 7]
    start, end = np.empty(2, np.int64), np.empty(2, np.int64)
    rows_from_chunks(np.array([3]), index, k, start, end)
    assert (start.tolist(), end.tolist()) == ([0, 1], [1, 3])
    assert index[:3].tolist() == [5, 1, 7]


# The engine's step with the panel product follows the float engine's (rates to rounding, the same counts but for a
# uniform within rounding of a CDF level) on a model whose K takes the panels.
def test_engine_on_panels_steps_like_the_float_engine():
    from fond import IPVAE
    from fond.engine import PoissonLinearEngine

    model = IPVAE(32, 128, seed=5, init_scale=0.05)
    with torch.no_grad():
        x = torch.randn(200, 32, generator=torch.Generator().manual_seed(2))
        parts = model.components()
        ops = parts.decoder.operators(x, parts.inv_variance)
        engines = [PoissonLinearEngine(parts.family, parts.family_params, parts.bias, ops.gram, product=p)
                   for p in ("float", "sparse")]
        for engine in engines:
            engine.start(parts.family.initial_state(parts.family_params, 200)[0])
        assert engines[1]._counts is not None  # the panel path
        z = torch.poisson(torch.full((200, 128), 0.1), generator=torch.Generator().manual_seed(1))
        for step in range(5):
            (rf, sf), (rs, ss) = (e.step(z if step == 0 else e.spikes, ops.drive, torch.Generator().manual_seed(step))
                                  for e in engines)
            torch.testing.assert_close(rs, rf, rtol=1e-5, atol=1e-6)
            assert float((ss != sf).float().mean()) < 1e-3
