"""R² by input contrast (``fond.analysis.contrast``, ``fond analyze contrast``)."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from fond.analysis.contrast import contrast_bins, r2_by_contrast
from fond.errors import DataError
from fond.metrics import r2_per_sample


def test_per_input_r2_is_scikit_learns_r2_of_each_input():
    # the paper's R² is per input (about the input's own mean), then averaged: scikit-learn's r2_score of one row
    rng = np.random.default_rng(0)
    x, reconstruction = rng.normal(size=(5, 12)), rng.normal(size=(5, 12))
    expected = [r2_score(x[i], reconstruction[i]) for i in range(5)]
    np.testing.assert_allclose(r2_per_sample(torch.from_numpy(x), torch.from_numpy(reconstruction)).numpy(), expected,
                               rtol=1e-12)


def test_bins_split_inputs_by_contrast_and_average_back_to_the_mean():
    # faint inputs must land in the first bin, and the bins' size-weighted means must give back the overall mean
    rng = np.random.default_rng(1)
    scale = rng.permutation(np.arange(1, 11, dtype=float))
    x = rng.normal(size=(10, 8)) * scale[:, None]
    r2, r2_rates = rng.uniform(size=10), rng.uniform(size=10)
    bins = contrast_bins(x, r2, r2_rates, bins=3)
    contrast = ((x - x.mean(1, keepdims=True)) ** 2).sum(1)
    assert [b.n for b in bins] == [4, 3, 3]
    assert [b.low for b in bins] == sorted(b.low for b in bins) and bins[0].low == contrast.min()
    faintest = np.argsort(contrast)[:4]
    assert bins[0].r2 == pytest.approx(r2[faintest].mean())
    assert sum(b.n * b.r2 for b in bins) / 10 == pytest.approx(r2.mean())
    assert sum(b.n * b.r2_rates for b in bins) / 10 == pytest.approx(r2_rates.mean())


def test_inputs_without_contrast_are_one_clear_error():
    with pytest.raises(DataError, match="needs some contrast"):
        contrast_bins(np.ones((4, 3)), np.zeros(4), np.zeros(4))
    with pytest.raises(DataError, match="at least 4 inputs"):
        contrast_bins(np.random.default_rng(0).normal(size=(3, 5)), np.zeros(3), np.zeros(3))


def test_mean_over_bins_is_the_evaluations_r2():
    # the per-input numbers come from the final state's reconstructions, the evaluation's from the trace's own
    # sums (the sparse kernel's decode of the spikes): two paths to one R²
    from fond import pretrained
    from fond.evaluate import evaluate
    from fond.resume import read_run

    model = pretrained.load("ipvae-natural16")
    x = torch.as_tensor(pretrained.held_out_data(read_run(pretrained.run_folder("ipvae-natural16"))).val[:60])
    result = r2_by_contrast(model, x, 25, chunk_size=32)
    evaluation = evaluate(model, x, 25, chunk_size=32)
    assert result["r2"] == pytest.approx(evaluation.r2, abs=1e-5)
    assert result["r2_rates"] == pytest.approx(evaluation.r2_rates, abs=1e-5)
    assert sum(b["n"] for b in result["bins"]) == 60 and result["spread"] > 1


def test_fond_analyze_contrast_writes_every_run(tmp_path):
    from fond.cli import main

    assert main(["analyze", "contrast", "pretrained:igvae-natural16", "pretrained:ipvae-natural16", "--out",
                 str(tmp_path), "--steps", "20", "--samples", "40"]) == 0
    runs = json.loads((tmp_path / "contrast.json").read_text())["runs"]
    assert set(runs) == {"igvae-natural16", "ipvae-natural16"} and (tmp_path / "contrast.png").is_file()
    assert all(len(r["bins"]) == 4 and r["samples"] == 40 for r in runs.values())
