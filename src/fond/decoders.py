"""Decoders g(f) of the Gaussian likelihood p(x | z) = N(x; g(f(z)), diag σ_x²), with their pull-back.

DESIGN §2.3. Every FOND step carries the precision-weighted prediction error e = (x − g(f))·σ_x⁻² (B, D)
back to the latents. For the linear decoder g(f) = f Φᵀ that is Φᵀ(x − Φf)/σ_x², i.e. ``e @ Φ``. For g an
MLP or a conv net, the recurrent term Φᵀ(x − Φz) becomes the vector–Jacobian product
J_g(z)ᵀ(x − g(z))/σ_x²; everything else in the step stays.

Shapes: f, the decoder input (the family's activation of a latent sample), is (B, K); g(f) and e are
(B, D); the pull-back J_g(f)ᵀ e is (B, K). D = ``n_inputs``, K = ``n_latents``.

Two ways in:

* ``Decoder.with_pullback(f)`` -> (g(f), e ↦ J_g(f)ᵀ e), for training. With grad enabled the pull-back is
  itself differentiable w.r.t. the decoder's parameters and w.r.t. f (create-graph semantics), so
  backpropagation through many unrolled steps (BPTT) sees the second-order terms. For nonlinear decoders
  it is one ``torch.func.vjp``, which composes with outer autograd (checked in tests/test_decoders.py:
  gradients of a loss on the pull-back reach the parameters and f), and under ``torch.no_grad()`` it still
  computes the vector–Jacobian product and returns values with no autograd history.
* ``Decoder.operators(x, inv_variance)`` -> ``DecoderOperators`` with ``.pullback(f)`` =
  J_g(f)ᵀ(x − g(f))·σ_x⁻² and ``.reconstruct(f)`` = g(f), for evaluation rollouts (hundreds to thousands
  of steps on one batch). The linear decoder precomputes Φᵀx/σ_x² and ΦᵀΣ⁻¹Φ there, so a step is one
  (B×K)·(K×K) product.

Initialisation draws only from the ``generator`` passed in (never the global RNG): parameters are plain
tensors wrapped in ``nn.Parameter`` and used through ``F.linear`` / ``F.conv_transpose2d``, because
``nn.Linear`` and ``nn.ConvTranspose2d`` initialise themselves from the global RNG.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fond.errors import ConfigError

__all__ = [
    "DECODERS",
    "Decoder",
    "DecoderOperators",
    "LinearDecoder",
    "LinearDecoderOperators",
    "MLPDecoder",
    "ConvDecoder",
    "SquareImageConv",
    "VJPDecoderOperators",
    "make_decoder",
    "precision_gram",
    "layer_parameters",
    "linear_parameters",
    "require_positive",
    "square_image_side",
    "uniform_parameter",
]

DECODERS: tuple[str, ...] = ("linear", "mlp", "conv")

Pullback = Callable[[Tensor], Tensor]


# -- per-batch operators -------------------------------------------------------------------------


class DecoderOperators(ABC):
    """Per-batch constants of one decoder and one batch x, for many inference steps on that batch."""

    @abstractmethod
    def pullback(self, f: Tensor) -> Tensor:
        """J_g(f)ᵀ (x − g(f))·σ_x⁻²: decoder input f (B, K) -> precision-weighted error on the latents (B, K)."""

    @abstractmethod
    def reconstruct(self, f: Tensor) -> Tensor:
        """The decoder's mean g(f): (B, K) -> (B, D)."""


def precision_gram(dictionary: Tensor, inv_variance: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ⁻¹Φ (D, K), W = ΦᵀΣ⁻¹Φ (K, K)) of a dictionary Φ (D, K) and σ_x⁻² (D,): the drive's weights and the
    recurrent (explaining-away) matrix of a linear decoder, for the dynamics, the integer engine and NIR export."""
    weighted = dictionary * inv_variance[:, None]
    return weighted, dictionary.T @ weighted


class LinearDecoderOperators(DecoderOperators):
    """Φᵀ(x − Φf)/σ_x² = drive − f·gram with drive = Φᵀx/σ_x² (B, K) and gram = ΦᵀΣ⁻¹Φ (K, K)."""

    def __init__(self, dictionary: Tensor, x: Tensor, inv_variance: Tensor) -> None:
        """dictionary: Φ (D, K). x: the batch (B, D). inv_variance: σ_x⁻² (D,)."""
        weighted, self.gram = precision_gram(dictionary, inv_variance)
        self.dictionary = dictionary
        self.drive = x @ weighted

    def pullback(self, f: Tensor) -> Tensor:
        return self.drive - f @ self.gram

    def reconstruct(self, f: Tensor) -> Tensor:
        return f @ self.dictionary.T


class VJPDecoderOperators(DecoderOperators):
    """Any decoder: each ``pullback`` is one forward pass and one vector–Jacobian product."""

    def __init__(self, decoder: Decoder, x: Tensor, inv_variance: Tensor) -> None:
        """decoder: the g to pull back through. x: the batch (B, D). inv_variance: σ_x⁻² (D,)."""
        self.decoder = decoder
        self.x = x
        self.inv_variance = inv_variance

    def pullback(self, f: Tensor) -> Tensor:
        reconstruction, pull = self.decoder.with_pullback(f)
        return pull((self.x - reconstruction) * self.inv_variance)

    def reconstruct(self, f: Tensor) -> Tensor:
        return self.decoder(f)


# -- decoders ------------------------------------------------------------------------------------


class Decoder(nn.Module, ABC):
    """A decoder g: (B, K) -> (B, D) with its pull-back e ↦ J_g(f)ᵀ e.

    Subclasses implement ``forward``; the default ``with_pullback`` is one ``torch.func.vjp`` of it and the
    default ``operators`` calls that once per step. ``n_inputs`` = D (pixels), ``n_latents`` = K.
    """

    def __init__(self, n_inputs: int, n_latents: int) -> None:
        super().__init__()
        self.n_inputs = require_positive("n_inputs", n_inputs)
        self.n_latents = require_positive("n_latents", n_latents)

    @abstractmethod
    def forward(self, f: Tensor) -> Tensor:
        """g(f): decoder input (B, K) -> mean of x (B, D)."""

    def with_pullback(self, f: Tensor) -> tuple[Tensor, Pullback]:
        """g(f) (B, D) and the pull-back e (B, D) ↦ J_g(f)ᵀ e (B, K).

        With grad enabled both outputs carry autograd history w.r.t. the parameters and f (the pull-back
        can be differentiated again, as BPTT needs); under ``torch.no_grad()`` they carry none. The
        pull-back may be called more than once.
        """
        # torch.func.vjp composes with ordinary autograd: the decoder's parameters are closed over, and a
        # loss on the pull-back's output backpropagates to them and to f (second order through g). Under
        # an outer torch.no_grad() the transform still differentiates g internally, and its outputs come
        # back without history.
        reconstruction, vjp_fn = torch.func.vjp(self.forward, f)

        def pullback(error: Tensor) -> Tensor:
            (grad_f,) = vjp_fn(error)
            return grad_f

        return reconstruction, pullback

    def operators(self, x: Tensor, inv_variance: Tensor) -> DecoderOperators:
        """Per-batch helper: ``.pullback(f)`` = J_g(f)ᵀ (x − g(f))·inv_variance (B, K), ``.reconstruct(f)`` = g(f).

        x: the batch (B, D). inv_variance: σ_x⁻² (D,).
        """
        return VJPDecoderOperators(self, x, inv_variance)

    @property
    def dictionary(self) -> Tensor | None:
        """Φ (D, K) for the linear decoder; None for nonlinear decoders."""
        return None

    def extra_repr(self) -> str:
        return f"n_inputs={self.n_inputs}, n_latents={self.n_latents}"


class LinearDecoder(Decoder):
    """g(f) = f Φᵀ with the dictionary Φ (D, K) ~ N(0, init_scale²), no bias. Pull-back: e ↦ e Φ.

    The one parameter is registered as ``dictionary`` (state-dict key ``dictionary``), shape (D, K).
    """

    def __init__(self, n_inputs: int, n_latents: int, *, generator: torch.Generator, init_scale: float = 1e-4) -> None:
        super().__init__(n_inputs, n_latents)
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise ConfigError(f"decoder init_scale must be a finite number > 0, got {init_scale!r}")
        # The only draw from the generator (existing results depend on it being exactly this one).
        self.register_parameter(
            "dictionary", nn.Parameter(torch.randn(self.n_inputs, self.n_latents, generator=generator) * init_scale))

    @property
    def dictionary(self) -> Tensor:
        """Φ (D, K)."""
        # The base class's ``dictionary`` property shadows nn.Module's attribute lookup, so read the
        # registered parameter directly (AttributeError while it is not yet registered, as hasattr expects).
        try:
            return self._parameters["dictionary"]
        except KeyError:
            raise AttributeError("dictionary") from None

    def forward(self, f: Tensor) -> Tensor:
        """f Φᵀ: (B, K) -> (B, D)."""
        return f @ self.dictionary.T

    def with_pullback(self, f: Tensor) -> tuple[Tensor, Pullback]:
        """(f Φᵀ (B, D), e ↦ e Φ (B, K)); plain matrix products, differentiable as they stand."""
        dictionary = self.dictionary
        return f @ dictionary.T, lambda e: e @ dictionary

    def operators(self, x: Tensor, inv_variance: Tensor) -> DecoderOperators:
        """Precomputes Φᵀx/σ_x² (B, K) and ΦᵀΣ⁻¹Φ (K, K); ``pullback(f)`` = drive − f·gram."""
        return LinearDecoderOperators(self.dictionary, x, inv_variance)


class MLPDecoder(Decoder):
    """g(f) = W₂ SiLU(W₁ f + b₁) + b₂: K -> hidden -> D, a smooth hidden activation and a linear output.

    Parameters (in the order drawn): ``hidden_weight`` (hidden, K), ``hidden_bias`` (hidden,),
    ``output_weight`` (D, hidden), ``output_bias`` (D,), each ~ U(−1/√fan_in, 1/√fan_in) (PyTorch's
    ``nn.Linear`` default scale), drawn from ``generator``.
    """

    def __init__(self, n_inputs: int, n_latents: int, *, generator: torch.Generator, hidden: int = 512) -> None:
        super().__init__(n_inputs, n_latents)
        h = self.hidden = require_positive("decoder hidden", hidden)
        self.hidden_weight, self.hidden_bias = linear_parameters(h, self.n_latents, generator)
        self.output_weight, self.output_bias = linear_parameters(self.n_inputs, h, generator)

    def forward(self, f: Tensor) -> Tensor:
        """g(f): (B, K) -> (B, D)."""
        return F.linear(F.silu(F.linear(f, self.hidden_weight, self.hidden_bias)), self.output_weight, self.output_bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}"


class SquareImageConv:
    """What the conv decoder and encoder share: square images of side s (D = s², s divisible by 4) and layers
    of kernel 4, stride 2, padding 1 (each halves or doubles the side), C = ``channels``."""

    kernel_size = 4
    stride = 2
    padding = 1

    def set_geometry(self, channels: int, what: str) -> int:
        """Check ``channels`` and D = ``self.n_inputs`` (``ConfigError`` naming the "decoder"/"encoder"), set
        ``self.side`` and ``self.channels``; returns the side s."""
        self.channels = require_positive(f"{what} hidden (conv channels)", channels)
        self.side = square_image_side(self.n_inputs, f"conv {what}")
        return self.side


class ConvDecoder(SquareImageConv, Decoder):
    """A transposed-conv decoder for square images of side s (D = s², s divisible by 4).

    f (B, K) -> Linear -> C × s/4 × s/4 -> SiLU -> ConvTranspose(C -> C/2, kernel 4, stride 2, padding 1)
    -> SiLU -> ConvTranspose(C/2 -> 1, kernel 4, stride 2, padding 1) -> s × s -> flattened (B, D), row-major
    like the patches. C = ``channels`` (C/2 rounds down, at least 1). Parameters (in the order drawn):
    ``linear_weight`` (C·(s/4)², K), ``linear_bias``, ``deconv1_weight`` (C, C/2, 4, 4), ``deconv1_bias``,
    ``deconv2_weight`` (C/2, 1, 4, 4), ``deconv2_bias`` (1,), each ~ U(−1/√fan_in, 1/√fan_in) drawn from
    ``generator``, where a stride-2 kernel-4 transposed conv's fan-in is in_channels · 2 · 2 (the taps that
    reach one output pixel).
    """

    def __init__(self, n_inputs: int, n_latents: int, *, generator: torch.Generator, channels: int = 64) -> None:
        super().__init__(n_inputs, n_latents)
        side = self.set_geometry(channels, "decoder")
        self.mid_channels = max(self.channels // 2, 1)
        c, m, k, base = self.channels, self.mid_channels, self.n_latents, side // 4
        taps = (self.kernel_size // self.stride) ** 2
        self.linear_weight, self.linear_bias = linear_parameters(c * base * base, k, generator)
        ks = self.kernel_size
        self.deconv1_weight, self.deconv1_bias = layer_parameters((c, m, ks, ks), m, c * taps, generator)
        self.deconv2_weight, self.deconv2_bias = layer_parameters((m, 1, ks, ks), 1, m * taps, generator)

    def forward(self, f: Tensor) -> Tensor:
        """g(f): (B, K) -> (B, D)."""
        batch, base = f.shape[0], self.side // 4
        h = F.silu(F.linear(f, self.linear_weight, self.linear_bias)).reshape(batch, self.channels, base, base)
        h = F.silu(F.conv_transpose2d(h, self.deconv1_weight, self.deconv1_bias, stride=self.stride,
                                      padding=self.padding))
        h = F.conv_transpose2d(h, self.deconv2_weight, self.deconv2_bias, stride=self.stride, padding=self.padding)
        return h.reshape(batch, self.n_inputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, side={self.side}, channels={self.channels}"


# -- construction --------------------------------------------------------------------------------


def make_decoder(name: str, n_inputs: int, n_latents: int, *, generator: torch.Generator, init_scale: float = 1e-4,
                 hidden: int = 512) -> Decoder:
    """The decoder called ``name`` (one of ``DECODERS``) for D = ``n_inputs`` pixels and K = ``n_latents``.

    Parameters are drawn from ``generator`` only. init_scale: std of the linear decoder's Φ (ignored by the
    others). hidden: hidden units of the MLP decoder, channels C of the conv decoder (ignored by the linear
    one; must be ≥ 1 whatever the decoder). Bad arguments raise ``ConfigError``.
    """
    if name not in DECODERS:
        raise ConfigError(f"unknown decoder {name!r}; expected one of {DECODERS}")
    require_positive("decoder hidden", hidden)
    if name == "linear":
        return LinearDecoder(n_inputs, n_latents, generator=generator, init_scale=init_scale)
    if name == "mlp":
        return MLPDecoder(n_inputs, n_latents, generator=generator, hidden=hidden)
    return ConvDecoder(n_inputs, n_latents, generator=generator, channels=hidden)


def require_positive(what: str, value) -> int:
    """``value`` as an int, or ``ConfigError`` "<what> must be an integer ≥ 1" unless it is one (bools are not)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{what} must be an integer ≥ 1, got {value!r}")
    return int(value)


def square_image_side(n_inputs: int, what: str) -> int:
    """The side s of the square images a conv layer stack reads (D = s²), s divisible by 4 (two stride-2
    layers), else ``ConfigError`` naming ``what`` (e.g. "conv encoder")."""
    side = math.isqrt(n_inputs)
    if side * side != n_inputs:
        raise ConfigError(f"{what} needs square images: n_inputs = {n_inputs} is not a square")
    if side % 4 != 0:
        raise ConfigError(f"{what} needs an image side divisible by 4, got side {side} (n_inputs = {n_inputs})")
    return side


def uniform_parameter(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, *,
                      scale: float = 1.0) -> nn.Parameter:
    """scale · U(−1/√fan_in, 1/√fan_in) of ``shape`` (PyTorch's default layer scale when ``scale`` = 1), drawn
    from ``generator`` (never the global RNG); shared by the decoders, encoders and update networks."""
    bound = scale / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound)


def layer_parameters(weight_shape: tuple[int, ...], n_bias: int, fan_in: int, generator: torch.Generator, *,
                     weight_scale: float = 1.0, bias_scale: float = 1.0) -> tuple[nn.Parameter, nn.Parameter]:
    """A layer's weight (``weight_shape``) then bias (n_bias,), each ``uniform_parameter`` with ``fan_in`` (times
    ``weight_scale`` / ``bias_scale``), drawn in that order from ``generator``."""
    return (uniform_parameter(weight_shape, fan_in, generator, scale=weight_scale),
            uniform_parameter((n_bias,), fan_in, generator, scale=bias_scale))


def linear_parameters(n_out: int, n_in: int, generator: torch.Generator, *, weight_scale: float = 1.0,
                      bias_scale: float = 1.0) -> tuple[nn.Parameter, nn.Parameter]:
    """An affine layer's weight (n_out, n_in) then bias (n_out,), fan-in n_in (``layer_parameters``)."""
    return layer_parameters((n_out, n_in), n_out, n_in, generator, weight_scale=weight_scale, bias_scale=bias_scale)
