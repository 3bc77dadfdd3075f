"""The sample's residual inside the code's K-dimensional subspace: the trace's R² and NLL from nnz·K multiply-adds a
code instead of nnz·D, for a linear decoder with more pixels than latents (MNIST: D 784, K 512).

Take an orthonormal basis Q (D, K) of a space holding Φ's columns in which the precision Σ⁻¹ = diag(σ_d⁻²) is
diagonal: QᵀQ = I and QᵀΣ⁻¹Q = diag(λ) (a QR of Φ, then the eigenvectors of the precision in that basis). Every
decode Φz lies in span(Q), so with x̂ = Qᵀx, the part of the frame no code reaches x⊥ = x − Qx̂, Ψ = QᵀΦ (K, K)
and r̂ = x̂ − Ψz (K,):

    ‖x − Φz‖²             = ‖x⊥‖² + Σ_k r̂_k²,
    (x − Φz)ᵀΣ⁻¹(x − Φz) = x⊥ᵀΣ⁻¹x⊥ + 2a·x̂ − 2g·z + Σ_k λ_k r̂_k²,     a = QᵀΣ⁻¹x⊥,  g = Ψᵀa.

Per code the sums over k are the panel kernel's (``panel_kernels.panel_fit_sums`` over Ψᵀ's panels, with x̂ for x
and λ for the precision) and g·z a dot over the non-zero counts (``panel_kernels.compressed_dots``). The basis
costs a QR and an eigendecomposition once per model (tens of ms at D 784, K 512) and each frame two (B×D)·(D×K)
products, so it pays only where a frame drives many steps of a large batch (``pays``).

>>> import torch
>>> phi, precision = torch.randn(12, 5, dtype=torch.float64), torch.rand(12, dtype=torch.float64) + 0.5
>>> x, z = torch.randn(3, 12, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
>>> basis = residual_basis(phi, precision)
>>> terms = frame_terms(basis, x, precision)
>>> plain, weighted = fit_sums(basis, terms, z)
>>> residual = x - z @ phi.T
>>> torch.allclose(plain, residual.square().sum(1)), torch.allclose(weighted, (residual.square() * precision).sum(1))
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ResidualBasis", "FrameTerms", "residual_basis", "frame_terms", "fit_sums", "pays", "MIN_INPUT_STEPS"]

#: input-steps (batch × steps a frame drives) from which the basis pays: it costs ~30 ms to build and ~22 ms a frame of
#: 1000 inputs at D 784, K 512, and saves ~0.5 µs an input-step there (a 14 %-dense code on a 2-core AVX-512 EPYC;
#: BENCHMARKS.md, session 37)
MIN_INPUT_STEPS = 200_000


@dataclass(frozen=True)
class ResidualBasis:
    """Q (D, K) orthonormal with QᵀΣ⁻¹Q = diag(``eigenvalues``) (K,), and ``psi`` = QᵀΦ (K, K)."""

    basis: Tensor
    psi: Tensor
    eigenvalues: Tensor


@dataclass(frozen=True)
class FrameTerms:
    """One frame's constants in a ``ResidualBasis``: x̂ = Qᵀx and g = Ψᵀa (B, K) in the basis's dtype, and the
    sums' constant parts (B,) float64: ‖x⊥‖² (``plain``) and x⊥ᵀΣ⁻¹x⊥ + 2a·x̂ (``weighted``)."""

    projected: Tensor
    linear: Tensor
    plain: Tensor
    weighted: Tensor

    def rows(self, index: Tensor) -> FrameTerms:
        """The terms of the frame's rows ``index``."""
        return FrameTerms(self.projected[index], self.linear[index], self.plain[index], self.weighted[index])


def residual_basis(dictionary: Tensor, precision: Tensor) -> ResidualBasis:
    """The basis of a dictionary Φ (D, K), D ≥ K, and a precision σ⁻² (D,), in Φ's dtype."""
    if dictionary.shape[0] < dictionary.shape[1]:
        raise ValueError(f"a residual basis needs D ≥ K, got a dictionary of shape {tuple(dictionary.shape)}")
    q, _ = torch.linalg.qr(dictionary)  # (D, K): Householder, orthonormal however ill-conditioned Φ is
    eigenvalues, rotation = torch.linalg.eigh((q.T * precision) @ q)
    basis = q @ rotation
    return ResidualBasis(basis, basis.T @ dictionary, eigenvalues)


def frame_terms(basis: ResidualBasis, x: Tensor, precision: Tensor) -> FrameTerms:
    """The constants of a frame x (B, D) in ``basis`` (its dtype; the constant parts float64)."""
    q, k = basis.basis, basis.basis.shape[1]
    both = x @ torch.cat([q, q * precision[:, None]], 1)  # (B, 2K): x̂ = Qᵀx and QᵀΣ⁻¹x in one product
    projected = both[:, :k].contiguous()
    outside = torch.addmm(x, projected, q.T, alpha=-1.0).to(torch.float64).square_()  # x⊥² (written out: exact)
    projected64 = projected.to(torch.float64)
    a = both[:, k:].to(torch.float64) - basis.eigenvalues.to(torch.float64) * projected64  # QᵀΣ⁻¹(x − Qx̂)
    weighted = outside @ precision.to(torch.float64) + 2.0 * (a * projected64).sum(1)
    linear = a.to(x.dtype) @ basis.psi  # (a small term: float32 serves)
    return FrameTerms(projected, linear, outside.sum(1), weighted)


def fit_sums(basis: ResidualBasis, terms: FrameTerms, code: Tensor) -> tuple[Tensor, Tensor]:
    """(‖x − Φz‖², (x − Φz)ᵀΣ⁻¹(x − Φz)) (B,) float64 of a code z (B, K), written out."""
    residual = (terms.projected - code @ basis.psi.T).to(torch.float64)
    squares = residual.square()
    linear = (code.to(torch.float64) * terms.linear).sum(1)
    return terms.plain + squares.sum(1), terms.weighted - 2.0 * linear + squares @ basis.eigenvalues.to(torch.float64)


def pays(batch: int, latents: int, inputs: int, steps: int) -> bool:
    """Whether the basis pays for a frame of ``batch`` inputs driving ``steps`` steps at this size: D at least
    1.25 K (the fit shrinks by K/D) and ``MIN_INPUT_STEPS`` input-steps."""
    return 4 * inputs >= 5 * latents and batch * steps >= MIN_INPUT_STEPS
