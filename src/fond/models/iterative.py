"""Iterative FOND VAEs: a distribution family + a decoder + FOND dynamics, no encoder.

``IterativeVAE`` is the one implementation; ``IPVAE`` (Poisson), ``IGVAE`` (Gaussian, optionally
relu·gain) and ``IBVAE`` (Bernoulli) only choose the family. Learned parameters: the decoder's (Φ, D×K,
for the linear one), the per-pixel decoder scale log σ_x (D), the per-neuron bias log b (K) and the
family's own (initial state, log step sizes, gains). With a linear decoder and D = 256, K = 512:
iP-VAE 132,353, iG-VAE 132,866, iG_relu-VAE 133,378 numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fond.config import ModelConfig
from fond.decoders import make_decoder
from fond.dynamics import Components, rollout, unroll
from fond.models.common import ModelBase, check_input, check_loss_args
from fond.result import TRACE_KEYS, InferenceResult, UnrollLoss
from fond.rollout import DEFAULT_WINDOW
from fond.unroll_engine import UnrollWorkspace

__all__ = ["IterativeVAE", "IPVAE", "IGVAE", "IBVAE", "InferenceResult", "UnrollLoss", "TRACE_KEYS"]


class IterativeVAE(ModelBase):
    """A recurrent network doing variational inference by FOND, for any registered family and decoder.

    ``IterativeVAE(n_inputs, n_latents, seed=0, **options)``; ``options`` are ``ModelConfig`` fields
    (``model=``, ``decoder=``, ``family_options=``, ...). Construction draws the initial parameters from
    a private generator seeded by ``seed`` (the global RNG is never touched) and does nothing else.
    """

    default_model = "ipvae"
    #: rates near the clamp mean a population burst of the recurrent dynamics (``fond.train.BurstMonitor``)
    bursts_at_clamp = True

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__()
        config = self.resolve_config(n_inputs, n_latents, config, options)
        self.config = config
        self.family = config.family
        d, k = config.n_inputs, config.n_latents
        gen = torch.Generator().manual_seed(int(seed))
        self.decoder = make_decoder(config.decoder, d, k, generator=gen, init_scale=config.init_scale,
                                    hidden=config.decoder_hidden)
        self.log_sigma_x = nn.Parameter(torch.zeros(d))
        self.log_bias = nn.Parameter(torch.full((k,), config.log_bias_init))
        initial = self.family.init_parameters(k, gen)
        for name, tensor in initial.items():
            self.register_parameter(name, nn.Parameter(tensor))
        self._family_param_names = tuple(initial)
        #: the fused training unroll's storage, kept across iterations (empty until the first; not saved)
        self.unroll_workspace = UnrollWorkspace()

    # -- parameters as the dynamics see them -------------------------------------------------------
    def components(self) -> Components:
        """The family, decoder and learned scalars, as the pure dynamics take them."""
        return Components(self.family, self.family_params(), self.decoder, self.log_sigma(), torch.exp(self.log_bias))

    # -- training ----------------------------------------------------------------------------------
    def unroll_loss(self, x: Tensor, steps: int, *, beta: float, temperature: float, clamp_fraction: float = 1.0,
                    generator: torch.Generator | None = None) -> UnrollLoss:
        """Unroll ``steps`` inference steps with relaxed samples and return the BPTT objective.

        ``temperature``: of the relaxed sampler (Poisson, Bernoulli; Gaussians sample at τ = 1).
        ``clamp_fraction``: how far the clamp bounds have ramped (1 = final). See ``fond.dynamics.unroll``.
        """
        check_loss_args(steps, beta, temperature, clamp_fraction, generator)
        x = check_input(x, self.n_inputs, like=self.input_like)
        return unroll(self.components(), x, steps, beta=beta, temperature=temperature,
                      clamp_fraction=clamp_fraction, generator=generator, workspace=self.unroll_workspace)

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: Tensor, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
              window: int = DEFAULT_WINDOW) -> InferenceResult:
        """Run ``steps`` FOND steps with evaluation samples from the initial state and return the result.

        x: (B, D) inputs (same preprocessing as training), or (steps, B, D) an online input sequence (frame
        t − 1 drives step t; the posterior carries over as the prior when the input changes). record:
        1-based steps whose mean code and sample to keep in ``result.history``. seed: seeds a private generator for the
        samples (ignored if ``generator`` is given). trace: record per-step means: by default every
        key but ``r2_rates`` (``fond.result.DEFAULT_TRACE_KEYS``), True every key (``r2_rates`` decodes the dense
        mean code each step), False none, or the keys wanted (``fond.rollout.trace_keys``: e.g. ("zeros", "kl")
        costs next to nothing). Samples are exact integer spikes
        (Poisson), hard binaries (Bernoulli) or temperature-1 draws (Gaussian). tol, window: anytime inference
        (``fond.rollout.Convergence``): each input freezes once its mean code has settled, the rollout stops
        when all have, ``result.steps_used``.
        """
        x, gen = self.inference_input(x, steps, seed, generator)
        return rollout(self.components(), x, steps, generator=gen, trace=trace, record=record, tol=tol,
                       window=window)


class IPVAE(IterativeVAE):
    """Iterative Poisson VAE: a recurrent spiking network with integer spike counts (DESIGN.md §2.1)."""

    default_model = "ipvae"


class IGVAE(IterativeVAE):
    """Iterative Gaussian VAE (DESIGN.md §2.2): ``activation=None`` (iG-VAE) or ``"relu"`` (iG_relu-VAE,
    f(z) = relu(z)·exp(log gain) with a learned per-neuron gain)."""

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, activation: str | None = None,
                 seed: int = 0, config: ModelConfig | None = None, **options) -> None:
        if config is None:
            if activation not in (None, "relu"):
                from fond.errors import ConfigError

                raise ConfigError(f"IGVAE activation must be None or 'relu', got {activation!r}")
            options["model"] = "igvae" if activation is None else "igvae-relu"
        super().__init__(n_inputs, n_latents, seed=seed, config=config, **options)


class IBVAE(IterativeVAE):
    """Iterative Bernoulli VAE: binary spiking units, the fourth member of the family (fond.families.bernoulli)."""

    default_model = "ibvae"
