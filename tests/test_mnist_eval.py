"""`fond eval --data mnist-test` covers the whole test set: all 10 000 digits unless --samples says fewer."""

import json

import pytest

from fond.cli import main
from fond.config import ModelConfig
from fond.data.files import held_out_size
from fond.models import build_model


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """An untrained iP-VAE with 784 inputs (evaluation size does not depend on training)."""
    folder = tmp_path_factory.mktemp("models") / "digits"
    build_model(ModelConfig(n_inputs=784, n_latents=4, model="ipvae")).save(folder)
    return folder


def _evaluated_inputs(capsys, *args) -> int:
    assert main(["eval", *map(str, args), "--steps", "1", "--json", "--no-report"]) == 0
    return json.loads(capsys.readouterr().out)["n_samples"]


def test_named_test_sets_have_a_fixed_size():
    """Only a fixed held-out split has a 'whole' to evaluate; sampled patches leave the number to the caller."""
    for spec in ("mnist", "mnist-test", "mnist-raw-test", "mnist-raw-60k", "cifar10:/data/cifar"):
        assert held_out_size(spec) == 10_000
    for spec in ("natural16", "color16", "celeba:/data/celeba", "patches.npy", "mnist-unknown"):
        assert held_out_size(spec) is None


@pytest.mark.slow
def test_eval_on_mnist_test_uses_all_ten_thousand_digits(digit_model, capsys):
    """The bug: only the first 5000 test digits were evaluated, so '0 diverged' covered half the test set."""
    assert _evaluated_inputs(capsys, digit_model, "--data", "mnist-test") == 10_000


@pytest.mark.slow
def test_eval_samples_counts_test_digits_and_can_go_past_5000(digit_model, capsys):
    """--samples picks the first N test digits, at any N up to the whole set (the old loader capped it at 5000)."""
    assert _evaluated_inputs(capsys, digit_model, "--data", "mnist-test", "--samples", "7000") == 7000


@pytest.mark.slow
def test_eval_samples_draws_that_many_sampled_patches(tmp_path, capsys):
    """Sampled data (natural patches) default to 5000 held-out patches; --samples asks for more."""
    folder = tmp_path / "patches"
    build_model(ModelConfig(n_inputs=64, n_latents=4, model="ipvae")).save(folder)
    assert _evaluated_inputs(capsys, folder, "--data", "natural8") == 5000
    assert _evaluated_inputs(capsys, folder, "--data", "natural8", "--samples", "6000") == 6000


def test_mnist_report_puts_the_papers_mnist_numbers_beside_the_uncentred_r2(digit_model, tmp_path, capsys):
    """A model on centred digits: its evaluation adds R² on the raw digits (the paper's measure) and its report
    compares that, not the natural-image numbers, with the paper's MNIST table; raw digits need no second R²."""
    from fond.data.mnist import mnist_data
    from fond.experiment import evaluate_and_report
    from fond.resume import load_model

    evaluate_and_report(tmp_path, load_model(digit_model), mnist_data(n_train=10, n_val=20, val_split="test"),
                        steps=2)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "paper (MNIST, 5 seeds)" in text and "| r2_uncentred |" in text and "| 0.951 |" in text
    assert "0.830" not in text  # the natural-image iP-VAE's R²
    assert "r2_uncentred" in json.loads((tmp_path / "report" / "eval.json").read_text())
    for spec, has in (("mnist-test", True), ("mnist-raw-test", False)):
        assert main(["eval", str(digit_model), "--data", spec, "--samples", "20", "--steps", "2", "--json",
                     "--no-report"]) == 0
        assert ("r2_uncentred" in json.loads(capsys.readouterr().out)) is has
