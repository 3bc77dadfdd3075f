"""The evaluation engine: fused FOND steps for the combinations that admit them.

``dynamics.rollout`` runs any family with any decoder through ``fond_step``. For the paper's main model —
Poisson latents, linear decoder — a step can be written with one matrix product, one vectorised
exponential and one compiled pass (``fond.families.kernels.poisson_rate_step``) that does the clamped
update, the rates and the exact Poisson draw together, by carrying E = e^{−u} instead of u:

    d = η(Φᵀx/σ² − b) − η·z·ΦᵀΣ⁻¹Φ                  (torch.addmm, the step's one product)
    E ← min(E·(min(e^{−d}, e^{−floor}) + e^{−c}), e^{−floor}) + e^{−c},  r = 1/E,  z ~ Pois(r)

which is the family's rule u ← c − softplus(c − max(u + Δu, floor)), Δu = c − softplus(c − max(d, floor)),
rewritten exactly (c − softplus(c − y) = −log(e^{−y} + e^{−c})). ``PoissonLinearEngine`` is what
``rollout`` uses when the family and the decoder's operators allow it; results equal the generic path
to floating-point rounding on the same draws (``tests/test_engine.py``).

Which engine. A fused engine belongs to a (family type, decoder-operators type) pair, registered like
pyro's ``register_kl``: ``@register_engine(PoissonFamily, LinearDecoderOperators)`` over a factory
``(parts, operators, x) -> engine | None``; ``fused_engine`` looks the pair up along both classes' MROs
(subclasses inherit their base's engine) and the dynamics never name a family. An engine offers
``begin(state)``, ``advance(decoded, operators, generator) -> (rates, decoded)``, ``state()`` and
``narrow(rows)`` (go on with some of the batch's inputs: anytime inference), and may say ``terms_from_rates``
(the trace's state terms come from its rates: ``FondSteps.trace_rows``).

The product. Spike counts are small integers, so z·W can run on the CPU's integer matrix units (AMX-INT8)
with W split into four int8 limbs, W ≈ s·(q₁ + q₂/2⁷ + q₃/2¹⁴ + q₄/2²¹) per output column (s = max|W|/127):
each limb's product is accumulated exactly in int32 and the four are scaled and summed in float32 — as
accurate as a float32 product (W is kept to 2⁻²⁸ of its column maximum) and, on this machine, about four
times faster (BENCHMARKS.md). ``LimbProduct`` does it; the engine uses it for float32 models on CPUs with
AMX (``product="auto"``) and falls back to the float product for a step whose counts exceed 255. Where the
counts are sparse (a trained model's ~10 %), only their rows of W are summed: for float32 and K a multiple of 16 by
W's panels of 16 columns over the compressed rows the sampler packs as it draws (``fond.families.panel_kernels``),
else by whole rows (``fond.families.sparse_kernels``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fond.decoders import LinearDecoderOperators
from fond.families.poisson import PoissonFamily
from fond.metrics import zeros_fraction

__all__ = ["LimbProduct", "PoissonLinearEngine", "limb_product_available", "register_engine", "engine_factory",
           "fused_engine", "EngineFactory"]

#: factory(parts, operators, x) -> a fused engine, or None where it does not apply (device, dtype, ...);
#: parts: ``fond.dynamics.Components``; operators: the decoder's per-batch operators; x: the input (its
#: device and dtype)
EngineFactory = Callable[[Any, Any, Tensor], Any]
_ENGINES: dict[tuple[type, type], EngineFactory] = {}
_LOOKUPS: dict[tuple[type, type], EngineFactory | None] = {}


def register_engine(family_type: type, operators_type: type) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: ``factory`` builds the fused evaluation engine of ``family_type`` × ``operators_type``.

    Like ``pyro.distributions.kl.register_kl``: registering the same pair again replaces its factory; a
    subclass of either type gets the factory of its closest registered bases (``engine_factory``).
    """
    if not (isinstance(family_type, type) and isinstance(operators_type, type)):
        raise TypeError("register_engine takes two classes: a family type and a decoder-operators type")

    def decorate(factory: EngineFactory) -> EngineFactory:
        _ENGINES[(family_type, operators_type)] = factory
        _LOOKUPS.clear()
        return factory

    return decorate


def engine_factory(family_type: type, operators_type: type) -> EngineFactory | None:
    """The factory registered for the most specific pair of bases of the two types, or None.

    Candidates are the registered pairs (F, O) with ``family_type`` ⊆ F and ``operators_type`` ⊆ O; the one
    whose F comes first in ``family_type``'s MRO wins, ties broken by O's place in ``operators_type``'s.
    """
    key = (family_type, operators_type)
    if key not in _LOOKUPS:
        family_mro, operators_mro = family_type.__mro__, operators_type.__mro__
        matches = [(family_mro.index(f), operators_mro.index(o), factory) for (f, o), factory in _ENGINES.items()
                   if f in family_mro and o in operators_mro]
        _LOOKUPS[key] = min(matches, key=lambda m: m[:2])[2] if matches else None
    return _LOOKUPS[key]


def fused_engine(parts, operators, x: Tensor):
    """The fused evaluation engine for ``parts.family`` × ``operators``, or None for the generic step.

    parts: ``fond.dynamics.Components``. operators: ``parts.decoder.operators(frame, ...)``. x: the input.
    Never with autograd on (an engine bypasses it).
    """
    if torch.is_grad_enabled():
        return None
    factory = engine_factory(type(parts.family), type(operators))
    return None if factory is None else factory(parts, operators, x)

#: int8 limbs W is split into (relative resolution 2⁻⁷ each; four keep 2⁻²⁸ of the column maximum)
LIMBS = 4
#: largest count the uint8 spike matrix holds; a step with a larger count uses the float product
MAX_SMALL_COUNT = 255
#: largest K for the limb product: int32 sums of 255·127·K stay exact in float32 (< 2²⁴)
MAX_LIMB_INPUTS = 512
#: ``product="auto"`` takes the sparse product (``fond.families.sparse_kernels``) for a step whose counts have
#: fewer non-zero entries than this fraction: beside the float product (synthetic crossover ~0.18 at B 1000,
#: K 512 on an AVX-512 core; 1.7–1.9× faster at 0.11–0.12 on the shipped models), and beside AMX's int8 limbs
#: too (1.05–1.25× faster at 0.11–0.12, one or two threads; a rollout that switches between the two products
#: from step to step measured slower than either, its two thread pools contending: benchmarks/engine_products.py,
#: BENCHMARKS.md)
SPARSE_BELOW = 0.2
#: once on the sparse product, a rollout leaves it only above this multiple of the threshold
SPARSE_HYSTERESIS = 1.5
#: batches of fewer counts (B·K) than this keep the dense product under "auto" (the product costs little there)
MIN_SPARSE_SIZE = 16384


def limb_product_available() -> bool:
    """Whether this CPU runs int8 products on AMX tiles and torch exposes oneDNN's quantised linear (and the
    environment variable ``FOND_NO_AMX`` is unset or 0: set it to run, and time, the path of a CPU without
    AMX on one that has it)."""
    if os.environ.get("FOND_NO_AMX", "0") not in ("", "0"):
        return False
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")
                and bool(torch.cpu._is_amx_tile_supported()) and int8_product_exact())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def int8_product_exact() -> bool:
    """Whether oneDNN's uint8·int8 product sums exactly in int32 on this CPU, checked on its worst case (counts
    255 against weights 127). CPUs with VNNI or AMX accumulate in int32; without them (AVX2 only: e.g. AMD Zen 3)
    oneDNN multiplies pairs into int16 and saturates at 32767, and the limb product would be wrong by orders of
    magnitude. False also where torch has no oneDNN quantised linear."""
    if not hasattr(torch.ops.onednn, "qlinear_prepack"):
        return False
    k = 64
    packed = torch.ops.onednn.qlinear_prepack(torch.full((1, k), 127, dtype=torch.int8), None)
    out = _int8_product_add(torch.full((1, k), 255, dtype=torch.uint8), packed, torch.ones(1),
                            torch.zeros(1, dtype=torch.int64), torch.zeros(1, 1))
    return float(out) == 255.0 * 127.0 * k


def _int8_product_add(counts: Tensor, packed, scale: Tensor, zero_points: Tensor, out: Tensor) -> Tensor:
    """out (B, N) float32 += counts (B, K) uint8 · (packed int8 weight (N, K))ᵀ · scale (N,): one oneDNN call
    (a "sum" post-op, in place); returns out."""
    torch.ops.onednn.qlinear_pointwise.binary(counts, 1.0, 0, packed, scale, zero_points, out, None, 1.0, 0,
                                              torch.float32, 1.0, 0, "sum", 1.0, "none", [], "")
    return out


def _require_exact_int8(what: str, instead: str) -> None:
    """One line where ``int8_product_exact`` is False: ``what`` cannot run here, use ``instead``."""
    if not int8_product_exact():
        raise RuntimeError(f"{what} needs exact int8 sums (a CPU with VNNI or AMX); this CPU's oneDNN int8 product "
                           f"saturates: use {instead}")


class LimbProduct:
    """out += z·W for counts z (B, K) in uint8 and a float weight W (K, N), on int8 matrix units.

    W's columns are split into ``LIMBS`` int8 limbs with power-of-two scales (s, s/2⁷, s/2¹⁴, …), each
    limb's product accumulates exactly in int32 (|z·q| ≤ 255·127·K < 2²⁴ for K ≤ 512, so the conversion to
    float32 is exact too) and is added to ``out`` with one oneDNN call (a "sum" post-op, in place).
    """

    def __init__(self, weight: Tensor, limbs: int = LIMBS) -> None:
        if weight.ndim != 2 or weight.shape[0] > MAX_LIMB_INPUTS:
            raise ValueError(f"LimbProduct needs a (K, N) weight with K ≤ {MAX_LIMB_INPUTS}, got "
                             f"{tuple(weight.shape)}")
        _require_exact_int8("the limb product", "product='float' or 'sparse'")
        columns = weight.detach().t().to(torch.float64)  # (N, K): oneDNN's linear computes z·Wᵀ
        scale = (columns.abs().amax(1) / 127.0).to(torch.float32).to(torch.float64)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        residual = columns.clone()
        self.packed, self.scales = [], []
        for _ in range(limbs):
            q = torch.round(residual / scale[:, None]).clamp_(-127, 127)
            residual -= q * scale[:, None]
            self.packed.append(torch.ops.onednn.qlinear_prepack(q.to(torch.int8).contiguous(), None))
            self.scales.append(scale.to(torch.float32))
            scale = scale / 128.0
        self.zero_points = torch.zeros(weight.shape[1], dtype=torch.int64)

    def accumulate(self, counts: Tensor, out: Tensor) -> Tensor:
        """out (B, N) float32 += counts (B, K) uint8 · W, in place; returns out."""
        for packed, scale in zip(self.packed, self.scales, strict=True):
            _int8_product_add(counts, packed, scale, self.zero_points, out)
        return out


#: the sampler's packed output, not asked for (empty arrays by the counts' dtype)
_NOT_PACKED = {torch.float32: (np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.int64)),
               torch.float64: (np.empty(0, np.int32), np.empty(0, np.float64), np.empty(0, np.int64))}


class PoissonLinearEngine:
    """Fused evaluation steps of a Poisson family with a linear decoder's operators (drive, gram).

    ``family``: a PoissonFamily; ``params``: its tensors (``log_step_size``); ``bias``: b (K,).
    ``start(u)`` takes the initial potentials (B, K); each ``step(z, drive)`` maps the previous sample z
    (B, K) and the current drive Φᵀx/σ² (B, K) to (rates, spikes) of the new state; ``potentials()``
    returns u = −log E. Tensors are reused between steps (the rates every other step): copy what you keep.
    ``product``: "float" (one addmm), "limbs" (``LimbProduct``; float32 only), "sparse" (only the non-zero
    counts' rows of W: ``fond.families.sparse_kernels.sparse_addmm``) or "auto": per step, sparse where the
    counts are sparse enough (``SPARSE_BELOW``, with ``SPARSE_HYSTERESIS``), else limbs for float32 where
    ``limb_product_available()``, else float. ``density``: the fraction of non-zero counts of the last draw.
    """

    def __init__(self, family, params, bias: Tensor, gram: Tensor, product: str = "auto") -> None:
        from fond.families.sampling import RECIPROCALS, SMALL_RATE_CUTOFF

        step = torch.exp(params["log_step_size"]).reshape(())
        self.step_size = step
        self.bias = bias
        self.scaled_gram = (step * gram).contiguous()
        c = family.clamp(1.0)
        self.ceiling = math.exp(-c)
        self.floor_factor = math.exp(-family.floor)
        self.exp_bounds = exp_bounds(c, family.floor, gram.dtype)
        self.exp_range = exp_range(self.exp_bounds, gram.dtype)
        self.family, self.params = family, params
        self.reciprocals = RECIPROCALS
        self.cutoff = SMALL_RATE_CUTOFF
        self._drive = None
        self._neg_drive: Tensor | None = None
        if product not in ("auto", "float", "limbs", "sparse"):
            raise ValueError(f"product must be 'auto', 'float', 'limbs' or 'sparse', got {product!r}")
        dense = product
        if product in ("auto", "sparse"):
            fits = gram.dtype == torch.float32 and gram.shape[0] <= MAX_LIMB_INPUTS
            dense = "limbs" if product == "auto" and fits and limb_product_available() else "float"
        if dense == "limbs" and gram.dtype != torch.float32:
            raise ValueError(f"the limb product needs a float32 model, got {gram.dtype}")
        if dense == "limbs":
            _require_exact_int8("product='limbs'", "'float', 'sparse' or 'auto'")
        self.product = product
        self.sparse_below = {"auto": SPARSE_BELOW, "sparse": 1.01}.get(product, -1.0)
        self.dense = dense
        self._limbs: LimbProduct | None = None
        self.density = 1.0
        self._sparse = False
        self._panels: np.ndarray | None = None  # ηW in panels of 16 columns, where the panel product applies
        self._counts = None  # CompressedCounts of the draws, with the panels

    @property
    def limbs(self) -> LimbProduct | None:
        """The int8-limb form of ηW (built on first use: a rollout that stays sparse never packs it), or None."""
        if self._limbs is None and self.dense == "limbs":
            self._limbs = LimbProduct(self.scaled_gram)
        return self._limbs

    def start(self, u: Tensor) -> None:
        self._allocate(torch.exp(-u).contiguous())

    def narrow(self, rows: Tensor) -> None:
        """Go on with the inputs ``rows`` ((B',) int64) of the batch only (anytime inference)."""
        self._allocate(self.inv_rates[rows].contiguous())

    def _allocate(self, inv_rates: Tensor) -> None:
        self.inv_rates = inv_rates
        # two rate buffers, alternating: the previous step's rates stay valid through the next step (the trace
        # terms read both)
        self._rate_buffers = (torch.empty_like(self.inv_rates), torch.empty_like(self.inv_rates))
        self.rates = self._rate_buffers[0]
        self.spikes = torch.empty_like(self.inv_rates)
        self.work = torch.empty_like(self.inv_rates)
        shape = self.inv_rates.shape if self.dense == "limbs" else (0,)
        self.small_counts = torch.empty(shape, dtype=torch.uint8)
        self._small_valid = False
        self._counts = None
        if self.sparse_below > 0:
            from fond.families.panel_kernels import CompressedCounts, panel_layout, panels_fit

            rows, k = self.inv_rates.shape
            if self.inv_rates.dtype == torch.float32 and panels_fit(k, k):
                if self._panels is None:
                    self._panels = panel_layout(self.scaled_gram.numpy())
                self._counts = CompressedCounts(rows, k)

    def _small(self, z: Tensor) -> Tensor | None:
        """z as uint8 counts if the limb product can take it, else None."""
        if self.dense != "limbs":
            return None
        if z is self.spikes and self._small_valid:
            return self.small_counts
        # e.g. the initial sample, or counts drawn while the rollout was on the sparse product (none written)
        if bool(((z >= 0) & (z <= MAX_SMALL_COUNT) & (z == torch.round(z))).all()):
            return z.to(torch.uint8)
        return None

    def step(self, z: Tensor, drive: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        from fond.families.kernels import clamped_exp, poisson_rate_step
        from fond.families.sampling import draw_key, kernel_threads

        if drive is not self._drive:  # −η(drive − b), once per input frame
            self._drive = drive
            self._neg_drive = (self.step_size * (self.bias - drive)).contiguous()
        self._product(z)  # −d into self.work
        kernel_threads(self.work.numel())
        clamped_exp(self.work.view(-1).numpy(), *self.exp_range)  # e^{−d}
        self.rates = self._rate_buffers[1] if self.rates is self._rate_buffers[0] else self._rate_buffers[0]
        key1, key2 = draw_key(generator)
        # uint8 counts for the limb product while the rollout is on the dense product (else made when needed)
        small = self.dense == "limbs" and not self._sparse
        packed = self._counts.sampler_arrays() if self._counts is not None else _NOT_PACKED[self.spikes.dtype]
        overflow, nonzero = poisson_rate_step(self.work.view(-1).numpy(), self.inv_rates.view(-1).numpy(),
                                              self.rates.view(-1).numpy(), self.spikes.view(-1).numpy(),
                                              (self.small_counts if small else self.small_counts[:0]).view(-1).numpy(),
                                              key1, key2, self.ceiling, self.floor_factor, self.cutoff,
                                              self.reciprocals, *packed)
        self._small_valid = small and overflow == 0
        self.density = nonzero / max(1, self.spikes.numel())
        return self.rates, self.spikes

    def _product(self, z: Tensor) -> None:
        """self.work = −d = η(b − drive) + z·ηW with the product this step's counts make cheapest."""
        from fond.families.sampling import kernel_threads
        from fond.families.sparse_kernels import sparse_addmm

        density = self.density_of(z)
        # hysteresis: a sparse rollout turns dense only above 1.5× the threshold (switching products from step to
        # step costs more than either: their thread pools contend); tiny batches stay dense
        limit = self.sparse_below * (SPARSE_HYSTERESIS if self._sparse else 1.0)
        self._sparse = density < limit and (z.numel() >= MIN_SPARSE_SIZE or self.product == "sparse")
        if self._sparse:
            threads = kernel_threads(z.numel())
            if self._counts is not None and z.dtype == torch.float32:
                from fond.families.panel_kernels import panel_addmm

                panel_addmm(self._neg_drive.numpy(), self._panels, *self.compressed(z), self.work.numpy(), threads)
                return
            sparse_addmm(self._neg_drive.numpy(), z.contiguous().numpy(), self.scaled_gram.numpy(), self.work.numpy())
            return
        small = self._small(z)
        if small is not None:
            self.work.copy_(self._neg_drive)
            self.limbs.accumulate(small, self.work)
        else:
            torch.addmm(self._neg_drive, z, self.scaled_gram, out=self.work)

    def compressed(self, z: Tensor) -> tuple[np.ndarray, ...] | None:
        """z's non-zero counts in compressed rows (``panel_kernels.compact_counts``; the last draw's as its
        sampler packed them), or None where the engine keeps none (not float32, K not a multiple of 16)."""
        from fond.families.sampling import kernel_threads

        if self._counts is None or z.dtype != torch.float32 or z.shape != self.spikes.shape:
            return None
        threads = kernel_threads(z.numel())
        if z is self.spikes:
            return self._counts.of_draw(z.numpy(), threads)
        return self._counts.of(z.contiguous().numpy(), threads)

    def density_of(self, z: Tensor) -> float:
        """The fraction of non-zero entries of z (the last draw's, known from its kernel, when z is it)."""
        return self.density if z is self.spikes else 1.0 - float(zeros_fraction(z).mean())

    def potentials(self) -> Tensor:
        """u = −log E (B, K)."""
        return torch.log(self.inv_rates).neg_()  # in place: a second fresh (B, K) tensor costs more than the log

    # -- the engine interface of ``fond.dynamics`` (see ``fused_engine``) --------------------------------
    def begin(self, state: tuple[Tensor, ...]) -> None:
        """Start from the family state ``(u,)``."""
        self.start(state[0])

    def advance(self, decoded: Tensor, operators: LinearDecoderOperators,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One step from the previous sample and the current frame's operators: (rates, spikes), reused buffers."""
        return self.step(decoded, operators.drive, generator)

    def state(self) -> tuple[Tensor, ...]:
        """The family state ``(u,)`` now (a new tensor)."""
        return (self.potentials(),)

    @property
    def terms_from_rates(self) -> bool:
        """Whether the trace's state terms can come from the rates alone (the family's KL in the exact form:
        ``FondSteps.trace_rows``): the trace then needs no potentials."""
        return self.family.kl_form == "exact"


#: the inputs ``fond.families.kernels.clamped_exp`` takes, by dtype (float32: e^{−87} below −87, finite to 88;
#: float64: ±700)
EXP_RANGE = {torch.float32: (-87.0, 88.0), torch.float64: (-700.0, 700.0)}


def exp_range(bounds: tuple[float | None, float | None], dtype: torch.dtype) -> tuple[np.floating, np.floating]:
    """``exp_bounds``'s (low, high) with an open side closed at ``EXP_RANGE``, as NumPy scalars of ``dtype``."""
    (low, high), (least, most) = bounds, EXP_RANGE[dtype]
    kind = np.float32 if dtype == torch.float32 else np.float64
    return kind(least if low is None else max(low, least)), kind(most if high is None else min(high, most))


def exp_bounds(c: float, floor: float, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """Bounds for −d before e^{−d} that leave the rate update unchanged and keep e^{−d} normal (no denormals,
    no overflow: a library exp is 20–100× slower there, and denormals slow every later operation).

    The update uses min(e^{−d}, e^{−floor}) + e^{−c}: above −floor + 1 the cap takes over, and below −c − 40
    e^{−d} is under 10⁻¹⁷ of e^{−c} (lost in the float64 sum, far under float32's rounding). A side is left open
    (None) where its bound would itself leave exp's normal range (``exp_range`` closes it at the kernel's range).
    """
    info = torch.finfo(dtype)
    low, high = -c - 40.0, -floor + 1.0
    return (low if low > math.log(info.tiny) else None), (high if high < math.log(info.max) else None)


@register_engine(PoissonFamily, LinearDecoderOperators)
def poisson_linear_engine(parts, operators: LinearDecoderOperators, x: Tensor) -> PoissonLinearEngine | None:
    """``PoissonLinearEngine`` for float32/float64 inputs on the CPU (its sampling kernel is compiled for it)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return PoissonLinearEngine(parts.family, parts.family_params, parts.bias, operators.gram)
