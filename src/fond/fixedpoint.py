"""A fixed-point inference engine for the iP-VAE (linear decoder): integers only inside the loop (issue 20, item 1).

``quantize(model, weight_bits, state_bits)`` turns a trained iP-VAE into a ``QuantizedModel`` whose inference
step reads and writes integer arrays only, as a digital neuromorphic chip would run it:

* **weights** (b = ``weight_bits``, symmetric, round to nearest): the drive's encoder E = ηΦ/σ² (D, K) with one
  scale per neuron (column); the recurrent matrix ηW, W = ΦᵀΣ⁻¹Φ (K, K), split into its off-diagonal part
  (one scale per postsynaptic neuron) and its diagonal, the self-inhibition (one scale). A scale s maps the
  integer q to the real weight q·s; every scale is saved (``*_scale`` tensors) beside its integers.
* **membrane potentials** u: signed ``state_bits``-bit integers in units of 2⁻ᶠ nats, F = state_bits − I
  fractional bits, I = the integer bits that hold [floor, c] (4 for floor −8, c ≤ 8). Saturating.
* **input**: the ADC. x is rounded to ``input_bits`` signed levels of ``input_range``/(2^(input_bits−1) − 1) and
  clipped (the one float → integer conversion, per input, before the loop); the drive η(Φᵀx/σ² − b) is then an
  integer product requantised to u's units — once per input frame, not per step.
* **requantisation** (accumulator → u units): (acc·M + 2^(R−1)) >> R with an integer multiplier M = round(s·2^(F+R))
  per neuron (the TFLite scheme; R keeps M below 2²³ and acc·M inside int64).
* **soft clamp** G(y) = c − softplus(c − max(y, floor)) = y − softplus(y − c): an integer table of softplus(y − c)
  in u units on a grid of 2⁻ᵀ nats (T = min(F, 10)), interpolated linearly with integer arithmetic
  (interpolation error ≤ 2⁻²⁰·0.25/8 nats); G(y) = c above c + margin (softplus below half a unit there).
* **Poisson draw**: the counter-based generator of ``fond.families.kernels`` (64 bits of counter
  i = b·K + k under the step's key, SplitMix64 finaliser) gives an integer uniform U = bits >> 32 on [0, 2³²); the
  count is #{k : C(k) ≤ U} for the integer CDF table C(k) = round(2³²·P(Pois(eᵘ) ≤ k)) of u rounded to a grid of
  2^-``rate_bits`` nats (a binary search in the table's row). U is exactly the top 32 bits of the float engine's
  53-bit uniform for the same element and key, so where the rates agree (below the float sampler's PTRS cutoff,
  r < 20) the two engines draw the same counts from the same generator state ("the same draws").

One step, per input b and neuron k (int64 accumulators, state and counts stored as int32):

    acc_k  = Σ_{j ≠ k, z_j > 0} z_j · Wq[j, k]                   (event-driven: only spiking neurons' rows)
    d_k    = drive_k − requant(acc_k) − requant(z_k · Dq_k)       (drive_k: η(Φᵀx/σ² − b) in u units)
    u_k   ← sat(G(u_k + G(d_k)))                                 (the family's two soft clamps)
    z_k   ~ Pois(e^{u_k}) from the integer CDF table

The tables are computed once in float64 at quantise time and stored as integers. The read-out — the trace's
R², NLL and KL, ``InferenceResult.rates`` = e^u and the reconstructions — is measured outside the integer step
in float, from the integer state and counts, with the float decoder Φ (saved as ``readout_*``): it is the
observer, not part of the network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fond.checkpoint import QUANTIZED_FORMAT
from fond.errors import CheckpointError, ConfigError, DataError
from fond.families.kernels import random_bits, random_bits_reference  # before numba: its vector-width choice
from fond.result import InferenceResult
from fond.rollout import DEFAULT_WINDOW, InferenceSteps, Step, rows_of, run_inference

__all__ = ["FORMAT", "Quantization", "IntegerTables", "QuantizedModel", "FixedPointSteps", "quantize", "load",
           "integer_step", "integer_draw", "integer_drive", "integer_uniforms", "step_kernel", "draw_kernel",
           "clamp_table", "poisson_table", "float_parts", "INTEGER_DTYPES"]

import numba as nb  # noqa: E402  (after fond.families.kernels: see there)

FORMAT = QUANTIZED_FORMAT
FORMAT_VERSION = 1
#: dtypes the integer step accepts and returns
INTEGER_DTYPES = (np.int32, np.int64)
#: bits of the integer uniform compared against the CDF tables
UNIFORM_BITS = 32
#: the weight arrays of ``IntegerTables`` (stored in the narrowest integer dtype, computed in int32)
WEIGHT_NAMES = ("encoder", "recurrent", "own")
#: largest requantisation multiplier M: 2²³ (relative precision of a scale ≥ 2⁻²³)
MULTIPLIER_BITS = 23
#: fractional bits of the soft-clamp table's grid (at most F)
CLAMP_TABLE_BITS = 10

_S32 = np.uint64(32)


# ---- the compiled integer kernels ---------------------------------------------------------------------------

@nb.njit(inline="always")
def _uniform32(key1, key2, counter):
    """The top 32 of the 64 random bits of ``counter`` under (key1, key2) (the float samplers' stream,
    ``fond.families.kernels.random_bits``), as an int64 in [0, 2³²)."""
    return np.int64(random_bits(key1, key2, counter) >> _S32)


@nb.njit(inline="always")
def _requantize(acc, multiplier, shift):
    """round(acc·multiplier / 2^shift) in integers (shift ≥ 1; ties round up)."""
    return (acc * multiplier + (np.int64(1) << (shift - 1))) >> shift


@nb.njit(inline="always")
def _soft_clamp(y, table, lo, top, ceiling, shift):
    """G(y) in u units: G(lo) below lo, c above top, else y − softplus(y − c) interpolated in ``table``."""
    if y <= lo:
        return lo - table[0]
    if y >= top:
        return ceiling
    p = y - lo
    j = p >> shift
    f = p - (j << shift)
    half = (np.int64(1) << shift) >> 1
    return y - (table[j] + (((table[j + 1] - table[j]) * f + half) >> shift))


@nb.njit(inline="always")
def _draw(u, cdf, start, first, grid_lo, shift, key1, key2, counter):
    """#{k : C(k) ≤ U} for u's row of the CDF table and the counter's integer uniform U."""
    half = (np.int64(1) << shift) >> 1
    i = min(max((u - grid_lo + half) >> shift, np.int64(0)), np.int64(first.size - 1))
    a = start[i]
    n = start[i + 1] - a
    uniform = _uniform32(key1, key2, counter)
    if uniform < cdf[a]:
        return first[i]
    lo, hi = np.int64(1), n
    while lo < hi:  # the first entry above U (n: none)
        mid = (lo + hi) >> 1
        if cdf[a + mid] > uniform:
            hi = mid
        else:
            lo = mid + 1
    return first[i] + lo


@nb.njit(cache=True, nogil=True, error_model="numpy")
def draw_kernel(u, cdf, start, first, grid_lo, shift, key1, key2, out):  # pragma: no cover - compiled
    """out[b, k] = a Poisson(e^{u[b, k]}) count from the integer CDF table (u: (B, K) int32 in u units)."""
    batch, width = u.shape
    for b in range(batch):
        for k in range(width):
            out[b, k] = _draw(np.int64(u[b, k]), cdf, start, first, grid_lo, shift, key1, key2,
                              np.uint64(b * width + k))


@nb.njit(inline="always")
def _accumulate(spikes, recurrent, acc):
    """acc = Σ_j spikes[j]·recurrent[j, :] over the neurons that spiked (event-driven)."""
    acc[:] = 0
    for j in range(spikes.size):
        count = np.int64(spikes[j])
        if count != 0:
            for k in range(acc.size):
                acc[k] += count * recurrent[j, k]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def step_kernel(u, spikes, drive, recurrent, recurrent_multiplier, recurrent_shift, own, own_multiplier, own_shift,
                clamp, lo, top, ceiling, clamp_shift, u_min, u_max, cdf, start, first, grid_lo, rate_shift,
                key1, key2, new_u, new_spikes):  # pragma: no cover - compiled
    """One integer iP-VAE step for a batch (module docstring): (u, spikes) (B, K) int32 → (new_u, new_spikes).

    drive (B, K) int64: η(Φᵀx/σ² − b) in u units. recurrent (K, K) int32 (zero diagonal) with per-column
    multipliers; own (K,) int32 the diagonal with one multiplier. clamp: the softplus table; lo, top, ceiling:
    floor, the table's end and c in u units. cdf/start/first: the Poisson table. key1, key2: the step's key.
    """
    batch, width = u.shape
    acc = np.zeros(width, np.int64)
    for b in range(batch):
        _accumulate(spikes[b], recurrent, acc)
        for k in range(width):
            count = np.int64(spikes[b, k])
            d = (drive[b, k] - _requantize(acc[k], recurrent_multiplier[k], recurrent_shift)
                 - _requantize(count * own[k], own_multiplier, own_shift))
            du = _soft_clamp(d, clamp, lo, top, ceiling, clamp_shift)
            un = _soft_clamp(np.int64(u[b, k]) + du, clamp, lo, top, ceiling, clamp_shift)
            un = min(max(un, u_min), u_max)
            new_u[b, k] = un
            new_spikes[b, k] = _draw(un, cdf, start, first, grid_lo, rate_shift, key1, key2,
                                     np.uint64(b * width + k))


def integer_uniforms(key1: int, key2: int, counters: np.ndarray) -> np.ndarray:
    """The engine's integer uniforms U ∈ [0, 2³²) (int64) of ``counters`` (uint64), in NumPy (tests)."""
    return (random_bits_reference(key1, key2, counters) >> _S32).astype(np.int64)


# ---- the format and the integer tables ----------------------------------------------------------------------

@dataclass(frozen=True)
class Quantization:
    """The number formats of a quantised model (all widths in bits, signed).

    weight_bits: encoder and recurrent weights. state_bits: membrane potentials u, of which ``fraction_bits``
    fractional (units of 2^-fraction_bits nats) and ``integer_bits`` for [floor, c]. input_bits, input_range:
    the input's levels over ±input_range (input units; inputs beyond are clipped). rate_bits: the fractional
    bits of the grid of u the Poisson table is indexed on (at most fraction_bits). shifts: R of each
    requantisation (encoder, recurrent, own = diagonal); input_scale: input units per input level.
    """

    weight_bits: int
    state_bits: int
    input_bits: int
    rate_bits: int
    input_range: float
    integer_bits: int
    fraction_bits: int
    encoder_shift: int
    recurrent_shift: int
    own_shift: int

    @property
    def input_scale(self) -> float:
        return self.input_range / (2 ** (self.input_bits - 1) - 1)

    @property
    def unit(self) -> float:
        """Nats per unit of u: 2^-fraction_bits."""
        return 2.0 ** -self.fraction_bits


@dataclass(frozen=True)
class IntegerTables:
    """Every integer array of a quantised model (NumPy; the names are the safetensors keys).

    encoder (D, K) int32, encoder_multiplier (K,) int64; recurrent (K, K) int32 (zero diagonal),
    recurrent_multiplier (K,) int64; own (K,) int32 (ηW's diagonal), own_multiplier (1,) int64; bias (K,) int64
    (ηb in u units); initial (K,) int32 (u at t = 0); clamp (n,) int64 (softplus(y − c) in u units on the clamp
    grid) and clamp_bounds (4,) int64 (lo, top, c, shift); cdf (m,) int64, cdf_start (rows + 1,) int64, cdf_first
    (rows,) int64 (the Poisson table: row i holds C(k) for k = first[i], … of u = grid_lo + i·2^-rate_bits) and
    cdf_grid (2,) int64 (grid_lo, shift).
    """

    encoder: np.ndarray
    encoder_multiplier: np.ndarray
    recurrent: np.ndarray
    recurrent_multiplier: np.ndarray
    own: np.ndarray
    own_multiplier: np.ndarray
    bias: np.ndarray
    initial: np.ndarray
    clamp: np.ndarray
    clamp_bounds: np.ndarray
    cdf: np.ndarray
    cdf_start: np.ndarray
    cdf_first: np.ndarray
    cdf_grid: np.ndarray

    def tensors(self, weight_bits: int = 16) -> dict[str, Tensor]:
        """The arrays as tensors, the weights in the narrowest dtype that holds ``weight_bits`` (int8 or int16)."""
        narrow = torch.int8 if weight_bits <= 8 else torch.int16
        return {name: torch.from_numpy(np.ascontiguousarray(value)).to(narrow if name in WEIGHT_NAMES else None)
                for name, value in asdict(self).items()}


def _integer_bits(floor: float, ceiling: float) -> int:
    """Signed integer bits whose range [−2^(I−1), 2^(I−1)) holds [floor, ceiling]."""
    reach = max(-floor, ceiling + 1e-9)
    return 1 + max(0, math.ceil(math.log2(reach)))


def _symmetric(values: np.ndarray, bits: int, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(q int32, scale float64): values ≈ q·scale with |q| ≤ 2^(bits−1) − 1, one scale per slice along ``axis``
    (None: one for all); a zero slice gets scale 1."""
    top = 2 ** (bits - 1) - 1
    peak = np.abs(values).max(axis=axis, keepdims=axis is not None) if values.size else np.zeros(1)
    scale = np.where(peak > 0, peak / top, 1.0)
    return np.clip(np.rint(values / scale), -top, top).astype(np.int32), np.asarray(scale, np.float64).reshape(-1)


def _multipliers(scales: np.ndarray, fraction_bits: int, bound: float) -> tuple[np.ndarray, int]:
    """(M int64, R): M = round(scale·2^(F+R)) with max M < 2^MULTIPLIER_BITS and bound·max M < 2⁶²."""
    room = min(MULTIPLIER_BITS, 62 - math.ceil(math.log2(max(bound, 2.0))))
    shift = room - math.ceil(math.log2(float(scales.max()) * 2.0 ** fraction_bits))
    if shift < 1 or room < 12:
        raise ConfigError(f"cannot requantise weights of scale {float(scales.max()):.3g} to 2^-{fraction_bits} nats "
                          "in int64: use fewer state or weight bits")
    return np.rint(scales * 2.0 ** (fraction_bits + shift)).astype(np.int64), shift


def clamp_table(c: float, floor: float, fraction_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(softplus(y − c) in u units on y = floor + j·2^-T, T = min(F, CLAMP_TABLE_BITS); [lo, top, c, shift]).

    The grid reaches c + margin, where softplus(c − y) < 2^-(F+1) (G(y) = c to half a unit beyond)."""
    bits = min(fraction_bits, CLAMP_TABLE_BITS)
    margin = math.ceil((fraction_bits + 1) * math.log(2.0)) + 1
    steps = math.ceil((c + margin - floor) * 2 ** bits)
    y = floor + np.arange(steps + 2) * 2.0 ** -bits
    table = np.rint(np.logaddexp(0.0, y - c) * 2.0 ** fraction_bits).astype(np.int64)
    shift = fraction_bits - bits
    lo = round(floor * 2 ** fraction_bits)
    return table, np.array([lo, lo + (steps << shift), round(c * 2 ** fraction_bits), shift], np.int64)


def poisson_table(u_low: float, u_high: float, rate_bits: int,
                  fraction_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The integer CDF table of Pois(eᵘ) for u on the grid u_low + i·2^-rate_bits up to u_high (module docstring).

    Returns (cdf, start, first, [grid_lo, shift]): row i holds C(k) = round(2³²·P(Pois ≤ k)) for k = first[i] …
    first[i] + len − 1, where first[i] is the first k with C(k) > 0 and the row ends before the first C(k) = 2³²."""
    from scipy import stats

    full = 2 ** UNIFORM_BITS
    grid = u_low + np.arange(math.ceil((u_high - u_low) * 2 ** rate_bits) + 1) * 2.0 ** -rate_bits
    rows, first = [], np.empty(grid.size, np.int64)
    for i, rate in enumerate(np.exp(grid)):
        k = np.arange(int(rate + 14.0 * math.sqrt(rate) + 40))
        c = np.rint(stats.poisson.cdf(k, rate) * full).astype(np.int64)
        low, high = int(np.argmax(c > 0)), int(np.argmax(c >= full))
        if c[-1] < full:
            raise AssertionError("Poisson table truncated")  # pragma: no cover - the bound above covers it
        rows.append(c[low:high])
        first[i] = low
    start = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    shift = fraction_bits - rate_bits
    return np.concatenate(rows), start, first, np.array([round(u_low * 2 ** fraction_bits), shift], np.int64)


# ---- quantising a model -------------------------------------------------------------------------------------

def _check_width(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= int(value) <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def float_parts(model) -> dict[str, np.ndarray | float]:
    """A Poisson model with a linear dictionary as float64 arrays: encoder ηΦ/σ² (D, K), ηW (K, K), ηb, u_init."""
    from fond.decoders import precision_gram
    from fond.families.poisson import PoissonFamily

    family = getattr(model, "family", None)
    if not isinstance(family, PoissonFamily) or getattr(model, "dictionary", None) is None:
        raise DataError("the fixed-point engine runs Poisson models with a linear dictionary (iP-VAE)")
    parts = model.components()
    with torch.no_grad():
        eta = float(torch.exp(parts.family_params["log_step_size"]).reshape(()))
        weighted, gram = precision_gram(model.dictionary.detach().double(), parts.inv_variance.detach().double())
        return {"encoder": (eta * weighted).numpy(), "gram": (eta * gram).numpy(),
                "bias": (eta * parts.bias.detach().double()).numpy(), "eta": eta,
                "initial": parts.family_params[family.initial_key].detach().double().numpy()}


def _weights(floats: dict, fmt: dict, bits: int, fraction: int) -> dict[str, np.ndarray]:
    """The integer weights and their multipliers; fills ``fmt``'s shifts and returns the scales too."""
    d, k = floats["encoder"].shape
    encoder, encoder_scale = _symmetric(floats["encoder"], bits, axis=0)
    gram = floats["gram"]
    recurrent, recurrent_scale = _symmetric(gram - np.diag(np.diag(gram)), bits, axis=0)
    own, own_scale = _symmetric(np.diag(gram), bits, axis=None)
    top, in_top = 2 ** (bits - 1) - 1, 2 ** (fmt["input_bits"] - 1) - 1
    encoder_m, fmt["encoder_shift"] = _multipliers(encoder_scale * fmt["input_range"] / in_top, fraction,
                                                   d * in_top * top)
    recurrent_m, fmt["recurrent_shift"] = _multipliers(recurrent_scale, fraction, k * 2.0 ** 12 * top)
    own_m, fmt["own_shift"] = _multipliers(own_scale, fraction, 2.0 ** 12 * top)
    return {"encoder": encoder, "encoder_multiplier": encoder_m, "recurrent": recurrent,
            "recurrent_multiplier": recurrent_m, "own": own, "own_multiplier": own_m,
            "encoder_scale": encoder_scale, "recurrent_scale": recurrent_scale, "own_scale": own_scale}


def quantize(model, weight_bits: int = 8, state_bits: int = 16, *, input_bits: int = 12, input_range: float = 16.0,
             rate_bits: int = 8) -> QuantizedModel:
    """The integer version of a trained iP-VAE with a linear dictionary (module docstring for every format).

    weight_bits ∈ [2, 16]; state_bits ∈ [I + 2, 24] (I: the integer bits of u, 4 for floor −8);
    input_bits ∈ [2, 16] levels over ±input_range (input units; the shipped models' inputs have unit variance);
    rate_bits ∈ [1, 12]: the grid of u (2^-rate_bits nats) of the Poisson table. The float model is not changed.
    """
    family = getattr(model, "family", None)
    floats = float_parts(model)
    bits = _check_width(weight_bits, "weight_bits", 2, 16)
    integer = _integer_bits(family.floor, family.clamp_final)
    state = _check_width(state_bits, "state_bits", integer + 2, 24)
    if isinstance(input_range, bool) or not isinstance(input_range, int | float) or not (
            math.isfinite(input_range) and input_range > 0):
        raise ConfigError(f"input_range must be a finite number > 0, got {input_range!r}")
    fraction = state - integer
    fmt = {"weight_bits": bits, "state_bits": state, "input_bits": _check_width(input_bits, "input_bits", 2, 16),
           "rate_bits": min(_check_width(rate_bits, "rate_bits", 1, 12), fraction), "input_range": float(input_range),
           "integer_bits": integer, "fraction_bits": fraction}
    weights = _weights(floats, fmt, bits, fraction)
    scales = {name: weights.pop(name) for name in ("encoder_scale", "recurrent_scale", "own_scale")}
    unit = 2.0 ** fraction
    limit = 2 ** (state - 1)
    clamp, bounds = clamp_table(family.clamp_final, family.floor, fraction)
    cdf, start, first, grid = poisson_table(family.floor, family.clamp_final, fmt["rate_bits"], fraction)
    tables = IntegerTables(
        **weights, bias=np.rint(floats["bias"] * unit).astype(np.int64),
        initial=np.clip(np.rint(floats["initial"] * unit), -limit, limit - 1).astype(np.int32),
        clamp=clamp, clamp_bounds=bounds, cdf=cdf, cdf_start=start, cdf_first=first, cdf_grid=grid)
    readout = {"dictionary": model.dictionary.detach().float().clone(), "log_sigma": model.log_sigma().detach()
               .float().clone()}
    source = {"model": asdict(model.config), "step_size": floats["eta"]}
    return QuantizedModel(Quantization(**fmt), tables, family, readout, scales, source)


# ---- the integer step and draw ------------------------------------------------------------------------------

def _require_integer(**arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype not in INTEGER_DTYPES or array.ndim != 2:
            kind = getattr(array, "dtype", type(array).__name__)
            raise DataError(f"the integer step takes 2-D int32/int64 arrays: {name} is {kind}")


def integer_draw(tables: IntegerTables, u: np.ndarray, key: tuple[np.uint64, np.uint64]) -> np.ndarray:
    """Poisson(e^u) counts (B, K) int32 for u (B, K) int32 in u units, from the integer CDF table; key: 2 × uint64."""
    _require_integer(u=u)
    out = np.empty(u.shape, np.int32)
    draw_kernel(np.ascontiguousarray(u, np.int32), tables.cdf, tables.cdf_start, tables.cdf_first,
                int(tables.cdf_grid[0]), int(tables.cdf_grid[1]), key[0], key[1], out)
    return out


def integer_step(tables: IntegerTables, fmt: Quantization, u: np.ndarray, spikes: np.ndarray, drive: np.ndarray,
                 key: tuple[np.uint64, np.uint64]) -> tuple[np.ndarray, np.ndarray]:
    """One step of the integer engine (``step_kernel``): (u, spikes) (B, K) int32, drive (B, K) int64 in u units,
    the step's key → (new u, new spikes), (B, K) int32 each. Integer arrays in and out (others: DataError)."""
    _require_integer(u=u, spikes=spikes, drive=drive)
    new_u, new_spikes = np.empty(u.shape, np.int32), np.empty(u.shape, np.int32)
    lo, top, ceiling, clamp_shift = (int(v) for v in tables.clamp_bounds)
    limit = 2 ** (fmt.state_bits - 1)
    step_kernel(np.ascontiguousarray(u, np.int32), np.ascontiguousarray(spikes, np.int32),
                np.ascontiguousarray(drive, np.int64), tables.recurrent, tables.recurrent_multiplier,
                fmt.recurrent_shift, tables.own, int(tables.own_multiplier[0]), fmt.own_shift, tables.clamp, lo, top,
                ceiling, clamp_shift, -limit, limit - 1, tables.cdf, tables.cdf_start, tables.cdf_first,
                int(tables.cdf_grid[0]), int(tables.cdf_grid[1]), key[0], key[1], new_u, new_spikes)
    return new_u, new_spikes


def integer_drive(tables: IntegerTables, fmt: Quantization, x: Tensor | np.ndarray) -> np.ndarray:
    """η(Φᵀx/σ² − b) in u units, (B, K) int64, for inputs x (B, D): the ADC (x to ``input_bits`` levels, clipped)
    then an integer product and requantisation, once per input frame."""
    top = 2 ** (fmt.input_bits - 1) - 1
    levels = np.clip(np.rint(np.asarray(x, np.float64) / fmt.input_scale), -top, top).astype(np.int64)
    acc = levels @ tables.encoder.astype(np.int64)
    half = np.int64(1) << (fmt.encoder_shift - 1)
    return ((acc * tables.encoder_multiplier + half) >> fmt.encoder_shift) - tables.bias


# ---- the model ----------------------------------------------------------------------------------------------

class QuantizedModel:
    """An iP-VAE in integers (``quantize``): ``infer`` like every model's; ``save`` / ``load`` a folder.

    fmt: its ``Quantization``; tables: its ``IntegerTables``; family: the source's PoissonFamily (floor, clamp);
    readout: the float decoder {"dictionary" (D, K), "log_sigma" (D,)} of the read-out; scales: the real weight
    per integer step of each weight matrix {"encoder_scale" (K,), "recurrent_scale" (K,), "own_scale" (1,)};
    source: the float model's config and step size.
    """

    def __init__(self, fmt: Quantization, tables: IntegerTables, family, readout: dict[str, Tensor],
                 scales: dict[str, np.ndarray], source: dict[str, Any], run_info: dict[str, Any] | None = None,
                 ) -> None:
        self.fmt, self.tables, self.family = fmt, tables, family
        self.readout, self.scales, self.source = readout, scales, source
        #: the source run's "train" and "data" records (its data spec and split: ``fond eval`` reads them)
        self.run_info = dict(run_info or {})

    @property
    def n_inputs(self) -> int:
        return int(self.tables.encoder.shape[0])

    @property
    def dictionary(self) -> Tensor:
        """The read-out's float dictionary Φ (D, K): what each neuron's spikes write into the reconstruction."""
        return self.readout["dictionary"]

    @property
    def config(self):
        """The float model's ``ModelConfig`` (model, decoder, sizes) this integer model was made from."""
        from fond.config import ModelConfig, config_from_dict

        return config_from_dict(ModelConfig, self.source["model"])

    @property
    def title(self) -> str:
        """The display name reports use: the model and its widths."""
        return f"integer iP-VAE ({self.fmt.weight_bits}-bit weights, {self.fmt.state_bits}-bit state)"

    @property
    def n_latents(self) -> int:
        return int(self.tables.encoder.shape[1])

    def n_params(self) -> int:
        """Integer weights and per-neuron constants of the network (encoder, recurrent, diagonal, bias, u₀)."""
        t = self.tables
        return int(t.encoder.size + t.recurrent.size - self.n_latents + t.own.size + t.bias.size + t.initial.size)

    def decode(self, code: Tensor) -> Tensor:
        """The read-out's reconstruction g(code) = code Φᵀ (float), (B, K) → (B, D)."""
        return code.to(torch.float32) @ self.readout["dictionary"].T

    @torch.no_grad()
    def infer(self, x, steps: int = 1000, *, seed: int = 0, generator: torch.Generator | None = None,
              trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
              window: int = DEFAULT_WINDOW) -> InferenceResult:
        """Run ``steps`` integer steps on x (B, D) — or (steps, B, D), an online input — and return the result.

        As ``IterativeVAE.infer`` (same arguments, same trace keys, ``fond.result.TRACE_MEANINGS``), with the
        trace measured by the float read-out from the integer state: rates e^u, ``state["u"]`` = u in nats
        (u units × 2^-F), spikes the integer counts (as floats). The keys are drawn from the generator exactly as
        the float engine draws them (one for the initial sample, one per step).
        """
        from fond.models.common import check_input_sequence, check_steps, make_generator

        check_steps(steps)
        x = check_input_sequence(x, self.n_inputs, steps, like=self.readout["dictionary"])
        return run_inference(FixedPointSteps(self), x, steps, generator=make_generator(seed, generator), trace=trace,
                             record=record, tol=tol, window=window)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` (formats, shifts, the source's config) and ``model.safetensors`` (integer tables,
        the scales and the read-out, float32/64) into ``directory``; no pickle. Returns the folder."""
        from fond.checkpoint import save_tensors
        from fond.run import RunFolder, atomic_write

        folder = RunFolder(directory)
        folder.path.mkdir(parents=True, exist_ok=True)
        config = {"format": FORMAT, "version": FORMAT_VERSION, "quantization": asdict(self.fmt),
                  "family": asdict(self.family), "source": self.source, **self.run_info}
        tensors = {**self.tables.tensors(self.fmt.weight_bits), **{f"readout_{k}": v for k, v in self.readout.items()},
                   **{k: torch.from_numpy(v) for k, v in self.scales.items()}}
        save_tensors(folder.model_path, tensors, {"format": FORMAT, "quantization": config["quantization"]})
        atomic_write(folder.config_path, json.dumps(config, indent=2) + "\n")
        return folder.path


class FixedPointSteps(InferenceSteps):
    """The integer engine as the rollout loop (``fond.rollout.run_inference``) drives it.

    The integer state (u, spikes) travels in ``Step.carry``; ``Step.state``, ``rates`` and ``decoded`` are its
    float read-out (u·2^-F nats, e^u, the counts) for the trace, the history and the result. Per frame, the
    integer drive (``integer_drive``); per step, one key from the generator and ``integer_step``.
    """

    state_names = ("u",)

    def __init__(self, model: QuantizedModel) -> None:
        super().__init__()
        self.model = model
        self.log_sigma = model.readout["log_sigma"]

    def prepare(self, frame: Tensor) -> np.ndarray:
        return integer_drive(self.model.tables, self.model.fmt, frame.detach().cpu())

    def _read_out(self, u: np.ndarray, spikes: np.ndarray, with_rates: bool = True) -> Step:
        potentials = torch.from_numpy(u.astype(np.float64) * self.model.fmt.unit).to(torch.float32)
        rates = torch.exp(potentials) if with_rates else None
        return Step((potentials,), rates, torch.from_numpy(spikes.astype(np.float32)), carry=(u, spikes))

    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        from fond.families.sampling import draw_key

        self.constants(frame)
        u = np.ascontiguousarray(np.broadcast_to(self.model.tables.initial, (frame.shape[0], self.model.n_latents)))
        return self._read_out(u, integer_draw(self.model.tables, u, draw_key(generator)), with_rates=False)

    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        from fond.families.sampling import draw_key

        drive = self.constants(frame)
        u, spikes = integer_step(self.model.tables, self.model.fmt, *previous.carry, drive, draw_key(generator))
        return self._read_out(u, spikes)

    def decode(self, code: Tensor) -> Tensor:
        return self.model.decode(code)

    def prior_term(self, new: Step, previous: Step) -> Tensor:
        return self.model.family.kl(new.state, previous.state).sum(-1)

    def saturated(self, step: Step) -> Tensor:
        return self.model.family.saturated(step.state, {})

    def select(self, step: Step, rows: Tensor, frame: Tensor) -> Step:
        self.constants(frame)
        index = rows.numpy()
        return rows_of(step, rows, tuple(np.ascontiguousarray(part[index]) for part in step.carry))


def _check_shapes(path: Path, t: IntegerTables) -> None:
    """The tables fit together (the kernels do not check bounds); else a one-line CheckpointError."""
    d, k = t.encoder.shape
    ok = (t.recurrent.shape == (k, k) and all(a.shape == (k,) for a in (t.encoder_multiplier, t.recurrent_multiplier,
                                                                         t.own, t.bias, t.initial))
          and t.own_multiplier.shape == (1,) and t.clamp_bounds.shape == (4,) and t.cdf_grid.shape == (2,)
          and t.cdf_start.shape == (t.cdf_first.size + 1,) and t.cdf_start[0] == 0 and t.cdf_start[-1] == t.cdf.size
          and bool(np.all(np.diff(t.cdf_start) >= 1)) and t.clamp.size >= 2)
    if not ok:
        raise CheckpointError(f"{path}: the integer tables do not fit together (not written by fond quantize?)")


def load(directory: str | Path) -> QuantizedModel:
    """A quantised model written by ``QuantizedModel.save`` (``fond quantize``); one-line CheckpointError if the
    folder is not one."""
    from fond.checkpoint import load_tensors, read_config
    from fond.families.poisson import PoissonFamily
    from fond.run import RunFolder

    folder = RunFolder(directory)
    config = read_config(directory)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{folder.config_path}: not a quantised fond model (format '{FORMAT}'; write one with "
                              "`fond quantize RUN`)")
    tensors, _ = load_tensors(folder.model_path)
    names = [field for field in IntegerTables.__dataclass_fields__]
    missing = [name for name in [*names, "readout_dictionary", "readout_log_sigma"] if name not in tensors]
    if missing:
        raise CheckpointError(f"{folder.model_path}: missing tensor '{missing[0]}'")
    tables = IntegerTables(**{name: np.ascontiguousarray(tensors[name].numpy(), np.int32 if name in WEIGHT_NAMES
                                                     else np.int64 if name != "initial" else np.int32)
                              for name in names})
    _check_shapes(folder.model_path, tables)
    scales = {name: tensors[name].numpy() for name in ("encoder_scale", "recurrent_scale", "own_scale")
              if name in tensors}
    readout = {"dictionary": tensors["readout_dictionary"], "log_sigma": tensors["readout_log_sigma"]}
    try:
        return QuantizedModel(Quantization(**config["quantization"]), tables, PoissonFamily(**config["family"]),
                              readout, scales, config.get("source", {}),
                              {key: config[key] for key in ("train", "data") if key in config})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder.config_path}: malformed ({type(exc).__name__}: {exc})") from None
