"""The training engine: a whole BPTT unroll as one autograd Function, for the combination that admits it.

``fond.dynamics.unroll`` builds the unroll's graph step by step from the family's fused pieces (the relaxed
sampler, the training update, the Gaussian terms), about 300 tensor operations and a dozen autograd nodes a
step. For Poisson latents with a linear decoder on the CPU, ``fused_unroll`` runs the same computation — the
same kernels in the same order, the same draws from the same generator, the same values — forward in one loop
without autograd and backward in one hand-written loop in reverse (``_PoissonLinearUnroll``): per step, forward

    pull_t = e_{t−1}·Φ,  (u_t, r_t, KL_t) = update(u_{t−1}, r_{t−1}, pull_t),  z_t ~ relaxed(r_t),
    x̂_t = z_t·Φᵀ,  (e_t, NLL_t) = Gaussian terms(x, x̂_t)        (e = (x − x̂)/σ²)

and backward, from ∂L/∂NLL_t and ∂L/∂KL_t: the Gaussian terms' backward → ∂L/∂x̂_t, ·Φ → ∂L/∂z_t, times ∂z/∂r
(from the sampler) → ∂L/∂r_t, the update's backward → ∂L/∂u_{t−1} and ∂L/∂pull_t, ·Φᵀ → ∂L/∂e_{t−1}; the
dictionary's gradient accumulates x̂'s and the pull's products in place. Its gradients equal autograd's on the
same draws (``tests/test_unroll_engine.py``); it keeps what autograd would keep for the backward pass.

Its storage comes from an ``UnrollWorkspace`` the model keeps across iterations (``IterativeVAE.unroll_loss``):
allocated afresh each iteration, glibc returned it to the system after every backward pass and faulted it back in
(BENCHMARKS.md, sessions 30 and 31).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fond.decoders import LinearDecoder
from fond.families import sampling
from fond.families.poisson import (
    PoissonFamily,
    poisson_update_arrays,
    poisson_update_backward_arrays,
    relaxed_draw,
)
from fond.likelihood import gaussian_precision, gaussian_terms_arrays, gaussian_terms_backward
from fond.result import UnrollLoss

__all__ = ["UnrollWorkspace", "fused_unroll", "unroll_applies"]


def unroll_applies(parts, x: Tensor, temperature: float) -> bool:
    """Whether ``fused_unroll`` takes this unroll: an iP-VAE (``PoissonFamily`` itself, exact KL, each element its
    own number of arrival times) with a ``LinearDecoder``, τ > 0, x and every learned tensor on the CPU in one
    float dtype, and the relaxed sampler on its compiled path (``sampling.use_compiled_sampler``). Exact types: a
    subclass may change what a step computes."""
    family, decoder = parts.family, parts.decoder
    if type(family) is not PoissonFamily or type(decoder) is not LinearDecoder:
        return False
    tensors = (decoder.dictionary, parts.log_sigma, parts.bias, *parts.family_params.values())
    return (family.kl_form == "exact" and family.n_exp_rule == "element" and temperature > 0 and x.ndim == 2
            and parts.log_sigma.shape == (x.shape[1],) and not x.requires_grad and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
            and sampling.use_compiled_sampler(x))


def fused_unroll(parts, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float,
                 generator: torch.Generator | None, gradient_bound: float,
                 workspace: UnrollWorkspace | None = None) -> UnrollLoss | None:
    """``fond.dynamics.unroll`` as one autograd Function where ``unroll_applies`` (and steps ≥ 1), else None.

    parts: ``fond.dynamics.Components``; x (B, D); ``gradient_bound``: the bound on the gradient reaching each
    state (``fond.dynamics.STATE_GRADIENT_BOUND``); ``workspace``: storage kept across calls (else allocated)."""
    if steps < 1 or not unroll_applies(parts, x, temperature):
        return None
    family, params = parts.family, parts.family_params
    settings = (family, steps, float(beta), float(temperature), family.clamp(clamp_fraction), generator,
                gradient_bound, workspace)
    loss, table = _PoissonLinearUnroll.apply(parts.decoder.dictionary, parts.log_sigma, parts.bias,
                                             params["log_step_size"], params[family.initial_key], x, settings)
    table = table.to(torch.float64).numpy()
    return UnrollLoss(loss=loss, nll=table[:, 0].copy(), kl=table[:, 1].copy(),
                      rate_max=max(0.0, float(table[:, 2].max())))


class UnrollWorkspace:
    """The fused unroll's storage, kept from one training iteration to the next (``IterativeVAE`` holds one).

    Every iteration saves the same tensors for its backward pass (per step the state, the rates, the clamps' slopes,
    the pull, the counts and their slope in the rate, the error and the residual: ~11 (B, K) or (B, D) tensors).
    Allocated afresh, glibc gave them back to the system at the end of each backward pass and faulted them in again
    at the next forward (~8,000 page faults and ~25 ms of system time an iteration at B 200, T 32 on an AMD EPYC).
    A workspace lends its storage to one unroll at a time, from its forward until its backward pass has run or its
    graph is gone; an unroll that finds it lent allocates its own, so two live unrolls never share storage. Not
    saved with a model, and a copy of a model starts with an empty one."""

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}
        self._borrower = None  # a weak reference to the autograd context that holds the storage

    def lend(self, ctx, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, Tensor] | None:
        """Tensors of these shapes and dtypes (their values undefined), lent to ``ctx``; None while lent to
        another context that is still alive."""
        if self._borrower is not None and self._borrower() is not None:
            return None
        lent = {}
        for name, (shape, dtype) in shapes.items():
            held, size = self._tensors.get(name), math.prod(shape)
            if held is None or held.dtype != dtype or held.numel() < size:
                held = self._tensors[name] = torch.empty(size, dtype=dtype)
            lent[name] = held[:size].view(shape)
        self._borrower = weakref.ref(ctx)
        return lent

    def give_back(self, ctx) -> None:
        """The storage is free again once ``ctx``'s backward pass has used it."""
        if self._borrower is not None and self._borrower() is ctx:
            self._borrower = None

    def __reduce__(self):
        """A copy (``copy.deepcopy``, pickling by Ray or multiprocessing) is an empty workspace: storage is scratch."""
        return UnrollWorkspace, ()


def _storage(workspace: UnrollWorkspace | None, ctx, steps: int, batch: int, dictionary_shape, dtype) -> dict:
    """The unroll's tensors: (steps + 1, B, K) u, rates, counts, slope; (steps, B, K) s1, s2, pull; (steps + 1, B,
    D) error, residual; (steps + 1, B) nll, (steps, B) float64 kl; (B, D) decoded (one step's x̂). From the workspace
    where it is free, else newly allocated."""
    d, k = dictionary_shape
    shapes = {name: ((steps + 1, batch, k), dtype) for name in ("u", "rates", "counts", "slope")}
    shapes |= {name: ((steps, batch, k), dtype) for name in ("s1", "s2", "pull")}
    shapes |= {name: ((steps + 1, batch, d), dtype) for name in ("error", "residual")}
    shapes |= {"nll": ((steps + 1, batch), dtype), "kl": ((steps, batch), torch.float64),
               "decoded": ((batch, d), dtype)}
    lent = workspace.lend(ctx, shapes) if workspace is not None else None
    return lent if lent is not None else {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in
                                          shapes.items()}


class _PoissonLinearUnroll(torch.autograd.Function):
    """Inputs: Φ (D, K), log σ (D,), b (K,), log η (1,), u₀ (K,), x (B, D), the settings (family, steps, β, τ, c,
    generator, gradient bound, workspace). Outputs: the loss (scalar) and a (steps, 3) table of the per-step mean
    NLL, mean KL and largest rate (no gradient)."""

    @staticmethod
    def forward(ctx, dictionary, log_sigma, bias, log_step, initial, x, settings):  # noqa: D102
        family, steps, beta, temperature, c, generator, _, workspace = settings
        phi, x, bias = (t.detach().contiguous() for t in (dictionary, x, bias))
        inv_variance, constant = gaussian_precision(log_sigma)
        eta = float(torch.exp(log_step.detach()).reshape(()))
        store = _storage(workspace, ctx, steps, x.shape[0], phi.shape, x.dtype)
        try:
            _forward_steps(store, initial, phi, bias, x, eta, c, temperature, generator, family, inv_variance,
                           constant)
        except BaseException:  # (a failed unroll, or an interrupt, leaves the workspace free)
            if workspace is not None:
                workspace.give_back(ctx)
            raise
        rates = store["rates"]
        nll_steps, kl_steps = store["nll"][1:], store["kl"].to(x.dtype)  # (steps, B)
        scale = 256.0 / x.shape[1]
        loss = (nll_steps + beta * kl_steps).mean(1).sum() / steps * scale
        ctx.store, ctx.phi, ctx.bias, ctx.inv_variance, ctx.eta, ctx.scale = store, phi, bias, inv_variance, eta, scale
        ctx.settings = settings
        table = torch.stack([nll_steps.mean(1), kl_steps.mean(1), rates[1:].flatten(1).amax(1)], 1)
        ctx.mark_non_differentiable(table)
        return loss, table

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_table):  # noqa: D102
        if ctx.store is None:
            raise RuntimeError("the fused unroll's backward pass has run already (its storage is released); to "
                               "backpropagate twice, unroll with fused=False")
        _, steps, beta, _, _, _, bound, workspace = ctx.settings
        phi, inv_variance, eta, store = ctx.phi, ctx.inv_variance, ctx.eta, ctx.store
        u, rates, counts, slope, error, residual = (store[key] for key in (
            "u", "rates", "counts", "slope", "error", "residual"))
        batch, dtype = u.shape[1], phi.dtype
        per_input = float(grad_loss) * ctx.scale / steps / batch  # ∂L/∂NLL_t[b]; ∂L/∂KL_t[b] is β times it
        grad_nll, grad_kl = (torch.full((batch,), value, dtype=dtype) for value in (per_input, beta * per_input))
        grad_u = torch.zeros_like(u[0])  # ∂L/∂u_t from the later steps
        grad_error = torch.zeros(batch, phi.shape[0], dtype=dtype)  # ∂L/∂e_t from the next step's pull
        grad_phi, grad_log_sigma = torch.zeros_like(phi), torch.zeros(phi.shape[0], dtype=dtype)
        grad_bias, grad_log_step = torch.zeros(phi.shape[1], dtype=dtype), 0.0
        for t in range(steps, 0, -1):
            grad_rates = _decode_backward(grad_error, grad_nll, counts[t], slope[t], residual[t], phi, inv_variance,
                                          grad_phi, grad_log_sigma)
            update = (u[t - 1], u[t], rates[t - 1], rates[t], store["s1"][t - 1], store["s2"][t - 1],
                      store["pull"][t - 1], ctx.bias)
            grad_u, grad_g, step_terms = poisson_update_backward_arrays(grad_u, grad_rates, grad_kl, update, bound)
            grad_log_step += eta * float(step_terms.sum())
            grad_bias.sub_(grad_g.sum(0), alpha=eta)
            grad_pull = grad_g.mul_(eta)
            grad_error = grad_pull @ phi.T
            grad_phi.addmm_(error[t - 1].T, grad_pull)
        grad_rates = _decode_backward(grad_error, torch.zeros_like(grad_nll), counts[0], slope[0], residual[0], phi,
                                      inv_variance, grad_phi, grad_log_sigma)
        grad_initial = grad_u.add_(grad_rates.mul_(rates[0])).sum(0)  # u₀ = the initial vector for every input
        ctx.store = None
        if workspace is not None:
            workspace.give_back(ctx)
        return (grad_phi, grad_log_sigma, grad_bias, torch.full((1,), grad_log_step, dtype=dtype), grad_initial,
                None, None)


def _forward_steps(store: dict, initial: Tensor, phi: Tensor, bias: Tensor, x: Tensor, eta: float, c: float,
                   temperature: float, generator, family, inv_variance: Tensor, constant: float) -> None:
    """The unroll's forward pass into ``store`` (``_storage``): u₀ and r₀ = e^{u₀}, then per step the pull, the
    update, the relaxed draw, the decode and the Gaussian terms."""
    u, rates, counts, slope, error, residual, nll = (store[key] for key in (
        "u", "rates", "counts", "slope", "error", "residual", "nll"))
    u[0].copy_(initial.detach().expand(x.shape[0], -1))
    torch.exp(u[0], out=rates[0])
    draw = {"indicator": family.indicator, "tail": family.n_exp_tail, "max_terms": family.max_terms}
    for t in range(u.shape[0]):
        if t:
            pull = torch.mm(error[t - 1], phi, out=store["pull"][t - 1])
            poisson_update_arrays(u[t - 1], rates[t - 1], pull, bias, eta, c, family.floor, out=(
                u[t], rates[t], store["s1"][t - 1], store["s2"][t - 1], store["kl"][t - 1]))
        relaxed_draw(rates[t], temperature, generator, **draw, out=(counts[t], slope[t]))
        decoded = torch.mm(counts[t], phi.T, out=store["decoded"])
        gaussian_terms_arrays(x, decoded, inv_variance, constant, out=(error[t], residual[t], nll[t]))


def _decode_backward(grad_error: Tensor, grad_nll: Tensor, counts: Tensor, slope: Tensor, residual: Tensor,
                     phi: Tensor, inv_variance: Tensor, grad_phi: Tensor, grad_log_sigma: Tensor) -> Tensor:
    """One step's Gaussian terms, decode and sample backward: ∂L/∂r (B, K) from ∂L/∂e and ∂L/∂NLL; adds the step's
    parts of ∂L/∂Φ and ∂L/∂log σ in place."""
    grad_mean, grad_sigma = gaussian_terms_backward(grad_error, grad_nll, residual, inv_variance)
    grad_log_sigma.add_(grad_sigma)
    grad_phi.addmm_(grad_mean.T, counts)
    return (grad_mean @ phi).mul_(slope)

