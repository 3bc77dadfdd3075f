"""The sparse products against dense float64 oracles, and the engine's sparse product against its float one."""

import functools

import numpy as np
import pytest
import torch

from fond import IPVAE
from fond.families.sparse_kernels import poisson_trace_rows, sparse_addmm


def _sparse_counts(rng, rows, k, dtype):
    """Counts with every row's non-zero number from 0 to k (the 4-wide loop's remainders and an empty row)."""
    z = rng.poisson(2.0, (rows, k)).astype(dtype) + 1
    for b in range(rows):
        keep = rng.permutation(k)[: b % (k + 1)]
        mask = np.zeros(k, bool)
        mask[keep] = True
        z[b, ~mask] = 0
    return z


def _problem(seed, rows, k, n, dtype):
    """Sparse counts (rows, k), a dense (k, n) matrix, a dense (rows, n) array and the dtype's tolerance."""
    rng = np.random.default_rng(seed)
    z = _sparse_counts(rng, rows, k, dtype)
    return z, rng.normal(size=(k, n)).astype(dtype), rng.normal(size=(rows, n)).astype(dtype), (
        1e-5 if dtype == np.float32 else 1e-12)


# The engine's recurrent input with the sparse product must be the product itself: z·W + base to rounding,
# for float32 and float64, rows with 0 … K non-zero counts (each remainder of the four-row loop).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_addmm_equals_the_dense_product(dtype):
    z, w, base, tolerance = _problem(0, 23, 11, 37, dtype)
    out = np.full((23, 37), np.nan, dtype)
    sparse_addmm(base, z, w, out)
    exact = base.astype(np.float64) + z.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(out, exact, rtol=tolerance, atol=tolerance * np.abs(exact).max())
    assert np.array_equal(out[0], base[0])  # a row without a count is the base itself


# The trace's R² and NLL of a sample come from these two sums over its non-zero counts: they must equal the
# written-out residuals, and the columns not asked for stay NaN (a caller that reads one sees it at once).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trace_rows_fit_equals_the_written_out_residuals(dtype):
    z, w, x, tolerance = _problem(1, 17, 9, 29, dtype)
    precision = np.random.default_rng(2).uniform(0.5, 4.0, 29).astype(dtype)
    total = np.random.default_rng(3).uniform(10.0, 20.0, 17)
    table = np.empty((17, 7))
    poisson_trace_rows(z, z, z, w, x, precision, total, -3.5, 1e3, True, False, table)
    residual = x.astype(np.float64) - z.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(table[:, 0], 1.0 - (residual**2).sum(1) / total, rtol=tolerance)
    np.testing.assert_allclose(table[:, 3], 0.5 * (residual**2 * precision).sum(1) - 3.5, rtol=tolerance)
    assert np.isnan(table[:, [1, 2, 4, 5, 6]]).all()


def _engine(model, x, product):
    from fond.engine import PoissonLinearEngine

    parts = model.components()
    ops = parts.decoder.operators(x, parts.inv_variance)
    engine = PoissonLinearEngine(parts.family, parts.family_params, parts.bias, ops.gram, product=product)
    engine.start(parts.family.initial_state(parts.family_params, x.shape[0])[0])
    return engine, ops.drive


# Same draws, same state: the sparse-product engine follows the float engine step for step (rates to float32
# rounding, the same counts but for a U within rounding of a CDF level), and it reports the counts' density.
def test_sparse_engine_steps_like_the_float_engine():
    model = IPVAE(16, 64, seed=3, init_scale=0.05)
    with torch.no_grad():
        x = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
        z = torch.poisson(torch.full((300, 64), 0.1), generator=torch.Generator().manual_seed(1))
        (fe, drive), (se, _) = _engine(model, x, "float"), _engine(model, x, "sparse")
        for step in range(4):
            rf, sf = fe.step(z if step == 0 else fe.spikes, drive, torch.Generator().manual_seed(step))
            rs, ss = se.step(z if step == 0 else se.spikes, drive, torch.Generator().manual_seed(step))
            torch.testing.assert_close(rs, rf, rtol=1e-5, atol=1e-6)
            assert float((ss != sf).float().mean()) < 1e-3
            assert se.density == pytest.approx(float((ss != 0).float().mean()))
        assert 0.0 < se.density < 1.0


# "auto" takes the sparse product below its density threshold, leaves it only well above it (hysteresis: switching
# products from step to step costs more than either), and keeps tiny batches on the dense product.
def test_auto_product_switches_on_density_with_hysteresis(monkeypatch):
    import fond.families.panel_kernels as pk
    import fond.families.sparse_kernels as sk
    from fond.engine import MIN_SPARSE_SIZE, SPARSE_BELOW

    model = IPVAE(16, 64, seed=3, init_scale=0.05)
    calls = []
    for module, name in [(sk, "sparse_addmm"), (pk, "panel_addmm")]:  # the sparse product: either form
        monkeypatch.setattr(module, name, functools.partial(
            lambda original, *arrays: (calls.append(1), original(*arrays)), getattr(module, name)))
    batch = MIN_SPARSE_SIZE // 64 + 1

    def counts(density):
        z = torch.zeros(batch, 64)
        z[:, : round(density * 64)] = 1.0
        return z

    with torch.no_grad():
        x = torch.randn(batch, 16, generator=torch.Generator().manual_seed(2))
        engine, drive = _engine(model, x, "auto")
        between = 1.2 * SPARSE_BELOW  # above the threshold, below the hysteresis band's top
        for density, sparse in [(1.0, False), (between, False), (1 / 64, True), (between, True), (1.0, False)]:
            calls.clear()
            engine.step(counts(density), drive, torch.Generator().manual_seed(0))
            assert calls == ([1] if sparse else []), density
        small, small_drive = _engine(model, x[:10], "auto")
        calls.clear()
        small.step(counts(1 / 64)[:10], small_drive, torch.Generator().manual_seed(0))
        assert calls == []


# FOND_NO_AMX runs the path of a CPU without AMX (the limb product off) on one that has it.
def test_no_amx_variable_turns_the_limb_product_off(monkeypatch):
    from fond.engine import limb_product_available

    monkeypatch.setenv("FOND_NO_AMX", "1")
    assert not limb_product_available()
    model = IPVAE(16, 64, seed=3, init_scale=0.05)
    with torch.no_grad():
        engine, _ = _engine(model, torch.randn(5, 16), "auto")
    assert engine.limbs is None
