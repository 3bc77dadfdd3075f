"""The whole unroll as one autograd Function (``fond.unroll_engine``) against the step-by-step autograd unroll."""

import numpy as np
import pytest
import torch

from fond import IGVAE, IPVAE
from fond.config import ModelConfig
from fond.dynamics import unroll
from fond.models import build_model
from fond.unroll_engine import fused_unroll, unroll_applies


def _model(dtype=torch.float64, **options):
    model = IPVAE(12, 20, seed=2, init_scale=0.4, **options).to(dtype)
    with torch.no_grad():
        model.log_bias.fill_(-0.5)
        model.log_sigma_x.copy_(torch.linspace(-0.3, 0.2, 12))
    return model


def _x(dtype=torch.float64, n=9):
    return torch.from_numpy(np.random.default_rng(0).standard_normal((n, 12)) * 2.0).to(dtype)


def _loss_and_grads(model, x, *, fused, steps=6, clamp_fraction=1.0, temperature=0.5):
    model.zero_grad(set_to_none=True)
    out = unroll(model.components(), x, steps, beta=3.0, temperature=temperature, clamp_fraction=clamp_fraction,
                 generator=torch.Generator().manual_seed(5), fused=fused)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


# The fused unroll replaces the training path of the main model: its loss, its per-step record and every
# parameter's gradient must be autograd's on the same draws (float64: to rounding), whichever indicator and
# however far the clamps have ramped.
@pytest.mark.parametrize("indicator", ["sigmoid", "cubic", "straight_through"])
@pytest.mark.parametrize("clamp_fraction", [1.0, 0.3])
def test_fused_unroll_equals_autograd_on_the_same_draws(indicator, clamp_fraction):
    model, x = _model(family_options={"indicator": indicator}), _x()
    fused, fused_grads = _loss_and_grads(model, x, fused=True, clamp_fraction=clamp_fraction)
    reference, grads = _loss_and_grads(model, x, fused=False, clamp_fraction=clamp_fraction)
    assert type(fused.loss.grad_fn).__name__ == "_PoissonLinearUnrollBackward"  # the fused path ran
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-12, atol=0)
    for key in ("nll", "kl"):
        np.testing.assert_allclose(getattr(fused, key), getattr(reference, key), rtol=1e-12, err_msg=key)
    assert fused.rate_max == pytest.approx(reference.rate_max, rel=1e-12)
    assert set(fused_grads) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-9, atol=1e-12 * float(grad.abs().max()),
                                   msg=name)
        assert float(grad.abs().max()) > 0, name  # every parameter gets a gradient: the comparison means something


def test_fused_unroll_equals_autograd_in_float32():
    """The float32 models the trainer runs: the same to float32's rounding."""
    model, x = _model(torch.float32), _x(torch.float32)
    fused, fused_grads = _loss_and_grads(model, x, fused=True)
    reference, grads = _loss_and_grads(model, x, fused=False)
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=2e-4, atol=2e-5 * float(grad.abs().max()), msg=name)


def test_a_non_finite_rate_fails_like_the_autograd_unroll():
    """A dictionary with a NaN gives NaN rates: both paths stop with the sampler's FloatingPointError."""
    model, x = _model(), _x()
    with torch.no_grad():
        model.decoder.dictionary[0, 0] = float("nan")
    for fused in (True, False):
        with pytest.raises(FloatingPointError, match="non-finite Poisson rate"):
            unroll(model.components(), x, 3, beta=1.0, temperature=0.5, clamp_fraction=1.0,
                   generator=torch.Generator().manual_seed(0), fused=fused)


@pytest.mark.parametrize("case", ["mlp decoder", "gaussian family", "batch rule", "hard counts", "no steps"])
def test_the_fused_unroll_declines_what_it_does_not_compute(case):
    """Everything but the iP-VAE × linear decoder with relaxed counts, each element its own number of terms,
    falls back to the step-by-step unroll (None)."""
    temperature, steps = 0.5, 4
    if case == "mlp decoder":
        model = build_model(ModelConfig(n_inputs=12, n_latents=20, model="ipvae", decoder="mlp"), seed=1)
    elif case == "gaussian family":
        model = IGVAE(12, 20, seed=1)
    elif case == "batch rule":
        model = IPVAE(12, 20, seed=1, family_options={"n_exp_rule": "batch"})
    else:
        model = IPVAE(12, 20, seed=1)
        temperature, steps = (0.0, 4) if case == "hard counts" else (0.5, 0)
    x = _x(torch.float32)
    assert fused_unroll(model.components(), x, steps, beta=1.0, temperature=temperature, clamp_fraction=1.0,
                        generator=None, gradient_bound=1e6) is None
    assert unroll_applies(IPVAE(12, 20, seed=1).components(), x, 0.5)


def _grads_after(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _model_loss(model, x, seed):
    return model.unroll_loss(x, 5, beta=3.0, temperature=0.5, generator=torch.Generator().manual_seed(seed)).loss


def test_the_workspace_keeps_its_storage_from_one_iteration_to_the_next():
    """The point of the workspace: the second iteration writes into the first one's storage (no new allocation for
    glibc to fault in), and the gradients are still autograd's."""
    model, x = _model(), _x()
    first = _model_loss(model, x, 0)
    _grads_after(model, first)
    held = {name: t.data_ptr() for name, t in model.unroll_workspace._tensors.items()}
    assert set(held) >= {"u", "rates", "counts", "error"}
    second = _model_loss(model, x, 1)
    assert {name: t.data_ptr() for name, t in model.unroll_workspace._tensors.items()} == held
    fused = _grads_after(model, second)
    model.zero_grad(set_to_none=True)
    graph = unroll(model.components(), x, 5, beta=3.0, temperature=0.5, clamp_fraction=1.0,
                   generator=torch.Generator().manual_seed(1), fused=False)
    reference = _grads_after(model, graph.loss)
    for name, grad in reference.items():
        torch.testing.assert_close(fused[name], grad, rtol=1e-9, atol=1e-12 * float(grad.abs().max()), msg=name)


def test_two_live_unrolls_never_share_the_workspace():
    """Two forward passes before either backward (two losses summed, say): the second must not overwrite what the
    first saved, or the first one's gradients would silently be wrong."""
    model, x = _model(), _x()
    both = _grads_after(model, _model_loss(model, x, 0) + _model_loss(model, x[:5], 1))
    model.zero_grad(set_to_none=True)
    graphs = [unroll(model.components(), inputs, 5, beta=3.0, temperature=0.5, clamp_fraction=1.0,
                     generator=torch.Generator().manual_seed(seed), fused=False)
              for inputs, seed in ((x, 0), (x[:5], 1))]
    reference = _grads_after(model, graphs[0].loss + graphs[1].loss)
    for name, grad in reference.items():
        torch.testing.assert_close(both[name], grad, rtol=1e-9, atol=1e-12 * float(grad.abs().max()), msg=name)


def test_a_dropped_unroll_frees_the_workspace_and_a_copy_starts_empty():
    """A loss computed and thrown away (no backward) must not keep the workspace lent for ever; a model's copy (an
    EMA, a checkpointed clone) gets its own, empty workspace rather than a share of the original's storage."""
    import copy

    model, x = _model(), _x()
    loss = _model_loss(model, x, 0)
    held = model.unroll_workspace._tensors["u"].data_ptr()
    del loss
    again = _model_loss(model, x, 1)
    assert model.unroll_workspace._borrower() is again.grad_fn  # lent to the new unroll, not left to the dropped one
    assert model.unroll_workspace._tensors["u"].data_ptr() == held
    _grads_after(model, again)
    assert model.unroll_workspace._borrower is None  # given back by the backward pass
    assert copy.deepcopy(model).unroll_workspace._tensors == {}
    assert not any("workspace" in key for key in model.state_dict())


def test_a_failed_unroll_frees_the_workspace_and_a_second_backward_says_why_it_cannot_run():
    """A NaN rate stops the unroll; the workspace must not stay lent to it (the traceback keeps its frame alive,
    in a notebook for good), or every later iteration would allocate afresh. Backpropagating twice through one
    fused unroll cannot work (its storage is released): one clear line, not a TypeError from inside."""
    model, x = _model(), _x()
    spoiled = model.decoder.dictionary.detach().clone()
    spoiled[0, 0] = float("nan")
    with torch.no_grad():
        model.decoder.dictionary.copy_(spoiled)
    with pytest.raises(FloatingPointError) as failure:
        _model_loss(model, x, 0)
    assert failure.value is not None and model.unroll_workspace._borrower is None
    model, x = _model(), _x()
    loss = _model_loss(model, x, 0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward pass has run already"):
        loss.backward()
