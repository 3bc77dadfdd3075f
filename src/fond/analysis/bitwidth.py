"""How few bits the integer iP-VAE needs: R², zeros and d against the float engine (issue 20, item 2).

Each row is ``fond.evaluate.evaluate`` of one engine on the same held-out inputs, the same chunks and seeds —
so the same generator states, and the same draws wherever the two engines' rates agree (``fond.fixedpoint``) —
at ``steps`` inference steps: the float engine, then the integer engine (``fond.fixedpoint.quantize``) over
weight widths at a wide state (``REFERENCE_STATE_BITS``) and over state widths at wide weights
(``REFERENCE_WEIGHT_BITS``), so each sweep moves one width. A width is *within tolerance* when both R² (from
the spikes) and the mean-code R² stay within ``TOLERANCE`` of the float engine's; the smallest width reported
is the smallest from which every wider one tested stays within, and the pair of the two smallest is evaluated
too (``combined``). A stricter rule also asks the code to stay the same — zeros and d within ``TOLERANCE`` too
(``smallest_same_code``). d = √((1 − R²)² + (1 − zeros)²) as everywhere (``fond.metrics.rate_distortion_distance``).

Each row also records the smallest eigenvalue of the symmetric part of the recurrent matrix the engine uses
(ηW, or the integers times their scales, nats per spike): W = ΦᵀΣ⁻¹Φ is positive semi-definite — with K > D
half its eigenvalues are 0 — and rounding its entries spreads those zeros to both signs; a negative eigenvalue
is an excitatory mode of the recurrent loop, the way a population burst starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fond.errors import DataError

__all__ = ["WEIGHT_BITS", "STATE_BITS", "REFERENCE_WEIGHT_BITS", "REFERENCE_STATE_BITS", "TOLERANCE", "BitwidthRow",
           "BitwidthStudy", "bitwidth_study", "plot_bitwidth", "min_eigenvalue"]

#: the widths swept (bits)
WEIGHT_BITS: tuple[int, ...] = (4, 6, 8, 12, 16)
STATE_BITS: tuple[int, ...] = (8, 10, 12, 14, 16, 20)
#: the other width held fixed in each sweep (bits)
REFERENCE_WEIGHT_BITS = 16
REFERENCE_STATE_BITS = 20
#: largest R² loss against the float engine that counts as "within" (both R² and mean-code R²)
TOLERANCE = 0.01


@dataclass(frozen=True)
class BitwidthRow:
    """One engine's numbers at the last step: sweep ("float", "weight", "state", "combined"), the widths (None
    for float), r2 (from spikes), r2_rates (mean code), zeros, d, diverged_fraction (inputs whose rollout blew up,
    ``fond.evaluate.diverged_inputs``), rate_max (spikes per step), min_eigenvalue (of the recurrent matrix's
    symmetric part, nats per spike) and the seconds its evaluation took."""

    sweep: str
    weight_bits: int | None
    state_bits: int | None
    r2: float
    r2_rates: float
    zeros: float
    d: float
    diverged_fraction: float
    rate_max: float
    min_eigenvalue: float
    seconds: float

    def within(self, reference: BitwidthRow, tolerance: float, same_code: bool = False) -> bool:
        """Both R²s within ``tolerance`` below (or anywhere above) ``reference``'s; with ``same_code`` also zeros
        and d within ``tolerance`` of it (either side)."""
        close = self.r2 >= reference.r2 - tolerance and self.r2_rates >= reference.r2_rates - tolerance
        return close and (not same_code or (abs(self.zeros - reference.zeros) <= tolerance
                                            and abs(self.d - reference.d) <= tolerance))


@dataclass
class BitwidthStudy:
    """The rows (float first), the set-up and the smallest widths within ``tolerance`` (None: none is)."""

    rows: list[BitwidthRow]
    steps: int
    samples: int
    seed: int
    tolerance: float
    formats: dict[str, Any]
    smallest: dict[str, int | None] = field(default_factory=dict)
    smallest_same_code: dict[str, int | None] = field(default_factory=dict)

    @property
    def float_row(self) -> BitwidthRow:
        return self.rows[0]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitwidthStudy:
        """The study ``to_dict`` wrote (e.g. read back from bitwidth.json)."""
        names = BitwidthRow.__dataclass_fields__
        rows = [BitwidthRow(**{k: v for k, v in row.items() if k in names}) for row in data["rows"]]
        return cls(rows, data["steps"], data["samples"], data["seed"], data["tolerance"], data["formats"],
                   data["smallest"], data["smallest_same_code"])

    def to_dict(self) -> dict[str, Any]:
        reference = self.float_row
        rows = [{**asdict(r), "delta_r2": r.r2 - reference.r2, "delta_r2_rates": r.r2_rates - reference.r2_rates,
                 "delta_zeros": r.zeros - reference.zeros, "within": r.within(reference, self.tolerance),
                 "same_code": r.within(reference, self.tolerance, same_code=True)} for r in self.rows]
        return {"steps": self.steps, "samples": self.samples, "seed": self.seed, "tolerance": self.tolerance,
                "formats": self.formats, "smallest": self.smallest, "smallest_same_code": self.smallest_same_code,
                "rows": rows}

    def table_markdown(self) -> str:
        """The rows as a Markdown table (ΔR² against the float engine)."""
        reference = self.float_row
        tol = f"{self.tolerance:g}"
        lines = [f"| sweep | weight bits | state bits | R² | ΔR² | mean-code R² | Δ | zeros | d | diverged | "
                 f"λ_min(ηW) | R² within {tol} | also zeros, d |", "|---" * 13 + "|"]
        for r in self.rows:
            widths = ("float", "float") if r.weight_bits is None else (r.weight_bits, r.state_bits)
            lines.append(f"| {r.sweep} | {widths[0]} | {widths[1]} | {r.r2:.4f} | {r.r2 - reference.r2:+.4f} | "
                         f"{r.r2_rates:.4f} | {r.r2_rates - reference.r2_rates:+.4f} | {r.zeros:.4f} | {r.d:.4f} | "
                         f"{r.diverged_fraction:.3f} | {r.min_eigenvalue:+.1e} | "
                         f"{'yes' if r.within(reference, self.tolerance) else 'no'} | "
                         f"{'yes' if r.within(reference, self.tolerance, same_code=True) else 'no'} |")
        return "\n".join(lines) + "\n"


def min_eigenvalue(model) -> float:
    """The smallest eigenvalue of the symmetric part of the recurrent matrix an engine uses, nats per spike: ηW
    of a float iP-VAE, or a ``QuantizedModel``'s integers times their scales (diagonal included)."""
    import numpy as np

    if hasattr(model, "tables"):
        t, scales = model.tables, model.scales
        matrix = t.recurrent * scales["recurrent_scale"][None, :] + np.diag(t.own * scales["own_scale"])
    else:
        from fond.fixedpoint import float_parts

        matrix = float_parts(model)["gram"]
    return float(np.linalg.eigvalsh(0.5 * (matrix + matrix.T))[0])


def _row(sweep: str, model, x, steps: int, seed: int, chunk_size: int, widths=(None, None)) -> BitwidthRow:
    from fond.evaluate import evaluate

    began = time.perf_counter()
    e = evaluate(model, x, steps, seed=seed, chunk_size=chunk_size)
    return BitwidthRow(sweep, *widths, r2=e.r2, r2_rates=e.r2_rates, zeros=e.zeros, d=e.rate_distortion,
                       diverged_fraction=e.diverged_fraction, rate_max=e.rate_max, min_eigenvalue=min_eigenvalue(model),
                       seconds=time.perf_counter() - began)


def _smallest(rows: list[BitwidthRow], reference: BitwidthRow, key: str, tolerance: float,
              same_code: bool = False) -> int | None:
    """The smallest width of ``rows`` from which every wider one is within ``tolerance`` (None: the widest is not)."""
    smallest = None
    for row in sorted(rows, key=lambda r: getattr(r, key), reverse=True):
        if not row.within(reference, tolerance, same_code):
            break
        smallest = getattr(row, key)
    return smallest


def bitwidth_study(model, x, *, steps: int = 1000, weight_bits: Sequence[int] = WEIGHT_BITS,
                   state_bits: Sequence[int] = STATE_BITS, reference_weight_bits: int = REFERENCE_WEIGHT_BITS,
                   reference_state_bits: int = REFERENCE_STATE_BITS, seed: int = 0, chunk_size: int = 500,
                   tolerance: float = TOLERANCE, log: Callable[[str], None] | None = None,
                   **formats) -> BitwidthStudy:
    """The float engine and the integer engine at each width on held-out inputs x (N, D), ``steps`` steps each.

    ``formats``: further ``fond.fixedpoint.quantize`` options (input_bits, input_range, rate_bits), the same for
    every row. ``log``: called with one line per row evaluated. A pair of widths met twice (the two sweeps cross
    at the reference widths) is evaluated once and its numbers repeated under the second sweep's name.
    """
    from fond.fixedpoint import quantize

    if not weight_bits or not state_bits:
        raise DataError("the bit-width study needs at least one weight width and one state width")
    say = log or (lambda message: None)
    done: dict[tuple[int, int], BitwidthRow] = {}

    def integer_row(sweep: str, pair: tuple[int, int]) -> BitwidthRow:
        if pair not in done:
            done[pair] = _row(sweep, quantize(model, *pair, **formats), x, steps, seed, chunk_size, pair)
            r = done[pair]
            say(f"{pair[0]}-bit weights, {pair[1]}-bit state: R² {r.r2:.4f}, mean-code R² {r.r2_rates:.4f}, zeros "
                f"{r.zeros:.4f}, diverged {r.diverged_fraction:.3f} ({r.seconds:.0f} s)")
        return replace(done[pair], sweep=sweep)

    rows = [_row("float", model, x, steps, seed, chunk_size)]
    say(f"float: R² {rows[0].r2:.4f}, zeros {rows[0].zeros:.4f} ({rows[0].seconds:.0f} s)")
    rows += [integer_row("weight", (b, reference_state_bits)) for b in weight_bits]
    rows += [integer_row("state", (reference_weight_bits, s)) for s in state_bits]
    rules = [_smallest_pair(rows, tolerance, same_code) for same_code in (False, True)]
    combined = {tuple(rule.values()) for rule in rules if None not in rule.values()}
    rows += [integer_row("combined", pair) for pair in sorted(combined)]
    used = quantize(model, reference_weight_bits, reference_state_bits, **formats).fmt
    described = {"input_bits": used.input_bits, "input_range": used.input_range, "rate_bits": used.rate_bits,
                 "integer_bits": used.integer_bits, "reference_weight_bits": reference_weight_bits,
                 "reference_state_bits": reference_state_bits}
    return BitwidthStudy(rows, steps, int(len(x)), seed, tolerance, described, *rules)


def _smallest_pair(rows: list[BitwidthRow], tolerance: float, same_code: bool) -> dict[str, int | None]:
    """{"weight_bits", "state_bits"}: each sweep's smallest width within ``tolerance`` of the float row (rows[0])."""
    return {key: _smallest([r for r in rows if r.sweep == sweep], rows[0], key, tolerance, same_code)
            for sweep, key in (("weight", "weight_bits"), ("state", "state_bits"))}


def plot_bitwidth(study: BitwidthStudy, path) -> Any:
    """R² (spikes, mean code) and zeros against weight bits and against state bits, the float engine dashed, the
    axis cut at 0 (a value below it — a diverging rollout — is written at the bottom)."""
    from fond.plots import new_figure, save_figure

    fig = new_figure(8.0, 3.2)
    for ax, sweep, key in zip(fig.subplots(1, 2), ("weight", "state"), ("weight_bits", "state_bits"), strict=True):
        _plot_sweep(ax, study, sweep, key)
    fig.axes[0].set_ylabel("at the last step (dashed: float engine)")
    fig.axes[0].legend(fontsize=7, loc="center right")
    return save_figure(fig, path)


def _plot_sweep(ax, study: BitwidthStudy, sweep: str, key: str) -> None:
    reference = study.float_row
    rows = sorted((r for r in study.rows if r.sweep == sweep), key=lambda r: getattr(r, key))
    bits = [getattr(r, key) for r in rows]
    for name, colour, label in (("r2", "C0", "R² (spikes)"), ("r2_rates", "C1", "R² (mean code)"),
                                ("zeros", "C2", "zeros")):
        values = [getattr(r, name) for r in rows]
        ax.plot(bits, [max(v, 0.0) for v in values], "o-", color=colour, label=label)
        ax.axhline(getattr(reference, name), color=colour, linestyle="--", linewidth=0.8)
    for r in rows:
        if min(r.r2, r.r2_rates) < 0:
            ax.annotate(f"R² {r.r2:.3g}\n{r.diverged_fraction:.0%} diverge", (getattr(r, key), 0.0),
                        xytext=(6, 6), textcoords="offset points", fontsize=7)
    ax.axhspan(reference.r2 - study.tolerance, reference.r2, color="C0", alpha=0.15)
    ax.set_ylim(0.0, 1.0)
    other = "state" if sweep == "weight" else "weight"
    ax.set_xlabel(f"{sweep} bits ({other}: {study.formats[f'reference_{other}_bits']} bits)")
    ax.set_xticks(bits)
    ax.set_title(f"t = {study.steps}, {study.samples} held-out inputs (band: R² − {study.tolerance:g})", fontsize=8)
