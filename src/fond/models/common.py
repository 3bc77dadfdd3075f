"""Input checks shared by every model's ``infer`` and ``unroll_loss`` (one-line errors, no tracebacks), and
``ModelBase``, what every model shares."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fond.device import seeded_generator
from fond.errors import DataError
from fond.registry import model_spec
from fond.validate import require

__all__ = ["check_input", "check_input_sequence", "check_loss_args", "check_option", "check_steps", "input_bound",
           "make_generator", "numeric_tensor", "reject_sequence", "ModelBase"]


_ARRAY_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates", "m": "time deltas",
                "V": "raw records"}


def numeric_tensor(x, what: str = "input") -> Tensor:
    """``x`` as a tensor without copying where possible; non-numeric input raises ``DataError``."""
    if isinstance(x, Tensor):
        return x
    if x is None or isinstance(x, str | bytes | dict | set):
        raise DataError(f"{what} must be a numeric array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a numeric array, got a ragged or non-numeric {type(x).__name__}") from None
    if arr.dtype.kind not in "biufc":
        held = _ARRAY_KINDS.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise DataError(f"{what} must be a numeric array, got {type(x).__name__} of {held}")
    try:
        return torch.as_tensor(arr)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{what} must be a float32 or float64 array, got dtype {arr.dtype}") from None


def input_bound(dtype: torch.dtype) -> float:
    """The largest |x| a model computing in ``dtype`` accepts: finfo.max^¼, so that squared residuals summed over
    pixels and divided by σ_x² stay finite (float32: 4.3e9; float64: 1.3e77)."""
    return float(torch.finfo(dtype).max) ** 0.25


def check_input(x, n_inputs: int, *, like: Tensor | None = None) -> Tensor:
    """``x`` as a floating tensor of shape (B ≥ 1, n_inputs) with finite values, else ``DataError``.

    like: a tensor of the model (a parameter); ``x`` is converted to its dtype and moved to its device from
    the CPU (data usually live there; a tensor on another accelerator is refused: no hidden transfers between
    GPUs), and values too large to square in that dtype (``input_bound``) are refused instead of overflowing.
    """
    x = numeric_tensor(x)
    if x.layout != torch.strided:
        raise DataError(f"input must be a dense tensor, got layout {x.layout}")
    if not x.is_floating_point():
        hint = " (convert it with x.float())" if not x.is_complex() else ""
        raise DataError(f"input must be floating point, got dtype {x.dtype}{hint}")
    if x.ndim != 2 or x.shape[1] != n_inputs or x.shape[0] == 0:
        raise DataError(f"input must have shape (batch ≥ 1, {n_inputs}), got {tuple(x.shape)}")
    if like is not None and x.device != like.device and x.device.type != "cpu":
        raise DataError(f"input is on device '{x.device}', the model on '{like.device}': move one of them "
                        f"(x.to('{like.device}'))")
    finite = torch.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        raise DataError(f"input contains NaN or Inf ({bad} of {x.numel()} values)")
    dtype = like.dtype if like is not None and like.is_floating_point() else x.dtype
    bound = input_bound(dtype)
    largest = float(x.abs().max())
    if largest > bound:
        kind = str(dtype).removeprefix("torch.")
        raise DataError(f"input values too large: max |x| = {largest:.3g} exceeds {bound:.3g} for a {kind} model; "
                        "rescale the data (e.g. to unit variance)")
    return x.to(device=like.device if like is not None else x.device, dtype=dtype)


def check_option(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("config key 'method_options.<key>': <message>")`` unless ``condition`` (the check of
    every method's options dataclass)."""
    require(condition, f"method_options.{key}", message)


def check_steps(steps) -> int:
    """``steps`` as an integer ≥ 1, else ``DataError``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise DataError(f"steps must be an integer ≥ 1, got {steps!r}")
    return steps


def make_generator(seed, generator, device: torch.device | str = "cpu") -> torch.Generator:
    """``generator`` if given (a ``torch.Generator`` on ``device``, the input's), else a new one on ``device``
    seeded by the integer ``seed``."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise DataError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != torch.device(device).type:
            raise DataError(f"generator is on device '{generator.device}', the input on '{device}': make it with "
                            f"torch.Generator(device='{device}')")
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**64:
        raise DataError(f"seed must fit in 64 bits, got {seed}")
    return seeded_generator(int(seed), device)


def _number(value) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def check_loss_args(steps, beta, temperature, clamp_fraction, generator) -> None:
    """The arguments of ``unroll_loss`` other than ``x``: one-line ``DataError`` naming the bad one."""
    check_steps(steps)
    checks = (("beta", beta, lambda v: v >= 0, "≥ 0"), ("temperature", temperature, lambda v: v > 0, "> 0"),
              ("clamp_fraction", clamp_fraction, lambda v: 0 <= v <= 1, "in [0, 1]"))
    for name, value, ok, rule in checks:
        number = _number(value)
        if number is None or not np.isfinite(number) or not ok(number):
            raise DataError(f"{name} must be a finite number {rule}, got {value!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DataError(f"generator must be a torch.Generator, got {type(generator).__name__}")


class ModelBase(torch.nn.Module):
    """What every model shares: its ``config``, sizes, the decoder's dictionary, parameter count,
    ``decode``, ``save`` — and, where the model has them, the clamped log σ_x and the family's tensors.

    Subclasses set ``self.config`` (see ``resolve_config``) and ``self.decoder`` (and ``log_sigma_x``,
    ``_family_param_names`` when they have a likelihood scale and a family).
    """

    default_model: str = ""
    #: how raw images become this model's inputs (``fond.data.Preprocessing``): set by ``fond.load`` from the
    #: run's record, kept by ``save``; None for a model built in code or trained on inputs given as they are
    preprocessing = None

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
    def input_like(self) -> Tensor:
        """A parameter whose device and dtype inputs take (``check_input``'s ``like``)."""
        return next(self.parameters())

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

    def inference_input(self, x, steps, seed, generator) -> tuple[Tensor, torch.Generator]:
        """``infer``'s arguments checked (one-line ``DataError`` naming the bad one): (x, the generator).

        steps: an integer ≥ 1. x: (B, D), or (steps, B, D) where the model's registry entry accepts online
        input (``ModelSpec.accepts_online_input``; the others refuse a sequence), on the model's device, in its
        dtype (``check_input``). The generator: ``generator`` if given, else one seeded by ``seed``.
        """
        check_steps(steps)
        if self.config.spec.accepts_online_input:
            x = check_input_sequence(x, self.n_inputs, steps, like=self.input_like)
        else:
            reject_sequence(x, self.config.model)
            x = check_input(x, self.n_inputs, like=self.input_like)
        return x, make_generator(seed, generator, x.device)

    def preprocess(self, images, n: int = 5000, seed: int = 0) -> Tensor:
        """This model's inputs made from raw images (each (H, W) grey or (H, W, 3|4) colour, floats in [0, 1]
        or 8-bit) exactly as its training inputs were (``preprocessing``): ``n`` random whitened patches, or
        one row per MNIST digit. (N, D) in the model's dtype; one ``DataError`` line without a record."""
        from fond.errors import DataError

        if self.preprocessing is None:
            raise DataError("this model carries no preprocessing record (built in code, or trained on inputs "
                            "given as they are): prepare inputs as its training inputs were")
        x = self.preprocessing.inputs_from_images(images, n=n, seed=seed)
        return torch.as_tensor(x).to(self.input_like.dtype)

    def save(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle), with the preprocessing
        record where the model has one; see ``fond.load``."""
        from fond.checkpoint import save_model

        record = None if self.preprocessing is None else {"preprocessing": self.preprocessing.to_dict()}
        save_model(self, directory, extra=record)


def check_input_sequence(x, n_inputs: int, steps: int, *, like: Tensor | None = None) -> Tensor:
    """An input (B, D) or an online input sequence (steps, B, D), checked like ``check_input``."""
    x = numeric_tensor(x)
    if x.ndim == 3:
        if x.shape[0] != steps or x.shape[1] == 0 or x.shape[2] != n_inputs:
            raise DataError(f"an input sequence must have one frame per step: shape ({steps}, B, {n_inputs}), "
                            f"got {tuple(x.shape)}")
        frames = check_input(x.reshape(-1, x.shape[-1]), n_inputs, like=like)
        return frames.reshape(x.shape[0], x.shape[1], n_inputs)
    return check_input(x, n_inputs, like=like)


def reject_sequence(x, name: str) -> None:
    """Raise ``DataError`` for a 3-D online input given to model ``name`` if its registry entry says it takes a
    fixed input only (``ModelSpec.accepts_online_input``: the one place that capability is written)."""
    if getattr(x, "ndim", 2) == 3 and not model_spec(name).accepts_online_input:
        raise DataError(f"model {name!r} takes a fixed input (B, D); online input sequences (steps, B, D) need an "
                        "iterative or amortized model")
