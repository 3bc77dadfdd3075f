"""Amortized VAEs: the paper's baselines, inference by one encoder pass instead of a FOND rollout.

P-VAE (Vafaii et al. 2024; Poisson latents), G-VAE (Kingma & Welling 2014; Gaussian latents) and
G_relu-VAE (Gaussian latents decoded through f(z) = relu(z)·gain). Everything but inference is shared
with the iterative models (``fond.models.iterative``): the same distribution families (``fond.families``),
decoders (``fond.decoders``), relaxed samplers, Gaussian likelihood with a clamped per-pixel σ_x, and the
same loss NLL + β·KL scaled by 256/D. The posterior parameters come from an encoder (``fond.encoders``)
x ↦ state; the family's initial state, learned, is the prior p(z) the KL is taken against.

Posterior state from the encoder's raw outputs (B, n_state·K), n_state = len(family.state_names):

* Poisson (state ``(u,)``, rates e^u): u = c − softplus(c − max(raw, floor)), the family's soft upper clamp
  (c = ``family.clamp(clamp_fraction)``, ramped like the iterative models' clamps in training, final in
  evaluation) after its hard floor, so rates stay finite; well inside the bounds u ≈ raw.
* Gaussian (state ``(μ, log σ)``): the outputs split in two halves [μ_raw | log σ_raw], each through the
  family's symmetric tanh soft clamp c·tanh(·/c) with c = ``mu_clamp`` / ``log_sigma_clamp`` (ramped the
  same way).

Learned parameters, drawn in this order from a private generator seeded by ``seed`` (the global RNG is
never touched): the decoder's, the encoder's, log σ_x (D, zeros) and the prior: the family's initial-state
tensors (``u_init``; ``mu_init``, ``log_sigma_init``; and ``log_gain`` for relu), without the family's
step sizes (nothing steps) and without a per-neuron bias b (it belongs to the FOND update). With a linear
decoder, an MLP encoder (hidden 512), D = 256 and K = 512: P-VAE 788,736 numbers, G-VAE 1,051,904,
G_relu-VAE 1,052,416 (iP-VAE: 132,353).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from fond.config import AMORTIZED_MODELS, ModelConfig
from fond.decoders import make_decoder
from fond.encoders import make_encoder
from fond.errors import ConfigError
from fond.families.base import State
from fond.families.gaussian import GaussianFamily, soft_clamp_symmetric
from fond.families.poisson import PoissonFamily, soft_clamp_upper
from fond.metrics import gaussian_nll
from fond.models.common import ModelBase, check_input, check_loss_args
from fond.result import InferenceResult, UnrollLoss
from fond.rollout import DEFAULT_WINDOW, InferenceSteps, Step, run_inference

__all__ = ["AmortizedVAE", "AmortizedSteps", "PRIOR_STATE_KEYS"]

#: the family tensors an amortized model keeps: those of the initial state (its prior) and the relu gain
PRIOR_STATE_KEYS: tuple[str, ...] = ("u_init", "mu_init", "log_sigma_init", "log_gain")


class AmortizedVAE(ModelBase):
    """An amortized VAE: encoder x ↦ q(z | x) in one pass, the family's sampler, the decoder g(f(z)).

    ``AmortizedVAE(n_inputs, n_latents, seed=0, **options)``; ``options`` are ``ModelConfig`` fields
    (``model="pvae" | "gvae" | "gvae-relu"``, ``encoder=``, ``encoder_hidden=``, ``decoder=``, ...).
    Construction draws the initial parameters from a private generator seeded by ``seed`` and does nothing
    else. Same interface as ``IterativeVAE``: ``unroll_loss`` for training, ``infer`` for evaluation.
    """

    default_model = "pvae"
    #: the model names this class builds (subclasses may widen it)
    models: tuple[str, ...] = AMORTIZED_MODELS

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__()
        config = self.resolve_config(n_inputs, n_latents, config, options)
        family = config.family
        if config.model not in self.models or not isinstance(family, (PoissonFamily, GaussianFamily)):
            raise ConfigError(f"config key 'model': {config.model!r} is not a model of {type(self).__name__} "
                              f"(expected one of {self.models})")
        self.config = config
        self.family = family
        d, k = config.n_inputs, config.n_latents
        gen = torch.Generator().manual_seed(int(seed))
        self.decoder = make_decoder(config.decoder, d, k, generator=gen, init_scale=config.init_scale,
                                    hidden=config.decoder_hidden)
        self.encoder = make_encoder(config.encoder, d, self.n_state * k, generator=gen, hidden=config.encoder_hidden)
        self.log_sigma_x = nn.Parameter(torch.zeros(d))
        initial = {name: tensor for name, tensor in family.init_parameters(k, gen).items()
                   if name in PRIOR_STATE_KEYS}
        for name, tensor in initial.items():
            self.register_parameter(name, nn.Parameter(tensor))
        self._family_param_names = tuple(initial)

    # -- parameters --------------------------------------------------------------------------------
    @property
    def n_state(self) -> int:
        """Number of state tensors of the family (Poisson 1: u; Gaussian 2: μ, log σ)."""
        return len(self.family.state_names)

    def prior_state(self, batch_size: int) -> State:
        """The prior p(z) as a family state, expanded to (batch_size, K) per tensor."""
        return self.family.initial_state(self.family_params(), batch_size)

    # -- inference ---------------------------------------------------------------------------------
    def encode(self, x: Tensor, clamp_fraction: float = 1.0) -> State:
        """The posterior q(z | x) as a family state: ``(u,)`` (Poisson) or ``(μ, log σ)`` (Gaussian), (B, K) each.

        x: (B, D) inputs (checked like ``infer``'s). ``clamp_fraction``: how far the family's clamp bounds have
        ramped (1 = final, as in evaluation); see the module docstring for the clamps.
        """
        check_loss_args(1, 0.0, 1.0, clamp_fraction, None)
        return self._encode(check_input(x, self.n_inputs, like=self.input_like), clamp_fraction)

    def _encode(self, x: Tensor, clamp_fraction: float = 1.0) -> State:
        """``encode`` for an input already checked."""
        raw = self.encoder(x)
        family = self.family
        if isinstance(family, PoissonFamily):
            # P-VAE's parameterisation: the posterior rate is the prior rate times e^{encoder(x)}
            # (r = r₀·δr), so an untrained encoder starts at the prior instead of rates ≈ 1.
            return (soft_clamp_upper(self.u_init + raw, family.clamp(clamp_fraction), family.floor),)
        mu_raw, log_sigma_raw = raw.chunk(2, dim=-1)
        return (soft_clamp_symmetric(mu_raw, family.bound(family.mu_clamp, clamp_fraction)),
                soft_clamp_symmetric(log_sigma_raw, family.bound(family.log_sigma_clamp, clamp_fraction)))

    # -- training ----------------------------------------------------------------------------------
    def unroll_loss(self, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float = 1.0,
                    generator: torch.Generator | None = None) -> UnrollLoss:
        """The negative ELBO of one batch with one relaxed sample: NLL(x | g(f(z))) + β·KL(q(z | x) ‖ p(z)).

        ``steps`` is checked but otherwise ignored: amortized inference is one encoder pass, so the
        returned ``nll`` and ``kl`` traces have length 1. ``temperature``: of the relaxed sampler (Poisson;
        Gaussians sample at τ = 1). ``clamp_fraction``: how far the clamp bounds have ramped. Loss: batch
        mean of NLL + β·KL, times 256/D (the iterative models' scaling). ``rate_max``: the largest mean
        code (rate e^u, or f(μ)) in the batch.
        """
        check_loss_args(steps, beta, temperature, clamp_fraction, generator)
        x = check_input(x, self.n_inputs, like=self.input_like)
        family, fp = self.family, self.family_params()
        state = self._encode(x, clamp_fraction)
        sample = family.sample(state, fp, generator, temperature)
        reconstruction = self.decoder(family.activation(sample.value, fp))
        nll = gaussian_nll(x, reconstruction, self.log_sigma())
        kl = family.kl(state, self.prior_state(x.shape[0])).sum(-1)
        loss = (nll + beta * kl).mean() * (256.0 / x.shape[1])
        rate_max = float(family.mean_code(state, fp).detach().max())
        return UnrollLoss(loss=loss, nll=np.array([float(nll.detach().mean())]),
                          kl=np.array([float(kl.detach().mean())]), rate_max=rate_max)

    @torch.no_grad()
    def infer(self, x: Tensor, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
              window: int = DEFAULT_WINDOW) -> InferenceResult:
        """One encoder pass, then ``steps`` evaluation samples from the same posterior; the result of the last.

        x: (B, D) inputs, or (steps, B, D) an online input sequence (each frame is encoded afresh: an
        amortized posterior keeps no memory of the previous frame). seed: seeds a private generator for the
        samples (ignored if ``generator`` is given). Each step draws a fresh evaluation sample (exact integer
        spikes for Poisson, τ = 1 for Gaussian) from q(z | x), which does not change for a fixed input: the
        trace's ``du_norm`` is then 0 and ``kl`` is the constant KL(q(z | x) ‖ p(z)) to the learned prior (the
        iterative models report the KL to the previous step's posterior there); r2, zeros and nll vary with
        the sample. All ``steps`` samples are drawn whether or not ``trace`` is set, so the returned spikes do
        not depend on it. record: 1-based steps whose mean code and sample to keep in ``result.history``.
        tol, window: anytime inference (``fond.rollout.Convergence``; ``result.steps_used``).
        """
        x, gen = self.inference_input(x, steps, seed, generator)
        return run_inference(AmortizedSteps(self), x, steps, generator=gen, trace=trace, record=record,
                             tol=tol, window=window)


class AmortizedSteps(InferenceSteps):
    """Amortized inference as the rollout loop drives it: q(z | x) from one encoder pass per frame.

    A step's state is the posterior of its frame (the same object while the frame does not change, so the
    loop reports ``du_norm`` = 0 and reuses its trace terms); each step draws a fresh evaluation sample
    from it. The prior of every step is the learned prior p(z) (no online prior): ``kl`` = KL(q(z | x) ‖ p(z)).
    """

    def __init__(self, model: AmortizedVAE) -> None:
        super().__init__()
        self.model, self.family, self.params = model, model.family, model.family_params()
        self.state_names = model.family.state_names
        self.log_sigma = model.log_sigma()

    def prepare(self, frame: Tensor) -> Step:
        state = self.model._encode(frame)
        return Step(state, self.family.mean_code(state, self.params))

    def decode(self, code: Tensor) -> Tensor:
        return self.model.decoder(code)

    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        return self.constants(frame)

    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        posterior = self.constants(frame)
        sample = self.family.sample(posterior.state, self.params, generator, None)
        return Step(posterior.state, posterior.rates, self.family.activation(sample.value, self.params))

    def prior_term(self, new: Step, previous: Step) -> Tensor:
        return self.family.kl(new.state, self.model.prior_state(new.state[0].shape[0])).sum(-1)

    def saturated(self, step: Step) -> Tensor:
        return self.family.saturated(step.state, self.params)
