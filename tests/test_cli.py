"""The command line, end to end as a user runs it: train → eval → report, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest


def fond(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fond", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((8, 64))
    codes = rng.poisson(0.3, (600, 8)) * rng.uniform(0.5, 1.5, (600, 8))
    x = (codes @ atoms + 0.1 * rng.standard_normal((600, 64))).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "patches.npy"
    np.save(path, x / x.std())
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, patches):
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = tmp_path_factory.mktemp("cfg") / "train.json"
    cfg.write_text(json.dumps({"iterations": 30, "batch_size": 50, "steps": 4, "beta": 1.0, "eval_every": 15,
                               "eval_steps": 10, "eval_samples": 30, "checkpoint_every": 10}))
    proc = fond("train", "--data", str(patches), "--out", str(out), "--latents", "16", "--config", str(cfg),
                "--eval-steps", "50", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.slow
def test_train_writes_model_report_and_figures(trained_run):
    """One command trains, evaluates and writes the report with its pictures."""
    out, proc = trained_run
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl",
                 "report/report.md", "report/eval.json", "report/dictionary.png", "report/inference_curves.png",
                 "report/reconstructions.png", "report/training.png"):
        assert (out / name).is_file(), name
    assert "r2" in proc.stdout and "zeros" in proc.stdout


@pytest.mark.slow
def test_eval_json_has_required_fields(trained_run):
    """`fond eval DIR --json` prints r2, r2_rates, zeros, convergence_step, n_params (the documented contract)."""
    out, _ = trained_run
    proc = fond("eval", str(out), "--steps", "40", "--json", "--no-report")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in ("r2", "r2_rates", "zeros", "convergence_step", "n_params", "nelbo", "rate_distortion", "diverged"):
        assert key in summary
    assert summary["steps"] == 40 and summary["n_params"] == 64 * 16 + 64 + 16 + 1 + 16


@pytest.mark.parametrize("args, needle", [
    (["train", "--model", "vae", "--out", "x"], "invalid choice"),
    (["train", "--data", "nowhere.npy", "--out", "x"], "nowhere.npy"),
    (["train", "--data", "natural16", "--out", "x", "--beta", "-1"], "beta"),
    (["eval", "no_such_run"], "no_such_run"),
])
def test_bad_input_gets_one_line_error(tmp_path, args, needle):
    """Unknown model, missing data file, negative β, missing run: exit 2 with one line naming the problem."""
    proc = fond(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fond: error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_checkpoint_and_nan_data(tmp_path, patches):
    """A truncated model file and a data file holding NaN are refused in one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": "fond-model", "version": 1,
                                                 "model": {"n_inputs": 64, "n_latents": 16},
                                                 "data": {"spec": str(patches)}}))
    (run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    proc = fond("eval", str(run))
    assert proc.returncode == 2 and "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "nan.npy"
    x = np.ones((20, 16), np.float32)
    x[3, 4] = np.nan
    np.save(bad, x)
    proc = fond("train", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "nan.npy" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_data_file_is_named(tmp_path):
    """An empty (zero-byte) data file is refused in one line naming it."""
    (tmp_path / "empty.npy").write_bytes(b"")
    proc = fond("train", "--data", "empty.npy", "--out", "o", cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "empty.npy" in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_training_checkpoints_and_resumes(tmp_path, patches, sig):
    """Ctrl-C or SIGTERM mid-run saves the finished iterations; the same command then resumes and finishes."""
    import json as _json
    import signal
    import time

    cfg = tmp_path / "train.json"
    cfg.write_text(_json.dumps({"iterations": 800, "batch_size": 50, "steps": 4, "checkpoint_every": 100000,
                                "eval_every": 100000, "log_every": 1}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fond", "train", "--data", str(patches), "--out", str(out), "--latents", "8",
           "--config", str(cfg), "--no-progress", "--no-eval"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    from fond.checkpoint import load_tensors

    _, meta = load_tensors(out / "checkpoint.safetensors")
    done = meta["iteration"]
    assert 5 <= done < 800
    finish = subprocess.run(cmd + ["--iterations", str(done + 3)], capture_output=True, text=True, timeout=300)
    # a different --iterations is a different configuration: refused, nothing overwritten
    assert finish.returncode == 2 and "different configuration" in finish.stderr
    finish = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr
    rows = [_json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == list(range(1, 801))


@pytest.mark.slow
@pytest.mark.parametrize("model, decoder", [("igvae-relu", "mlp"), ("igvae", "conv"), ("ibvae", "linear"),
                                           ("pvae", "linear"), ("savae", "linear"), ("iavae", "linear"),
                                           ("pc", "linear"), ("lca", "linear"), ("fista", "linear")])
def test_every_family_and_decoder_trains_and_evaluates_from_the_command_line(tmp_path, patches, model, decoder):
    """`fond train --model M --decoder G` runs the same trainer, evaluation and report for every family,
    decoder and baseline, and `fond eval` reloads the run and prints the same JSON fields; the report names
    the model and shows the decoder's atoms."""
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"iterations": 8, "batch_size": 50, "steps": 3, "beta": 1.0, "eval_every": 8,
                               "eval_steps": 5, "eval_samples": 20}))
    out = tmp_path / "run"
    proc = fond("train", "--model", model, "--decoder", decoder, "--decoder-hidden", "8", "--data", str(patches),
                "--out", str(out), "--latents", "16", "--config", str(cfg), "--eval-steps", "20", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (out / "report" / "dictionary.png").is_file()
    from fond.report import MODEL_TITLES

    assert MODEL_TITLES[model] in (out / "report" / "report.md").read_text()
    again = fond("eval", str(out), "--steps", "10", "--json", "--no-report")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["n_params"] > 0 and 0.0 <= summary["zeros"] <= 1.0
    assert set(summary) == {"r2", "r2_rates", "zeros", "convergence_step", "nelbo", "n_params", "steps", "n_samples",
                            "rate_distortion", "diverged", "diverged_fraction", "rate_max"}


@pytest.mark.slow
def test_compare_prints_runs_side_by_side(trained_run, tmp_path):
    """`fond compare` puts evaluated runs in one Markdown table and names a run that has no evaluation."""
    out, _ = trained_run
    proc = fond("compare", str(out), str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 4 and "iP-VAE" in lines[2]
    bare = tmp_path / "bare"
    import fond as library

    library.IPVAE(64, 8).save(bare)
    proc = fond("compare", str(bare))
    assert proc.returncode == 2 and "no evaluation yet" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compare_draws_dictionaries_side_by_side(trained_run, tmp_path):
    """`fond compare --dictionaries PNG` draws one panel per run (how `make demo` shows its dictionary beside
    the pretrained one), and a run without image patches is refused in one line."""
    out, _ = trained_run
    png = tmp_path / "dicts.png"
    proc = fond("compare", str(out), str(out), "--dictionaries", str(png))
    assert proc.returncode == 0, proc.stderr
    assert str(png) in proc.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atoms_by_activity_puts_the_most_active_neurons_first():
    """The report's dictionary shows the atoms that carry the code first: the order follows the mean rate."""
    import torch

    import fond as library
    from fond.report import atoms_by_activity

    model = library.IPVAE(16, 4)
    with torch.no_grad():  # atom 2 has the largest norm, but only neuron 1's atom lies along the inputs
        model.decoder.dictionary.copy_(torch.eye(16)[:, :4] * torch.tensor([0.0, 0.5, 3.0, 0.0]))
    x = np.tile(np.eye(16, dtype=np.float32)[[1]] * 2.0, (20, 1))
    atoms = atoms_by_activity(model, x, steps=50)
    assert atoms.shape == (16, 4)
    assert np.argmax(np.abs(atoms[:, 0])) == 1


def test_option_flags_parse_json_values_and_reject_malformed_pairs():
    """--family-option/--method-option KEY=VALUE read VALUE as JSON (numbers stay numbers) and a pair
    without '=' is a one-line usage error, not a traceback."""
    from fond.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--family-option", "clamp_final=6",
                                      "--family-option", "indicator=cubic", "--method-option", "refine_steps=4"])
    assert dict(args.family_option) == {"clamp_final": 6, "indicator": "cubic"}
    assert dict(args.method_option) == {"refine_steps": 4}
    proc = fond("train", "--out", "x", "--family-option", "clamp_final")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("flags", "k"), [((), 64), (("--latents", "20"), 20)])
def test_train_takes_the_presets_latents_unless_given(tmp_path, flags, k):
    """fond train --model pc --data mnist: the authors' K 64 from the preset; --latents wins over it."""
    out = tmp_path / "pc"
    proc = fond("train", "--model", "pc", "--data", "mnist", "--iterations", "1", "--batch-size", "10", "--no-eval",
                "--no-progress", "--out", str(out), *flags)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["model"]["n_latents"] == k
