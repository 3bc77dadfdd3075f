"""Sweeps on Ray (``fond sweep --backend ray``): the same table as the local backend, finished runs skipped,
failures reported per run, and a one-line error without Ray installed."""

import csv
import importlib.util
import subprocess
import sys

import pytest

from fond.cli import main
from fond.errors import ConfigError, FondError
from fond.sweep import SweepConfig, read_results, run_sweep
from fond.sweep_ray import RAY_MISSING, run_sweep_ray

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (`pip install fond[ray]`; CI installs it)")


@pytest.fixture(scope="module")
def patches(sweep_patches):
    return sweep_patches


def _sweep(patches, **fields):
    """Four tiny runs: iP-VAE and LCA × 2 seeds (distinct data splits and initialisations)."""
    base = dict(models=["ipvae", "lca"], data=str(patches), betas=[1.0], t_train=[4], seeds=[0, 1], iterations=40,
                batch_size=20, latents=8, eval_steps=10, eval_samples=10)
    return SweepConfig(**{**base, **fields})


def _without_minutes(path):
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.pop("minutes")
    return rows


@needs_ray
@pytest.mark.slow
def test_ray_sweep_gathers_the_local_table_and_skips_finished_runs(patches, tmp_path):
    """4 runs as Ray tasks on a local 2-CPU instance give the local backend's rows (same seeds: same numbers,
    only the wall-clock minutes differ); submitting again trains nothing and does not even start Ray."""
    import ray

    sweep = _sweep(patches)
    local = run_sweep(sweep, tmp_path / "local")
    messages = []
    rows, failures = run_sweep_ray(sweep, tmp_path / "ray", ray_cpus=2, log=messages.append)
    assert failures == {} and not ray.is_initialized()  # the local instance it started is shut down
    assert sum("submitted" in m for m in messages) == 4
    assert [r["run"] for r in rows] == [r["run"] for r in local] == [s.name for s in sweep.runs()]
    for mine, theirs in zip(rows, local, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if key == "minutes":
                continue
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (mine["run"], key)
            else:
                assert mine[key] == value, (mine["run"], key)
    assert len({(r["r2_rates"], r["nelbo"]) for r in rows}) == 4  # four different runs, not one repeated
    assert _without_minutes(tmp_path / "ray" / "sweep.csv") == _without_minutes(tmp_path / "local" / "sweep.csv")

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/*") if p.is_file()}
    messages.clear()
    again, failures = run_sweep_ray(sweep, tmp_path / "ray", ray_cpus=2, log=messages.append)
    assert failures == {} and again == rows
    assert len(messages) == 4 and all(m.endswith("done, skipped") for m in messages)
    assert not ray.is_initialized()
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/*") if p.is_file()}


@needs_ray
@pytest.mark.slow
def test_ray_sweep_command_reports_a_failed_run_and_finishes_the_others(patches, tmp_path):
    """`fond sweep grid.yaml --backend ray`: a run that fails is named with its error, the other runs finish
    and are gathered, the exit status is 1."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"# two LCA runs\nmodels: [lca]\ndata: {patches}\nbetas: [0.5, 1]\nt_train: [4]\n"
                    "iterations: 3\nbatch_size: 20\nlatents: 6\neval_steps: 5\neval_samples: 8\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "lca_b1_t4_s0").write_text("a file where the run's folder should go")
    command = [sys.executable, "-m", "fond", "sweep", str(grid), "--backend", "ray", "--ray-cpus", "2",
               "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "fond: error: run lca_b1_t4_s0 failed: " in proc.stderr
    assert proc.stdout.count("| lca |") == 1
    assert [r["run"] for r in read_results(out)] == ["lca_b0.5_t4_s0"]
    assert "1 of 2 runs failed" in proc.stderr


def test_missing_ray_is_one_line_naming_the_extra(patches, tmp_path, monkeypatch, capsys):
    """Without Ray the backend fails before touching the output folder, with the install command."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(FondError, match=r"fond\[ray\]"):
        run_sweep_ray(_sweep(patches), tmp_path / "a")
    assert main(["sweep", "--models", "lca", "--data", str(patches), "--backend", "ray",
                 "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == f"fond: error: {RAY_MISSING}\n"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("options, message", [({"cpus_per_run": 0}, "--cpus-per-run"),
                                              ({"gpus_per_run": -1}, "--gpus-per-run"),
                                              ({"ray_cpus": 0}, "--ray-cpus"),
                                              ({"ray_cpus": 2, "cpus_per_run": 4}, "--cpus-per-run"),
                                              ({"ray_cpus": 2, "address": "auto"}, "--ray-cpus")])
def test_bad_resource_requests_fail_before_ray_starts(patches, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        run_sweep_ray(_sweep(patches), tmp_path, **options)


def test_ray_flags_are_refused_with_the_local_backend(tmp_path, capsys):
    assert main(["sweep", "--models", "lca", "--cpus-per-run", "2", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "fond: error: --cpus-per-run applies to --backend ray only\n"


@needs_ray
def test_a_bad_cluster_address_is_one_line(patches, tmp_path, capsys):
    assert main(["sweep", "--models", "lca", "--data", str(patches), "--backend", "ray", "--address", "nonsense::",
                 "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.endswith("fond: error: cannot connect to the Ray cluster at nonsense::: "
                                            "ValueError: Invalid address format: nonsense::\n")
