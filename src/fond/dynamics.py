"""FOND's fixed prescription: natural-gradient descent on the free energy, online belief updating,
iterative refinement — as pure functions of explicit state.

Whatever the family (``fond.families``) and decoder (``fond.decoders``), one step is

    z_t ~ q_t;   ∂F/∂z = −f'(z_t) ⊙ J_g(f(z_t))ᵀ (x − g(f(z_t))) / σ_x²;
    state_{t+1} = state_t − η · G(state_t)⁻¹ (∂F/∂state + bias),   then the family's soft clamps,

with the online prior q_prior ← q_t, so the KL's gradient vanishes at the start of every step. For
Poisson latents and a linear decoder this is u_{t+1} = u_t + η(Φᵀ(x − Φz_t)/σ_x² − b). ``unroll``
(training: relaxed samples, BPTT loss) and ``rollout`` (evaluation: exact samples, per-step trace, through
the one inference loop ``fond.rollout.run_inference`` with ``FondSteps``) are the two loops over that step.
Nothing keeps state between calls, so rollouts do not depend on call order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fond.decoders import Decoder, LinearDecoderOperators
from fond.engine import fused_engine
from fond.families.base import Family, Sample, State
from fond.families.poisson import soft_clamp_upper
from fond.families.sampling import kernel_threads
from fond.likelihood import gaussian_precision, gaussian_terms
from fond.metrics import zeros_fraction
from fond.residual_basis import FrameTerms, ResidualBasis, frame_terms, pays, residual_basis
from fond.result import InferenceResult, UnrollLoss
from fond.rollout import DEFAULT_WINDOW, InferenceSteps, Step, rows_of, run_inference
from fond.unroll_engine import UnrollWorkspace, fused_unroll

__all__ = ["Components", "FondSteps", "fond_step", "unroll", "rollout", "soft_clamp_upper"]


@dataclass(frozen=True)
class Components:
    """What the dynamics read off a model: the family (with its learned tensors), the decoder, the
    per-pixel log σ_x (D,) after its clamp, and the per-neuron bias b = exp(log b) (K,)."""

    family: Family
    family_params: Mapping[str, Tensor]
    decoder: Decoder
    log_sigma: Tensor
    bias: Tensor

    @property
    def inv_variance(self) -> Tensor:
        return torch.exp(-2.0 * self.log_sigma)


def fond_step(family: Family, family_params: Mapping[str, Tensor], state: State, sample: Sample,
              error_pullback: Tensor, bias: Tensor, clamp_fraction: float = 1.0) -> State:
    """One FOND step from the state, its sample and J_gᵀ(x − g(f(z)))/σ_x² (B, K): the new state.

    ``clamp_fraction``: how far the family's clamp bounds have ramped (1 = final, as in evaluation).
    """
    derivative = family.activation_derivative(sample.value, family_params)
    grad_z = -error_pullback if derivative is None else -derivative * error_pullback
    direction = family.natural_gradient(state, sample, grad_z, bias, family_params)
    return family.descend(state, direction, family_params, clamp_fraction)


#: bound on each element of ∂loss/∂state flowing back through the unroll. Once a population bursts to the
#: clamp, ∂L/∂u grows ~1.7× per step backwards; over T_train 128 it overflows float32 and meets the saturated
#: clamp's zero derivative (inf·0 = NaN). Unsaturated unrolls stay orders of magnitude below the bound, so
#: their gradient is unchanged (tests/test_numerical_safety.py); the trainer's norm clip acts afterwards.
STATE_GRADIENT_BOUND = 1e6


def _bound_state_gradient(grad: Tensor) -> Tensor:
    return grad.clamp(-STATE_GRADIENT_BOUND, STATE_GRADIENT_BOUND)


def unroll(parts: Components, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float,
           generator: torch.Generator | None = None, fused: bool = True,
           workspace: UnrollWorkspace | None = None) -> UnrollLoss:
    """Unroll ``steps`` steps with relaxed samples from the initial state; return the BPTT objective.

    Each step samples z_t from q_t once; that sample is decoded for the step's NLL and also drives the
    next update (one sample shared where the paper's code draws two: the same expected objective, half
    the sampling). Per step: NLL(x | g(f(z_t))) + β·KL(q_t ‖ q_{t−1}); the loss is the batch mean of the
    mean over steps, times 256/D (the paper's scaling). The gradient reaching each state is bounded
    elementwise by ``STATE_GRADIENT_BOUND`` (only active in an exploding unroll). Where the family offers a
    fused training step (``Family.training_update``: the iP-VAE on the CPU) it replaces ``fond_step`` and the
    KL, with the same values and gradients. Where the whole unroll admits one autograd Function (the iP-VAE with a
    linear decoder on the CPU: ``fond.unroll_engine.fused_unroll``) it runs as one unless ``fused=False`` — the same
    draws, values and gradients without a graph of every step; ``workspace`` (``fond.unroll_engine.UnrollWorkspace``)
    keeps its storage from one call to the next.
    """
    if fused:
        whole = fused_unroll(parts, x, steps, beta=beta, temperature=temperature, clamp_fraction=clamp_fraction,
                             generator=generator, gradient_bound=STATE_GRADIENT_BOUND, workspace=workspace)
        if whole is not None:
            return whole
    family, fp, decoder = parts.family, parts.family_params, parts.decoder
    precision = gaussian_precision(parts.log_sigma)  # (σ⁻², the NLL's constant): once, not once a step
    state = family.initial_state(fp, x.shape[0])
    sample = family.sample(state, fp, generator, temperature)
    reconstruction, pull = decoder.with_pullback(family.activation(sample.value, fp))
    scaled_error, _ = gaussian_terms(x, reconstruction, parts.log_sigma, precision)
    # per step: NLL and KL (B,) and the largest rate, stacked once after the loop (a few tensor operations per
    # step fewer, and one node in the backward graph instead of four a step)
    nlls, kls, largest = [], [], []
    mean = None  # the state's mean code where the fused step returned it
    for _ in range(steps):
        error_pullback = pull(scaled_error)
        fused = family.training_update(state, sample, error_pullback, parts.bias, fp, clamp_fraction,
                                       STATE_GRADIENT_BOUND, mean_code=mean)
        if fused is None:
            new_state = fond_step(family, fp, state, sample, error_pullback, parts.bias, clamp_fraction)
            for tensor in new_state:
                if tensor.requires_grad:
                    tensor.register_hook(_bound_state_gradient)
            kl, mean = family.kl(new_state, state).sum(-1), None
            sample = family.sample(new_state, fp, generator, temperature)
        else:
            new_state, kl, mean = fused
            sample = family.sample(new_state, fp, generator, temperature, mean_code=mean)
        reconstruction, pull = decoder.with_pullback(family.activation(sample.value, fp))
        # (x − x̂)/σ², NLL: one pass
        scaled_error, nll = gaussian_terms(x, reconstruction, parts.log_sigma, precision)
        nlls.append(nll)
        kls.append(kl)
        largest.append((family.mean_code(new_state, fp) if mean is None else mean).detach().amax())  # (max(): 2×)
        state = new_state
    scale = 256.0 / x.shape[1]
    if not steps:  # (as the mean over no steps: NaN)
        return UnrollLoss(loss=x.new_zeros(()) / steps * scale, nll=np.zeros(0), kl=np.zeros(0), rate_max=0.0)
    nll_steps, kl_steps = torch.stack(nlls), torch.stack(kls)  # (steps, B)
    total = (nll_steps + beta * kl_steps).mean(1).sum()
    table = torch.stack([nll_steps.detach().mean(1), kl_steps.detach().mean(1), torch.stack(largest)], 1)
    table = table.to(torch.float64).cpu().numpy()
    return UnrollLoss(loss=total / steps * scale, nll=table[:, 0].copy(), kl=table[:, 1].copy(),
                      rate_max=max(0.0, float(table[:, 2].max())))


class FondSteps(InferenceSteps):
    """FOND's evaluation step as the rollout loop (``fond.rollout.run_inference``) drives it.

    Each step applies ``fond_step`` to the previous state with its evaluation sample (exact counts, hard
    binaries, τ = 1 Gaussians) and draws the next; the prior of step t is the online prior q_{t−1}, so the
    trace's ``kl`` is KL(q_t ‖ q_{t−1}). Per-frame constants are the decoder's operators (for a linear
    decoder Φᵀx/σ² and ΦᵀΣ⁻¹Φ: a step is one (B×K)·(K×K) product). Where ``fond.engine.fused_engine``
    offers an engine for the family × operators pair (Poisson × linear: ``PoissonLinearEngine``), the steps
    run on it instead (same draws, same results to rounding) unless ``fused=False``; it computes the state
    only when the trace asks for it.
    """

    def __init__(self, parts: Components, *, fused: bool = True) -> None:
        super().__init__()
        self.parts, self.fused = parts, fused
        self.state_names = parts.family.state_names
        self.log_sigma = parts.log_sigma
        self.engine = None
        self.keep_state = True
        self._atoms: Tensor | None = None  # Φᵀ (K, D) contiguous, for the trace's fit (``_atoms_of``)
        self._atom_panels: np.ndarray | None = None  # Φᵀ in panels of 16 columns (``panel_kernels``)
        self._precision: Tensor | None = None
        self._frame_steps = 1  # the steps each frame drives (``expect_steps``)
        # the trace's fit in the code's subspace (``_frame_in_basis``): the basis, Ψᵀ's panels, the frame of its terms
        self._basis: ResidualBasis | None = None
        self._basis_panels: np.ndarray | None = None
        self._basis_frame: Tensor | None = None
        self._basis_terms: FrameTerms | None = None

    def expect_steps(self, per_frame: int) -> None:
        self._frame_steps = per_frame

    def prepare(self, frame: Tensor):
        return self.parts.decoder.operators(frame, self.parts.inv_variance)

    def decode(self, code: Tensor) -> Tensor:
        return self.parts.decoder(code)

    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        family, fp = self.parts.family, self.parts.family_params
        operators = self.constants(frame)
        state = tuple(s.clone() for s in family.initial_state(fp, frame.shape[0]))
        sample = family.sample(state, fp, generator, None)
        self.engine = fused_engine(self.parts, operators, frame) if self.fused else None
        if self.engine is not None:
            self.engine.begin(state)
        self.keep_state = trace
        return Step(state, None, family.activation(sample.value, fp), carry=sample)

    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        operators = self.constants(frame)
        if self.engine is not None:
            rates, decoded = self.engine.advance(previous.decoded, operators, generator)
            return Step(self.engine.state() if self.keep_state else previous.state, rates, decoded)
        family, fp = self.parts.family, self.parts.family_params
        state = fond_step(family, fp, previous.state, previous.carry, operators.pullback(previous.decoded),
                          self.parts.bias)
        sample = family.sample(state, fp, generator, None)
        return Step(state, family.mean_code(state, fp), family.activation(sample.value, fp), carry=sample)

    def trace_rows(self, frame: Tensor, new: Step, previous: Step, total: Tensor, constant: float, *, fit: bool,
                   stats: bool) -> Tensor | None:
        """One compiled pass (``sparse_kernels.poisson_trace_rows``) for the trace: with ``fit`` the sample's R² and
        NLL from its non-zero counts (a linear decoder, a sparse enough code), with ``stats`` the state terms from
        the engine's rates (the exact KL: no potentials); None where either cannot be had so."""
        from fond.families.sparse_kernels import poisson_trace_rows

        code = new.decoded
        if code.device.type != "cpu" or code.dtype not in (torch.float32, torch.float64) or (
                stats and not getattr(self.engine, "terms_from_rates", False)):
            return None
        dtype = code.numpy().dtype  # (placeholders of the same array types where the fit is not asked: one compilation)
        arrays = self._sparse_fit_arrays(code, frame) if fit else (np.empty((1, 1), dtype), np.empty((1, 1), dtype),
                                                                   np.empty(1, dtype))
        if arrays is None:
            return None
        rates = rates_old = code  # (not read without the state terms)
        if stats:  # the start step has no rates: its state is the initial one
            rates, rates_old = new.rates, previous.rates
            if rates_old is None:
                rates_old = self.parts.family.mean_code(previous.state, self.parts.family_params)
        table = torch.empty(code.shape[0], 7, dtype=torch.float64)
        threads = kernel_threads(code.numel())
        by_panels = self._panel_fit_sums(code, arrays, threads, frame) if fit else None
        poisson_trace_rows(rates.contiguous().numpy(), rates_old.contiguous().numpy(), code.contiguous().numpy(),
                           *arrays, total.numpy(), constant, self.parts.family.saturation_rate(),
                           fit and by_panels is None, stats, table.numpy())
        if by_panels is not None:
            squares, weighted = by_panels
            table[:, 0] = 1.0 - squares / total
            table[:, 3] = 0.5 * weighted + constant
        return table

    def _panel_fit_sums(self, code: Tensor, arrays: tuple, threads: int, frame: Tensor) -> tuple[Tensor, Tensor] | None:
        """(‖x − z·Φᵀ‖², Σ_d (x − z·Φᵀ)_d²·σ_d⁻²) per input (float64) by the panel kernel over the engine's compressed
        counts (``panel_kernels.panel_fit_sums``): in the code's K-dimensional subspace where that pays
        (``fond.residual_basis``), else over the D pixels; None where it does not apply (float64, D not a multiple of
        16)."""
        from fond.families.panel_kernels import compressed_dots, panel_fit_sums, panel_layout, panels_fit

        atoms, x, precision = arrays
        if atoms.dtype != np.float32 or not panels_fit(*atoms.shape) or not hasattr(self.engine, "compressed"):
            return None
        counts = self.engine.compressed(code)
        if counts is None:
            return None
        squares, weighted = (torch.empty(code.shape[0], dtype=torch.float64) for _ in range(2))
        in_basis = self._frame_in_basis(frame)
        if in_basis is not None:
            panels, terms = in_basis
            panel_fit_sums(panels, terms.projected.numpy(), self._basis.eigenvalues.numpy(), *counts, squares.numpy(),
                           weighted.numpy(), threads)
            linear = torch.empty_like(squares)
            compressed_dots(*counts, terms.linear.numpy(), linear.numpy())
            return squares.add_(terms.plain), weighted.add_(terms.weighted).sub_(linear, alpha=2.0)
        if self._atom_panels is None:  # (reset with ``_atoms``)
            self._atom_panels = panel_layout(atoms)
        panel_fit_sums(self._atom_panels, x, precision, *counts, squares.numpy(), weighted.numpy(), threads)
        return squares, weighted

    def _frame_in_basis(self, frame: Tensor) -> tuple[np.ndarray, FrameTerms] | None:
        """(Ψᵀ in panels, the frame's terms) of the residual basis (``fond.residual_basis``), built on first use,
        where it pays for this frame (``residual_basis.pays``: many pixels, a large batch, many steps); else None."""
        from fond.families.panel_kernels import panel_layout, panels_fit

        (k, d), batch = self._atoms.shape, frame.shape[0]
        if not (panels_fit(k, k) and pays(batch, k, d, self._frame_steps)):
            return None
        if self._basis is None:  # (reset with ``_atoms``)
            self._basis = residual_basis(self._atoms.T, self._precision)
            self._basis_panels = panel_layout(self._basis.psi.T.contiguous().numpy())
        if frame is not self._basis_frame or self._basis_terms.projected.shape[0] != batch:  # (kernels: unchecked)
            self._basis_frame, self._basis_terms = frame, frame_terms(self._basis, frame.contiguous(), self._precision)
        return self._basis_panels, self._basis_terms

    def _sparse_fit_arrays(self, code: Tensor, frame: Tensor) -> tuple | None:
        """(Φᵀ (K, D), the frame (B, D), σ⁻² (D,)) as NumPy arrays of ``code``'s dtype, where the sample's fit can
        come from its non-zero counts: a linear decoder, CPU arrays of one float dtype, a code sparser than
        ``SPARSE_RESIDUALS_BELOW``; else None."""
        from fond.families.sparse_kernels import SPARSE_RESIDUALS_BELOW

        operators = self.constants(frame)
        if not isinstance(operators, LinearDecoderOperators) or code.device.type != "cpu" or (
                code.dtype not in (torch.float32, torch.float64) or code.dtype != frame.dtype):
            return None
        density = self.engine.density_of(code) if hasattr(self.engine, "density_of") else (
            1.0 - float(zeros_fraction(code).mean()))
        if density >= SPARSE_RESIDUALS_BELOW:
            return None
        self._atoms_of(operators, code.dtype)
        return self._atoms.numpy(), frame.contiguous().numpy(), self._precision.numpy()

    def _atoms_of(self, operators: LinearDecoderOperators, dtype: torch.dtype) -> None:
        """Φᵀ (K, D) and σ⁻² (D,) contiguous in ``dtype`` (``_atoms``, ``_precision``; what is built from them is
        reset when they are)."""
        if self._atoms is None or self._atoms.dtype != dtype:
            self._atoms = operators.dictionary.detach().t().to(dtype).contiguous()
            self._atom_panels, self._basis = None, None
            self._precision = self.parts.inv_variance.detach().to(dtype).contiguous()

    def squared_error(self, frame: Tensor, code: Tensor) -> Tensor | None:
        """‖x − Φ·code‖² per input (float64) in the code's subspace (a (B×K)·(K×K) product instead of the decode's
        (B×K)·(K×D)) where the residual basis pays (``_frame_in_basis``); else None."""
        operators = self.constants(frame)
        if not isinstance(operators, LinearDecoderOperators) or code.device.type != "cpu" or (
                code.dtype != torch.float32 or frame.dtype != code.dtype):
            return None
        self._atoms_of(operators, code.dtype)
        in_basis = self._frame_in_basis(frame)
        if in_basis is None:
            return None
        terms = in_basis[1]
        residual = torch.addmm(terms.projected, code, self._basis.psi.T, alpha=-1.0)  # x̂ − Ψ·code
        return terms.plain + residual.square_().sum(1, dtype=torch.float64)

    def finish(self, last: Step) -> Step:
        if self.engine is None:
            return last
        return Step(self.engine.state(), self.engine.rates.clone(), last.decoded.clone())

    def terms_suffice(self) -> None:
        """The engine's potentials u = −log E are then computed per step only where the trace needs them
        (``trace_rows`` takes the state terms from the rates for the exact KL)."""
        if getattr(self.engine, "terms_from_rates", False):
            self.keep_state = False

    def select(self, step: Step, rows: Tensor, frame: Tensor) -> Step:
        if self._basis_terms is not None and self._basis_frame is self._frame:  # (the terms of the frame narrowed)
            self._basis_frame, self._basis_terms = frame, self._basis_terms.rows(rows)
        self.constants(frame)
        if self.engine is not None:
            self.engine.narrow(rows)
        carry = None if step.carry is None else type(step.carry)(*(
            None if part is None else part[rows] for part in step.carry))
        return rows_of(step, rows, carry)

    def prior_term(self, new: Step, previous: Step) -> Tensor:
        return self.parts.family.kl(new.state, previous.state).sum(-1)

    def saturated(self, step: Step) -> Tensor:
        return self.parts.family.saturated(step.state, self.parts.family_params)


def rollout(parts: Components, x: Tensor, steps: int, *, generator: torch.Generator | None = None,
            trace: bool | str | Iterable[str] = "default", record=None, fused: bool = True, tol: float | None = None,
            window: int = DEFAULT_WINDOW) -> InferenceResult:
    """Run ``steps`` FOND steps with evaluation samples (exact counts, hard binaries, τ = 1) from the initial state.

    x: (B, D) a fixed input, or (steps, B, D) an online input whose frame x[t−1] drives step t (the trace's
    R² and NLL are then measured against the current frame; the posterior carries over as the prior).
    ``trace`` records the per-step means of ``InferenceResult.trace``; ``record`` (1-based steps) keeps the
    mean code and sample after those steps in ``InferenceResult.history``. Call under ``torch.no_grad()``.
    ``fused``: use the fused engine where one is registered for the family and decoder (``FondSteps``).
    """
    return run_inference(FondSteps(parts, fused=fused), x, steps, generator=generator, trace=trace, record=record,
                         tol=tol, window=window)
