"""The iterative Poisson VAE (iP-VAE): the Poisson family + a linear dictionary + FOND dynamics.

There is no encoder. The learned parameters are the dictionary Φ (D×K), the per-pixel decoder scale
log σ_x (D), the per-neuron bias log b (K), the global step size log η (1) and the initial membrane
potentials u_init (K): 132,353 numbers for D = 256, K = 512.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from fond.config import ModelConfig
from fond.dynamics import DynamicsParams, EvalOperators, natural_gradient_step, pullback
from fond.errors import DataError
from fond.families.poisson import poisson_kl, relaxed_poisson, sample_poisson
from fond.metrics import gaussian_nll, r2_per_sample, zeros_fraction

__all__ = ["IPVAE", "InferenceResult", "UnrollLoss", "TRACE_KEYS"]

TRACE_KEYS: tuple[str, ...] = ("r2", "r2_rates", "zeros", "du_norm", "nll", "kl", "nelbo", "rate_max")


@dataclass
class InferenceResult:
    """What an inference rollout returns (the same fields for every inference method).

    rates: (B, K) firing rates exp(u_T), spikes per step. spikes: (B, K) integer counts drawn at the
    last step. membrane_potential: (B, K) u_T. reconstruction: (B, D) Φ·spikes. reconstruction_from_rates:
    (B, D) Φ·rates. trace: per-step means over the batch, each an array of length ``steps``:
    r2, r2_rates, zeros, du_norm (‖u_t − u_{t−1}‖₂), nll (nats), kl (nats, to the online prior),
    nelbo = nll + kl, rate_max (largest rate in the batch). steps: T.
    """

    rates: Tensor
    spikes: Tensor
    membrane_potential: Tensor
    reconstruction: Tensor
    reconstruction_from_rates: Tensor
    steps: int
    trace: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class UnrollLoss:
    """Training objective of one batch: the mean over T_train steps of NLL + β·KL (scaled by 256/D).

    loss: scalar tensor to backpropagate. nll, kl: per-step batch means (length T, no grad),
    rate_max: the largest rate seen. All per-sample quantities are in nats.
    """

    loss: Tensor
    nll: np.ndarray
    kl: np.ndarray
    rate_max: float


def _check_input(x: Tensor, n_inputs: int) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"input must be a numeric array, got {type(x).__name__}") from None
    if not (x.is_floating_point()):
        raise DataError(f"input must be floating point, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != n_inputs or x.shape[0] == 0:
        raise DataError(f"input must have shape (batch ≥ 1, {n_inputs}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("input contains NaN or Inf")
    return x


class IPVAE(nn.Module):
    """Iterative Poisson VAE: a recurrent spiking network doing variational inference by FOND.

    ``IPVAE(n_inputs, n_latents, seed=0, **options)``; ``options`` are ``ModelConfig`` fields.
    Construction draws the initial parameters from a private generator seeded by ``seed`` (the global
    RNG is never touched) and does nothing else.
    """

    def __init__(self, n_inputs: int | None = None, n_latents: int = 512, *, seed: int = 0,
                 config: ModelConfig | None = None, **options) -> None:
        super().__init__()
        if config is None:
            if n_inputs is None:
                raise TypeError("IPVAE needs n_inputs (or a ModelConfig)")
            config = ModelConfig(n_inputs=n_inputs, n_latents=n_latents, **options)
        self.config = config
        d, k = config.n_inputs, config.n_latents
        gen = torch.Generator().manual_seed(int(seed))
        self.dictionary = nn.Parameter(torch.randn(d, k, generator=gen) * config.init_scale)
        self.log_sigma_x = nn.Parameter(torch.zeros(d))
        self.log_bias = nn.Parameter(torch.full((k,), config.log_bias_init))
        self.log_step_size = nn.Parameter(torch.zeros(1))
        span = config.u_init_high - config.u_init_low
        self.u_init = nn.Parameter(config.u_init_low + span * torch.rand(k, generator=gen))

    # -- parameters as the dynamics see them -------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return self.config.n_inputs

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def log_sigma(self) -> Tensor:
        """Per-pixel log σ_x after the symmetric tanh clamp, (D,)."""
        c = self.config.sigma_clamp
        return c * torch.tanh(self.log_sigma_x / c)

    def dynamics_params(self, clamp: float | None = None) -> DynamicsParams:
        return DynamicsParams(
            dictionary=self.dictionary,
            inv_variance=torch.exp(-2.0 * self.log_sigma()),
            bias=torch.exp(self.log_bias),
            step_size=torch.exp(self.log_step_size),
            clamp=self.config.clamp_final if clamp is None else float(clamp),
            floor=self.config.floor,
        )

    def decode(self, z: Tensor) -> Tensor:
        """Linear decoder: Φ z, (B, K) → (B, D)."""
        return z @ self.dictionary.T

    def save(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle); see ``fond.load``."""
        from fond.checkpoint import save_model

        save_model(self, directory)

    # -- training ----------------------------------------------------------------------------------
    def unroll_loss(self, x: Tensor, steps: int, *, beta: float, temperature: float, clamp: float,
                    generator: torch.Generator | None = None) -> UnrollLoss:
        """Unroll ``steps`` inference steps with relaxed spikes and return the BPTT objective.

        Each step samples z_t from the current posterior q_t once; that sample is decoded for the
        step's NLL and is also the spike train that drives the next update (one sample shared where
        the original code draws two independent ones: the same expected objective, half the
        sampling). Per step: NLL(x | Φz_t) + β·KL(q_t ‖ q_{t−1}); the loss is the batch mean of the
        mean over steps, times 256/D (the paper's scaling).
        """
        x = _check_input(x, self.n_inputs)
        cfg = self.config
        params = self.dynamics_params(clamp)
        log_sigma = self.log_sigma()
        u = self.u_init.expand(x.shape[0], -1)

        def draw(u_now: Tensor) -> Tensor:
            return relaxed_poisson(torch.exp(u_now), temperature, generator, indicator=cfg.indicator,
                                   tail=cfg.n_exp_tail, max_terms=cfg.max_terms)

        reconstruction = self.decode(draw(u))
        total = x.new_zeros(())
        nll_trace, kl_trace = [], []
        rate_max = 0.0
        for _ in range(steps):
            u_next = natural_gradient_step(params, u, pullback(params, x, reconstruction))
            reconstruction = self.decode(draw(u_next))
            nll = gaussian_nll(x, reconstruction, log_sigma)
            kl = poisson_kl(u_next, u, cfg.kl).sum(-1)
            total = total + (nll + beta * kl).mean()
            nll_trace.append(float(nll.detach().mean()))
            kl_trace.append(float(kl.detach().mean()))
            rate_max = max(rate_max, float(u_next.detach().max().exp()))
            u = u_next
        scale = 256.0 / self.n_inputs
        return UnrollLoss(loss=total / steps * scale, nll=np.array(nll_trace), kl=np.array(kl_trace),
                          rate_max=rate_max)

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, x: Tensor, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool = True, clamp: float | None = None) -> InferenceResult:
        """Run ``steps`` FOND steps with exact integer spikes from u_init and return the result.

        x: (B, D) inputs (same preprocessing as training). seed: seeds a private generator for the
        spikes (ignored if ``generator`` is given). trace: record per-step means (costs two extra
        matrix products per step). clamp: override the soft-clamp bound (default: clamp_final).
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise DataError(f"steps must be an integer ≥ 1, got {steps!r}")
        x = _check_input(x, self.n_inputs).to(self.dictionary.dtype)
        gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        params = self.dynamics_params(clamp)
        ops = EvalOperators.build(params, x)
        log_sigma = self.log_sigma()
        u = self.u_init.expand(x.shape[0], -1).clone()
        spikes = sample_poisson(torch.exp(u), gen)
        records: dict[str, list[float]] = {k: [] for k in TRACE_KEYS} if trace else {}
        for _ in range(steps):
            u_next = natural_gradient_step(params, u, ops.pullback(spikes))
            rates = torch.exp(u_next)
            spikes = sample_poisson(rates, gen)
            if trace:
                recon = self.decode(spikes)
                nll = gaussian_nll(x, recon, log_sigma)
                kl = poisson_kl(u_next, u, self.config.kl).sum(-1)
                records["r2"].append(float(r2_per_sample(x, recon).mean()))
                records["r2_rates"].append(float(r2_per_sample(x, self.decode(rates)).mean()))
                records["zeros"].append(float(zeros_fraction(spikes).mean()))
                records["du_norm"].append(float((u_next - u).norm(dim=-1).mean()))
                records["nll"].append(float(nll.mean()))
                records["kl"].append(float(kl.mean()))
                records["nelbo"].append(float((nll + kl).mean()))
                records["rate_max"].append(float(rates.max()))
            u = u_next
        rates = torch.exp(u)
        return InferenceResult(
            rates=rates,
            spikes=spikes,
            membrane_potential=u,
            reconstruction=self.decode(spikes),
            reconstruction_from_rates=self.decode(rates),
            steps=steps,
            trace={k: np.asarray(v) for k, v in records.items()},
        )
