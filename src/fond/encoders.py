"""Encoders x ↦ posterior parameters for the amortized (and hybrid) VAE baselines.

An encoder maps a batch of inputs x (B, D) to (B, n_outputs), the raw posterior parameters of the
family's state (e.g. u for Poisson, or [μ, log σ] for a Gaussian, concatenated along the last axis).
D = ``n_inputs``.

* ``LinearEncoder``: one affine map D -> n_outputs.
* ``UnbiasedLinearEncoder`` (name ``"linear-nobias"``): x Wᵀ without bias, W ~ N(0, 0.05²), the linear
  encoder of the authors' PoissonVAE code (DESIGN.md §7).
* ``MLPEncoder``: D -> hidden -> hidden -> n_outputs with SiLU between layers.
* ``ConvEncoder``: square images of side s (D = s², s divisible by 4): conv(1 -> C, kernel 4, stride 2,
  padding 1) -> SiLU -> conv(C -> 2C, same) -> SiLU -> flatten (2C·(s/4)²) -> linear -> n_outputs, with
  C = ``hidden`` channels.

Initialisation draws only from the ``generator`` passed in (never the global RNG): parameters are plain
tensors wrapped in ``nn.Parameter`` and used through ``F.linear`` / ``F.conv2d`` (``nn.Linear`` and
``nn.Conv2d`` initialise themselves from the global RNG). Every weight and bias is
U(−1/√fan_in, 1/√fan_in) (PyTorch's default scale), drawn in the order the layers are applied (weight then
bias), except that the final layer's weight is further multiplied by ``FINAL_WEIGHT_SCALE`` = 0.1 so the
initial posterior sits near the family's prior scale rather than at saturated rates / huge variances.
``linear-nobias`` draws its one weight from N(0, ``UNBIASED_INIT_STD``²) instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fond.decoders import SquareImageConv, layer_parameters, linear_parameters, require_positive
from fond.errors import ConfigError

__all__ = ["ENCODERS", "FINAL_WEIGHT_SCALE", "UNBIASED_INIT_STD", "Encoder", "LinearEncoder",
           "UnbiasedLinearEncoder", "MLPEncoder", "ConvEncoder", "make_encoder"]

ENCODERS: tuple[str, ...] = ("linear", "linear-nobias", "mlp", "conv")

#: std of the normal initial weights of ``UnbiasedLinearEncoder`` (the authors' PoissonVAE code)
UNBIASED_INIT_STD = 0.05

#: extra factor on the final layer's initial weights (small initial posterior parameters)
FINAL_WEIGHT_SCALE = 0.1


class Encoder(nn.Module):
    """An encoder (B, D) -> (B, n_outputs). ``n_inputs`` = D, ``n_outputs`` = the number of raw outputs."""

    def __init__(self, n_inputs: int, n_outputs: int) -> None:
        super().__init__()
        self.n_inputs = require_positive("encoder n_inputs", n_inputs)
        self.n_outputs = require_positive("encoder n_outputs", n_outputs)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """x (B, D) -> (B, n_outputs)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"n_inputs={self.n_inputs}, n_outputs={self.n_outputs}"


class LinearEncoder(Encoder):
    """x Wᵀ + b: parameters ``weight`` (n_outputs, D) and ``bias`` (n_outputs,), drawn in that order."""

    def __init__(self, n_inputs: int, n_outputs: int, *, generator: torch.Generator) -> None:
        super().__init__(n_inputs, n_outputs)
        d, n = self.n_inputs, self.n_outputs
        self.weight, self.bias = linear_parameters(n, d, generator, weight_scale=FINAL_WEIGHT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class UnbiasedLinearEncoder(Encoder):
    """x Wᵀ, no bias: parameter ``weight`` (n_outputs, D) ~ N(0, ``UNBIASED_INIT_STD``²), as in the authors'
    PoissonVAE code."""

    def __init__(self, n_inputs: int, n_outputs: int, *, generator: torch.Generator) -> None:
        super().__init__(n_inputs, n_outputs)
        weight = torch.randn(self.n_outputs, self.n_inputs, generator=generator) * UNBIASED_INIT_STD
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class MLPEncoder(Encoder):
    """D -> hidden -> hidden -> n_outputs with SiLU: ``weight1``/``bias1`` (hidden, D), ``weight2``/``bias2``
    (hidden, hidden), ``weight3``/``bias3`` (n_outputs, hidden), drawn in that order."""

    def __init__(self, n_inputs: int, n_outputs: int, *, generator: torch.Generator, hidden: int = 512) -> None:
        super().__init__(n_inputs, n_outputs)
        h = self.hidden = require_positive("encoder hidden", hidden)
        self.weight1, self.bias1 = linear_parameters(h, self.n_inputs, generator)
        self.weight2, self.bias2 = linear_parameters(h, h, generator)
        self.weight3, self.bias3 = linear_parameters(self.n_outputs, h, generator, weight_scale=FINAL_WEIGHT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(F.linear(x, self.weight1, self.bias1))
        h = F.silu(F.linear(h, self.weight2, self.bias2))
        return F.linear(h, self.weight3, self.bias3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}"


class ConvEncoder(SquareImageConv, Encoder):
    """Two stride-2 convs and a linear read-out, for square images of side s (D = s², s divisible by 4).

    Parameters (in the order drawn): ``conv1_weight`` (C, 1, 4, 4), ``conv1_bias`` (C,), ``conv2_weight``
    (2C, C, 4, 4), ``conv2_bias`` (2C,), ``linear_weight`` (n_outputs, 2C·(s/4)²), ``linear_bias``; C =
    ``channels``. Inputs are read as row-major s × s images (like the patches).
    """

    def __init__(self, n_inputs: int, n_outputs: int, *, generator: torch.Generator, channels: int = 64) -> None:
        super().__init__(n_inputs, n_outputs)
        side = self.set_geometry(channels, "encoder")
        c, ks, n = self.channels, self.kernel_size, self.n_outputs
        flat = 2 * c * (side // 4) ** 2
        self.conv1_weight, self.conv1_bias = layer_parameters((c, 1, ks, ks), c, ks * ks, generator)
        self.conv2_weight, self.conv2_bias = layer_parameters((2 * c, c, ks, ks), 2 * c, c * ks * ks, generator)
        self.linear_weight, self.linear_bias = linear_parameters(n, flat, generator, weight_scale=FINAL_WEIGHT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        h = x.reshape(batch, 1, self.side, self.side)
        h = F.silu(F.conv2d(h, self.conv1_weight, self.conv1_bias, stride=self.stride, padding=self.padding))
        h = F.silu(F.conv2d(h, self.conv2_weight, self.conv2_bias, stride=self.stride, padding=self.padding))
        return F.linear(h.reshape(batch, -1), self.linear_weight, self.linear_bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, side={self.side}, channels={self.channels}"


def make_encoder(name: str, n_inputs: int, n_outputs: int, *, generator: torch.Generator,
                 hidden: int = 512) -> Encoder:
    """The encoder called ``name`` (one of ``ENCODERS``) mapping (B, n_inputs) -> (B, n_outputs).

    Parameters are drawn from ``generator`` only. hidden: hidden units of the MLP encoder, channels C of
    the conv encoder (ignored by the linear ones; must be ≥ 1 whatever the encoder). Bad arguments raise
    ``ConfigError``.
    """
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; expected one of {ENCODERS}")
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"encoder generator must be a torch.Generator, got {type(generator).__name__}")
    require_positive("encoder hidden", hidden)
    if name == "linear":
        return LinearEncoder(n_inputs, n_outputs, generator=generator)
    if name == "linear-nobias":
        return UnbiasedLinearEncoder(n_inputs, n_outputs, generator=generator)
    if name == "mlp":
        return MLPEncoder(n_inputs, n_outputs, generator=generator, hidden=hidden)
    return ConvEncoder(n_inputs, n_outputs, generator=generator, channels=hidden)
