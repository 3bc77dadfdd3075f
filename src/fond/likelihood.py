"""The Gaussian likelihood's two per-step terms in training, from one residual.

Each unrolled step needs, for the reconstruction x̂ of its sample, the scaled error (x − x̂)/σ_x² (which the
decoder pulls back to drive the next update) and the NLL −log N(x; x̂, diag σ_x²) (the loss). Written out
they are ~8 tensor operations forward and ~10 backward over (B, D); on the CPU ``gaussian_terms`` computes
both in one compiled pass and their backward in another (``_GaussianTerms``: values and gradients equal
autograd of the written-out terms, ``tests/test_likelihood.py``); elsewhere it writes them out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fond.families.kernels import block_rows, row_blocks, row_sum  # (before numba: its vector-width choice)
from fond.metrics import LOG_2PI, gaussian_nll

__all__ = ["gaussian_precision", "gaussian_terms", "gaussian_terms_arrays", "gaussian_terms_backward"]

import numba as nb  # noqa: E402  (after fond.families.kernels: see there)


def gaussian_precision(log_sigma: Tensor) -> tuple[Tensor, float]:
    """(σ⁻² (D,), Σ_d log σ_d + D/2·log 2π) of log σ (D,), taken as values (no gradient): what ``gaussian_terms``
    needs of σ besides log σ itself. An unroll computes it once and hands it to every step (``precision=``)."""
    detached = log_sigma.detach()
    constant = float(detached.to(torch.float64).sum()) + 0.5 * LOG_2PI * detached.shape[-1]
    return torch.exp(-2.0 * detached).contiguous(), constant


def gaussian_terms(x: Tensor, reconstruction: Tensor, log_sigma: Tensor,
                   precision: tuple[Tensor, float] | None = None) -> tuple[Tensor, Tensor]:
    """((x − x̂)·σ⁻² (B, D), −log N(x; x̂, diag σ²) summed over pixels (B,), nats) for x, x̂ (B, D), log σ (D,).
    ``precision``: ``gaussian_precision(log_sigma)`` where the caller has it (the same log σ), else computed here."""
    fused = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.ndim == 2
             and not x.requires_grad and reconstruction.dtype == x.dtype and log_sigma.dtype == x.dtype
             and log_sigma.shape == (x.shape[1],) and reconstruction.shape == x.shape)
    if fused:
        inv_variance, constant = gaussian_precision(log_sigma) if precision is None else precision
        return _GaussianTerms.apply(x, reconstruction, log_sigma, inv_variance, constant)
    return (x - reconstruction) * torch.exp(-2.0 * log_sigma), gaussian_nll(x, reconstruction, log_sigma)


@nb.njit(error_model="numpy", fastmath={"contract"})
def _forward_row(x, mean, inv_variance, error, residual, squares):  # pragma: no cover - compiled
    for d in range(x.size):
        r = x[d] - mean[d]
        residual[d] = r
        error[d] = r * inv_variance[d]
        squares[d] = np.float64(r) * np.float64(r) * np.float64(inv_variance[d])


@nb.njit(parallel=True, cache=True, error_model="numpy")
def _forward(x, mean, inv_variance, constant, error, residual, nll):  # pragma: no cover - compiled
    """error = (x − mean)·inv_variance, residual = x − mean, nll[b] = ½ Σ_d residual²·inv_variance + constant
    (summed in float64, stored in nll's type)."""
    rows = x.shape[0]
    for block in nb.prange(row_blocks(rows)):  # (one scratch row per block of rows)
        squares = np.empty(x.shape[1])
        first, end = block_rows(block, rows)
        for b in range(first, end):
            _forward_row(x[b], mean[b], inv_variance, error[b], residual[b], squares)
            nll[b] = 0.5 * row_sum(squares) + constant


@nb.njit(error_model="numpy", fastmath={"contract"})
def _backward_row(grad_error, grad_nll, residual, inv_variance, grad_mean, per_pixel):  # pragma: no cover
    for d in range(residual.size):
        r, iv = residual[d], inv_variance[d]
        grad_mean[d] = -iv * (grad_error[d] + grad_nll * r)
        per_pixel[d] = grad_nll * (1.0 - r * r * iv) - 2.0 * grad_error[d] * r * iv


@nb.njit(parallel=True, cache=True, error_model="numpy")
def _backward(grad_error, grad_nll, residual, inv_variance, grad_mean, per_pixel):  # pragma: no cover
    """∂L/∂mean (B, D) and each element's part of ∂L/∂log σ (B, D; the caller sums over the batch)."""
    for b in nb.prange(residual.shape[0]):
        _backward_row(grad_error[b], grad_nll[b], residual[b], inv_variance, grad_mean[b], per_pixel[b])


def gaussian_terms_arrays(x: Tensor, reconstruction: Tensor, inv_variance: Tensor, constant: float, *,
                          out: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``gaussian_terms`` on contiguous CPU tensors without autograd, in one compiled pass: (the scaled error
    (x − x̂)·σ⁻² (B, D), the residual x − x̂ (B, D) its backward needs, the NLL (B,)), written into ``out``
    (contiguous, those shapes and x's dtype) if given."""
    from fond.families.sampling import kernel_threads

    error, residual, nll = out if out is not None else (
        torch.empty_like(x), torch.empty_like(x), torch.empty(x.shape[0], dtype=x.dtype))
    kernel_threads(x.numel())
    _forward(x.numpy(), reconstruction.numpy(), inv_variance.numpy(), constant, error.numpy(), residual.numpy(),
             nll.numpy())
    return error, residual, nll


def gaussian_terms_backward(grad_error: Tensor, grad_nll: Tensor, residual: Tensor,
                            inv_variance: Tensor) -> tuple[Tensor, Tensor]:
    """The backward pass of ``gaussian_terms_arrays`` from ∂L/∂error (B, D) and ∂L/∂nll (B,), contiguous: (∂L/∂x̂
    (B, D), ∂L/∂log σ (D,))."""
    from fond.families.sampling import kernel_threads

    grad_mean, per_pixel = torch.empty_like(residual), torch.empty_like(residual)
    kernel_threads(residual.numel())
    _backward(grad_error.numpy(), grad_nll.numpy(), residual.numpy(), inv_variance.numpy(), grad_mean.numpy(),
              per_pixel.numpy())
    return grad_mean, per_pixel.sum(0)


class _GaussianTerms(torch.autograd.Function):
    """``gaussian_terms`` from ``gaussian_terms_arrays`` / ``gaussian_terms_backward``; keeps the residual (B, D)
    and σ⁻² (D,). σ⁻² and the NLL's constant come in as values (``gaussian_precision``); log σ is an input for
    its gradient."""

    @staticmethod
    def forward(ctx, x, reconstruction, log_sigma, inv_variance, constant):  # noqa: D102
        error, residual, nll = gaussian_terms_arrays(x.detach().contiguous(), reconstruction.detach().contiguous(),
                                                     inv_variance, constant)
        ctx.save_for_backward(residual, inv_variance)
        return error, nll

    @staticmethod
    def backward(ctx, grad_error, grad_nll):  # noqa: D102
        residual, inv_variance = ctx.saved_tensors
        grad_error = torch.zeros_like(residual) if grad_error is None else grad_error.contiguous()
        grad_nll = torch.zeros(residual.shape[0], dtype=residual.dtype) if grad_nll is None else grad_nll.contiguous()
        grad_mean, grad_log_sigma = gaussian_terms_backward(grad_error, grad_nll, residual, inv_variance)
        return None, grad_mean, grad_log_sigma, None, None
