"""Downstream classification from latent codes (DESIGN.md §2.5): a linear probe on the mean code over inference steps.

The probe follows the paper's protocol (the authors' ``analysis/linear.py``, ``clf_score``): scikit-learn's
:class:`~sklearn.linear_model.LogisticRegression` with its defaults (lbfgs, L2 penalty, C = 1, at most 100
iterations), fit on the unscaled mean code at step t (rates e^u for Poisson latents, f(μ) for Gaussian ones) of
the training digits — the authors use every training digit (``fond analyze classify`` defaults to all 50 000
of ours) — and scored on the test digits. The 100-iteration cap is part of that protocol: lbfgs often stops
before it converges on unscaled rates, so sklearn's ``ConvergenceWarning`` is silenced inside that probe.

``standardize=True`` gives fond's earlier probe instead: a :class:`~sklearn.preprocessing.StandardScaler` (fit
on the training features only) in front, and 1000 iterations. Rates span orders of magnitude between neurons
and inference steps, and scaled features make the probe blind to a per-neuron rescaling (its convergence
warnings are shown); it is not the paper's.

Every number comes out JSON-ready (:meth:`ClassificationResult.to_dict`); figures are written atomically.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fond.errors import ConfigError, DataError
from fond.plots import new_figure, save_figure
from fond.validate import integer, positive_int

__all__ = [
    "ClassificationResult",
    "probe_accuracy",
    "features_over_steps",
    "confidence_interval",
    "chance_level",
    "record_schedule",
    "classification_over_steps",
    "plot_classification",
]

CONFIDENCE_LEVEL = 0.95


# --------------------------------------------------------------------------- validation helpers


def _features_array(features: Any, name: str) -> np.ndarray:
    """``features`` as a finite 2-D float array (N, K)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    try:
        array = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a numeric array, got {type(features).__name__}") from exc
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{name} must have shape (N ≥ 1, K ≥ 1), got {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or Inf ({int((~np.isfinite(array)).sum())} entries)")
    return array


def _labels_array(labels: Any, name: str, n: int) -> np.ndarray:
    """``labels`` as a 1-D array of length ``n`` (integers or strings; float labels must be finite)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DataError(f"{name} must be 1-D (N,), got shape {array.shape}")
    if array.shape[0] != n:
        raise DataError(f"{name} has {array.shape[0]} entries but the features have {n} rows")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or Inf")
    if array.dtype.kind not in "iufUSb":
        raise DataError(f"{name} must hold integers or strings, got dtype {array.dtype}")
    return array


def _train_and_test(convert: Callable[[Any, str], Any], values: tuple[Any, Any, Any, Any],
                    names: tuple[str, str, str, str]) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(train inputs, test inputs, train labels, test labels) checked: each input set through ``convert``
    (N, K) with the same K, one label per row, at least two classes in training. names: of the four values."""
    train_name, test_name, train_labels_name, test_labels_name = names
    train, test = convert(values[0], train_name), convert(values[1], test_name)
    if train.shape[1] != test.shape[1]:
        raise DataError(f"{train_name} has {train.shape[1]} columns but {test_name} has {test.shape[1]}")
    y_train = _labels_array(values[2], train_labels_name, train.shape[0])
    y_test = _labels_array(values[3], test_labels_name, test.shape[0])
    n_classes = np.unique(y_train).size
    if n_classes < 2:
        raise DataError(f"{train_labels_name} must contain at least 2 classes, got {n_classes}")
    return train, test, y_train, y_test


def _as_input_tensor(x: Any, name: str) -> torch.Tensor:
    """Inputs as a finite float tensor (N, D)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{name} must have shape (N ≥ 1, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{name} contains NaN or Inf")
    return x


# --------------------------------------------------------------------------- the probe


def probe_accuracy(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, *,
                   seed: int = 0, standardize: bool = False, max_iter: int | None = None) -> float:
    """Test accuracy in [0, 1] of a logistic-regression probe fit on the training features.

    train_features: (N_train, K), test_features: (N_test, K), finite; labels: (N,) integers or strings, the
    training labels with at least two classes. Default probe: the paper's, LogisticRegression(lbfgs, C = 1,
    100 iterations) on the unscaled features; ``standardize=True``: StandardScaler → the same with 1000
    iterations (see the module docstring). ``max_iter`` overrides the iteration cap. ``seed`` is the
    estimator's ``random_state`` (lbfgs itself is deterministic). Test classes unseen in training count as errors.
    """
    max_iter = positive_int(max_iter if max_iter is not None else 1000 if standardize else 100, "max_iter")
    train, test, y_train, y_test = _train_and_test(
        _features_array, (train_features, test_features, train_labels, test_labels),
        ("train_features", "test_features", "train_labels", "test_labels"))
    logistic = LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter, random_state=int(seed))
    probe = Pipeline([("scale", StandardScaler()), ("logistic", logistic)]) if standardize else logistic
    with warnings.catch_warnings():
        if not standardize:
            warnings.simplefilter("ignore", ConvergenceWarning)  # the paper's probe stops at its cap as well
        probe.fit(train, y_train)
    return float(np.mean(probe.predict(test) == y_test))


# --------------------------------------------------------------------------- features from a model


def _record_steps(record_steps: Iterable[int], steps: int) -> list[int]:
    try:
        values = list(record_steps)
    except TypeError as exc:
        raise ConfigError(f"record_steps must be an iterable of steps, got {record_steps!r}") from exc
    if not values:
        raise ConfigError("record_steps is empty")
    checked = {integer(value, "each of record_steps", minimum=1) for value in values}
    if max(checked) > steps:
        raise ConfigError(f"record_steps must be integers in [1, {steps}], got {max(checked)}")
    return sorted(checked)


def features_over_steps(model, x: Any, steps: int, record_steps: Iterable[int], *, seed: int = 0,
                        chunk_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The mean code after each recorded inference step: (steps (S,) int64, features (S, N, K) float32).

    x: (N, D) inputs. steps: how many inference steps to run. record_steps: 1-based steps to keep (sorted and
    de-duplicated; each in [1, steps]). The set is rolled through ``model.infer(chunk, steps, seed=seed + i,
    trace=False, record=...)`` in chunks of ``chunk_size`` rows, chunk i with seed ``seed + i`` (the convention
    of :func:`fond.evaluate.evaluate`, so the last recorded step reproduces its ``features``), and
    ``result.history["rates"]`` (S, B, K) of the chunks is concatenated along the sample axis.
    Memory: S · N · K · 4 bytes.
    """
    steps = positive_int(steps, "steps")
    chunk_size = positive_int(chunk_size, "chunk_size")
    wanted = _record_steps(record_steps, steps)
    x = _as_input_tensor(x, "x")
    expected_steps = np.asarray(wanted, dtype=np.int64)
    chunks: list[np.ndarray] = []
    for i, begin in enumerate(range(0, x.shape[0], chunk_size)):
        chunk = x[begin:begin + chunk_size]
        result = model.infer(chunk, steps, seed=int(seed) + i, trace=False, record=wanted)
        history = getattr(result, "history", None)
        if not history or "rates" not in history or "steps" not in history:
            raise DataError(f"{type(model).__name__}.infer returned no history of rates for record={wanted}")
        got_steps = np.asarray(history["steps"], dtype=np.int64)
        if not np.array_equal(got_steps, expected_steps):
            raise DataError(f"model recorded steps {got_steps.tolist()}, expected {wanted}")
        rates = history["rates"]
        rates = rates.detach().cpu().numpy() if isinstance(rates, torch.Tensor) else np.asarray(rates)
        if rates.ndim != 3 or rates.shape[:2] != (len(wanted), chunk.shape[0]):
            raise DataError(f"history rates must have shape (S={len(wanted)}, B={chunk.shape[0]}, K), "
                            f"got {rates.shape}")
        chunks.append(rates.astype(np.float32, copy=False))
    return expected_steps, np.concatenate(chunks, axis=1)


# --------------------------------------------------------------------------- accuracy over steps


def confidence_interval(accuracy: Any, level: float = CONFIDENCE_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and two-sided Student-t confidence interval over seeds: (n_seeds, S) → (mean, low, high), each (S,).

    half-width = t_{(1+level)/2, n−1} · s / √n with s the sample standard deviation (ddof = 1). With a single
    seed there is no spread to estimate: the interval is reported as [mean, mean] (never NaN).
    """
    try:
        acc = np.asarray(accuracy, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"accuracy must be a numeric array (n_seeds, S), got {type(accuracy).__name__}") from None
    if acc.ndim == 1:
        acc = acc[:, None]
    if acc.ndim != 2 or acc.shape[0] == 0 or acc.shape[1] == 0:
        raise DataError(f"accuracy must have shape (n_seeds ≥ 1, S ≥ 1), got {acc.shape}")
    if not np.isfinite(acc).all():
        raise DataError("accuracy contains NaN or Inf")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must lie in (0, 1), got {level!r}")
    mean = acc.mean(axis=0)
    n = acc.shape[0]
    if n == 1:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf(0.5 + level / 2.0, df=n - 1) * acc.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def record_schedule(steps: int, every: int) -> list[int]:
    """Steps at which the code is read: 1, every, 2·every, …, and always ``steps`` itself (sorted, unique)."""
    steps = positive_int(steps, "steps")
    every = positive_int(every, "every")
    return sorted({1, steps, *range(every, steps + 1, every)})


@dataclass
class ClassificationResult:
    """Probe accuracy over inference steps and seeds.

    steps: (S,) 1-based inference steps. seeds: the seeds used (inference seed and probe seed alike).
    accuracy: (n_seeds, S) test accuracy in [0, 1]. mean, ci_low, ci_high: (S,) mean over seeds and its
    ``level`` Student-t interval (equal to the mean when n_seeds == 1). chance: the largest class frequency in
    the test labels (accuracy of always guessing the majority class). final_accuracy: the mean at the last step.
    """

    steps: np.ndarray
    seeds: tuple[int, ...]
    accuracy: np.ndarray
    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    chance: float
    level: float = CONFIDENCE_LEVEL

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def final_accuracy(self) -> float:
        return float(self.mean[-1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain ints, floats and lists."""
        return {
            "steps": [int(s) for s in self.steps],
            "seeds": [int(s) for s in self.seeds],
            "n_seeds": self.n_seeds,
            "accuracy": [[float(a) for a in row] for row in self.accuracy],
            "mean": [float(a) for a in self.mean],
            "ci_low": [float(a) for a in self.ci_low],
            "ci_high": [float(a) for a in self.ci_high],
            "ci_level": float(self.level),
            "ci_method": "student-t over seeds" if self.n_seeds > 1 else "none (one seed: interval = mean)",
            "chance": float(self.chance),
            "final_accuracy": self.final_accuracy,
            "final_ci": [float(self.ci_low[-1]), float(self.ci_high[-1])],
        }


def chance_level(labels: Any) -> float:
    """Largest class frequency of ``labels`` (N,): the accuracy of always predicting the majority class."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    _, counts = np.unique(array, return_counts=True)
    return float(counts.max() / array.shape[0])


def classification_over_steps(model, train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, steps: int = 1000,
                              every: int = 50, seeds: Sequence[int] = (0,),
                              chunk_size: int = 1000) -> ClassificationResult:
    """Probe accuracy on the mean code read at steps 1, every, 2·every, …, ``steps`` for each seed.

    train_x: (N_train, D), test_x: (N_test, D) inputs; train_y, test_y: their labels. For each seed the model
    infers both sets with that seed (:func:`features_over_steps`) and a probe (:func:`probe_accuracy`, same seed)
    is fit at every recorded step. Cost: 2 · n_seeds rollouts of ``steps`` steps plus n_seeds · S probe fits.
    """
    schedule = record_schedule(steps, every)
    if isinstance(seeds, numbers.Integral):
        seeds = (seeds,)
    seeds = tuple(integer(s, "each of seeds") for s in seeds)
    if not seeds:
        raise ConfigError("seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    train_x, test_x, y_train, y_test = _train_and_test(
        _as_input_tensor, (train_x, test_x, train_y, test_y), ("train_x", "test_x", "train_y", "test_y"))

    accuracy = np.empty((len(seeds), len(schedule)))
    recorded = np.asarray(schedule, dtype=np.int64)
    for row, seed in enumerate(seeds):
        recorded, train_features = features_over_steps(model, train_x, steps, schedule, seed=seed,
                                                       chunk_size=chunk_size)
        _, test_features = features_over_steps(model, test_x, steps, schedule, seed=seed, chunk_size=chunk_size)
        for col in range(len(schedule)):
            accuracy[row, col] = probe_accuracy(train_features[col], y_train, test_features[col], y_test,
                                                seed=int(seed))
    mean, low, high = confidence_interval(accuracy)
    return ClassificationResult(steps=recorded, seeds=tuple(int(s) for s in seeds), accuracy=accuracy, mean=mean,
                                ci_low=low, ci_high=high, chance=chance_level(y_test))


# --------------------------------------------------------------------------- figure


def plot_classification(results: Mapping[str, ClassificationResult], path: str | os.PathLike[str]) -> Path:
    """Accuracy against inference step (log x axis), one line per model with its CI band, chance dashed.

    results: model name → :class:`ClassificationResult`. Writes a PNG atomically and returns its path.
    """
    if not isinstance(results, Mapping) or not results:
        raise DataError("results must be a non-empty mapping of model name → ClassificationResult")
    for name, result in results.items():
        if not isinstance(result, ClassificationResult):
            raise DataError(f"results[{name!r}] must be a ClassificationResult, got {type(result).__name__}")
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    chances: list[float] = []
    for i, (name, result) in enumerate(results.items()):
        colour = colours(i % 10)
        steps = np.asarray(result.steps, dtype=float)
        ax.plot(steps, 100 * result.mean, color=colour, marker="o", markersize=3,
                label=f"{name} ({100 * result.final_accuracy:.1f} %, n={result.n_seeds})")
        if result.n_seeds > 1:
            ax.fill_between(steps, 100 * result.ci_low, 100 * result.ci_high, color=colour, alpha=0.2, linewidth=0)
        if not any(math.isclose(result.chance, c) for c in chances):
            chances.append(result.chance)
    for j, chance in enumerate(chances):
        ax.axhline(100 * chance, color="0.3", linestyle="--", linewidth=1, label="chance" if j == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("inference step t")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"linear probe on the mean code ({int(100 * CONFIDENCE_LEVEL)} % CI over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
