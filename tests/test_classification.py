"""Linear-probe classification from latent codes: probe, features over steps, CI over seeds, figure."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from fond.analysis.classification import (
    ClassificationResult,
    chance_level,
    classification_over_steps,
    confidence_interval,
    features_over_steps,
    plot_classification,
    probe_accuracy,
    record_schedule,
)
from fond.errors import ConfigError, DataError


def _blobs(rng: np.random.Generator, n: int, k: int = 5, gap: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs (linearly separable with overwhelming probability), balanced labels."""
    labels = np.arange(n) % 2
    features = rng.standard_normal((n, k))
    features[:, 0] += gap * (labels - 0.5)
    return features, labels


class FakeModel:
    """infer() returns a history whose rates encode (step, input row, latent index) so order can be checked.

    rates[s, b, k] = 1000·step_s + x[b, 0] + k/10; calls are logged for chunking/seed checks.
    """

    def __init__(self, n_latents: int = 3):
        self.n_latents = n_latents
        self.calls: list[dict] = []

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        self.calls.append({"rows": x.shape[0], "steps": steps, "seed": seed, "trace": trace, "record": list(record)})
        rec = torch.as_tensor(list(record), dtype=torch.float32)
        k = torch.arange(self.n_latents, dtype=torch.float32) / 10
        rates = 1000 * rec[:, None, None] + x[None, :, :1] + k[None, None, :]
        return SimpleNamespace(history={"steps": np.asarray(list(record)), "rates": rates, "spikes": rates.round()})


class LateCodeModel:
    """Fake model whose code carries the class only from step ``informative_from`` on (noise before).

    Inputs are (N, 2): column 0 is a class-revealing value, column 1 a row id that seeds per-row noise.
    """

    def __init__(self, informative_from: int):
        self.informative_from = informative_from

    def infer(self, x, steps, *, seed=0, trace=True, record=None):
        gen = torch.Generator().manual_seed(1234 + int(seed))
        frames = []
        for step in record:
            noise = torch.randn(x.shape[0], 4, generator=gen)
            if step >= self.informative_from:
                noise[:, 0] += 10 * x[:, 0]
            frames.append(noise)
        return SimpleNamespace(history={"steps": np.asarray(list(record)), "rates": torch.stack(frames)})


# --------------------------------------------------------------------------- probe


def test_probe_is_perfect_on_linearly_separable_data():
    """A working probe must classify well-separated blobs perfectly; anything less means a broken pipeline."""
    rng = np.random.default_rng(0)
    train_x, train_y = _blobs(rng, 200)
    test_x, test_y = _blobs(rng, 200)
    assert probe_accuracy(train_x, train_y, test_x, test_y) == 1.0


def test_probe_is_at_chance_when_labels_are_shuffled():
    """With labels shuffled away from the features the probe cannot beat chance (guards against label leakage)."""
    rng = np.random.default_rng(1)
    train_x, train_y = _blobs(rng, 400)
    test_x, test_y = _blobs(rng, 400)
    train_y, test_y = rng.permutation(train_y), rng.permutation(test_y)
    accuracy = probe_accuracy(train_x, train_y, test_x, test_y)
    chance = chance_level(test_y)
    assert chance == 0.5
    tolerance = 4 * math.sqrt(chance * (1 - chance) / len(test_y))  # 4 binomial standard errors
    assert abs(accuracy - chance) < tolerance


def test_standardized_probe_accepts_string_labels_and_is_scale_invariant():
    """Standardisation inside the pipeline makes the probe blind to a per-feature rescaling (rates span decades)."""
    rng = np.random.default_rng(2)
    train_x, train_y = _blobs(rng, 120, gap=2.0)
    test_x, test_y = _blobs(rng, 120, gap=2.0)
    names = np.array(["cat", "dog"])
    scale = np.array([1e-3, 1.0, 1e3, 10.0, 0.1])
    a = probe_accuracy(train_x, names[train_y], test_x, names[test_y], standardize=True)
    b = probe_accuracy(train_x * scale, names[train_y], test_x * scale, names[test_y], standardize=True)
    assert 0.6 < a < 1.0
    assert a == pytest.approx(b, abs=1 / 120)


def test_default_probe_is_the_papers_plain_logistic_regression():
    """The default must be the authors' probe, LogisticRegression() on unscaled rates, or our accuracy is not theirs."""
    rng = np.random.default_rng(5)
    centres = rng.choice([0.05, 1.0, 40.0], 30) * np.exp(0.3 * rng.standard_normal((4, 30)))  # rates span decades
    labels = rng.integers(0, 4, 600)
    rates = rng.poisson(centres[labels]).astype(float)
    with pytest.warns(ConvergenceWarning):  # here lbfgs stops at the cap of 100 iterations, as it may in the paper
        paper = LogisticRegression().fit(rates[:400], labels[:400])  # the authors' clf_score: sklearn's defaults
    expected = float(np.mean(paper.predict(rates[400:]) == labels[400:]))
    assert probe_accuracy(rates[:400], labels[:400], rates[400:], labels[400:]) == expected
    assert probe_accuracy(rates[:400], labels[:400], rates[400:], labels[400:], standardize=True) != expected


@pytest.mark.parametrize("case, message", [
    ("row_mismatch", "entries"),
    ("column_mismatch", "columns"),
    ("nan", "NaN"),
    ("inf_test", "NaN or Inf"),
    ("one_class", "at least 2 classes"),
    ("labels_2d", "1-D"),
])
def test_probe_rejects_bad_input(case, message):
    """Bad probe input must fail loudly with a message naming the problem, never return a silent number."""
    rng = np.random.default_rng(3)
    train_x, train_y = _blobs(rng, 20)
    test_x, test_y = _blobs(rng, 10)
    if case == "row_mismatch":
        train_y = train_y[:-1]
    elif case == "column_mismatch":
        test_x = test_x[:, :3]
    elif case == "nan":
        train_x[2, 1] = np.nan
    elif case == "inf_test":
        test_x[0, 0] = np.inf
    elif case == "one_class":
        train_y = np.zeros_like(train_y)
    elif case == "labels_2d":
        train_y = train_y[:, None]
    with pytest.raises(DataError, match=message):
        probe_accuracy(train_x, train_y, test_x, test_y)


# --------------------------------------------------------------------------- features over steps


def test_features_over_steps_keeps_recorded_rates_in_order_across_chunks():
    """Chunks must be stitched in sample order and steps in time order, each chunk with seed + chunk index."""
    model = FakeModel(n_latents=3)
    x = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 2)  # x[b, 0] = b
    steps, features = features_over_steps(model, x, 10, [9, 2, 5, 2], seed=4, chunk_size=3)
    np.testing.assert_array_equal(steps, [2, 5, 9])
    assert features.shape == (3, 7, 3)
    expected = 1000 * np.array([2, 5, 9])[:, None, None] + np.arange(7)[None, :, None] + np.arange(3) / 10
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-3)
    assert [c["rows"] for c in model.calls] == [3, 3, 1]
    assert [c["seed"] for c in model.calls] == [4, 5, 6]
    assert all(c["trace"] is False and c["record"] == [2, 5, 9] and c["steps"] == 10 for c in model.calls)


def test_features_over_steps_rejects_bad_options_and_missing_history():
    """Out-of-range record steps are config errors; a model that records nothing is a data error, not a crash."""
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="record_steps"):
        features_over_steps(FakeModel(), x, 10, [0, 3])
    with pytest.raises(ConfigError, match="record_steps"):
        features_over_steps(FakeModel(), x, 10, [11])
    with pytest.raises(ConfigError, match="empty"):
        features_over_steps(FakeModel(), x, 10, [])
    with pytest.raises(ConfigError, match="chunk_size"):
        features_over_steps(FakeModel(), x, 10, [1], chunk_size=0)
    with pytest.raises(DataError, match="NaN"):
        features_over_steps(FakeModel(), np.full((4, 2), np.nan), 10, [1])

    class NoHistory:
        def infer(self, x, steps, *, seed=0, trace=True, record=None):
            return SimpleNamespace(history={})

    with pytest.raises(DataError, match="no history"):
        features_over_steps(NoHistory(), x, 10, [1])


def test_features_over_steps_matches_final_rates_of_a_real_model(tiny_model, tiny_data):
    """With a real iP-VAE the last recorded code must equal result.rates of a plain rollout with the same seed."""
    steps, features = features_over_steps(tiny_model, tiny_data[:10], 6, [1, 6], seed=2, chunk_size=10)
    np.testing.assert_array_equal(steps, [1, 6])
    final = tiny_model.infer(torch.as_tensor(tiny_data[:10]), 6, seed=2, trace=False).rates.numpy()
    np.testing.assert_allclose(features[-1], final, rtol=1e-6)
    assert features.shape == (2, 10, tiny_model.n_latents)


# --------------------------------------------------------------------------- CI and accuracy over steps


def test_confidence_interval_matches_hand_computed_student_t():
    """The reported 95 % band must be mean ± t(0.975, n−1)·s/√n, computed here by hand."""
    acc = np.array([[0.90, 0.80], [0.92, 0.85], [0.88, 0.83], [0.91, 0.86]])
    mean, low, high = confidence_interval(acc)
    n = acc.shape[0]
    for j in range(acc.shape[1]):
        m = sum(acc[:, j]) / n
        s = math.sqrt(sum((a - m) ** 2 for a in acc[:, j]) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
        assert mean[j] == pytest.approx(m)
        assert low[j] == pytest.approx(m - half)
        assert high[j] == pytest.approx(m + half)


def test_confidence_interval_with_one_seed_is_the_mean_not_nan():
    """One seed has no spread: the interval collapses to the mean instead of silently becoming NaN."""
    mean, low, high = confidence_interval(np.array([[0.7, 0.9]]))
    np.testing.assert_array_equal(mean, [0.7, 0.9])
    np.testing.assert_array_equal(low, mean)
    np.testing.assert_array_equal(high, mean)


def test_record_schedule_starts_at_one_and_ends_at_steps():
    """The curve must start at t = 1 and always include T_test even when it is not a multiple of ``every``."""
    assert record_schedule(120, 50) == [1, 50, 100, 120]
    assert record_schedule(100, 50) == [1, 50, 100]
    assert record_schedule(1, 50) == [1]


def test_classification_over_steps_tracks_when_the_code_becomes_informative(tmp_path):
    """Accuracy must be at chance before the fake code carries the class and perfect after, for every seed."""
    rng = np.random.default_rng(5)
    n = 200
    train_y, test_y = rng.integers(0, 2, n), rng.integers(0, 2, n)
    train_x = np.stack([train_y - 0.5, np.arange(n)], 1).astype(np.float32)
    test_x = np.stack([test_y - 0.5, np.arange(n)], 1).astype(np.float32)
    result = classification_over_steps(LateCodeModel(informative_from=6), train_x, train_y, test_x, test_y,
                                       steps=12, every=5, seeds=(0, 1, 2), chunk_size=64)
    np.testing.assert_array_equal(result.steps, [1, 5, 10, 12])
    assert result.accuracy.shape == (3, 4)
    assert result.chance == pytest.approx(max(np.mean(test_y), 1 - np.mean(test_y)))
    tolerance = 4 * math.sqrt(0.25 / n)
    assert np.all(np.abs(result.accuracy[:, :2] - 0.5) < tolerance)
    np.testing.assert_array_equal(result.accuracy[:, 2:], 1.0)
    assert result.final_accuracy == 1.0
    assert np.all(result.ci_low <= result.mean) and np.all(result.mean <= result.ci_high)
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["n_seeds"] == 3 and as_dict["steps"] == [1, 5, 10, 12] and as_dict["final_accuracy"] == 1.0

    path = plot_classification({"late": result, "single": _single_seed_result()}, tmp_path / "acc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _single_seed_result() -> ClassificationResult:
    mean, low, high = confidence_interval(np.array([[0.5, 0.8, 0.9]]))
    return ClassificationResult(steps=np.array([1, 10, 100]), seeds=(0,), accuracy=np.array([[0.5, 0.8, 0.9]]),
                                mean=mean, ci_low=low, ci_high=high, chance=0.5)


def test_classification_over_steps_rejects_bad_options():
    """Bad seeds, schedules or labels must be rejected before any (expensive) inference runs."""
    x = np.zeros((6, 2), dtype=np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    model = FakeModel()
    with pytest.raises(ConfigError, match="seeds"):
        classification_over_steps(model, x, y, x, y, steps=5, every=2, seeds=())
    with pytest.raises(ConfigError, match="distinct"):
        classification_over_steps(model, x, y, x, y, steps=5, every=2, seeds=(1, 1))
    with pytest.raises(ConfigError, match="every"):
        classification_over_steps(model, x, y, x, y, steps=5, every=0)
    with pytest.raises(DataError, match="at least 2 classes"):
        classification_over_steps(model, x, np.zeros(6), x, y, steps=5, every=2)
    with pytest.raises(DataError, match="entries"):
        classification_over_steps(model, x, y[:5], x, y, steps=5, every=2)
    assert model.calls == []
    with pytest.raises(DataError, match="non-empty"):
        plot_classification({}, "unused.png")
