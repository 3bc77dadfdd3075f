"""`fond analyze KIND RUN...` and the reproduction report's verdicts, end to end on tiny trained runs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fond.analysis.commands import ANALYSES, run_analysis
from fond.config import TrainConfig
from fond.data import load_data
from fond.data.natural import PatchData
from fond.reproduce import _orderings
from fond.sweep import RunSpec, SweepConfig, run_point


def _train(tmp, name, data, spec, model="ipvae"):
    sweep = SweepConfig(models=[model], data=spec, iterations=3, batch_size=20, latents=12, eval_steps=10,
                        eval_samples=20)
    run = RunSpec(model=model, beta=1.0, t_train=3, seed=0, sweep=sweep)
    run_point(run, tmp / name, data=data)
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny iP-VAE on 16×16 patches and one on MNIST (3 iterations each)."""
    tmp = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((200, 256)).astype(np.float32)
    np.save(tmp / "p.npy", patches)
    natural = PatchData(train=patches[:150], val=patches[150:], patch_shape=(16, 16), name="p")
    mnist = load_data("mnist", n_train=100, n_val=60)
    return _train(tmp, "natural", natural, str(tmp / "p.npy")), _train(tmp, "mnist", mnist, "mnist")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ANALYSES)
def test_every_analysis_writes_json_and_png(runs, kind, tmp_path):
    """Each analysis runs on a trained run as a user would call it and leaves numbers and a figure."""
    natural, mnist = runs
    targets = [mnist] if kind in ("classify", "ood") else [natural]
    path = run_analysis(kind, targets, tmp_path, steps=20, samples=40, seeds=(0, 1), train_samples=60)
    assert json.loads(path.read_text()) and path.with_suffix(".png").is_file()


def test_analyze_command_names_bad_runs(tmp_path):
    """A folder that is not a run is a one-line error, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "fond", "analyze", "gabor", str(tmp_path), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("fond: error:") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_classify_refuses_a_model_not_trained_on_mnist(runs, tmp_path):
    """Digit classification from a patch model would be meaningless; say so."""
    proc = subprocess.run([sys.executable, "-m", "fond", "analyze", "classify", str(runs[0]), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "MNIST" in proc.stderr


def _row(model, r2, zeros, **extra):
    import math

    return {"model": model, "r2": r2, "zeros": zeros, "rate_distortion": math.hypot(1 - r2, 1 - zeros),
            "beta": 1.0, "t_train": 16, "convergence_step": 200, **extra}


def test_orderings_report_what_the_numbers_say():
    """The report's verdicts follow the numbers: a planted violation is reported as not holding."""
    natural = [_row("ipvae", 0.8, 0.8), _row("pvae", 0.5, 0.8), _row("igvae", 0.7, 0.0), _row("gvae", 0.9, 0.0)]
    effects = {"ipvae": {"beta": {"zeros": {"rho": 1.0}, "r2": {"rho": -1.0}}}}
    short = [_row("ipvae", 0.7, 0.7, t_train=8)]
    ood = {"table": {"mnist": {}, "shifted": {}},
           "results": {m: {"final": {"shifted": {"r2_rates": v}}} for m, v in
                       (("ipvae", 0.5), ("savae", 0.6), ("pvae", 0.1))}}
    verdicts = {o["claim"]: o["holds"] for o in _orderings(
        natural, {"effects": effects}, short, natural[0], natural[0], 0.6, 0.8, {}, ood,
        {"fits": {"fraction_well_fit": 0.7}}, {"spearman_rho": -0.9, "spearman_p": 0.001})}
    assert verdicts["every iterative model beats its amortized counterpart on the rate–distortion frontier"] is False
    assert verdicts["larger β → more zeros, lower R²"] is True
    assert verdicts["larger T_train lifts the frontier (smaller d)"] is True
    assert verdicts["R² keeps rising long after T_train"] is True
    assert verdicts["iP-VAE generalises best out of distribution"] is False
    assert verdicts["out of distribution: iterative > hybrid iterative-amortized > amortized"] is False
    assert verdicts["the learned dictionary is Gabor-like (localised, oriented, band-pass)"] is True
    assert verdicts["responses show contrast-dependent latency (higher contrast → earlier)"] is True


def test_train_config_of_a_run_spec_is_valid():
    """A sweep's run config is a valid TrainConfig (what the trainer checks) with the grid's values."""
    spec = SweepConfig(models=["ipvae"], iterations=7).runs()[0]
    assert isinstance(spec.train_config(), TrainConfig) and spec.train_config().iterations == 7


def test_the_command_line_offers_exactly_the_library_analyses():
    """`fond analyze KIND` lists its kinds statically (parsing must not import the analyses): they must agree."""
    from fond.analysis.commands import ANALYSES
    from fond.cli import build_parser

    analyze = next(action for action in build_parser()._subparsers._group_actions[0].choices["analyze"]._actions
                   if action.dest == "kind")
    assert tuple(analyze.choices) == tuple(ANALYSES)
