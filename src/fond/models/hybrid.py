"""Hybrid iterative-amortized Gaussian VAEs, the paper's baselines between amortized and iterative inference.

Both models infer a Gaussian posterior q(z | x) = N(μ, σ²), ξ = log σ, per latent (B×K each) against the
learned prior N(μ_init, exp(log σ_init)²) (the Gaussian family's initial state, init N(0, 1)), with a
decoder g (``fond.decoders``), a per-pixel log σ_x (D) and an encoder (``fond.encoders``) that maps x to
the initial guess (μ₀, ξ₀) through the family's tanh soft clamps (``mu_clamp``, ``log_sigma_clamp``).
Both then refine that guess by iterating on the single-sample free energy of each input

    F_β(μ, ξ; ε) = NLL(x | g(f(μ + σε))) + β·KL(N(μ, σ²) ‖ prior),   one ε ~ N(0, 1) per state,

differentiated w.r.t. (μ, ξ) with ``torch.autograd.grad`` (``create_graph=True`` in training, so the
training loss backpropagates end to end through the refinement, second-order terms included):

- ``SemiAmortizedVAE`` (model "savae", Kim et al. 2018): plain SGD steps (μ, ξ) ← (μ, ξ) − lr·∇F_β, the
  per-input gradient clipped to norm ``max_grad_norm`` (Kim et al.'s SVI gradient clipping; per input, so
  an input's refinement never depends on the rest of its batch) and the state hard-clamped to the
  family's bounds (a hard clamp is the identity inside the bounds: no drift over thousands of steps).
  Training follows Kim et al.'s Algorithm 1: loss = F_β at the state after ``refine_steps`` steps (a fresh
  sample), so the decoder learns from the refined posterior and the encoder learns to give a good
  starting point for the refinement (its gradient is dF(λ_K)/dλ₀ through the unrolled steps).
  ``refine_steps = 0`` is exactly the amortized G-VAE's loss at clamp_fraction 1 (``refine_lr = 0``: the
  same but at a later sample); the hybrids' encoder clamps do not ramp (``clamp_fraction`` is ignored).
- ``IterativeAmortizedVAE`` (model "iavae", Marino et al. 2018): a learned update network maps
  [μ, ξ, ∇_μF_β, ∇_ξF_β] (B, 4K) to a proposal and a gate per state tensor and sets
  new = gate·old + (1 − gate)·proposal (Marino et al.'s gated update). The proposal is written as a
  residual, proposal = old + Δ (the same function class — the network sees the old state — but a small Δ
  starts training near the encoder's guess), hard-clamped to the family's bounds, so the convex
  combination stays inside them. Gradients enter through sign(g)·log(1 + |g|) (they scale with σ_x⁻² and
  span orders of magnitude). The initial state is the encoder's guess for x (Marino et al. start from the
  prior; the encoder start makes iA-VAE a strict extension of the amortized VAE, as SA-VAE is). Training:
  loss = mean over the ``steps`` (T_train) iterates of F_β, each at its own sample.

Which β the refinement descends: the one of the training objective. ``unroll_loss`` records its ``beta`` in
the buffer ``refine_beta`` (init 1, saved with the model), and ``infer`` refines with it, so evaluation
runs the inference the model was trained to do (during a β ramp: the current β). The trace's ``kl`` and
``nelbo`` are always the plain ones: KL(q_t ‖ learned prior) and NLL + KL (β = 1), nats per input.

``infer`` runs ``steps`` refinement steps from the encoder's guess (SA-VAE at ``refine_lr``, any number of
steps) with the same fields as ``fond.dynamics.rollout``; each step detaches the state, so memory does not
grow with ``steps``. Sampling as in ``rollout``: the sample drawn at state t is the one reported for step t
and the one whose gradient makes step t + 1. Randomness comes only from the generator passed in (or one
seeded by ``seed``); construction draws only from a private generator seeded by ``seed``, in the order
decoder, encoder, update network (log σ_x = 0 and the prior N(0, 1) need no draws), as ``AmortizedVAE``.

Trainable parameters with D = 256, K = 512, a linear decoder and the default MLP encoder (hidden 512):
SA-VAE 1,051,904 (decoder 131,072 + encoder 919,552 + log σ_x 256 + prior 1,024: exactly G-VAE's, and
with the same seed the same initial values), iA-VAE 2,168,576 (+ the update network's 1,116,672 at
hidden 256). iP-VAE has 132,353.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fond.config import ModelConfig
from fond.decoders import linear_parameters, make_decoder
from fond.errors import ConfigError
from fond.families.gaussian import gaussian_kl, soft_clamp_symmetric
from fond.metrics import gaussian_nll
from fond.models.common import ModelBase, check_input, check_loss_args, check_option
from fond.result import InferenceResult, UnrollLoss
from fond.rollout import DEFAULT_WINDOW, InferenceSteps, Step, rows_of, run_inference

__all__ = ["SemiAmortizedOptions", "IterativeAmortizedOptions", "SemiAmortizedVAE", "IterativeAmortizedVAE",
           "GatedUpdateNetwork", "RefinementSteps"]

State = tuple[Tensor, Tensor]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SemiAmortizedOptions:
    """SA-VAE's options (``method_options`` of model "savae").

    refine_steps: K, SGD refinement steps unrolled in training (≥ 0; 0 = an amortized VAE). The trainer's
    T_train is not used: Kim et al. train with a fixed K. refine_lr: the SGD step size on (μ, log σ)
    (≥ 0), in training and evaluation. max_grad_norm: per-input bound on the norm of ∇_(μ, log σ) F before
    the step (> 0; null: no clipping).
    """

    refine_steps: int = 8
    refine_lr: float = 0.1
    max_grad_norm: float | None = 10.0

    def __post_init__(self) -> None:
        check_option(_is_int(self.refine_steps) and self.refine_steps >= 0, "refine_steps",
                 f"must be an integer ≥ 0, got {self.refine_steps!r}")
        check_option(_is_finite(self.refine_lr) and self.refine_lr >= 0, "refine_lr",
                 f"must be a finite number ≥ 0, got {self.refine_lr!r}")
        check_option(self.max_grad_norm is None or (_is_finite(self.max_grad_norm) and self.max_grad_norm > 0),
                 "max_grad_norm", f"must be a finite number > 0 or null, got {self.max_grad_norm!r}")


@dataclass(frozen=True)
class IterativeAmortizedOptions:
    """iA-VAE's options (``method_options`` of model "iavae"). hidden: width of the update network's two
    hidden layers (≥ 1)."""

    hidden: int = 256

    def __post_init__(self) -> None:
        check_option(_is_int(self.hidden) and self.hidden >= 1, "hidden",
                     f"must be an integer ≥ 1, got {self.hidden!r}")


def _log_magnitude(g: Tensor) -> Tensor:
    """sign(g)·log(1 + |g|): gradients as network inputs, odd, monotone, ≈ g near 0."""
    return torch.sign(g) * torch.log1p(g.abs())


class GatedUpdateNetwork(nn.Module):
    """iA-VAE's update network: [μ, ξ, ∇_μF, ∇_ξF] (B, 4K) -> (Δμ, Δξ, gate_μ, gate_ξ), each (B, K).

    Two SiLU hidden layers of width ``hidden``; the gates are sigmoids of the last four output blocks.
    Parameters (in the order drawn): ``weight1`` (h, 4K), ``bias1``, ``weight2`` (h, h), ``bias2``,
    ``weight3`` (4K, h), ``bias3``, each U(±1/√fan_in) from ``generator``; the output layer is scaled by
    0.1 so the first updates are small. 4K·h + h + h² + h + 4K·h + 4K parameters.
    """

    def __init__(self, n_latents: int, hidden: int, *, generator: torch.Generator) -> None:
        super().__init__()
        k, h = int(n_latents), int(hidden)
        self.n_latents, self.hidden = k, h
        self.weight1, self.bias1 = linear_parameters(h, 4 * k, generator)
        self.weight2, self.bias2 = linear_parameters(h, h, generator)
        self.weight3, self.bias3 = linear_parameters(4 * k, h, generator, weight_scale=0.1, bias_scale=0.1)

    def forward(self, mu: Tensor, xi: Tensor, grad_mu: Tensor,
                grad_xi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        inputs = torch.cat([mu, xi, _log_magnitude(grad_mu), _log_magnitude(grad_xi)], dim=-1)
        h = F.silu(F.linear(inputs, self.weight1, self.bias1))
        h = F.silu(F.linear(h, self.weight2, self.bias2))
        delta_mu, delta_xi, gate_mu, gate_xi = F.linear(h, self.weight3, self.bias3).chunk(4, dim=-1)
        return delta_mu, delta_xi, torch.sigmoid(gate_mu), torch.sigmoid(gate_xi)

    def extra_repr(self) -> str:
        return f"n_latents={self.n_latents}, hidden={self.hidden}"


class _HybridVAE(ModelBase):
    """Encoder initialisation + iterative refinement of a Gaussian posterior; subclasses define the step."""

    default_model = ""

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__()
        config = self.resolve_config(n_inputs, n_latents, config, options)
        if config.model != self.default_model:
            raise ConfigError(f"config key 'model': {type(self).__name__} is model {self.default_model!r}, "
                              f"got {config.model!r}")
        from fond.encoders import make_encoder

        self.config = config
        self.family = config.family
        self.options = config.method
        d, k = config.n_inputs, config.n_latents
        gen = torch.Generator().manual_seed(int(seed))
        self.decoder = make_decoder(config.decoder, d, k, generator=gen, init_scale=config.init_scale,
                                    hidden=config.decoder_hidden)
        self.encoder = make_encoder(config.encoder, d, 2 * k, generator=gen, hidden=config.encoder_hidden)
        self.log_sigma_x = nn.Parameter(torch.zeros(d))
        prior = {name: t for name, t in self.family.init_parameters(k, gen).items() if name != "log_step_size"}
        for name, tensor in prior.items():
            self.register_parameter(name, nn.Parameter(tensor))
        self._family_param_names = tuple(prior)
        self._build_method(gen)
        self.register_buffer("refine_beta", torch.ones(()))

    def _build_method(self, generator: torch.Generator) -> None:
        """Hook for the method's own modules, drawn from the private generator after the encoder."""

    # -- parameters --------------------------------------------------------------------------------
    # -- the pieces of one step ----------------------------------------------------------------------
    def initial_state(self, x: Tensor) -> State:
        """The encoder's guess (μ₀, ξ₀) for x (B, D) (checked as in ``infer``), through the family's soft clamps."""
        x = check_input(x, self.n_inputs, like=self.input_like)
        mu, xi = self.encoder(x).chunk(2, dim=-1)
        return (soft_clamp_symmetric(mu, self.family.mu_clamp),
                soft_clamp_symmetric(xi, self.family.log_sigma_clamp))

    def _clamp(self, mu: Tensor, xi: Tensor) -> State:
        """Hard clamp to the family's bounds (the identity inside them)."""
        c_mu, c_xi = self.family.mu_clamp, self.family.log_sigma_clamp
        return mu.clamp(-c_mu, c_mu), xi.clamp(-c_xi, c_xi)

    def _free_energy(self, x: Tensor, mu: Tensor, xi: Tensor, noise: Tensor, log_sigma: Tensor,
                     fp: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per input: NLL(x | g(f(μ + σε))) and KL(q ‖ prior) (B,), and the decoder input f(z) (B, K)."""
        decoded = self.family.activation(mu + torch.exp(xi) * noise, fp)
        nll = gaussian_nll(x, self.decoder(decoded), log_sigma)
        kl = gaussian_kl(mu, xi, fp["mu_init"], fp["log_sigma_init"]).sum(-1)
        return nll, kl, decoded

    @staticmethod
    def _state_grads(objective: Tensor, mu: Tensor, xi: Tensor, create_graph: bool) -> State:
        return torch.autograd.grad(objective, (mu, xi), create_graph=create_graph)

    def _step(self, mu: Tensor, xi: Tensor, grad_mu: Tensor, grad_xi: Tensor) -> State:
        raise NotImplementedError

    @staticmethod
    def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)

    # -- training ----------------------------------------------------------------------------------
    def _unroll(self, x: Tensor, n_steps: int, beta: float, generator: torch.Generator | None
                ) -> tuple[list[Tensor], list[Tensor], float]:
        """States λ₀ (encoder) … λ_n with create-graph gradient steps between them; per state the NLL and
        KL (B,) at a fresh sample (which also gives the gradient of the next step), and the largest f(μ)."""
        fp, log_sigma = self.family_params(), self.log_sigma()
        mu, xi = self.initial_state(x)
        if not mu.requires_grad:  # a frozen encoder: the refinement still needs ∂F/∂state
            mu, xi = mu.detach().requires_grad_(), xi.detach().requires_grad_()
        nlls, kls, maxima = [], [], []  # the maxima stay on the device: one host read after the loop
        for t in range(n_steps + 1):
            nll, kl, _ = self._free_energy(x, mu, xi, self._noise(mu, generator), log_sigma, fp)
            nlls.append(nll)
            kls.append(kl)
            maxima.append(self.family.mean_code((mu, xi), fp).detach().max())
            if t == n_steps:
                break
            grad_mu, grad_xi = self._state_grads((nll + beta * kl).sum(), mu, xi, create_graph=True)
            mu, xi = self._step(mu, xi, grad_mu, grad_xi)
        return nlls, kls, float(torch.stack(maxima).max())

    def _training_loss(self, x: Tensor, steps: int, beta: float, generator: torch.Generator | None) -> UnrollLoss:
        raise NotImplementedError

    def unroll_loss(self, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float = 1.0,
                    generator: torch.Generator | None = None) -> UnrollLoss:
        """The training objective of one batch (see the module docstring), × 256/D like the FOND models.

        ``temperature`` and ``clamp_fraction`` are accepted for the trainer and ignored (Gaussian samples at
        τ = 1, fixed bounds). Records ``beta`` as the KL weight that ``infer`` refines with.
        """
        check_loss_args(steps, beta, temperature, clamp_fraction, generator)
        x = check_input(x, self.n_inputs, like=self.input_like)
        with torch.no_grad():
            self.refine_beta.fill_(float(beta))
        with torch.enable_grad():
            return self._training_loss(x, steps, float(beta), generator)

    @staticmethod
    def _pack(loss: Tensor, nlls: list[Tensor], kls: list[Tensor], rate_max: float, d: int) -> UnrollLoss:
        means = torch.stack([torch.stack([n.detach().mean(), k.detach().mean()]) for n, k in zip(nlls, kls,
                                                                                                  strict=True)])
        means = means.to(torch.float64).cpu().numpy()
        return UnrollLoss(loss=loss * (256.0 / d), nll=means[:, 0].copy(), kl=means[:, 1].copy(), rate_max=rate_max)

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: Tensor, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
              window: int = DEFAULT_WINDOW) -> InferenceResult:
        """Encoder guess, then ``steps`` refinement steps; the result has ``fond.dynamics.rollout``'s fields.

        rates = f(μ) and spikes = f(z) of the last sample (B, K); state = {"mu", "log_sigma"}; reconstruction =
        g(spikes), reconstruction_from_rates = g(rates). trace: per-step batch means of ``DEFAULT_TRACE_KEYS``
        (``trace=True``: ``TRACE_KEYS``), each of length ``steps``, where kl is KL(q_t ‖ learned prior), nelbo = nll
        + kl, du_norm = ‖(μ, ξ)_t − (μ, ξ)_{t−1}‖₂ and saturated the fraction of inputs with over half the means
        pinned near the clamp. seed: of a private generator (ignored if ``generator`` is given). tol, window:
        anytime inference (``fond.rollout.Convergence``; ``result.steps_used``).
        """
        x, gen = self.inference_input(x, steps, seed, generator)
        return run_inference(RefinementSteps(self), x, steps, generator=gen, trace=trace, record=record,
                             tol=tol, window=window)


class RefinementSteps(InferenceSteps):
    """A hybrid's inference as the rollout loop drives it: the encoder's guess, then refinement steps.

    Step t takes the gradient of F_β at λ_{t−1} with the noise ε drawn there (``refine_beta``), makes the
    method's update (SGD or the gated network) and draws a fresh ε at λ_t, whose f(z) is the step's decoder
    input. The state is (μ, ξ = log σ), detached every step. The prior is the learned N(μ_init, σ_init²):
    ``kl`` = KL(q_t ‖ learned prior).
    """

    state_names = ("mu", "log_sigma")

    def __init__(self, model: _HybridVAE) -> None:
        super().__init__()
        self.model, self.family = model, model.family
        self.params = {name: p.detach() for name, p in model.family_params().items()}
        self.log_sigma, self.beta = model.log_sigma(), float(model.refine_beta)

    def decode(self, code: Tensor) -> Tensor:
        return self.model.decoder(code)

    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        mu, xi = self.model.initial_state(frame)
        return Step((mu, xi), carry=self.model._noise(mu, generator))

    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        model, fp = self.model, self.params
        mu, xi = previous.state
        with torch.enable_grad():
            mu_leaf, xi_leaf = mu.detach().requires_grad_(), xi.detach().requires_grad_()
            nll, kl, _ = model._free_energy(frame, mu_leaf, xi_leaf, previous.carry, self.log_sigma, fp)
            grad_mu, grad_xi = model._state_grads((nll + self.beta * kl).sum(), mu_leaf, xi_leaf, create_graph=False)
        state = tuple(t.detach() for t in model._step(mu, xi, grad_mu, grad_xi))
        noise = model._noise(state[0], generator)
        decoded = self.family.activation(state[0] + torch.exp(state[1]) * noise, fp)
        return Step(state, self.family.mean_code(state, fp), decoded, carry=noise)

    def select(self, step: Step, rows: Tensor, frame: Tensor) -> Step:
        return rows_of(step, rows, step.carry[rows])

    def prior_term(self, new: Step, previous: Step) -> Tensor:
        return gaussian_kl(*new.state, self.params["mu_init"], self.params["log_sigma_init"]).sum(-1)

    def saturated(self, step: Step) -> Tensor:
        return self.family.saturated(step.state, self.params)


class SemiAmortizedVAE(_HybridVAE):
    """SA-VAE (Kim et al. 2018): encoder guess + ``refine_steps`` differentiable SGD steps on F_β.

    ``SemiAmortizedVAE(n_inputs, n_latents, seed=0, **options)``; ``options`` are ``ModelConfig`` fields
    (``decoder=``, ``encoder=``, ``method_options={"refine_steps": 8, "refine_lr": 0.1}``, ...).
    Training loss: F_β at the refined state (see the module docstring); ``unroll_loss``'s ``steps`` is
    checked but not used (the UnrollLoss traces hold the K + 1 states λ₀ … λ_K).
    """

    default_model = "savae"

    def _step(self, mu: Tensor, xi: Tensor, grad_mu: Tensor, grad_xi: Tensor) -> State:
        lr, max_norm = self.options.refine_lr, self.options.max_grad_norm
        if max_norm is not None:
            norm = torch.sqrt(grad_mu.pow(2).sum(-1, keepdim=True) + grad_xi.pow(2).sum(-1, keepdim=True))
            factor = (max_norm / norm.clamp_min(1e-12)).clamp(max=1.0)
            grad_mu, grad_xi = grad_mu * factor, grad_xi * factor
        return self._clamp(mu - lr * grad_mu, xi - lr * grad_xi)

    def _training_loss(self, x: Tensor, steps: int, beta: float, generator: torch.Generator | None) -> UnrollLoss:
        nlls, kls, rate_max = self._unroll(x, self.options.refine_steps, beta, generator)
        loss = (nlls[-1] + beta * kls[-1]).mean()
        return self._pack(loss, nlls, kls, rate_max, x.shape[1])


class IterativeAmortizedVAE(_HybridVAE):
    """iA-VAE (Marino et al. 2018): encoder guess + a learned gated update network iterated on ∇F_β.

    ``IterativeAmortizedVAE(n_inputs, n_latents, seed=0, **options)``; ``method_options={"hidden": 256}``
    sets the update network's width. Training unrolls ``steps`` (T_train) iterations; loss = the mean over
    the iterates λ₁ … λ_T of F_β (the UnrollLoss traces hold those T states).
    """

    default_model = "iavae"

    def _build_method(self, generator: torch.Generator) -> None:
        self.update_network = GatedUpdateNetwork(self.n_latents, self.options.hidden, generator=generator)

    def _step(self, mu: Tensor, xi: Tensor, grad_mu: Tensor, grad_xi: Tensor) -> State:
        delta_mu, delta_xi, gate_mu, gate_xi = self.update_network(mu, xi, grad_mu, grad_xi)
        proposal_mu, proposal_xi = self._clamp(mu + delta_mu, xi + delta_xi)
        return gate_mu * mu + (1.0 - gate_mu) * proposal_mu, gate_xi * xi + (1.0 - gate_xi) * proposal_xi

    def _training_loss(self, x: Tensor, steps: int, beta: float, generator: torch.Generator | None) -> UnrollLoss:
        nlls, kls, rate_max = self._unroll(x, steps, beta, generator)
        nlls, kls = nlls[1:], kls[1:]
        loss = torch.stack([(n + beta * k).mean() for n, k in zip(nlls, kls, strict=True)]).mean()
        return self._pack(loss, nlls, kls, rate_max, x.shape[1])
