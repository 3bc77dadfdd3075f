"""The trace's fit in the code's subspace (``fond.residual_basis``): its two sums against the written-out residual of
the decode (float64 oracle), and the traces it gives against a decode's, step by step on the same draws."""

import numpy as np
import pytest
import torch

import fond.residual_basis as residual_basis_module
from fond.residual_basis import fit_sums, frame_terms, pays, residual_basis


def _written_out(phi, precision, x, z):
    residual = (x - z @ phi.T).to(torch.float64)
    return residual.square().sum(1), residual.square() @ precision.to(torch.float64)


def _dictionary(d, k, dead, seed=0):
    """Φ (D, K) with ``dead`` zero atoms (silent neurons: Φ of rank < K) and two nearly parallel ones."""
    phi = torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    phi[:, :dead] = 0.0
    phi[:, -1] = phi[:, -2] + 1e-6 * phi[:, -1]
    return phi


# The identity holds for any code in exact arithmetic, however singular Φ is (the basis needs only to span its columns).
@pytest.mark.parametrize("d, k, dead", [(40, 24, 0), (40, 24, 5), (24, 24, 3)])
def test_the_sums_in_the_basis_equal_the_written_out_residual(d, k, dead):
    g = torch.Generator().manual_seed(1)
    phi = _dictionary(d, k, dead)
    precision = torch.rand(d, generator=g, dtype=torch.float64) * 20 + 0.1  # σ per pixel, 200× apart
    x = torch.randn(9, d, generator=g, dtype=torch.float64) + 3.0  # an offset: x⊥ is far from zero
    z = torch.poisson(torch.rand(9, k, generator=g, dtype=torch.float64) * 2, generator=g)
    basis = residual_basis(phi, precision)
    plain, weighted = fit_sums(basis, frame_terms(basis, x, precision), z)
    want_plain, want_weighted = _written_out(phi, precision, x, z)
    np.testing.assert_allclose(plain, want_plain, rtol=1e-10)
    np.testing.assert_allclose(weighted, want_weighted, rtol=1e-10)


# float32, as the trace runs it: the sums within float32 rounding of the float64 residual.
def test_the_sums_in_float32_stay_within_float32_rounding():
    g = torch.Generator().manual_seed(2)
    phi = _dictionary(80, 48, 4).float()
    precision = torch.rand(80, generator=g) * 10 + 1
    x = torch.randn(16, 80, generator=g)
    z = torch.poisson(torch.rand(16, 48, generator=g), generator=g)
    basis = residual_basis(phi, precision)
    plain, weighted = fit_sums(basis, frame_terms(basis, x, precision), z)
    want_plain, want_weighted = _written_out(phi.double(), precision.double(), x.double(), z.double())
    np.testing.assert_allclose(plain, want_plain, rtol=1e-5)
    np.testing.assert_allclose(weighted, want_weighted, rtol=1e-5)


# Anytime inference narrows the batch: the narrowed terms must be those of the frame's rows.
def test_the_terms_of_rows_are_the_rows_terms():
    g = torch.Generator().manual_seed(3)
    phi, precision = _dictionary(30, 20, 2), torch.rand(30, generator=g, dtype=torch.float64) + 0.5
    x = torch.randn(7, 30, generator=g, dtype=torch.float64)
    basis, rows = residual_basis(phi, precision), torch.tensor([5, 0, 3])
    narrowed, direct = frame_terms(basis, x, precision).rows(rows), frame_terms(basis, x[rows], precision)
    for got, want in zip(vars(narrowed).values(), vars(direct).values(), strict=True):
        torch.testing.assert_close(got, want)


def test_a_basis_needs_at_least_as_many_pixels_as_atoms():
    with pytest.raises(ValueError, match="D ≥ K"):
        residual_basis(torch.randn(8, 12), torch.ones(8))


def test_the_basis_pays_only_for_many_pixels_and_many_input_steps():
    assert pays(1000, 512, 784, 1000)
    assert not pays(1000, 512, 256, 1000)  # D < K: the fit is already over fewer dimensions
    assert not pays(1000, 512, 600, 1000)  # D < 1.25 K: too little to save
    assert not pays(64, 512, 784, 100)  # too few input-steps to repay the basis
    assert not pays(10_000, 512, 784, 1)  # an online frame drives one step


def _trace_pair(monkeypatch, x, steps, **kwargs):
    """(trace with the basis forced, trace by a decode) of the shipped MNIST iP-VAE on the same draws, and how many
    times the basis and a frame's terms were built."""
    import fond
    from fond.dynamics import FondSteps

    model = fond.pretrained("ipvae-mnist")
    built, framed = [], []
    original, original_terms = residual_basis_module.residual_basis, residual_basis_module.frame_terms
    monkeypatch.setattr("fond.dynamics.residual_basis", lambda *a: built.append(1) or original(*a))
    monkeypatch.setattr("fond.dynamics.frame_terms", lambda *a: framed.append(1) or original_terms(*a))
    monkeypatch.setattr(residual_basis_module, "MIN_INPUT_STEPS", 1)
    in_basis = model.infer(x, steps, seed=3, trace=("r2", "nll", "r2_rates"), **kwargs)
    monkeypatch.setattr(FondSteps, "_sparse_fit_arrays", lambda self, code, frame: None)  # a decode every step
    monkeypatch.setattr(FondSteps, "squared_error", lambda self, frame, code: None)  # the rates' too
    decoded = model.infer(x, steps, seed=3, trace=("r2", "nll", "r2_rates"), **kwargs)
    return in_basis, decoded, (len(built), len(framed))


# The trace's R² and NLL from the fit in the code's subspace, and the mean code's R², equal a decode's of the same
# samples and rates, step by step.
def test_the_trace_in_the_basis_equals_the_decoded_trace(monkeypatch):
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    in_basis, decoded, built = _trace_pair(monkeypatch, x, 20)
    assert built == (1, 1)
    np.testing.assert_allclose(in_basis.trace["r2"], decoded.trace["r2"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(in_basis.trace["nll"], decoded.trace["nll"], rtol=1e-5)
    np.testing.assert_allclose(in_basis.trace["r2_rates"], decoded.trace["r2_rates"], rtol=0, atol=1e-5)


# The same while anytime inference drops converged inputs: each narrowed frame keeps its own rows' terms.
def test_the_trace_in_the_basis_follows_the_narrowed_batch(monkeypatch):
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    in_basis, decoded, built = _trace_pair(monkeypatch, x, 120, tol=0.3, window=10)
    assert 10 < int(in_basis.steps_used.min()) < int(in_basis.steps_used.max())  # it narrowed in between
    assert built == (1, 1)  # the narrowed frames' terms are rows of the first's
    np.testing.assert_array_equal(in_basis.steps_used, decoded.steps_used)
    np.testing.assert_allclose(in_basis.trace["r2"], decoded.trace["r2"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(in_basis.trace["nll"], decoded.trace["nll"], rtol=1e-5)
    np.testing.assert_allclose(in_basis.trace["r2_rates"], decoded.trace["r2_rates"], rtol=0, atol=1e-5)


# An online input changes frame every step: the basis's per-frame products would never pay.
def test_an_online_rollout_never_builds_the_basis(monkeypatch):
    import fond

    model = fond.pretrained("ipvae-mnist")
    built, original = [], residual_basis_module.residual_basis
    monkeypatch.setattr("fond.dynamics.residual_basis", lambda *a: built.append(1) or original(*a))
    monkeypatch.setattr(residual_basis_module, "MIN_INPUT_STEPS", 2 * 32)
    frames = torch.rand(5, 32, 784, generator=torch.Generator().manual_seed(2))
    model.infer(frames, 5, seed=0, trace=("r2",))
    assert not built
    model.infer(frames[0], 5, seed=0, trace=("r2",))  # the same batch held for 5 steps: 160 input-steps, it pays
    assert built
