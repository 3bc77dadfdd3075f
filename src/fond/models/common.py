"""Input checks shared by every model's ``infer`` and ``unroll_loss`` (one-line errors, no tracebacks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError

__all__ = ["check_input", "check_input_sequence", "check_record", "check_steps", "reject_sequence", "Recorder",
           "ModelBase"]


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


def check_record(record, steps: int) -> tuple[int, ...]:
    """``record`` (an iterable of 1-based steps, or None) as a sorted tuple of distinct steps in [1, steps]."""
    if record is None:
        return ()
    try:
        values = [int(t) for t in record]
        exact = all(float(t) == int(t) for t in record if not isinstance(t, bool))
    except (TypeError, ValueError):
        raise DataError(f"record must be an iterable of integer steps, got {record!r}") from None
    if not exact or any(isinstance(t, bool) for t in record):
        raise DataError("record must hold integer steps")
    bad = [t for t in values if not 1 <= t <= steps]
    if bad:
        raise DataError(f"record steps must lie in 1..{steps}, got {bad[0]}")
    return tuple(sorted(set(values)))


class Recorder:
    """Keeps the mean code and the sample after the steps named by ``record`` (see ``InferenceResult.history``)."""

    def __init__(self, record, steps: int) -> None:
        self.steps = check_record(record, steps)
        self._wanted = set(self.steps)
        self._rates: list[Tensor] = []
        self._spikes: list[Tensor] = []

    def __call__(self, step: int, rates: Tensor, spikes: Tensor) -> None:
        """Record after 1-based ``step`` if it was asked for."""
        if step in self._wanted:
            self._rates.append(rates.detach().clone())
            self._spikes.append(spikes.detach().clone())

    def history(self) -> dict | None:
        if not self.steps:
            return None
        return {"steps": np.asarray(self.steps, dtype=np.int64), "rates": torch.stack(self._rates),
                "spikes": torch.stack(self._spikes)}


def check_input_sequence(x, n_inputs: int, steps: int) -> Tensor:
    """An input (B, D) or an online input sequence (steps, B, D), checked like ``check_input``."""
    if isinstance(x, Tensor | np.ndarray) and getattr(x, "ndim", 0) == 3:
        if x.shape[0] != steps:
            raise DataError(f"an input sequence must have one frame per step: shape ({steps}, B, {n_inputs}), "
                            f"got {tuple(x.shape)}")
        frames = check_input(x.reshape(-1, x.shape[-1]), n_inputs)
        return frames.reshape(x.shape[0], x.shape[1], n_inputs)
    return check_input(x, n_inputs)


def reject_sequence(x, name: str) -> None:
    """Raise ``DataError`` for a 3-D online input given to a model that takes a fixed input only."""
    if getattr(x, "ndim", 2) == 3:
        raise DataError(f"model {name!r} takes a fixed input (B, D); online input sequences (steps, B, D) need an "
                        "iterative or amortized model")
