"""One experiment pipeline: `fond train`, a sweep run and the library call leave run folders with the same files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fond.config import ModelConfig, TrainConfig
from fond.data import load_data
from fond.experiment import RESULT_COLUMNS, run_experiment
from fond.run import RunFolder
from fond.sweep import SweepConfig, run_sweep

TINY = {"iterations": 4, "batch_size": 20, "steps": 2, "beta": 1.0, "checkpoint_every": 2, "eval_every": 4,
        "eval_steps": 3, "eval_samples": 10}


def _files(folder):
    """The run folder's files, relative, without the training log's timing-dependent extras."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "tensorboard" not in p.parts)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, sweep_patches):
    out = tmp_path_factory.mktemp("cli") / "run"
    cfg = tmp_path_factory.mktemp("cfg") / "train.json"
    cfg.write_text(json.dumps({**TINY, "seed": 0}))
    proc = subprocess.run([sys.executable, "-m", "fond", "train", "--model", "ipvae", "--data", str(sweep_patches),
                           "--out", str(out), "--latents", "6", "--config", str(cfg), "--eval-steps", "5",
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_train_and_sweep_runs_hold_the_same_files(cli_run, sweep_patches, tmp_path):
    """Whatever the entry point, a finished run folder has the model, checkpoints, log, report, curves and row."""
    sweep = SweepConfig(models=["ipvae"], data=str(sweep_patches), betas=[1.0], t_train=[2], seeds=[0],
                        iterations=4, batch_size=20, latents=6, eval_steps=5, eval_samples=None)
    (row,) = run_sweep(sweep, tmp_path)
    swept = tmp_path / row["run"]
    assert _files(cli_run) == _files(swept)
    folder = RunFolder(cli_run)
    for path in (folder.done_path, folder.trace_path, folder.eval_path, folder.report_path, folder.model_path):
        assert path.is_file(), path
    done = json.loads(folder.done_path.read_text())
    assert list(done) == list(RESULT_COLUMNS) and done["model"] == "ipvae" and done["iterations"] == 4
    with np.load(folder.trace_path) as trace:
        assert trace["r2"].shape == (5,)


def test_library_call_evaluates_writes_the_row_and_returns_it(sweep_patches, tmp_path):
    """run_experiment returns the row it wrote to done.json, evaluated on the first eval_samples held-out inputs."""
    data = load_data(str(sweep_patches), seed=0)
    cfg = TrainConfig(**TINY)
    model_cfg = ModelConfig(n_inputs=data.n_inputs, n_latents=6)
    result = run_experiment(data, cfg, model_cfg, tmp_path / "run", eval_steps=3, eval_samples=7)
    folder = RunFolder(tmp_path / "run")
    assert json.loads(folder.done_path.read_text()) == result.row
    assert result.evaluation.n_samples == 7 and result.row["t_train"] == 2 and result.row["run"] == "run"


def test_without_evaluation_nothing_is_marked_finished(sweep_patches, tmp_path):
    """Training alone (`fond train --no-eval`) leaves no done.json: a sweep would not skip such a run."""
    data = load_data(str(sweep_patches), seed=0)
    model_cfg = ModelConfig(n_inputs=data.n_inputs, n_latents=6)
    result = run_experiment(data, TrainConfig(**TINY), model_cfg, tmp_path / "run", evaluate=False)
    assert result.row is None and result.evaluation is None
    assert not RunFolder(tmp_path / "run").is_finished() and RunFolder(tmp_path / "run").model_path.is_file()


def test_a_model_stopped_mid_schedule_is_marked_incomplete(sweep_patches, tmp_path):
    """A run cut short (time limit) says so in its row: complete is False until the schedule is finished."""
    from fond.experiment import result_row

    data = load_data(str(sweep_patches), seed=0)
    cfg = TrainConfig(**TINY)
    model_cfg = ModelConfig(n_inputs=data.n_inputs, n_latents=6)
    done = run_experiment(data, cfg, model_cfg, tmp_path / "run", eval_steps=3, eval_samples=5)
    assert done.row["complete"] is True
    cut = result_row(cfg, model_cfg, done.evaluation, iterations=3, data_spec="x", minutes=0.1, run="run")
    assert cut["complete"] is False
