"""Input checks shared by every model's ``infer`` and ``unroll_loss`` (one-line errors, no tracebacks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError

__all__ = ["check_input", "check_steps", "ModelBase"]


def check_input(x, n_inputs: int) -> Tensor:
    """``x`` as a floating tensor of shape (B ≥ 1, n_inputs) with finite values, else ``DataError``."""
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


def check_steps(steps) -> int:
    """``steps`` as an integer ≥ 1, else ``DataError``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise DataError(f"steps must be an integer ≥ 1, got {steps!r}")
    return steps


class ModelBase(torch.nn.Module):
    """What every model shares: its ``config``, sizes, the decoder's dictionary, parameter count,
    ``decode``, ``save`` — and, where the model has them, the clamped log σ_x and the family's tensors.

    Subclasses set ``self.config`` (see ``resolve_config``) and ``self.decoder`` (and ``log_sigma_x``,
    ``_family_param_names`` when they have a likelihood scale and a family).
    """

    default_model: str = ""

    def resolve_config(self, n_inputs: int | None, n_latents: int, config, options: dict):
        """``config`` if given, else a ``ModelConfig`` of ``options`` with ``model`` defaulting to the class's."""
        if config is not None:
            return config
        from fond.config import ModelConfig

        if n_inputs is None:
            raise TypeError(f"{type(self).__name__} needs n_inputs (or a ModelConfig)")
        options.setdefault("model", self.default_model)
        return ModelConfig(n_inputs=n_inputs, n_latents=n_latents, **options)

    @property
    def n_inputs(self) -> int:
        return self.config.n_inputs

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def dictionary(self) -> Tensor | None:
        """Φ (D, K) of a linear decoder; None for nonlinear decoders."""
        return self.decoder.dictionary

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def log_sigma(self) -> Tensor:
        """Per-pixel log σ_x after the symmetric tanh clamp, (D,)."""
        c = self.config.sigma_clamp
        return c * torch.tanh(self.log_sigma_x / c)

    def family_params(self) -> dict[str, Tensor]:
        """The family's learned tensors by name (initial state or prior, step sizes, gains)."""
        return {name: getattr(self, name) for name in self._family_param_names}

    def decode(self, code: Tensor) -> Tensor:
        """The decoder's mean g(code) for a decoder input (B, K) → (B, D)."""
        return self.decoder(code)

    def save(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle); see ``fond.load``."""
        from fond.checkpoint import save_model

        save_model(self, directory)
