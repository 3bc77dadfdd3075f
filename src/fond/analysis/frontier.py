"""The rate–distortion frontier (DESIGN.md §2.5, §3): R² against the fraction of zeros across models and configs.

A *point* is one evaluated configuration: a mapping with at least ``model`` (name, str), ``r2`` (R² ≤ 1, finite)
and ``zeros`` (fraction of zero latents in [0, 1]), and optionally ``beta``, ``t_train``, ``seed`` and ``run``
(other keys are carried along untouched). Both axes are "higher is better": the ideal corner is (zeros, R²) =
(1, 1) and the distance to it, d = √((1 − R²)² + (1 − zeros)²) (:func:`fond.metrics.rate_distortion_distance`),
ranks configurations (smaller is better).

Everything returned is JSON-ready; figures are written atomically (Agg, ``matplotlib.figure.Figure``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fond.errors import DataError
from fond.metrics import rate_distortion_distance
from fond.plots import new_figure, save_figure
from fond.validate import finite_float

__all__ = [
    "pareto_front",
    "frontier_table",
    "summarize_effects",
    "plot_frontier",
    "plot_effects",
]

CONFIG_KEYS: tuple[str, ...] = ("beta", "t_train", "seed", "run")
FACTORS: tuple[str, ...] = ("beta", "t_train")
# Signs the paper reports (§3): larger β → more zeros and lower R²; larger T_train → a better frontier (smaller d).
PAPER_SIGNS: dict[tuple[str, str], int] = {
    ("beta", "zeros"): 1, ("beta", "r2"): -1, ("t_train", "d"): -1,
}
ISO_D_STEP = 0.2


# --------------------------------------------------------------------------- validation


def _check_points(points: Any, name: str = "points") -> list[dict[str, Any]]:
    """Validated copies of ``points`` with float r2/zeros (and float beta/t_train when present and not None)."""
    if isinstance(points, Mapping) or not isinstance(points, Sequence) or isinstance(points, str | bytes):
        raise DataError(f"{name} must be a list of mappings, got {type(points).__name__}")
    if len(points) == 0:
        raise DataError(f"{name} is empty")
    checked = []
    for i, point in enumerate(points):
        if not isinstance(point, Mapping):
            raise DataError(f"{name}[{i}] must be a mapping, got {type(point).__name__}")
        for key in ("model", "r2", "zeros"):
            if key not in point:
                raise DataError(f"{name}[{i}] is missing the key {key!r}")
        model = point["model"]
        if not isinstance(model, str) or not model:
            raise DataError(f"{name}[{i}]['model'] must be a non-empty string, got {model!r}")
        row = dict(point)
        row["r2"] = finite_float(point["r2"], f"{name}[{i}]['r2']", error=DataError)
        row["zeros"] = finite_float(point["zeros"], f"{name}[{i}]['zeros']", error=DataError)
        if row["r2"] > 1.0:
            raise DataError(f"{name}[{i}]['r2'] = {row['r2']} exceeds 1 (R² ≤ 1 by definition)")
        if not 0.0 <= row["zeros"] <= 1.0:
            raise DataError(f"{name}[{i}]['zeros'] = {row['zeros']} is not a fraction in [0, 1]")
        for key in FACTORS:
            if point.get(key) is not None:
                row[key] = finite_float(point[key], f"{name}[{i}][{key!r}]", error=DataError)
        checked.append(row)
    return checked


def _model_order(points: list[dict[str, Any]]) -> list[str]:
    """Model names in order of first appearance."""
    return list(dict.fromkeys(p["model"] for p in points))


def _plain(value: Any) -> Any:
    """A JSON-ready version of a scalar config value (numpy scalars → Python scalars)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- Pareto front


def pareto_front(r2: Any, zeros: Any) -> np.ndarray:
    """Indices (int64) of the non-dominated points, sorted by zeros (ascending; ties by R² descending, then index).

    r2, zeros: (N,) finite, higher is better on both. Point i is dominated when some j is at least as good on both
    axes and strictly better on one; exact duplicates therefore do not dominate each other and are all kept.
    """
    try:
        r2 = np.asarray(r2, dtype=np.float64)
        zeros = np.asarray(zeros, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("r2 and zeros must be 1-D numeric arrays") from None
    if r2.ndim != 1 or zeros.ndim != 1 or r2.shape != zeros.shape:
        raise DataError(f"r2 and zeros must be 1-D of equal length, got shapes {r2.shape} and {zeros.shape}")
    if r2.size == 0:
        raise DataError("r2 and zeros are empty")
    for name, values in (("r2", r2), ("zeros", zeros)):
        if not np.isfinite(values).all():
            raise DataError(f"{name} contains NaN or Inf at index {int(np.flatnonzero(~np.isfinite(values))[0])}")
    # dominated[i] = ∃ j: r2_j ≥ r2_i ∧ zeros_j ≥ zeros_i ∧ (r2_j > r2_i ∨ zeros_j > zeros_i); O(N²) memory in chunks
    n = r2.size
    dominated = np.zeros(n, dtype=bool)
    block = max(1, 2_000_000 // n)
    for start in range(0, n, block):
        r_i, z_i = r2[start:start + block, None], zeros[start:start + block, None]
        at_least = (r2[None, :] >= r_i) & (zeros[None, :] >= z_i)
        strictly = (r2[None, :] > r_i) | (zeros[None, :] > z_i)
        dominated[start:start + block] = (at_least & strictly).any(axis=1)
    front = np.flatnonzero(~dominated)
    order = np.lexsort((front, -r2[front], zeros[front]))
    return front[order].astype(np.int64)


# --------------------------------------------------------------------------- tables


def frontier_table(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-ready row per model, ordered by rank (1 = smallest best d; ties share the smaller rank).

    Row: ``model``, ``rank``, ``n_points``, ``n_on_global_front``, ``best`` (the point with the smallest d, first
    in input order on ties: index, r2, zeros, d and its config keys beta/t_train/seed/run when present) and
    ``points``: every point of the model sorted by d, each with index (position in ``points``), r2, zeros, d,
    ``rank`` among all points by d, ``on_global_front`` (not dominated by any point of any model),
    ``on_model_front`` (not dominated within the model) and its config keys.
    """
    checked = _check_points(points)
    r2 = np.array([p["r2"] for p in checked])
    zeros = np.array([p["zeros"] for p in checked])
    d = np.array([rate_distortion_distance(a, b) for a, b in zip(r2, zeros, strict=True)])
    global_front = set(pareto_front(r2, zeros).tolist())
    point_rank = stats.rankdata(d, method="min").astype(int)

    rows = []
    for model in _model_order(checked):
        members = [i for i, p in enumerate(checked) if p["model"] == model]
        model_front = {members[j] for j in pareto_front(r2[members], zeros[members]).tolist()}
        entries = []
        for i in sorted(members, key=lambda i: (d[i], i)):
            entry = {"index": i, "r2": float(r2[i]), "zeros": float(zeros[i]), "d": float(d[i]),
                     "rank": int(point_rank[i]), "on_global_front": i in global_front,
                     "on_model_front": i in model_front}
            entry.update({k: _plain(checked[i][k]) for k in CONFIG_KEYS if k in checked[i]})
            entries.append(entry)
        best = {k: v for k, v in entries[0].items() if k not in ("rank", "on_global_front", "on_model_front")}
        rows.append({"model": model, "rank": 0, "n_points": len(members),
                     "n_on_global_front": sum(e["on_global_front"] for e in entries),
                     "best": best, "points": entries})
    model_rank = stats.rankdata([row["best"]["d"] for row in rows], method="min").astype(int)
    for row, rank in zip(rows, model_rank, strict=True):
        row["rank"] = int(rank)
    rows.sort(key=lambda row: (row["rank"], row["best"]["index"]))
    return rows


def _spearman(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Spearman ρ and two-sided p; ρ and p are None (with a reason) when either variable is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "factor" if np.ptp(x) == 0 else "metric"
        return {"rho": None, "p": None, "reason": f"{which} is constant"}
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue)}


def summarize_effects(points: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Spearman rank correlations of β and T_train with zeros, R² and d, per model (JSON-ready).

    For each model and each factor (``beta``, ``t_train``) with at least two distinct values among the model's
    points that carry it: ``{"n_points", "values" (distinct, sorted), "zeros"|"r2"|"d": {"rho", "p"}}`` and
    ``agrees_with_paper`` for the relations the paper reports (larger β → more zeros, lower R²; larger T_train →
    smaller d): True / False by the sign of ρ, None when ρ is undefined. Correlations pool all the model's points
    (every seed and every value of the other factor); when both factors vary together, read them with care.
    Models without a varying factor are left out; the result is {} when no model varies any.
    """
    checked = _check_points(points)
    summary: dict[str, dict[str, Any]] = {}
    for model in _model_order(checked):
        members = [p for p in checked if p["model"] == model]
        effects: dict[str, Any] = {}
        for factor in FACTORS:
            carrying = [p for p in members if p.get(factor) is not None]
            values = np.array([p[factor] for p in carrying], dtype=np.float64)
            if np.unique(values).size < 2:
                continue
            metrics = {
                "r2": np.array([p["r2"] for p in carrying]),
                "zeros": np.array([p["zeros"] for p in carrying]),
                "d": np.array([rate_distortion_distance(p["r2"], p["zeros"]) for p in carrying]),
            }
            entry: dict[str, Any] = {"n_points": len(carrying), "values": [float(v) for v in np.unique(values)]}
            agrees: dict[str, bool | None] = {}
            for metric, series in metrics.items():
                entry[metric] = _spearman(values, series)
                sign = PAPER_SIGNS.get((factor, metric))
                if sign is not None:
                    rho = entry[metric]["rho"]
                    agrees[metric] = None if rho is None else bool(np.sign(rho) == sign)
            entry["agrees_with_paper"] = agrees
            effects[factor] = entry
        if effects:
            summary[model] = effects
    return summary


# --------------------------------------------------------------------------- figures


def _colours(models: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def plot_frontier(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                  paper_points: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """R² (y) against the fraction of zeros (x): one scatter per model, its own Pareto front as a line, iso-d arcs.

    Arcs d = 0.2, 0.4, … are quarter circles around the ideal corner (1, 1), drawn up to the largest d in the
    data. ``paper_points`` (same format as ``points``) appear as hollow markers, coloured like the matching model
    when its name occurs in ``points``. Writes a PNG atomically and returns its path.
    """
    checked = _check_points(points)
    reference = _check_points(paper_points, "paper_points") if paper_points is not None else []
    models = _model_order(checked)
    colours = _colours(models + [m for m in _model_order(reference) if m not in models] if reference else models)

    fig = new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    everything = checked + reference
    all_r2 = np.array([p["r2"] for p in everything])
    all_zeros = np.array([p["zeros"] for p in everything])
    max_d = max(rate_distortion_distance(a, b) for a, b in zip(all_r2, all_zeros, strict=True))
    n_arcs = max(1, math.ceil(max_d / ISO_D_STEP - 1e-9))
    theta = np.linspace(0.0, math.pi / 2, 100)
    for j in range(1, n_arcs + 1):
        radius = j * ISO_D_STEP
        ax.plot(1 - radius * np.cos(theta), 1 - radius * np.sin(theta), color="0.75", linewidth=0.8, zorder=0)
        ax.annotate(f"d={radius:.1f}", (1 - radius * math.cos(math.pi / 4), 1 - radius * math.sin(math.pi / 4)),
                    fontsize=7, color="0.5", ha="right", va="top")

    for model in models:
        r2 = np.array([p["r2"] for p in checked if p["model"] == model])
        zeros = np.array([p["zeros"] for p in checked if p["model"] == model])
        ax.scatter(zeros, r2, color=colours[model], s=18, alpha=0.7, label=model)
        front = pareto_front(r2, zeros)
        ax.plot(zeros[front], r2[front], color=colours[model], linewidth=1.5)
    for model in _model_order(reference):
        r2 = [p["r2"] for p in reference if p["model"] == model]
        zeros = [p["zeros"] for p in reference if p["model"] == model]
        ax.scatter(zeros, r2, facecolors="none", edgecolors=[colours[model]], s=60, linewidths=1.5,
                   label=f"{model} (paper)")

    ax.set_xlim(min(0.0, float(all_zeros.min())) - 0.02, 1.02)
    ax.set_ylim(max(float(all_r2.min()) - 0.05, -1.0), 1.02)  # arcs beyond the data are clipped
    ax.set_xlabel("fraction of zeros (sparsity)")
    ax.set_ylabel("R² (reconstruction)")
    ax.set_title("rate–distortion frontier (ideal corner: top right)")
    ax.legend(fontsize="small", loc="lower left")
    return save_figure(fig, path)


def plot_effects(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """R², zeros and d against β (and T_train, log₂ axis) per model: one row per factor that varies somewhere.

    Small dots: individual points (seeds, other factor values); line: the mean per factor value.
    Raises DataError when no model has two distinct values of β or T_train. Writes a PNG atomically.
    """
    checked = _check_points(points)
    models = _model_order(checked)
    colours = _colours(models)
    factors = [f for f in FACTORS if any(
        len({p[f] for p in checked if p["model"] == m and p.get(f) is not None}) >= 2 for m in models)]
    if not factors:
        raise DataError("no model has two distinct values of 'beta' or 't_train' to plot effects against")

    metrics = (("r2", "R²"), ("zeros", "fraction of zeros"), ("d", "rate–distortion d"))
    fig = new_figure(11.0, 3.2 * len(factors))
    axes = fig.subplots(len(factors), len(metrics), squeeze=False)
    for row, factor in enumerate(factors):
        for col, (metric, label) in enumerate(metrics):
            ax = axes[row, col]
            for model in models:
                carrying = [p for p in checked if p["model"] == model and p.get(factor) is not None]
                if len({p[factor] for p in carrying}) < 2:
                    continue
                x = np.array([p[factor] for p in carrying])
                y = np.array([rate_distortion_distance(p["r2"], p["zeros"]) if metric == "d" else p[metric]
                              for p in carrying])
                ax.scatter(x, y, color=colours[model], s=10, alpha=0.5)
                levels = np.unique(x)
                ax.plot(levels, [y[x == v].mean() for v in levels], color=colours[model], marker="o",
                        markersize=3, label=model)
            if factor == "t_train" and all(p[factor] > 0 for p in checked if p.get(factor) is not None):
                ax.set_xscale("log", base=2)
            ax.set_xlabel("β" if factor == "beta" else "T_train")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[row, 0].legend(fontsize="small")
    return save_figure(fig, path)
