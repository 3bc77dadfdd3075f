"""R² by input contrast: how much of a model's mean R² its faintest inputs cost (``fond analyze contrast``).

The paper's R² is a mean over inputs of each input's own 1 − ‖x − x̂‖² / ‖x − x̄‖² (x̄ the input's mean over
its pixels). An input's contrast is its ‖x − x̄‖²: a code whose sample noise does not shrink with the input (a
Gaussian posterior's σ·ε) loses most R² on the faintest inputs, so the mean depends on how the data spread
their contrast (whitened photos ~9× between the lowest and highest quartile, the authors' contrast-normalised
patches ~3×). This module bins held-out inputs by quartile of contrast and reports the R² of the sample and of
the mean code in each bin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fond.errors import DataError

__all__ = ["ContrastBin", "contrast_bins", "r2_by_contrast", "plot_contrast"]


@dataclass(frozen=True)
class ContrastBin:
    """One bin of inputs by contrast: its contrast range [low, high) (‖x − x̄‖², input units²), the number of
    inputs, and the mean over them of the sample's and the mean code's R²."""

    low: float
    high: float
    n: int
    r2: float
    r2_rates: float


def contrast_bins(x: np.ndarray, r2: np.ndarray, r2_rates: np.ndarray, bins: int = 4) -> list[ContrastBin]:
    """The inputs x (N, D) split at the quantiles of their contrast ‖x − x̄‖² into ``bins`` bins of (nearly) equal
    size, each with the mean of the per-input R² ``r2`` and ``r2_rates`` (N,) over its inputs."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or len(x) < bins or bins < 1:
        raise DataError(f"contrast bins need at least {bins} inputs of shape (N, D), got {x.shape}")
    contrast = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    if not np.all(contrast > 0):
        raise DataError("every input needs some contrast (an input with all pixels equal has no R²)")
    order = np.argsort(contrast, kind="stable")
    groups = np.array_split(order, bins)
    edges = [float(contrast[g[0]]) for g in groups] + [float("inf")]
    return [ContrastBin(edges[i], edges[i + 1], len(g), float(np.mean(r2[g])), float(np.mean(r2_rates[g])))
            for i, g in enumerate(groups)]


def r2_by_contrast(model, x: np.ndarray | torch.Tensor, steps: int, *, seed: int = 0, chunk_size: int = 1000,
                   bins: int = 4) -> dict[str, Any]:
    """Roll ``model.infer`` over x (N, D) for ``steps`` steps in chunks as ``fond.evaluate.evaluate`` does (chunk
    i seeded ``seed + i``, so the means over all inputs are its ``r2`` and ``r2_rates``) and bin the final
    step's per-input R² by contrast: {"bins": [ContrastBin as dict], "r2", "r2_rates", "spread"} with spread the
    highest bin's lowest contrast over the lowest bin's highest (how far apart the quartiles lie)."""
    from fond.evaluate import model_device
    from fond.metrics import r2_per_sample
    from fond.models.common import numeric_tensor

    x = numeric_tensor(x, "contrast data")
    device = model_device(model)
    sample, mean = [], []
    for i, begin in enumerate(range(0, x.shape[0], chunk_size)):
        res = model.infer(x[begin:begin + chunk_size].to(device), steps, seed=seed + i, trace=False)
        sample.append(res.reconstruction.double().cpu())
        mean.append(res.reconstruction_from_rates.double().cpu())
    xs = x.double().cpu()
    r2, r2_rates = (r2_per_sample(xs, torch.cat(parts)).numpy() for parts in (sample, mean))
    found = contrast_bins(xs.numpy(), r2, r2_rates, bins)
    return {"bins": [asdict(b) for b in found], "r2": float(r2.mean()), "r2_rates": float(r2_rates.mean()),
            "spread": found[-1].low / found[0].high if len(found) > 1 else 1.0, "steps": steps,
            "samples": int(x.shape[0])}


def plot_contrast(results: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """R² of the sample (solid) and the mean code (dashed) per contrast bin, one colour per run."""
    from fond.plots import new_figure, save_figure

    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    for i, (name, result) in enumerate(results.items()):
        colour = f"C{i % 10}"
        position = np.arange(1, len(result["bins"]) + 1)
        ax.plot(position, [b["r2"] for b in result["bins"]], "o-", color=colour, label=f"{name}: sample")
        ax.plot(position, [b["r2_rates"] for b in result["bins"]], "s--", color=colour, label=f"{name}: mean code")
    bins = max(len(result["bins"]) for result in results.values()) if results else 0
    ax.set_xticks(np.arange(1, bins + 1))
    ax.set_xlabel("bin of held-out inputs by contrast ‖x − x̄‖², faintest (1) to strongest")
    ax.set_ylabel("mean R² of the bin's inputs")
    ax.set_title("R² by input contrast (held-out inputs, final step)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
