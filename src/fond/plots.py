"""Diagnostic figures: learned dictionaries, per-step inference curves, reconstructions, training logs.

Every function renders with the object-oriented Agg API (``matplotlib.figure.Figure`` plus
``FigureCanvasAgg``), so nothing touches pyplot's global state or the configured backend, and
writes a PNG atomically through :func:`fond.run.atomic_write` (a hidden temporary file in the
destination directory, fsynced, then renamed into place). Readers therefore see either the previous
file or the complete new one, never a half-written PNG. Missing parent directories are created and
the written :class:`pathlib.Path` is returned.

Bad input raises :class:`fond.errors.DataError` (a :class:`ValueError`) with a one-line message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fond.errors import DataError
from fond.run import atomic_write
from fond.validate import float_array, patch_dims

__all__ = [
    "new_figure",
    "plot_convergence",
    "plot_dictionary",
    "plot_dictionaries",
    "plot_inference_curves",
    "plot_reconstructions",
    "plot_spike_raster",
    "plot_training_curves",
    "save_figure",
]

DPI = 120
_SEPARATOR_COLOUR = "#4a6fa5"  # not a grey, so tile borders never look like atom pixels
_INFERENCE_KEYS = ("r2", "r2_rates", "zeros", "du_norm", "nelbo")


# --------------------------------------------------------------------------- helpers


def _check_patch_shape(patch_shape: Any) -> tuple[int, int]:
    """(height, width) of a grey patch_shape (h, w) or a colour one (h, w, 3); see ``_channels``."""
    return patch_dims(patch_shape, colour=True)[:2]


def _channels(patch_shape: Any) -> int:
    """3 for a colour patch_shape (h, w, 3) — rows are (h, w, c) channels last — else 1."""
    return 3 if len(tuple(patch_shape)) == 3 else 1


def _as_image(values: np.ndarray, ph: int, pw: int, channels: int, scale: float) -> np.ndarray:
    """A row as an image: grey (h, w) values / scale, or colour (h, w, 3) mapped to [0, 1] around 0.5."""
    if channels == 1:
        return values.reshape(ph, pw) / scale
    return np.clip(0.5 + 0.5 * values.reshape(ph, pw, 3) / scale, 0.0, 1.0)


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Agg figure (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG to ``path`` through ``fond.run.atomic_write`` (temp file, fsync, rename)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))


def _finite_min(a: np.ndarray) -> float | None:
    finite = a[np.isfinite(a)]
    return float(finite.min()) if finite.size else None


# --------------------------------------------------------------------------- dictionary


def _atom_order(weights: np.ndarray, order: str) -> np.ndarray:
    """Column indices of ``weights`` (D, K) in display order.

    ``"norm"``: descending L2 norm, ties (including dead, all-zero atoms, which come last) kept in
    index order; ``"index"``: ``0..K-1``.
    """
    k = weights.shape[1]
    if order == "index":
        return np.arange(k)
    if order == "norm":
        norms = np.linalg.norm(weights, axis=0)
        return np.argsort(-norms, kind="stable")
    raise DataError(f"order must be 'norm' or 'index', got {order!r}")


def _dictionary_mosaic(atoms: np.ndarray, patch_shape: tuple[int, ...]) -> tuple[np.ndarray, int, int]:
    """Tile atoms (D, n) into one image with 1-pixel NaN separators; each atom scaled to [-1, 1]
    (colour atoms: RGB in [0, 1], 0.5 = zero, separators white)."""
    ph, pw = patch_shape[:2]
    channels = _channels(patch_shape)
    n = atoms.shape[1]
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    shape = (nrows * (ph + 1) - 1, ncols * (pw + 1) - 1) + ((3,) if channels == 3 else ())
    mosaic = np.full(shape, np.nan if channels == 1 else 1.0)
    for i in range(n):
        a = atoms[:, i]
        peak = np.max(np.abs(a))
        tile = _as_image(a, ph, pw, channels, peak if peak > 0 else 1.0)
        r, c = divmod(i, ncols)
        mosaic[r * (ph + 1) : r * (ph + 1) + ph, c * (pw + 1) : c * (pw + 1) + pw] = tile
    return mosaic, nrows, ncols


def plot_dictionary(
    weights: Any,
    patch_shape: tuple[int, int],
    path: str | os.PathLike[str],
    *,
    max_atoms: int = 256,
    order: str = "norm",
    title: str | None = None,
) -> Path:
    """Show the atoms (columns) of a dictionary ``weights`` of shape (D, K) as a grid of image patches.

    Each column is reshaped row-major to ``patch_shape`` and scaled independently to the symmetric
    range [-max|a|, +max|a|] of a grey colormap (black negative, mid-grey zero, white positive), so
    the figure shows each atom's shape, not its magnitude. At most ``max_atoms`` atoms are shown in a
    near-square grid with 1-pixel coloured separators; ``order="norm"`` shows the largest-L2-norm
    atoms first (dead atoms last), ``order="index"`` keeps the given order.
    """
    w = float_array(weights, "weights")
    ph, pw = _check_patch_shape(patch_shape)
    channels = _channels(patch_shape)
    if w.ndim != 2:
        raise DataError(f"weights must be a 2-D (D, K) array, got shape {w.shape}")
    d, k = w.shape
    if d != ph * pw * channels:
        raise DataError(f"weights has D={d} rows but patch_shape {tuple(patch_shape)} needs D={ph * pw * channels}")
    if k == 0:
        raise DataError("weights has no atoms (K=0 columns)")
    if not np.all(np.isfinite(w)):
        raise DataError(f"weights contains {int(np.sum(~np.isfinite(w)))} non-finite values")
    if int(max_atoms) < 1:
        raise DataError(f"max_atoms must be at least 1, got {max_atoms}")

    idx = _atom_order(w, order)[: int(max_atoms)]
    n_dead = int(np.sum(np.linalg.norm(w, axis=0) == 0))
    mosaic, nrows, ncols = _dictionary_mosaic(w[:, idx], tuple(int(v) for v in patch_shape))

    aspect = mosaic.shape[0] / mosaic.shape[1]
    width = float(np.clip(0.75 * ncols * pw / 16 + 2.0, 5.0, 12.0))
    fig = new_figure(width, max(3.5, width * aspect * 0.92 + 0.9))
    ax = fig.add_subplot()
    cmap = colormaps["gray"].with_extremes(bad=_SEPARATOR_COLOUR)
    im = ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    sort_txt = "sorted by descending L2 norm" if order == "norm" else "in the order given"
    ax.set_xlabel(
        f"atoms {sort_txt}, left to right then top to bottom; each tile {ph}×{pw} px "
        f"({nrows}×{ncols} grid)"
    )
    if title is None:
        title = f"Dictionary Φ: {len(idx)} of {k} atoms shown (D={d}, {n_dead} dead)"
    ax.set_title(title)
    if channels == 1:
        cbar = fig.colorbar(im, ax=ax, shrink=0.8)
        cbar.set_label("weight / max|atom| (each atom scaled separately, dimensionless)")
    return save_figure(fig, path)


def plot_dictionaries(panels: Mapping[str, Any], patch_shape: tuple[int, int], path: str | os.PathLike[str], *,
                      max_atoms: int = 100, order: str = "norm", title: str | None = None) -> Path:
    """Several dictionaries side by side: ``panels`` maps a caption to weights (D, K); one mosaic each.

    Each panel shows its first ``max_atoms`` atoms in ``order`` ("norm": largest L2 norm first; "index": as
    given, e.g. most active neurons first), each scaled to its own [-max|a|, max|a|] as in
    :func:`plot_dictionary`, so the shapes of two models' atoms can be compared at a glance.
    """
    if not panels:
        raise DataError("plot_dictionaries needs at least one dictionary")
    ph, pw = _check_patch_shape(patch_shape)
    mosaics = {}
    for caption, weights in panels.items():
        w = float_array(weights, f"weights of {caption!r}")
        if w.ndim != 2 or w.shape[0] != ph * pw * _channels(patch_shape) or not np.all(np.isfinite(w)):
            raise DataError(f"{caption}: weights must be a finite (D, K) array with D = "
                            f"{ph * pw * _channels(patch_shape)}, got shape {w.shape}")
        mosaics[caption] = _dictionary_mosaic(w[:, _atom_order(w, order)[: int(max_atoms)]],
                                              tuple(int(v) for v in patch_shape))[0]
    fig = new_figure(4.2 * len(mosaics) + 0.4, 4.8)
    cmap = colormaps["gray"].with_extremes(bad=_SEPARATOR_COLOUR)
    for i, (caption, mosaic) in enumerate(mosaics.items()):
        ax = fig.add_subplot(1, len(mosaics), i + 1)
        ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- inference curves


def plot_inference_curves(
    trace: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    convergence_step: int | None = None,
) -> Path:
    """Plot per-inference-step curves (t = 1..T, log x axis) in one row of panels.

    Recognised keys (others are ignored): ``"r2"`` and ``"r2_rates"`` share an R² panel whose y
    range is [max(min R², -1), 1]; ``"zeros"`` (fraction of zeros of f(z), 0..1); ``"du_norm"``
    (mean ‖state_t − state_{t−1}‖, log y; non-positive values are dropped); ``"nelbo"``. A dashed vertical
    line marks ``convergence_step`` when given. All recognised arrays must be 1-D of equal length.
    """
    curves = _inference_curves(trace, convergence_step)
    n_steps = next(iter(curves.values())).size
    t = np.arange(1, n_steps + 1)
    panels: list[str] = []
    if "r2" in curves or "r2_rates" in curves:
        panels.append("r2")
    panels += [key for key in ("zeros", "du_norm", "nelbo") if key in curves]

    fig = new_figure(3.8 * len(panels) + 0.4, 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        _INFERENCE_PANELS[panel](ax, t, curves)
        ax.set_xscale("log")
        ax.set_xlim(1, max(n_steps, 2))
        ax.set_xlabel("inference step t")
        ax.grid(True, which="major", alpha=0.3)
        if convergence_step is not None:
            ax.axvline(int(convergence_step), color="k", linestyle="--", linewidth=1.0,
                       label=f"convergence (t={int(convergence_step)})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle(title if title is not None else f"Inference over T={n_steps} steps")
    return save_figure(fig, path)


def _inference_curves(trace: Any, convergence_step: int | None) -> dict[str, np.ndarray]:
    """The recognised curves of ``trace`` as float arrays, checked: at least one, each non-empty and 1-D, all
    of one length T; ``convergence_step`` (if given) in 1..T."""
    if not isinstance(trace, Mapping):
        raise DataError(f"trace must be a mapping of name -> 1-D array, got {type(trace).__name__}")
    curves = {key: float_array(trace[key], f"trace[{key!r}]") for key in _INFERENCE_KEYS if key in trace}
    if not curves:
        raise DataError(f"trace has none of the keys {', '.join(_INFERENCE_KEYS)}; got {sorted(trace)}")
    for key, arr in curves.items():
        if arr.ndim != 1 or arr.size == 0:
            raise DataError(f"trace[{key!r}] must be a non-empty 1-D array, got shape {arr.shape}")
    lengths = {key: arr.size for key, arr in curves.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"trace arrays have different lengths: {lengths}")
    n_steps = next(iter(lengths.values()))
    if convergence_step is not None and not 1 <= int(convergence_step) <= n_steps:
        raise DataError(f"convergence_step must be in 1..{n_steps}, got {convergence_step}")
    return curves


def _r2_panel(ax, t: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """R² from samples and from the mean code; y from max(min R², -1) to 1."""
    lows = []
    series = (("r2", "from samples (spikes)", "C0"), ("r2_rates", "from mean code (rates)", "C1"))
    for key, label, colour in series:
        if key in curves:
            ax.plot(t, curves[key], color=colour, label=label)
            low = _finite_min(curves[key])
            if low is not None:
                lows.append(low)
    low = max(min(lows), -1.0) if lows else -1.0
    ax.set_ylim(low if low < 1.0 else 0.0, 1.0)
    ax.set_ylabel("R² (dimensionless)")
    ax.set_title("reconstruction R²")


def _zeros_panel(ax, t: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    ax.plot(t, curves["zeros"], color="C2")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("fraction of zeros of f(z) (spike counts)")
    ax.set_title("sparsity")


def _du_norm_panel(ax, t: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """State change per step on a log axis (non-positive values dropped)."""
    du = np.where(curves["du_norm"] > 0, curves["du_norm"], np.nan)
    ax.plot(t, du, color="C3")
    if np.any(np.isfinite(du)):
        ax.set_yscale("log")
    ax.set_ylabel(r"$\|s_t - s_{t-1}\|$ (state units; u for iP-VAE)")
    ax.set_title("state change per step (mean over inputs)")


def _nelbo_panel(ax, t: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    ax.plot(t, curves["nelbo"], color="C4")
    ax.set_ylabel("NELBO (nats)")
    ax.set_title("negative ELBO")


_INFERENCE_PANELS = {"r2": _r2_panel, "zeros": _zeros_panel, "du_norm": _du_norm_panel, "nelbo": _nelbo_panel}


# --------------------------------------------------------------------------- reconstructions


def plot_reconstructions(
    x: Any,
    reconstructions: Mapping[str, Any],
    patch_shape: tuple[int, int],
    path: str | os.PathLike[str],
    *,
    n: int = 12,
) -> Path:
    """Show ``n`` input patches (top row) above each reconstruction (one row per label).

    Every column uses one grey scale, symmetric about zero at ± the input patch's max |value|, so a
    reconstruction that is too faint or too strong is visible as such (values beyond are clipped).
    Non-finite reconstruction pixels are drawn in the separator colour rather than rejected.
    """
    xa = float_array(x, "x")
    ph, pw = _check_patch_shape(patch_shape)
    channels = _channels(patch_shape)
    if xa.ndim != 2 or xa.shape[0] == 0:
        raise DataError(f"x must be a non-empty 2-D (N, D) array, got shape {xa.shape}")
    if xa.shape[1] != ph * pw * channels:
        raise DataError(f"x has D={xa.shape[1]} columns but patch_shape {tuple(patch_shape)} needs "
                        f"D={ph * pw * channels}")
    if not np.all(np.isfinite(xa)):
        raise DataError("x contains non-finite values")
    if not isinstance(reconstructions, Mapping):
        raise DataError(f"reconstructions must be a mapping label -> (N, D) array, "
                        f"got {type(reconstructions).__name__}")
    recs = {str(label): float_array(r, f"reconstructions[{label!r}]") for label, r in reconstructions.items()}
    for label, r in recs.items():
        if r.shape != xa.shape:
            raise DataError(f"reconstructions[{label!r}] has shape {r.shape}, expected {xa.shape} like x")
    if int(n) < 1:
        raise DataError(f"n must be at least 1, got {n}")
    ncols = min(int(n), xa.shape[0])
    rows = [("input", xa)] + list(recs.items())

    cell = 1.0
    fig = new_figure(max(4.0, cell * ncols + 1.2), cell * len(rows) + 0.8)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    cmap = colormaps["gray"].with_extremes(bad=_SEPARATOR_COLOUR)
    for j in range(ncols):
        vmax = float(np.max(np.abs(xa[j])))
        vmax = vmax if vmax > 0 else 1.0
        for i, (label, arr) in enumerate(rows):
            ax = axes[i, j]
            if channels == 3:
                ax.imshow(_as_image(np.nan_to_num(arr[j]), ph, pw, 3, vmax), interpolation="nearest")
            else:
                ax.imshow(arr[j].reshape(ph, pw), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if i == len(rows) - 1:
                ax.set_xlabel(f"#{j}")
    fig.suptitle(
        f"Reconstructions of {ncols} of {xa.shape[0]} patches ({ph}×{pw} px); "
        "grey scale per column ±max|input| (input units)"
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training curves


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) for ``key``, skipping records where it is missing, non-numeric or non-finite."""
    steps, values = [], []
    for rec in records:
        v = rec.get(key)
        if v is None or isinstance(v, bool | str):
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            steps.append(float(rec["step"]))
            values.append(v)
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(values)[order]


def plot_training_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot training-log rows: loss, nll and kl against step (left), β and temperature on twin axes (right).

    ``records`` are JSONL rows, each with a numeric ``"step"``; missing, non-numeric and non-finite
    values are skipped point by point.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence) or len(records) == 0:
        raise DataError("records must be a non-empty list of training-log rows")
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise DataError(f"records[{i}] is a {type(rec).__name__}, expected a dict")
        step = rec.get("step")
        try:
            ok = step is not None and not isinstance(step, bool | str) and math.isfinite(float(step))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"records[{i}] has no finite numeric 'step' (got {step!r})")

    series = {key: _series(records, key) for key in ("loss", "nll", "kl", "beta", "temperature")}
    if not any(s[0].size for s in series.values()):
        raise DataError("records contain no finite loss, nll, kl, beta or temperature values")

    fig = new_figure(11.0, 3.8)
    ax_loss, ax_beta = fig.subplots(1, 2, squeeze=True)
    for key, style in (("loss", "-"), ("nll", "--"), ("kl", ":")):
        s, v = series[key]
        if s.size:
            ax_loss.plot(s, v, linestyle=style, marker="." if s.size == 1 else None, label=key)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize="small")
        plotted = np.concatenate([series[key][1] for key in ("loss", "nll", "kl")])
        if plotted.min() > 0 and plotted.max() / plotted.min() > 100:
            ax_loss.set_yscale("log")  # early transients would otherwise flatten the rest of the run
    else:
        ax_loss.text(0.5, 0.5, "no loss / nll / kl logged", ha="center", va="center",
                     transform=ax_loss.transAxes)
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("loss (nats)")
    ax_loss.set_title("objective")
    ax_loss.grid(True, alpha=0.3)

    ax_temp = ax_beta.twinx()
    handles = []
    s, v = series["beta"]
    if s.size:
        handles += ax_beta.plot(s, v, color="C0", marker="." if s.size == 1 else None, label="β")
    s, v = series["temperature"]
    if s.size:
        handles += ax_temp.plot(s, v, color="C3", linestyle="--", marker="." if s.size == 1 else None,
                                label="temperature")
    if handles:
        ax_beta.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize="small")
    else:
        ax_beta.text(0.5, 0.5, "no β / temperature logged", ha="center", va="center",
                     transform=ax_beta.transAxes)
    ax_beta.set_xlabel("training step")
    ax_beta.set_ylabel("β, KL weight (dimensionless)", color="C0")
    ax_temp.set_ylabel("temperature (dimensionless)", color="C3")
    ax_beta.set_title("schedules")
    ax_beta.grid(True, alpha=0.3)
    fig.suptitle(f"Training log ({len(records)} records)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- several models, one input


def plot_convergence(traces: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, t_train: int,
                     steps: int = 1000) -> Path:
    """Per-step curves of several models side by side: R² of the mean code (clipped to [−0.2, 1]), fraction of
    zeros and ‖Δ state‖ (log y) against the inference step (log x), one line per model.

    traces: model name → trace with 1-D ``r2_rates``, ``zeros`` and ``du_norm`` (one value per step). A dashed
    line marks ``t_train`` (the steps unrolled in training); ``steps`` is named in the title.
    """
    fig = new_figure(12.0, 3.6)
    axes = fig.subplots(1, 3)
    for name, trace in traces.items():
        t = np.arange(1, len(trace["r2_rates"]) + 1)
        axes[0].plot(t, np.clip(trace["r2_rates"], -0.2, 1.0), label=name)
        axes[1].plot(t, trace["zeros"], label=name)
        axes[2].plot(t, np.maximum(trace["du_norm"], 1e-8), label=name)
    for ax, label in zip(axes, ("R² (mean code)", "fraction of zeros", "‖Δ state‖"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("inference step")
        ax.set_ylabel(label)
        ax.axvline(t_train, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Convergence over {steps} inference steps (dashed: T_train = {t_train})")
    return save_figure(fig, path)


def plot_spike_raster(spikes: Any, path: str | os.PathLike[str], *, n_neurons: int = 64,
                      title: str = "spike raster for one input (marker size = spike count, capped at 5)") -> Path:
    """A raster of the ``n_neurons`` most active neurons: ``spikes`` (steps, K) counts after each inference
    step for one input; a mark at (step, neuron) for every non-zero count, its size growing with the count."""
    counts_all = float_array(spikes, "spikes")
    if counts_all.ndim != 2:
        raise DataError(f"spikes must be a 2-D (steps, K) array, got shape {counts_all.shape}")
    order = np.argsort(-counts_all.sum(0))[:n_neurons]
    chosen = counts_all[:, order]
    fig = new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    t, k = np.nonzero(chosen.T > 0)[::-1]
    ax.scatter(t + 1, k, s=2 + 3 * np.minimum(chosen[t, k], 5), c="k", marker="|")
    ax.set_xlabel("inference step")
    ax.set_ylabel(f"neuron (the {len(order)} most active)")
    ax.set_title(title)
    return save_figure(fig, path)
