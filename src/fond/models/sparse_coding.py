"""Sparse coding baselines: LCA, ISTA and FISTA on a linear dictionary with unit-norm atoms.

All three find the MAP code of a linear generative model x ≈ Φa with a Laplace prior, i.e. they minimise,
per input,

    E(a) = ½‖x − Φa‖² + λ‖a‖₁                    (Φ: D × K, a: K)

from a = 0, and differ only in the dynamics:

* ``LCA`` (locally competitive algorithm, Rozell et al. 2008), Euler steps of the membrane equation
  τ u̇ = Φᵀx − u − (ΦᵀΦ − I)a with a = soft-threshold_λ(u); ``step_size`` is dt/τ (default 0.1), capped at
  1/L (L below) so that the Euler step stays stable (see ``LCA``).
* ``ISTA``: a ← soft_{λη}(a + ηΦᵀ(x − Φa)) with η = ``step_size``/L, L the largest eigenvalue of ΦᵀΦ
  (``step_size`` is a fraction of the classic 1/L, default 1).
* ``FISTA`` (Beck & Teboulle 2009): ISTA's step taken from an extrapolated point y with the momentum
  t_{k+1} = (1 + √(1 + 4t_k²))/2, y = a_{k+1} + (t_k − 1)/t_{k+1}·(a_{k+1} − a_k).

λ convention: ``sparsity`` is the λ of E(a) above (nats, with a unit-variance Gaussian likelihood).
scikit-learn's ``Lasso(alpha)`` minimises (1/(2n))‖y − Xw‖² + α‖w‖₁ with n = D "samples" (the pixels),
so ``Lasso(alpha=λ/D, fit_intercept=False)`` with X = Φ, y = x has the same minimiser (λ = α·D).

Learning (``unroll_loss``) is classical dictionary learning: infer the code without gradients, then take a
gradient step on ½‖x − Φa*‖² + λ‖a*‖₁ w.r.t. Φ alone, and renormalise every atom (column of Φ) to unit
length after each update (``after_update``). The presets take plain gradient steps (``TrainConfig.optimizer``
"sgd", lr 1): under Adamax, which moves every entry by about lr per update whatever its gradient, the atoms
stay noisy (``fond.registry``). ``MAPCoding`` is the shared base class (also used by
``fond.models.predictive_coding``): a linear dictionary, a point-estimate code found by deterministic
iterative dynamics, and the interface every ``fond`` model offers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fond.config import ModelConfig
from fond.decoders import LinearDecoder
from fond.errors import ConfigError
from fond.models.common import ModelBase, check_input, check_loss_args, check_option
from fond.result import InferenceResult, UnrollLoss
from fond.rollout import DEFAULT_WINDOW, InferenceSteps, Step, run_inference

__all__ = ["SparseCodingOptions", "MAPCoding", "MAPSteps", "SparseCoding", "LCA", "ISTA", "FISTA", "soft_threshold"]

#: what a dynamics generator yields after each step: (the state reported in ``InferenceResult.state``, code a)
Solution = tuple[dict[str, Tensor], Tensor]


def check_positive_number(value, key: str) -> None:
    """``value`` must be a finite real number > 0 (bools are not numbers here)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    check_option(is_number and math.isfinite(value), key, f"must be a finite number, got {value!r}")
    check_option(value > 0, key, f"must be > 0, got {value!r}")


def soft_threshold(v: Tensor, threshold: Tensor | float) -> Tensor:
    """sign(v)·max(|v| − threshold, 0), with exact zeros where |v| ≤ threshold."""
    return v - v.clamp(-threshold, threshold)


@dataclass(frozen=True)
class SparseCodingOptions:
    """Options of LCA / ISTA / FISTA (``ModelConfig.method_options``).

    sparsity: λ of ½‖x − Φa‖² + λ‖a‖₁ (default 0.5, LCA's λ in the paper); ``Lasso(alpha=λ/D)``.
    step_size: LCA: dt/τ of the Euler step (default 0.1; capped at 1/L). ISTA / FISTA: the step as a fraction of 1/L,
    L = the largest eigenvalue of ΦᵀΦ (1 = the classic 1/L step, the default). Must lie in (0, 1].
    """

    sparsity: float = 0.5
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_positive_number(self.sparsity, "sparsity")
        if self.step_size is not None:
            check_positive_number(self.step_size, "step_size")
            check_option(self.step_size <= 1, "step_size", f"must be ≤ 1, got {self.step_size!r}")

    def step(self, default: float) -> float:
        """``step_size``, or the method's ``default`` when it was left unset."""
        return float(default if self.step_size is None else self.step_size)


class MAPCoding(ModelBase):
    """A linear generative model x ≈ Φa whose code a is a point estimate found by iterative dynamics.

    ``Model(n_inputs, n_latents, seed=0, **options)``; ``options`` are ``ModelConfig`` fields (e.g.
    ``method_options={"sparsity": 0.3}``), or pass ``config=``. Φ (D × K) lives in a ``LinearDecoder``
    (state-dict key ``decoder.dictionary``, like the FOND models' linear decoder, so checkpoints and the
    trainer's weight-decay grouping treat it the same way); ``model.dictionary`` is that parameter.
    Construction draws Φ from a private generator seeded by ``seed`` (the global RNG is never touched).

    Subclasses set ``default_model`` and implement ``penalty`` (the prior term, per input) and
    ``_dynamics`` (yield the initial state, then the state after each step).
    """

    default_model: str = ""
    family = None

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__()
        name = type(self).__name__
        config = self.resolve_config(n_inputs, n_latents, config, options)
        if config.model != self.default_model:
            raise ConfigError(f"config key 'model': {name} implements {self.default_model!r}, got {config.model!r}")
        if config.decoder != "linear":
            raise ConfigError(f"config key 'decoder': model {config.model!r} needs the linear decoder, "
                              f"got {config.decoder!r}")
        self.config = config
        self.options = config.method
        gen = torch.Generator().manual_seed(int(seed))
        self.decoder = LinearDecoder(config.n_inputs, config.n_latents, generator=gen,
                                     init_scale=self._init_scale())

    def _init_scale(self) -> float:
        """Std of Φ's normal initialisation (before any renormalisation)."""
        return 1.0

    # -- the interface shared with the FOND models -------------------------------------------------
    def penalty(self, code: Tensor) -> Tensor:
        """The prior term −log p(a) (up to a constant) per input: (B, K) → (B,)."""
        raise NotImplementedError

    def _dynamics(self, drive: Tensor, gram: Tensor) -> Iterator[Solution]:
        """Yield (state, a) at a = 0, then after each step; drive = xΦ (B, K), gram = ΦᵀΦ (K, K)."""
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x on Φ's device and dtype, with the per-batch constants drive = xΦ = (Φᵀx)ᵀ and gram = ΦᵀΦ."""
        phi = self.dictionary.detach()
        x = x.to(device=phi.device, dtype=phi.dtype)
        return x, x @ phi, phi.T @ phi

    def _solve(self, x: Tensor, steps: int) -> Solution:
        _, drive, gram = self._prepare(x)
        dynamics = self._dynamics(drive, gram)
        state, code = next(dynamics)
        for _ in range(steps):
            state, code = next(dynamics)
        return state, code

    @torch.no_grad()
    def infer(self, x: Tensor, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
              window: int = DEFAULT_WINDOW) -> InferenceResult:
        """Run ``steps`` steps of the deterministic dynamics from a = 0 and return the result.

        x: (B, D) inputs. ``seed`` and ``generator`` are accepted for interface compatibility and ignored
        (nothing is sampled). ``rates`` = ``spikes`` = the code a; ``state`` = the dynamics' state (a, or
        LCA's potential u). Trace (per-step batch means): r2 = r2_rates (from a), zeros (exact zeros of a),
        du_norm (‖state_t − state_{t−1}‖), nll (unit-variance Gaussian, with its constant), kl = the
        prior term ``penalty(a)`` — not a KL divergence: a point estimate has none —, nelbo = nll + kl (the
        energy being minimised plus D/2·log 2π), rate_max = max a (the largest entry of the code, as for every
        method; it was max |a| before issue 15), saturated = 0. The loop is ``fond.rollout.run_inference``.
        tol, window: anytime inference (``fond.rollout.Convergence``; ``result.steps_used``).
        """
        x, _ = self.inference_input(x, steps, seed, generator)  # the generator is unused
        return run_inference(MAPSteps(self), x, steps, trace=trace, record=record, tol=tol, window=window)

    # -- learning ----------------------------------------------------------------------------------
    def unroll_loss(self, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float = 1.0,
                    generator: torch.Generator | None = None) -> UnrollLoss:
        """Dictionary learning on converged codes: the loss whose gradient w.r.t. Φ is the learning rule.

        Runs ``steps`` inference steps from a = 0 without gradients, then returns
        mean_batch(½‖x − a*Φᵀ‖² + penalty(a*))·256/D with a* detached, so only Φ receives a gradient
        (through the reconstruction term). ``beta``, ``temperature``, ``clamp_fraction`` and ``generator``
        belong to the FOND models' objective and are accepted and ignored. ``nll`` / ``kl``: length-1
        arrays with the batch means of the reconstruction term ½‖x − a*Φᵀ‖² (the unit-variance Gaussian
        NLL without its constant) and of the prior term; ``rate_max`` = max |a*|.
        """
        check_loss_args(steps, beta, temperature, clamp_fraction, generator)
        x = check_input(x, self.n_inputs, like=self.dictionary)
        with torch.no_grad():
            _, code = self._solve(x, steps)
            prior = self.penalty(code)
        x = x.to(device=code.device, dtype=code.dtype)
        reconstruction_term = 0.5 * (x - self.decode(code)).pow(2).sum(-1)
        loss = (reconstruction_term + prior).mean() * (256.0 / self.n_inputs)
        return UnrollLoss(loss=loss, nll=np.array([float(reconstruction_term.detach().mean())]),
                          kl=np.array([float(prior.mean())]), rate_max=float(code.abs().max()))

    def extra_repr(self) -> str:
        return f"model={self.config.model!r}, n_inputs={self.n_inputs}, n_latents={self.n_latents}, {self.options}"


class MAPSteps(InferenceSteps):
    """A point-estimate method as the rollout loop drives it: its deterministic dynamics, one step at a time.

    State: what ``MAPCoding._dynamics`` yields (the code a, or LCA's potential u); rates = spikes = a.
    Nothing is sampled. The trace's likelihood has unit variance (log σ_x = 0) and its ``kl`` is the prior
    term ``penalty(a)`` = −log p(a) up to a constant: a point estimate has no posterior, hence no KL.
    """

    def __init__(self, model: MAPCoding) -> None:
        super().__init__()
        self.model = model
        self.dictionary = model.dictionary.detach()
        self.log_sigma = self.dictionary.new_zeros(model.n_inputs)

    def prepare(self, frame: Tensor) -> tuple[Tensor, Tensor]:
        """drive = xΦ (B, K) and gram = ΦᵀΦ (K, K)."""
        return frame @ self.dictionary, self.dictionary.T @ self.dictionary

    def decode(self, code: Tensor) -> Tensor:
        return code @ self.dictionary.T

    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        dynamics = self.model._dynamics(*self.constants(frame))
        state, code = next(dynamics)
        self.state_names = tuple(state)
        return Step(tuple(state.values()), code, code, carry=dynamics)

    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        state, code = next(previous.carry)
        return Step(tuple(state.values()), code, code, carry=previous.carry)

    def prior_term(self, new: Step, previous: Step) -> Tensor:
        return self.model.penalty(new.rates)


def largest_eigenvalue(gram: Tensor) -> Tensor:
    """L = λ_max(ΦᵀΦ), the Lipschitz constant of the reconstruction term's gradient (a 0-d tensor > 0)."""
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(torch.finfo(gram.dtype).tiny)


class SparseCoding(MAPCoding):
    """Sparse coding: the Laplace prior λ‖a‖₁, unit-norm atoms (initialised N(0, 1) then normalised)."""

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__(n_inputs, n_latents, seed=seed, config=config, **options)
        self.after_update()

    @property
    def sparsity(self) -> float:
        """λ."""
        return float(self.options.sparsity)

    def penalty(self, code: Tensor) -> Tensor:
        """λ‖a‖₁ per input: (B, K) → (B,)."""
        return self.sparsity * code.abs().sum(-1)

    @torch.no_grad()
    def after_update(self) -> None:
        """Renormalise every atom (column of Φ) to unit L2 norm, in place (call after each optimizer step)."""
        phi = self.dictionary
        phi.div_(phi.norm(dim=0, keepdim=True).clamp_min(torch.finfo(phi.dtype).tiny))


class LCA(SparseCoding):
    """Locally competitive algorithm (Rozell et al. 2008): u ← u + (dt/τ)(Φᵀx − u − (ΦᵀΦ − I)a), a = soft_λ(u).

    State: the potential u (``state["u"]``); the code a = soft-threshold_λ(u). ``step_size`` = dt/τ (0.1),
    capped at 1/L, L = λ_max(ΦᵀΦ) (per batch). On the active set one step is u ← (I − (dt/τ)ΦᵀΦ)u + …, which
    runs off to Inf/NaN once (dt/τ)·L > 2, and unit-norm atoms do not prevent that: K atoms sharing a common
    component of weight c (e.g. the mean image of raw digits) give L ≈ c²K, and a random dictionary has
    L ≈ (1 + √(K/D))², ≈ 4 for K = D (so step_size 1 diverged). The cap changes nothing while L ≤ 1/step_size
    (10 by default; a random 2×-overcomplete dictionary has L ≈ 6, the quick natural16 LCA run 9.4) and
    keeps the fixed point; tests/test_numerical_safety.py checks both.
    """

    default_model = "lca"

    def _dynamics(self, drive: Tensor, gram: Tensor) -> Iterator[Solution]:
        rate, lam = min(self.options.step(0.1), 1.0 / float(largest_eigenvalue(gram))), self.sparsity
        u = torch.zeros_like(drive)
        a = torch.zeros_like(drive)
        yield {"u": u}, a
        while True:
            u = u + rate * (drive - u - a @ gram + a)
            a = soft_threshold(u, lam)
            yield {"u": u}, a


class ISTA(SparseCoding):
    """Iterative shrinkage-thresholding: a ← soft_{λη}(a + ηΦᵀ(x − Φa)), η = ``step_size``/L (default 1/L)."""

    default_model = "ista"

    def _dynamics(self, drive: Tensor, gram: Tensor) -> Iterator[Solution]:
        eta = self.options.step(1.0) / largest_eigenvalue(gram)
        threshold = self.sparsity * eta
        a = torch.zeros_like(drive)
        yield {"a": a}, a
        while True:
            a = soft_threshold(a + eta * (drive - a @ gram), threshold)
            yield {"a": a}, a


class FISTA(SparseCoding):
    """Fast ISTA (Beck & Teboulle 2009): ISTA's step from y_k, t_{k+1} = (1 + √(1 + 4t_k²))/2,
    y_{k+1} = a_{k+1} + (t_k − 1)/t_{k+1}·(a_{k+1} − a_k). η = ``step_size``/L (default 1/L)."""

    default_model = "fista"

    def _dynamics(self, drive: Tensor, gram: Tensor) -> Iterator[Solution]:
        eta = self.options.step(1.0) / largest_eigenvalue(gram)
        threshold = self.sparsity * eta
        a = torch.zeros_like(drive)
        y, t = a, 1.0
        yield {"a": a}, a
        while True:
            new_a = soft_threshold(y + eta * (drive - y @ gram), threshold)
            new_t = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            y = new_a + ((t - 1.0) / new_t) * (new_a - a)
            a, t = new_a, new_t
            yield {"a": a}, a
