"""Sweeps: the grid, resumption (finished runs skipped), the gathered table, and config validation."""

import csv
import json
import subprocess
import sys

import pytest

from fond.errors import ConfigError
from fond.sweep import RESULT_COLUMNS, SweepConfig, read_results, run_sweep


@pytest.fixture(scope="module")
def patches(sweep_patches):
    return sweep_patches


def _sweep(patches, **fields):
    base = dict(models=["ipvae", "lca"], data=str(patches), betas=[1.0, 4.0], t_train=[2], seeds=[0],
                iterations=3, batch_size=20, latents=6, eval_steps=5, eval_samples=10)
    return SweepConfig(**{**base, **fields})


def test_grid_is_the_cartesian_product(patches):
    """Every model × β × T_train × seed appears once, with a distinct run folder."""
    sweep = _sweep(patches, t_train=[2, 3], seeds=[0, 1])
    names = [spec.name for spec in sweep.runs()]
    assert len(names) == 2 * 2 * 2 * 2 == len(set(names))
    assert "ipvae_b4_t3_s1" in names
    spec = sweep.runs()[-1]
    cfg = spec.train_config()
    assert (cfg.beta, cfg.steps, cfg.seed, cfg.iterations, cfg.batch_size) == (spec.beta, 3, 1, 3, 20)


def test_latents_come_from_the_preset_unless_given():
    """K: the preset's where the sweep names none (predictive coding on MNIST: the authors' 64; 512 elsewhere),
    the sweep's own where it names one."""
    runs = SweepConfig(models=["pc", "ipvae"], data="mnist").runs()
    assert [run.model_config(784).n_latents for run in runs] == [64, 512]
    runs = SweepConfig(models=["pc", "ipvae"], data="mnist", latents=32).runs()
    assert [run.model_config(784).n_latents for run in runs] == [32, 32]
    assert SweepConfig(models=["pc"], data="natural16").runs()[0].model_config(256).n_latents == 512


def test_preset_values_fill_unswept_axes(patches):
    """With no β or T_train given, each model gets its own preset value (quick iP-VAE β 56, T 32 on natural patches)."""
    specs = SweepConfig(models=["ipvae", "lca"], data=str(patches)).runs()
    assert [(s.model, s.beta, s.t_train) for s in specs] == [("ipvae", 56.0, 32), ("lca", 0.0, 100)]


@pytest.mark.slow
def test_sweep_runs_gathers_and_skips_finished_runs(patches, tmp_path):
    """A second invocation trains nothing (resumable) and the CSV/JSON hold one row per run."""
    sweep = _sweep(patches)
    rows = run_sweep(sweep, tmp_path)
    assert len(rows) == 4 and all(set(RESULT_COLUMNS) <= set(r) for r in rows)
    with open(tmp_path / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table] == [s.name for s in sweep.runs()]
    assert json.loads((tmp_path / "sweep.json").read_text()) == rows
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.safetensors")}
    messages = []
    again = run_sweep(sweep, tmp_path, log=messages.append)
    assert again == rows and all("skipped" in m for m in messages)
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.safetensors")}
    (tmp_path / rows[0]["run"] / "done.json").unlink()  # an unfinished run is redone, the rest kept
    messages.clear()
    run_sweep(sweep, tmp_path, log=messages.append)
    assert sum("skipped" in m for m in messages) == 3 and len(read_results(tmp_path, sweep)) == 4


def test_a_different_sweep_in_the_same_folder_is_refused(patches, tmp_path):
    """Two grids must never mix their rows in one table silently."""
    (tmp_path / "sweep-config.json").write_text(_sweep(patches, betas=[2.0]).to_json())
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(_sweep(patches), tmp_path)


@pytest.mark.parametrize("fields, key", [({"models": []}, "models"), ({"models": ["nope"]}, "models"),
                                         ({"betas": [-1.0]}, "betas"), ({"t_train": [0]}, "t_train"),
                                         ({"seeds": [1.5]}, "seeds"), ({"preset": "slow"}, "preset"),
                                         ({"model_options": {"pvae": {}}}, "model_options")])
def test_bad_sweep_configs_name_the_key(patches, fields, key):
    """A bad grid fails before any training, naming the key."""
    with pytest.raises(ConfigError, match=key):
        _sweep(patches, **fields)


def test_sweep_config_round_trips_json(patches, tmp_path):
    """The config written beside the results reads back equal (it is what resumption compares)."""
    sweep = _sweep(patches, model_options={"lca": {"method_options": {"sparsity": 0.2}}})
    path = tmp_path / "s.json"
    path.write_text(sweep.to_json())
    assert SweepConfig.from_json(path) == sweep


@pytest.mark.slow
def test_sweep_command_prints_the_table(patches, tmp_path):
    """`fond sweep` with flags trains the grid and prints one Markdown row per run."""
    proc = subprocess.run([sys.executable, "-m", "fond", "sweep", "--models", "pc", "--beta", "0", "--data",
                           str(patches), "--iterations", "2", "--batch-size", "20", "--latents", "5",
                           "--eval-steps", "4", "--eval-samples", "8", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| pc |") == 1 and (tmp_path / "sweep.csv").is_file()
    bad = subprocess.run([sys.executable, "-m", "fond", "sweep", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "models" in bad.stderr


def test_yaml_sweep_files_read_like_json(patches, tmp_path):
    """A .yaml / .yml grid (comments, flow or block lists, null) gives the same SweepConfig as its JSON."""
    sweep = _sweep(patches, eval_samples=None, model_options={"lca": {"method_options": {"sparsity": 0.2}}})
    (tmp_path / "s.json").write_text(sweep.to_json())
    text = (f"# the grid\nmodels:\n  - ipvae\n  - lca\ndata: {patches}\nbetas: [1, 4.0]\nt_train: [2]\nseeds: [0]\n"
            "iterations: 3\nbatch_size: 20\nlatents: 6\neval_steps: 5\neval_samples: null\n"
            "model_options:\n  lca: {method_options: {sparsity: 0.2}}\n")
    for name in ("s.yaml", "s.yml"):
        (tmp_path / name).write_text(text)
        assert SweepConfig.from_file(tmp_path / name) == SweepConfig.from_file(tmp_path / "s.json") == sweep


@pytest.mark.parametrize("text, message", [("models: [lca]\nbetaz: [1]\n", "unknown config key 'betaz'"),
                                           ("models: [lca]\nbetas: [-1]\n", "config key 'betas'"),
                                           ("models: [lca]\nlatents: many\n", "config key 'latents'"),
                                           ("betas: [1]\n", "missing config key 'models'"),
                                           ("models: [lca\n", "not valid YAML"),
                                           ("- lca\n", "expected a mapping"),
                                           ("", "expected a mapping")])
def test_bad_yaml_sweep_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        SweepConfig.from_file(path)


def test_sweep_command_reads_yaml_and_rejects_bad_keys_in_one_line(tmp_path, capsys):
    from fond.cli import main

    path = tmp_path / "grid.yml"
    path.write_text("models: [lca]\nbeta: [1]\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"fond: error: {path}: unknown config key 'beta'\n"
    assert not (tmp_path / "out").exists()
