"""fond.likelihood: the training step's scaled error and Gaussian NLL from one compiled pass, against autograd
of the written-out terms."""

import pytest
import torch

from fond.likelihood import gaussian_terms
from fond.metrics import gaussian_nll


# Every BPTT step takes its pull-back input and its loss from these two terms: their values and every gradient
# (to the reconstruction and to the per-pixel log σ, through both outputs at once) must be autograd's.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_terms_equal_the_written_out_ones(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 13, generator=gen, dtype=dtype)
    mean = torch.randn(7, 13, generator=gen, dtype=dtype)
    log_sigma = 0.3 * torch.randn(13, generator=gen, dtype=dtype)
    weights = torch.randn(7, 13, generator=gen, dtype=dtype), torch.randn(7, generator=gen, dtype=dtype)

    def grads(fused: bool):
        m, s = mean.clone().requires_grad_(), log_sigma.clone().requires_grad_()
        if fused:
            error, nll = gaussian_terms(x, m, s)
        else:
            error, nll = (x - m) * torch.exp(-2.0 * s), gaussian_nll(x, m, s)
        ((error * weights[0]).sum() + (nll * weights[1]).sum()).backward()
        return error.detach(), nll.detach(), m.grad, s.grad

    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for fused, plain in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(fused, plain, **tolerance)


# The last step's scaled error feeds nothing: a backward through the NLL alone must work and give its gradient.
def test_an_unused_output_has_no_gradient_and_breaks_nothing():
    x, mean = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    log_sigma = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    _, nll = gaussian_terms(x, mean, log_sigma)
    nll.sum().backward()
    torch.testing.assert_close(mean.grad, -(x - mean.detach()))
    torch.testing.assert_close(log_sigma.grad, (1.0 - (x - mean.detach()) ** 2).sum(0))
