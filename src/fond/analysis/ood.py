"""Out-of-distribution generalisation: models trained on MNIST, evaluated on inputs they never saw.

The test sets (all 28×28, pixels in [0, 1] like MNIST, flattened row-major to 784):
``mnist`` (in distribution), ``rotated-<deg>`` (static rotations), ``shifted`` (digits translated by up
to ±6 pixels), ``digits8x8`` (scikit-learn's 8×8 digits, upscaled into MNIST's 20×20 box with a 4-pixel
margin), ``natural`` (grey patches of the bundled photos, rescaled to [0, 1]) and ``rotating`` (online
input: the digit turns by ``degrees_per_step`` at every inference step, so the posterior must track it).
Each set is rolled out with ``fond.evaluate.evaluate`` and its reconstruction quality is reported
against the inference step (R² from the sample and from the mean code). The rotations and shifts are built by
:mod:`fond.analysis.stimuli`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fond.analysis.stimuli import DIGIT_SIDE, digit_images, rotate_images, rotating_frames, shift_images
from fond.errors import DataError
from fond.plots import new_figure, save_figure

__all__ = ["OOD_SETS", "mnist_test_inputs", "ood_sets", "digits_8x8", "natural_28", "OODResult", "ood_evaluation",
           "plot_ood", "ood_table"]

OOD_SETS: tuple[str, ...] = ("mnist", "rotated-45", "rotated-90", "shifted", "digits8x8", "natural", "rotating")


def digits_8x8(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8×8 digits upscaled to 20×20 and centred in 28×28 (MNIST's layout), in [0, 1]:
    (images (n, 784), labels (n,))."""
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:n]
    small = digits.images[order] / 16.0
    out = np.zeros((len(order), DIGIT_SIDE, DIGIT_SIDE), dtype=np.float32)
    for i, image in enumerate(small):
        out[i, 4:24, 4:24] = resize(image, (20, 20), order=1, anti_aliasing=False)
    return np.clip(out, 0.0, 1.0).reshape(len(order), -1), digits.target[order]


def natural_28(n: int, seed: int = 0) -> np.ndarray:
    """``n`` 28×28 grey patches of the bundled photos (not whitened), each rescaled to [0, 1]: (n, 784)."""
    from fond.data.natural import BUNDLED_PHOTOS, extract_patches, load_photo

    photos = [load_photo(name) for name in BUNDLED_PHOTOS]
    patches = extract_patches(photos, DIGIT_SIDE, n, seed=seed, min_std=0.02)
    low, high = patches.min(1, keepdims=True), patches.max(1, keepdims=True)
    return ((patches - low) / np.maximum(high - low, 1e-6)).astype(np.float32)


def ood_sets(images: np.ndarray, *, n: int | None = None, seed: int = 0, steps: int = 1000,
             degrees_per_step: float = 1.0, sets: Sequence[str] = OOD_SETS,
             centre: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The test sets named in ``sets`` built from held-out raw MNIST ``images`` (N, 784) in [0, 1].

    Static sets are (n, 784); ``rotating`` is (steps, min(n, 100), 784) (an online sequence; capped at
    100 digits to bound memory: 1000 steps × 100 × 784 floats = 314 MB). centre: (784,) subtracted from
    every set after it is built (the mean training digit, for models trained on centred MNIST).
    """
    images = digit_images(images)
    n = len(images) if n is None else min(int(n), len(images))
    images = images[:n]
    out: dict[str, np.ndarray] = {}
    for name in sets:
        if name == "mnist":
            out[name] = images.reshape(n, -1)
        elif name.startswith("rotated-"):
            try:
                degrees = float(name.split("-", 1)[1])
            except ValueError:
                raise DataError(f"unknown OOD set {name!r}: use rotated-<degrees>, e.g. rotated-45") from None
            out[name] = rotate_images(images, degrees)
        elif name == "shifted":
            out[name] = shift_images(images, seed=seed)
        elif name == "digits8x8":
            out[name] = digits_8x8(n, seed=seed)[0]
        elif name == "natural":
            out[name] = natural_28(n, seed=seed)
        elif name == "rotating":
            out[name] = rotating_frames(images[:100], steps, degrees_per_step)
        else:
            raise DataError(f"unknown OOD set {name!r}; expected one of {OOD_SETS} (rotated-<deg> for any angle)")
    if centre is not None:
        centre = np.asarray(centre, dtype=np.float32).reshape(-1)
        if centre.shape != (DIGIT_SIDE * DIGIT_SIDE,):
            raise DataError(f"centre must have 784 values, got {centre.shape}")
        out = {name: (x - centre).astype(np.float32) for name, x in out.items()}
    return out


def mnist_test_inputs(spec: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """For a model trained on data ``spec`` (mnist, mnist-raw, ...): the first ``n`` raw test digits (n, 784)
    in [0, 1] and the centre to subtract from anything built from them (None for raw-trained models)."""
    from fond.data.mnist import load_mnist, mnist_mean

    raw = load_mnist()["test"][0][:n]
    return raw, (None if "raw" in str(spec) else mnist_mean())


@dataclass
class OODResult:
    """Per test set: the final R² (sample, mean code), zeros, and R² against the inference step."""

    model: str
    steps: int
    final: dict[str, dict[str, float]]
    curves: dict[str, dict[str, np.ndarray]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "steps": self.steps, "final": self.final}


def ood_evaluation(model, sets: Mapping[str, np.ndarray], steps: int = 1000, *, seed: int = 0,
                   chunk_size: int = 500) -> OODResult:
    """Evaluate ``model`` on every set (static (N, D) or online (steps, N, D)) for ``steps`` steps."""
    from fond.evaluate import evaluate

    final, curves = {}, {}
    for name, x in sets.items():
        x = np.asarray(x)
        if x.ndim == 3:
            if x.shape[0] != steps:
                raise DataError(f"online set {name!r} has {x.shape[0]} frames for {steps} steps")
            res = model.infer(torch.as_tensor(x), steps, seed=seed, trace=True)
            trace = res.trace
        else:
            trace = evaluate(model, x, steps, seed=seed, chunk_size=chunk_size).trace
        final[name] = {"r2": float(trace["r2"][-1]), "r2_rates": float(trace["r2_rates"][-1]),
                       "zeros": float(trace["zeros"][-1]), "r2_mean_over_steps": float(np.mean(trace["r2_rates"]))}
        curves[name] = {k: np.asarray(trace[k]) for k in ("r2", "r2_rates", "zeros")}
    return OODResult(model=str(model.config.model), steps=steps, final=final, curves=curves)


def _sets_of(per_model) -> list[str]:
    """The union of the set names of ``per_model`` (one mapping keyed by set per model), in ``OOD_SETS`` order."""
    return sorted({name for sets in per_model for name in sets}, key=lambda s: (OOD_SETS + (s,)).index(s))


def ood_table(results: Mapping[str, OODResult], key: str = "r2_rates") -> dict[str, Any]:
    """{set: {model: value}} and, per set, the model ranked first; ``key`` one of the ``final`` entries."""
    sets = _sets_of(result.final for result in results.values())
    table = {s: {m: r.final[s][key] for m, r in results.items() if s in r.final} for s in sets}
    best = {s: max(row, key=row.get) for s, row in table.items() if row}
    return {"metric": key, "table": table, "best": best}


def plot_ood(results: Mapping[str, OODResult], path: str | os.PathLike[str], key: str = "r2_rates") -> Path:
    """One panel per test set: R² (``key``) against the inference step (log axis), one line per model."""
    # the union of the models' sets: a model that cannot take online input (a point estimate) has no "rotating"
    sets = _sets_of(result.curves for result in results.values())
    if not sets:
        raise DataError("no OOD results to plot")
    ncols = min(4, len(sets))
    nrows = -(-len(sets) // ncols)
    fig = new_figure(3.2 * ncols, 2.6 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, sets, strict=False):
        for model, res in results.items():
            if name not in res.curves:
                continue
            curve = res.curves[name][key]
            ax.plot(np.arange(1, len(curve) + 1), np.clip(curve, -1.0, 1.0), label=model)
        ax.set_xscale("log")
        ax.set_ylim(-0.1, 1.0)
        ax.set_title(name)
        ax.set_xlabel("inference step")
        ax.set_ylabel("R²" + (" (mean code)" if key == "r2_rates" else ""))
        ax.grid(alpha=0.3)
    for ax in axes[len(sets):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("Out-of-distribution reconstruction against inference step (models trained on MNIST)")
    return save_figure(fig, path)

