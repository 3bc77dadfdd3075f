"""The Poisson family: the flexible choice that turns FOND into the iterative Poisson VAE.

State: membrane potentials ``u`` (B×K, nats); rates ``r = exp(u)`` (spikes per inference step);
``q(z) = ∏_k Pois(z_k; r_k)``. This module holds everything that depends on that choice: the KL
divergence between two Poisson posteriors, the exact sampler used at evaluation, and the relaxed
(reparameterised) sampler used in training. The dynamics that consume them live in ``fond.dynamics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fond.errors import DataError
from fond.families.base import Params, PotentialFamily, Sample, State, register_family
from fond.families.sampling import draw_key, poisson_tail_cutoff, sample_poisson, use_compiled_sampler

__all__ = [
    "PoissonFamily",
    "soft_clamp_upper",
    "INDICATORS",
    "KL_FORMS",
    "N_EXP_RULES",
    "poisson_kl",
    "relaxed_poisson",
    "relaxed_draw",
    "poisson_update_arrays",
    "poisson_update_backward_arrays",
    "sample_poisson",
    "poisson_tail_cutoff",
    "n_terms_for",
]

KLForm = Literal["exact", "reference"]
Indicator = Literal["sigmoid", "cubic", "straight_through"]
KL_FORMS: tuple[str, ...] = ("exact", "reference")
INDICATORS: tuple[str, ...] = ("sigmoid", "cubic", "straight_through")
#: how many arrival times the relaxed sampler gives each element: "element" (each its own, from its rate) or
#: "batch" (all the same, from the batch's largest rate: the authors' code)
N_EXP_RULES: tuple[str, ...] = ("element", "batch")


def poisson_kl(u: Tensor, u_prior: Tensor, form: KLForm = "exact") -> Tensor:
    """KL(Pois(exp(u)) ‖ Pois(exp(u_prior))), elementwise, in nats.

    ``form="exact"``: r₀ − r + r·(u − u₀), written as r·(expm1(−Δ) + Δ) with Δ = u − u₀ so that it
    stays accurate (and ≥ 0) for tiny Δ. ``form="reference"``: the paper code's expression
    r·(1 + e^Δ(Δ − 1)) = e^Δ · KL, offered only for bit-faithful replication of its training runs.
    Both vanish iff u = u₀. Shapes broadcast; the result has the broadcast shape.
    """
    if not (isinstance(u, Tensor) and isinstance(u_prior, Tensor)):
        try:
            u, u_prior = torch.as_tensor(u), torch.as_tensor(u_prior)
        except (TypeError, ValueError, RuntimeError):
            raise DataError("poisson_kl: u and u_prior must be numeric tensors or arrays") from None
    if not (u.is_floating_point() and u_prior.is_floating_point()):
        raise DataError(f"poisson_kl: u and u_prior must be floating point, got {u.dtype} and {u_prior.dtype}")
    delta = u - u_prior
    rate = torch.exp(u)
    if form == "exact":
        return rate * (torch.expm1(-delta) + delta)
    if form == "reference":
        return rate * (1.0 + torch.exp(delta) * (delta - 1.0))
    raise ValueError(f"unknown Poisson KL form {form!r}: expected one of {KL_FORMS}")


def n_terms_for(rates: Tensor, tail: float = 1e-3, max_terms: int = 256) -> int:
    """Number of exponential arrival times the relaxed sampler needs for this batch.

    The smallest n with P(Pois(r_max) > n) < ``tail``, r_max the largest rate at hand, capped at
    ``max_terms`` (counts above the cap are truncated: a documented bias for pathological rates).
    """
    rate_max = float(rates.detach().max()) if rates.numel() else 0.0
    if not math.isfinite(rate_max):
        raise FloatingPointError("non-finite Poisson rate in the relaxed sampler")
    return max(1, min(max_terms, poisson_tail_cutoff(rate_max, tail)))


def _cubic_step(x: Tensor) -> Tensor:
    s = torch.clamp(0.5 * x + 0.5, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


_BUCKET_TERMS: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _rate_limits(tail: float) -> list[tuple[int, float]]:
    """For each bucket size n, the largest rate whose tail P(Pois(r) > n) is still below ``tail``."""
    from scipy import optimize, stats

    limits = []
    for n in _BUCKET_TERMS:
        limits.append((n, float(optimize.brentq(lambda r, n=n: stats.poisson.sf(n, r) - tail, 1e-12, 4.0 * n + 50))))
    return limits


_LIMITS_CACHE: dict[float, list[tuple[int, float]]] = {}


def _relaxed_from_uniforms(rates: Tensor, uniforms: Tensor, temperature: float, indicator: str,
                           used: Tensor | None = None) -> Tensor:
    """The relaxed count written out with autograd, from explicit uniforms (rates.shape + (n,)).

    The reference the compiled sampler is tested against (same draws → same value and gradient), and
    the path for tensors off the CPU. Materialises (…, n) tensors for the backward pass. ``used``: a
    boolean (…, n) mask of the terms each element counts (its own number of arrival times), None for all.
    """
    # −log U is Exp(1); tiny(U) guards log(0) without biasing (P(U < tiny) is ~1e-38).
    exp1 = -torch.log(uniforms.clamp_min(torch.finfo(uniforms.dtype).tiny))
    arrival_times = torch.cumsum(exp1, dim=-1) / rates.unsqueeze(-1)
    margin = 1.0 - arrival_times
    weight = 1.0 if used is None else used.to(rates.dtype)
    if temperature == 0.0 or indicator == "straight_through":
        hard = ((margin > 0).to(rates.dtype) * weight).sum(-1)
        if temperature == 0.0:
            return hard + 0.0 * rates if rates.requires_grad else hard
    scaled = margin / temperature
    if indicator == "sigmoid":
        return (torch.sigmoid(scaled) * weight).sum(-1)
    if indicator == "cubic":
        return (_cubic_step(scaled) * weight).sum(-1)
    soft = (torch.sigmoid(scaled) * weight).sum(-1)
    return hard + (soft - soft.detach())


def _relaxed_torch(rates: Tensor, temperature: float, generator: torch.Generator | None, indicator: str,
                   limits, sizes) -> Tensor:
    """The element rule of ``relaxed_poisson`` in torch ops (any device): every element draws as many arrival
    times as the batch's largest own number and counts only its own (``_term_table``), so one pass and one
    host synchronisation (the largest number) serve the whole batch."""
    flat = rates.reshape(-1)
    if flat.numel() == 0:
        return rates * 0.0
    own = torch.as_tensor(sizes, device=flat.device)[
        torch.bucketize(flat.detach().contiguous(), torch.as_tensor(limits, dtype=flat.dtype, device=flat.device))]
    n = int(own.max())
    uniforms = torch.rand((flat.numel(), n), generator=generator, dtype=rates.dtype, device=rates.device)
    used = torch.arange(n, device=flat.device) < own.unsqueeze(-1)
    return _relaxed_from_uniforms(flat, uniforms, temperature, indicator, used).reshape(rates.shape)


_INDICATOR_CODES = {"sigmoid": 0, "cubic": 1, "straight_through": 2}
#: how far past t = 1, in units of τ, the compiled sampler draws an element's sigmoid terms, by the output's
#: width: the terms left out add up to ~r·τ·e^{−reach} to the count (float64 e^{−40} = 4e-18, float32 e^{−22} =
#: 3e-10: below each width's resolution) and < (1 + reach·τ)·e^{−reach}/τ to the derivative in log r
RELAXED_REACH = {torch.float64: 40.0, torch.float32: 22.0}
NON_FINITE_RATE = "non-finite Poisson rate in the relaxed sampler"


class _CompiledRelaxedPoisson(torch.autograd.Function):
    """Relaxed counts from the compiled kernel; the backward multiplies by ∂count/∂r computed alongside,
    so nothing of size (…, n_terms) is kept for the backward pass (one tensor of the rates' shape)."""

    @staticmethod
    def forward(ctx, rates, temperature, key1, key2, limits, sizes, indicator):  # noqa: D102
        counts, derivative = _relaxed_arrays(rates.detach().contiguous(), temperature, key1, key2, limits, sizes,
                                             indicator)
        ctx.save_for_backward(derivative)
        return counts

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (derivative,) = ctx.saved_tensors
        return grad * derivative, None, None, None, None, None, None


def _relaxed_arrays(rates: Tensor, temperature: float, key1, key2, limits, sizes, indicator: int,
                    out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(counts, ∂counts/∂r) of contiguous CPU float rates from ``kernels.relaxed_counts`` (into ``out``, two
    contiguous tensors of the rates' shape and dtype, if given); FloatingPointError for a non-finite rate."""
    from fond.families.kernels import relaxed_counts
    from fond.families.sampling import kernel_threads

    flat = rates.reshape(-1)
    counts, derivative = (t.view(-1) for t in out) if out is not None else (torch.empty_like(flat),
                                                                             torch.empty_like(flat))
    if relaxed_counts(flat.numpy(), counts.numpy(), derivative.numpy(), key1, key2, temperature, limits, sizes,
                      indicator, RELAXED_REACH[flat.dtype], kernel_threads(flat.numel())):
        raise FloatingPointError(NON_FINITE_RATE)
    return counts.view(rates.shape), derivative.view(rates.shape)


def relaxed_draw(rates: Tensor, temperature: float, generator: torch.Generator | None, *,
                 indicator: Indicator = "sigmoid", tail: float = 1e-3, max_terms: int = 1024,
                 out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``relaxed_poisson``'s compiled draw (element rule) without autograd: (counts, ∂counts/∂r), the shape of
    ``rates`` (contiguous, CPU, float32/float64; written into ``out`` if given), for τ > 0 — the same key from
    ``generator`` and the same values, for code that writes its own backward pass (``fond.unroll_engine``)."""
    limits, sizes = _term_table(tail, max_terms, None)
    key1, key2 = draw_key(generator)
    return _relaxed_arrays(rates, float(temperature), key1, key2, limits, sizes, _INDICATOR_CODES[indicator], out)


def _term_table(tail: float, max_terms: int, n_terms: int | None) -> tuple:
    """(limits, sizes) for the kernel: element of rate r takes the first size whose limit covers r."""
    import numpy as np

    if n_terms is not None:
        return np.zeros(0), np.array([n_terms], dtype=np.int64)
    if tail not in _LIMITS_CACHE:
        _LIMITS_CACHE[tail] = _rate_limits(tail)
    table = [(n, r) for n, r in _LIMITS_CACHE[tail] if n < max_terms]
    return np.array([r for _, r in table]), np.array([n for n, _ in table] + [max_terms], dtype=np.int64)


def relaxed_poisson(
    rates: Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    *,
    indicator: Indicator = "sigmoid",
    n_terms: int | None = None,
    tail: float = 1e-3,
    max_terms: int = 1024,
    backend: str = "auto",
) -> Tensor:
    """Reparameterised Poisson sample via exponential arrival times, differentiable in ``rates``.

    Draws inter-arrival times Δ_j = −log(U_j)/r (U_j uniform), arrival times T_j = Σ_{i≤j} Δ_i, and
    counts the arrivals inside the unit interval with a soft indicator: z = Σ_j g((1 − T_j)/τ).
    ``indicator``: "sigmoid" (the paper's; biased upward at high τ), "cubic" (smooth-step, exactly 0/1
    outside |1 − T_j| < τ, symmetric so far less biased), "straight_through" (forward: the hard count,
    an exact truncated Poisson draw; backward: the sigmoid relaxation's gradient). τ = 0 gives hard
    counts. ``rates``: any shape; returns a float tensor of the same shape.

    Number of arrival times: ``n_terms`` if given (one size for all). Otherwise each element gets the
    smallest of 4, 8, 16, … terms (up to ``max_terms``) whose truncation probability at its own rate is
    below ``tail``: most rates are tiny, so this costs a fraction of sizing every element for the batch's
    largest rate, with the same per-element truncation guarantee.

    On CPU (float32/float64) one compiled pass (``fond.families.kernels.relaxed_counts``) computes the
    count and its derivative in the rate together, term by term, and stops an element's terms once its
    arrival times are past 1 + 40τ (float32: 1 + 22τ; ``RELAXED_REACH``: the later terms add less than the
    output's resolution); the backward pass is one product.
    Elsewhere (or with ``backend="torch"``, ``fond.families.sampling.SAMPLER_BACKENDS``) the same estimator
    is written out with torch ops (``_relaxed_from_uniforms``), without inspecting the rates off the CPU.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if indicator not in INDICATORS:
        raise ValueError(f"unknown indicator {indicator!r}: expected one of {INDICATORS}")
    detached = rates.detach()
    compiled = use_compiled_sampler(rates, backend)  # (the kernel checks the rates itself, in its first pass)
    if not compiled and rates.device.type == "cpu" and detached.numel() and not torch.isfinite(detached).all():
        raise FloatingPointError(NON_FINITE_RATE)
    if compiled:
        limits, sizes = _term_table(tail, max_terms, n_terms)
        key1, key2 = draw_key(generator)
        if temperature == 0.0:
            hard = _CompiledRelaxedPoisson.apply(detached, 1.0, key1, key2, limits, sizes, 2)
            return hard + 0.0 * rates if rates.requires_grad else hard
        return _CompiledRelaxedPoisson.apply(rates, float(temperature), key1, key2, limits, sizes,
                                             _INDICATOR_CODES[indicator])
    if n_terms is not None:
        uniforms = torch.rand((*rates.shape, n_terms), generator=generator, dtype=rates.dtype, device=rates.device)
        return _relaxed_from_uniforms(rates, uniforms, temperature, indicator)
    return _relaxed_torch(rates, temperature, generator, indicator, *_term_table(tail, max_terms, None))


def soft_clamp_upper(x: Tensor, c: float, floor: float = -8.0) -> Tensor:
    """Hard floor, then the smooth upper bound c − softplus(c − x) (≈ x well below c, → c above).

    On the CPU (float32/float64) one compiled pass computes the value and its derivative, and the backward
    pass is one product (``_SoftClampUpper``); elsewhere the torch expression. Same values and gradients
    (torch's softplus threshold and clamp_min derivative included; tested against the expression)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.numel():
        return _SoftClampUpper.apply(x, float(c), float(floor))
    return c - F.softplus(c - x.clamp_min(floor))


def poisson_update_arrays(u: Tensor, rates: Tensor, pull: Tensor, bias: Tensor, eta: float, c: float,
                          floor: float, *, out: tuple[Tensor, ...] | None = None) -> tuple[Tensor, ...]:
    """``PoissonFamily.training_update`` on contiguous CPU tensors without autograd
    (``kernels.poisson_update_forward``): (u', e^{u'}, the clamps' slopes s1, s2, KL per input (B,) float64), written
    into ``out`` (five contiguous tensors of those shapes and dtypes) if given."""
    from fond.families.kernels import poisson_update_forward, poisson_update_forward32
    from fond.families.sampling import kernel_threads

    if out is None:
        out = (*torch.empty((4, *u.shape), dtype=u.dtype), torch.empty(u.shape[0], dtype=torch.float64))
    new, rates_out, s1, s2, kl = out
    kernel_threads(u.numel())
    forward = poisson_update_forward32 if u.dtype == torch.float32 else poisson_update_forward
    forward(u.numpy(), rates.numpy(), pull.numpy(), bias.numpy(), eta, c, floor, new.numpy(), rates_out.numpy(),
            s1.numpy(), s2.numpy(), kl.numpy())
    return new, rates_out, s1, s2, kl


def poisson_update_backward_arrays(grad_new: Tensor, grad_rates: Tensor, grad_kl: Tensor, saved: tuple,
                                   bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """The backward pass of ``poisson_update_arrays`` (``kernels.poisson_update_backward``) from ∂L/∂u', ∂L/∂e^{u'}
    (B, K) and ∂L/∂kl (B,), contiguous; ``saved``: (u, u', rates in, rates out, s1, s2, pull, bias). Returns
    (∂L/∂u, ∂L/∂g with g = η(pull − b), the per-input terms Σ_k ∂L/∂g·(pull − b) in float64)."""
    from fond.families.kernels import poisson_update_backward
    from fond.families.sampling import kernel_threads

    s1 = saved[4]
    grad_u, grad_g = torch.empty_like(s1), torch.empty_like(s1)
    step_terms = torch.empty(s1.shape[0], dtype=torch.float64)
    kernel_threads(s1.numel())
    poisson_update_backward(grad_new.numpy(), grad_rates.numpy(), grad_kl.numpy(), *(t.numpy() for t in saved), bound,
                            grad_u.numpy(), grad_g.numpy(), step_terms.numpy())
    return grad_u, grad_g, step_terms


class _PoissonUpdate(torch.autograd.Function):
    """``PoissonFamily.training_update``: forward ``poisson_update_arrays``, backward
    ``poisson_update_backward_arrays``; writes two (B, K) tensors for the backward pass beside its outputs (the
    clamps' slopes; the KL's derivatives come back from u, u' and the rates). ``rates`` is e^u, taken as a value:
    its gradient is part of u's."""

    @staticmethod
    def forward(ctx, u, rates, pull, bias, log_step, c, floor, bound):  # noqa: D102
        u_in, rates_in, pull_in, bias_in = (t.detach().contiguous() for t in (u, rates, pull, bias))
        eta = float(torch.exp(log_step.detach()).reshape(()))
        new, rates_out, s1, s2, kl = poisson_update_arrays(u_in, rates_in, pull_in, bias_in, eta, c, floor)
        ctx.save_for_backward(u_in, new, rates_in, rates_out, s1, s2, pull_in, bias_in)
        ctx.eta, ctx.bound = eta, bound
        return new, rates_out, kl.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_new, grad_rates, grad_kl):  # noqa: D102
        saved = ctx.saved_tensors
        s1 = saved[4]
        grad_new = torch.zeros_like(s1) if grad_new is None else grad_new.contiguous()
        grad_rates = torch.zeros_like(s1) if grad_rates is None else grad_rates.contiguous()
        grad_kl = torch.zeros(s1.shape[0], dtype=s1.dtype) if grad_kl is None else grad_kl.contiguous()
        grad_u, grad_g, step_terms = poisson_update_backward_arrays(grad_new, grad_rates, grad_kl, saved, ctx.bound)
        eta = ctx.eta
        grad_log_step = torch.full((1,), eta * float(step_terms.sum()), dtype=s1.dtype)
        grad_bias = grad_g.sum(0).mul_(-eta)  # (before grad_g is scaled in place for the pull-back's gradient)
        return grad_u, None, grad_g.mul_(eta), grad_bias, grad_log_step, None, None, None


class _SoftClampUpper(torch.autograd.Function):
    """``soft_clamp_upper`` from ``fond.families.kernels.soft_clamp_forward``: keeps one tensor (the slope)."""

    @staticmethod
    def forward(ctx, x, c, floor):  # noqa: D102
        from fond.families.kernels import soft_clamp_forward
        from fond.families.sampling import kernel_threads

        flat = x.detach().contiguous().view(-1)
        y, slope = torch.empty_like(flat), torch.empty_like(flat)
        kernel_threads(flat.numel())
        soft_clamp_forward(flat.numpy(), y.numpy(), slope.numpy(), c, floor)
        ctx.save_for_backward(slope.view(x.shape))
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


@register_family("poisson")
@dataclass(frozen=True)
class PoissonFamily(PotentialFamily):
    """Poisson latents in membrane-potential coordinates: the iterative Poisson VAE (DESIGN.md §2.1).

    State ``(u,)``, rates e^u. Fisher metric diag(e^u), so the natural gradient of the free energy is
    ∂F/∂r; with spikes in the recurrent term and b for the ½diag(ΦᵀΣ⁻¹Φ) term one step is
    u ← clamp(u + clamp(η(Φᵀ(x − Φz)/σ² − b))), soft upper clamps c − softplus(c − ·) after a hard floor.

    Options: u_init_low/high: range of the uniform initial potentials (nats, learned per neuron).
    clamp_init/clamp_final: the upper clamp bound c on u and Δu, ramped during training, final in
    evaluation. floor: hard lower bound. kl_form: "exact" or "reference" (the paper code's e^Δ-weighted form).
    indicator: relaxed-sampler indicator ("sigmoid", "cubic", "straight_through"). n_exp_tail: tail mass
    that sets the relaxed sampler's number of arrival times; max_terms caps it. n_exp_rule: "element" (each
    element gets the fewest terms that cover its own rate up to n_exp_tail) or "batch" (every element gets the
    terms that cover the batch's largest rate, ``n_terms_for``, as the authors' code does; at high τ the extra
    terms of the smaller rates add sigmoid tail mass: a rate of 7 at τ = 1 relaxes to a mean count of 9.0 with
    the batch's 36 terms against 7.3 with its own 16, and its pathwise gradient is 1.2 against 0.57).
    """

    u_init_low: float = -6.0
    u_init_high: float = -4.0
    clamp_init: float = 2.0
    clamp_final: float = 10.0
    floor: float = -8.0
    kl_form: str = "exact"
    indicator: str = "sigmoid"
    n_exp_tail: float = 1e-3
    max_terms: int = 1024
    n_exp_rule: str = "element"

    state_names: ClassVar[tuple[str, ...]] = ("u",)
    integer_samples: ClassVar[bool] = True

    def validate(self) -> None:
        for key in ("u_init_low", "u_init_high", "clamp_init", "clamp_final", "floor", "n_exp_tail"):
            value = getattr(self, key)
            self._require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                          key, f"must be a finite number, got {value!r}")
        self._require(isinstance(self.max_terms, int) and not isinstance(self.max_terms, bool)
                      and self.max_terms >= 1, "max_terms", f"must be an integer ≥ 1, got {self.max_terms!r}")
        self._require(self.u_init_low < self.u_init_high, "u_init_low", "must be < u_init_high")
        self._require(0 < self.clamp_init <= self.clamp_final, "clamp_init", "need 0 < clamp_init ≤ clamp_final")
        self._require(self.floor < self.u_init_low, "floor", "must lie below u_init_low")
        self._require(self.kl_form in KL_FORMS, "kl_form", f"expected 'exact' or 'reference', got {self.kl_form!r}")
        self._require(self.indicator in INDICATORS, "indicator",
                      f"expected sigmoid, cubic or straight_through, got {self.indicator!r}")
        self._require(0 < self.n_exp_tail < 1, "n_exp_tail", "must lie in (0, 1)")
        self._require(self.n_exp_rule in N_EXP_RULES, "n_exp_rule",
                      f"expected 'element' or 'batch', got {self.n_exp_rule!r}")

    def initial_range(self) -> tuple[float, float]:
        return self.u_init_low, self.u_init_high

    def sample(self, state: State, params: Params, generator: torch.Generator | None,
               temperature: float | None, mean_code: Tensor | None = None) -> Sample:
        rates = torch.exp(state[0]) if mean_code is None else mean_code
        if temperature is None:
            return Sample(sample_poisson(rates, generator))
        n_terms = n_terms_for(rates, self.n_exp_tail, self.max_terms) if self.n_exp_rule == "batch" else None
        return Sample(relaxed_poisson(rates, temperature, generator, indicator=self.indicator,  # type: ignore[arg-type]
                                      n_terms=n_terms, tail=self.n_exp_tail, max_terms=self.max_terms))

    def descend(self, state: State, direction: State, params: Params, clamp_fraction: float) -> State:
        c = self.clamp(clamp_fraction)
        du = soft_clamp_upper(torch.exp(params["log_step_size"]) * -direction[0], c, self.floor)
        return (soft_clamp_upper(state[0] + du, c, self.floor),)

    def kl(self, state: State, prior_state: State) -> Tensor:
        return poisson_kl(state[0], prior_state[0], self.kl_form)  # type: ignore[arg-type]

    def training_update(self, state: State, sample: Sample, error_pullback: Tensor, bias: Tensor, params: Params,
                        clamp_fraction: float, gradient_bound: float,
                        mean_code: Tensor | None = None) -> tuple[State, Tensor, Tensor] | None:
        """u' = G(u + G(η(pull − b))), the rates e^{u'} and Σ_k KL(Pois(e^{u'}) ‖ Pois(e^u)) (exact form) in one
        compiled pass, backward in another (``_PoissonUpdate``), on the CPU in float32/float64; None elsewhere.
        ``mean_code``: e^u where the caller has it (the previous step's rates), else computed here."""
        u = state[0]
        log_step = params["log_step_size"]
        tensors = (u, error_pullback, bias, log_step)
        if self.kl_form != "exact" or any(t.device.type != "cpu" or t.dtype != u.dtype for t in tensors) or (
                u.dtype not in (torch.float32, torch.float64)):
            return None
        c = self.clamp(clamp_fraction)
        rates = torch.exp(u.detach()) if mean_code is None else mean_code
        new, new_rates, kl = _PoissonUpdate.apply(u, rates, error_pullback, bias, log_step, c, self.floor,
                                                  gradient_bound)
        return (new,), kl, new_rates

    def mean_code(self, state: State, params: Params) -> Tensor:
        return torch.exp(state[0])

    def saturation_rate(self) -> float:
        """Half the largest rate the final clamp allows, e^c / 2 (spikes per step): a population that reaches
        it in training is bursting (``fond.train.BurstMonitor``); ``saturated`` uses the same bound."""
        return math.exp(self.clamp_final) / 2.0

    def saturated(self, state: State, params: Params) -> Tensor:
        """Inputs whose largest rate is within a factor 2 of the clamp e^c (a population burst)."""
        return state[0].max(dim=-1).values >= self.clamp_final - math.log(2.0)
