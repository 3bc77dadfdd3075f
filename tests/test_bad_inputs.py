"""Every bad input gets a clear error: the table of bad inputs tried (library and command line) and their messages.

Each row is (id, the bad input, the fragment its message must contain). A library row must raise a ``FondError``
(the exact subclass is named) whose message is one non-empty line; a command-line row must exit with status 2 and
write exactly one line to stderr, ``fond: error: ...`` containing the fragment, and no traceback. The command line
runs in-process through ``fond.cli.main(argv)`` (a few rows also as a real ``python -m fond`` process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fond
from fond.cli import main
from fond.config import ModelConfig, TrainConfig, config_from_dict, load_json
from fond.data import extract_patches, load_data, whiten
from fond.data.files import load_image_folder
from fond.errors import CheckpointError, ConfigError, DataError, FondError
from fond.evaluate import evaluate
from fond.models.amortized import AmortizedVAE
from fond.models.sparse_coding import LCA

D, K = 16, 8


def _png(path: Path, side: int, seed: int = 0) -> None:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((side, side)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Small models and a folder of good and bad files, shared by every row."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    np.save(root / "ok.npy", rng.standard_normal((50, D)).astype(np.float32))
    np.save(root / "d9.npy", rng.standard_normal((50, 9)).astype(np.float32))
    (root / "text.npy").write_text("1,2,3\n4,5,6\n")
    (root / "empty.npy").write_bytes(b"")
    np.save(root / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(root / "complex.npy", np.ones((5, 4), np.complex64))
    np.save(root / "cube.npy", np.ones((5, 4, 4), np.float32))
    np.save(root / "one_row.npy", np.ones((1, D), np.float32))
    nan = np.ones((20, D), np.float32)
    nan[3, 4] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "huge.npy", np.full((5, 4), 1e300))
    for name in ("empty_dir", "garbage", "small", "mixed", "not_a_run"):
        (root / name).mkdir()
    (root / "garbage" / "a.png").write_bytes(b"not a png")
    (root / "garbage" / "b.jpg").write_bytes(b"")
    _png(root / "small" / "tiny.png", 6)
    for i in range(3):
        _png(root / "mixed" / f"img{i}.png", 64, seed=i)
    (root / "mixed" / "bad.png").write_bytes(b"garbage")
    (root / "not_a_run" / "notes.txt").write_text("not a run")
    configs = {"unknown_key.json": '{"stepz": 3}', "negative_beta.json": '{"beta": -1}',
               "zero_steps.json": '{"steps": 0}', "string_int.json": '{"batch_size": "100"}',
               "nan_beta.json": '{"beta": NaN}', "not_json.json": "{beta: 1", "list.json": "[1, 2]",
               "sweep_k0.json": json.dumps({"models": ["ipvae"], "latents": 0}),
               "sweep_family.json": json.dumps({"models": ["laplace"]}),
               "sweep_unknown.json": json.dumps({"models": ["ipvae"], "colour": "red"})}
    for name, text in configs.items():
        (root / name).write_text(text)
    run = root / "saved_model"  # a model saved from Python: no data recorded with it
    fond.IPVAE(D, K, seed=0).save(run)
    models = {"ipvae": fond.IPVAE(D, K, seed=0), "igvae": fond.IGVAE(D, K, seed=0), "lca": LCA(D, K, seed=0),
              "pvae": AmortizedVAE(D, K, model="pvae", encoder="linear", seed=0)}
    return SimpleNamespace(root=root, run=run, **models)


def _x(rows: int = 3, dims: int = D, value: float | None = None, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(rows, dims, generator=torch.Generator().manual_seed(0), dtype=dtype)
    if value is not None:
        x[0, 0] = value
    return x


# ---------------------------------------------------------------------------------------------------------------------
# library: (id, call(env), error class, fragment of the message)
# ---------------------------------------------------------------------------------------------------------------------

LIBRARY = [
    # shapes and sizes
    ("infer-wrong-dimension", lambda e: e.ipvae.infer(_x(dims=D - 1), 2), DataError,
     "input must have shape (batch ≥ 1, 16), got (3, 15)"),
    ("infer-1d-input", lambda e: e.ipvae.infer(torch.zeros(D), 2), DataError, "got (16,)"),
    ("infer-4d-input", lambda e: e.igvae.infer(torch.zeros(1, 2, 3, D), 2), DataError, "got (1, 2, 3, 16)"),
    ("infer-empty-batch", lambda e: e.ipvae.infer(torch.zeros(0, D), 2), DataError, "got (0, 16)"),
    ("lca-empty-rows", lambda e: e.lca.infer(torch.zeros(3, 0), 2), DataError, "got (3, 0)"),
    ("sequence-wrong-length", lambda e: e.ipvae.infer(torch.zeros(4, 2, D), 3), DataError, "one frame per step"),
    ("lca-online-sequence", lambda e: e.lca.infer(torch.zeros(3, 2, D), 3), DataError, "fixed input"),
    # values
    ("infer-nan", lambda e: e.ipvae.infer(_x(value=float("nan")), 2), DataError, "NaN or Inf (1 of 48 values)"),
    ("infer-inf", lambda e: e.igvae.infer(_x(value=float("inf")), 2), DataError, "NaN or Inf"),
    ("infer-too-large", lambda e: e.ipvae.infer(_x(value=1e20), 2), DataError, "input values too large"),
    ("float64-overflows-float32", lambda e: e.lca.infer(_x(value=1e300, dtype=torch.float64), 2), DataError,
     "exceeds 4.29e+09 for a float32 model"),
    # dtypes and non-tensors
    ("infer-int", lambda e: e.ipvae.infer(torch.ones(2, D, dtype=torch.int64), 2), DataError,
     "floating point, got dtype torch.int64"),
    ("infer-bool", lambda e: e.igvae.infer(torch.ones(2, D, dtype=torch.bool), 2), DataError, "torch.bool"),
    ("infer-complex", lambda e: e.lca.infer(torch.ones(2, D, dtype=torch.complex64), 2), DataError,
     "torch.complex64"),
    ("infer-object-array", lambda e: e.ipvae.infer(np.array([[None] * D], dtype=object), 2), DataError,
     "numeric array, got ndarray of Python objects"),
    ("infer-string-array", lambda e: e.pvae.infer(np.array([["1.0"] * D]), 2), DataError,
     "numeric array, got ndarray of strings"),
    ("infer-list-of-strings", lambda e: e.ipvae.infer([["a"] * D], 2), DataError, "got list of strings"),
    ("infer-ragged-list", lambda e: e.ipvae.infer([[1.0] * D, [1.0]], 2), DataError, "ragged"),
    ("infer-none", lambda e: e.igvae.infer(None, 2), DataError, "numeric array, got NoneType"),
    ("poisson-kl-strings", lambda e: fond.poisson_kl("a", "b"), DataError, "must be numeric tensors or arrays"),
    ("poisson-kl-integers", lambda e: fond.poisson_kl(torch.ones(2, dtype=torch.int64), torch.ones(2)), DataError,
     "must be floating point"),
    ("load-none", lambda e: fond.load(None), CheckpointError, "model directory must be a path, got NoneType"),
    # other arguments of infer / encode / unroll_loss / evaluate
    ("infer-zero-steps", lambda e: e.ipvae.infer(_x(), 0), DataError, "steps must be an integer ≥ 1, got 0"),
    ("infer-float-steps", lambda e: e.lca.infer(_x(), 2.5), DataError, "got 2.5"),
    ("infer-string-seed", lambda e: e.ipvae.infer(_x(), 2, seed="a"), DataError, "seed must be an integer"),
    ("infer-bad-generator", lambda e: e.pvae.infer(_x(), 2, generator=3), DataError, "torch.Generator"),
    ("infer-record-outside", lambda e: e.ipvae.infer(_x(), 2, record=[5]), DataError, "1..2"),
    ("encode-nan", lambda e: e.pvae.encode(_x(value=float("nan"))), DataError, "NaN or Inf"),
    ("unroll-loss-nan-beta", lambda e: e.ipvae.unroll_loss(_x(), 2, beta=float("nan"), temperature=0.5),
     DataError, "beta must be a finite number ≥ 0, got nan"),
    ("unroll-loss-zero-temperature", lambda e: e.igvae.unroll_loss(_x(), 2, beta=1.0, temperature=0.0),
     DataError, "temperature must be a finite number > 0"),
    ("unroll-loss-zero-steps", lambda e: e.ipvae.unroll_loss(_x(), 0, beta=1.0, temperature=0.5), DataError,
     "steps must be an integer ≥ 1"),
    ("evaluate-strings", lambda e: evaluate(e.ipvae, [["a"] * D], 2), DataError,
     "evaluation data must be a numeric array"),
    ("evaluate-empty", lambda e: evaluate(e.ipvae, np.zeros((0, D), np.float32), 2), DataError, "(N ≥ 1, D)"),
    ("evaluate-zero-chunk", lambda e: evaluate(e.ipvae, _x(), 2, chunk_size=0), DataError, "chunk_size"),
    # models and configurations
    ("model-k-zero", lambda e: fond.IPVAE(D, 0), ConfigError, "config key 'n_latents': must be an integer ≥ 1"),
    ("model-unknown-family", lambda e: fond.IterativeVAE(D, K, model="laplace"), ConfigError,
     "unknown model 'laplace'"),
    ("model-bad-family-option", lambda e: fond.IPVAE(D, K, family_options={"indicator": "tanh"}), ConfigError,
     "family_options.indicator"),
    ("model-bad-activation", lambda e: fond.IGVAE(D, K, activation="tanh"), ConfigError, "activation"),
    ("config-unknown-key", lambda e: config_from_dict(TrainConfig, {"stepz": 3}), ConfigError,
     "unknown config key 'stepz'"),
    ("config-negative-beta", lambda e: config_from_dict(TrainConfig, {"beta": -1.0}), ConfigError,
     "config key 'beta': must be ≥ 0"),
    ("config-zero-steps", lambda e: config_from_dict(TrainConfig, {"steps": 0}), ConfigError,
     "config key 'steps': must be an integer ≥ 1, got 0"),
    ("config-string-for-int", lambda e: config_from_dict(TrainConfig, {"iterations": "100"}), ConfigError,
     "config key 'iterations'"),
    ("config-nan-beta", lambda e: config_from_dict(TrainConfig, {"beta": float("nan")}), ConfigError,
     "config key 'beta': must be a finite number, got nan"),
    ("config-k-zero", lambda e: config_from_dict(ModelConfig, {"n_inputs": D, "n_latents": 0}), ConfigError,
     "config key 'n_latents'"),
    ("config-missing-key", lambda e: config_from_dict(ModelConfig, {"n_latents": K}), ConfigError,
     "missing config key 'n_inputs'"),
    ("config-not-an-object", lambda e: config_from_dict(TrainConfig, [1, 2]), ConfigError, "expected a JSON object"),
    ("config-file-not-json", lambda e: load_json(e.root / "not_json.json"), ConfigError, "not valid JSON"),
    ("config-file-missing", lambda e: load_json(e.root / "nowhere.json"), ConfigError, "file not found"),
    # data files and folders
    ("npy-holding-text", lambda e: load_data(str(e.root / "text.npy")), DataError, "lacks the NumPy header"),
    ("npy-empty-file", lambda e: load_data(str(e.root / "empty.npy")), DataError, "empty.npy"),
    ("npy-strings", lambda e: load_data(str(e.root / "strings.npy")), DataError, "holds dtype <U1"),
    ("npy-3d", lambda e: load_data(str(e.root / "cube.npy")), DataError, "expected a 2-D N×D array"),
    ("npy-nan", lambda e: load_data(str(e.root / "nan.npy")), DataError, "contains NaN or Inf"),
    ("npy-nonexistent", lambda e: load_data(str(e.root / "nowhere.npy")), DataError, "does not exist"),
    ("data-spec-none", lambda e: load_data(None), DataError, "data spec must be a string"),
    ("folder-empty", lambda e: load_data(str(e.root / "empty_dir")), DataError, "holds no images"),
    ("folder-all-unreadable", lambda e: load_data(str(e.root / "garbage")), DataError,
     "none of its 2 image file(s) is readable"),
    ("folder-images-too-small", lambda e: load_image_folder(e.root / "small", patch_size=16), DataError,
     "smaller than 16×16"),
    ("patches-image-too-small", lambda e: extract_patches([np.zeros((8, 8))], 16, 10, 0), DataError,
     "smaller than the patch size 16×16"),
    ("patches-no-images", lambda e: extract_patches([], 8, 10, 0), DataError, "no images"),
    ("patches-more-than-memory", lambda e: extract_patches([np.random.rand(32, 32)], 8, 10**15, 0), DataError,
     "more than this machine's"),
    ("whiten-constant-image", lambda e: whiten(np.ones((16, 16))), DataError, "constant"),
    ("whiten-huge-values", lambda e: whiten(np.random.rand(16, 16) * 1e200), DataError, "too large to whiten"),
    # saved models
    ("load-not-a-run", lambda e: fond.load(e.root / "not_a_run"), CheckpointError, "not_a_run"),
    ("load-nonexistent", lambda e: fond.load(e.root / "nowhere"), CheckpointError, "no such directory"),
]


@pytest.mark.parametrize("call, error, fragment", [pytest.param(*row[1:], id=row[0]) for row in LIBRARY])
def test_library_bad_input_gets_a_one_line_fond_error(env, call, error, fragment):
    """The library refuses each bad input with a FondError whose one-line message names the problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped-file warnings are tested on their own below
        with pytest.raises(FondError) as info:
            call(env)
    message = str(info.value)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {message}"
    assert message.strip() and "\n" not in message, message
    assert fragment in message, message


# ---------------------------------------------------------------------------------------------------------------------
# command line: (id, argv with {root} and {run} filled in, fragment of the one stderr line)
# ---------------------------------------------------------------------------------------------------------------------

TRAIN = ["train", "--data", "{root}/ok.npy", "--out", "{root}/out", "--latents", "4", "--iterations", "1",
         "--no-eval", "--no-progress"]

CLI = [
    # numbers on the command line
    ("train-zero-steps", [*TRAIN, "--steps", "0"], "argument --steps: must be ≥ 1, got 0"),
    ("train-negative-batch", [*TRAIN, "--batch-size", "-1"], "argument --batch-size: must be ≥ 1, got -1"),
    ("train-nan-beta", [*TRAIN, "--beta", "nan"], "argument --beta: must be a finite number ≥ 0, got nan"),
    ("train-zero-latents", [*TRAIN, "--latents", "0"], "argument --latents: must be ≥ 1, got 0"),
    ("train-word-for-seed", [*TRAIN, "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    ("train-negative-seed", [*TRAIN, "--seed", "-1"], "config key 'seed': must be a non-negative integer"),
    ("train-unknown-model", [*TRAIN, "--model", "vae"], "invalid choice: 'vae'"),
    ("train-zero-sparsity", [*TRAIN, "--model", "lca", "--sparsity", "0"], "method_options.sparsity': must be > 0"),
    ("train-bad-family-option", [*TRAIN, "--family-option", "foo=1"], "config key 'family_options.foo'"),
    ("train-nan-family-option", [*TRAIN, "--family-option", "clamp_final=nan"], "family_options.clamp_final"),
    ("train-method-option-for-ipvae", [*TRAIN, "--method-option", "sparsity=1"], "model 'ipvae' takes none"),
    # configuration files
    ("config-unknown-key", [*TRAIN, "--config", "{root}/unknown_key.json"], "unknown config key 'stepz'"),
    ("config-negative-beta", [*TRAIN, "--config", "{root}/negative_beta.json"], "config key 'beta': must be ≥ 0"),
    ("config-zero-steps", [*TRAIN, "--config", "{root}/zero_steps.json"], "config key 'steps'"),
    ("config-string-for-int", [*TRAIN, "--config", "{root}/string_int.json"],
     "config key 'batch_size': must be an integer ≥ 1, got '100'"),
    ("config-nan-beta", [*TRAIN, "--config", "{root}/nan_beta.json"], "config key 'beta': must be a finite number"),
    ("config-not-json", [*TRAIN, "--config", "{root}/not_json.json"], "not valid JSON"),
    ("config-list", [*TRAIN, "--config", "{root}/list.json"], "expected a JSON object"),
    ("config-missing-file", [*TRAIN, "--config", "{root}/nowhere.json"], "nowhere.json: file not found"),
    ("sweep-k-zero", ["sweep", "{root}/sweep_k0.json", "--out", "{root}/sweep"], "config key 'latents'"),
    ("sweep-unknown-family", ["sweep", "{root}/sweep_family.json", "--out", "{root}/sweep"],
     "unknown model 'laplace'"),
    ("sweep-unknown-key", ["sweep", "{root}/sweep_unknown.json", "--out", "{root}/sweep"],
     "unknown config key 'colour'"),
    # data files and folders
    ("data-npy-holding-text", ["train", "--data", "{root}/text.npy", "--out", "{root}/out"], "lacks the NumPy header"),
    ("data-empty-file", ["train", "--data", "{root}/empty.npy", "--out", "{root}/out"], "empty.npy"),
    ("data-strings", ["train", "--data", "{root}/strings.npy", "--out", "{root}/out"], "holds dtype <U1"),
    ("data-complex", ["train", "--data", "{root}/complex.npy", "--out", "{root}/out"], "holds dtype complex64"),
    ("data-3d", ["train", "--data", "{root}/cube.npy", "--out", "{root}/out"], "expected a 2-D N×D array"),
    ("data-one-row", ["train", "--data", "{root}/one_row.npy", "--out", "{root}/out"], "need at least 2"),
    ("data-nan", ["train", "--data", "{root}/nan.npy", "--out", "{root}/out"], "nan.npy' contains NaN or Inf"),
    ("data-too-large-for-float32", ["train", "--data", "{root}/huge.npy", "--out", "{root}/out"],
     "values too large for float32"),
    ("data-empty-folder", ["train", "--data", "{root}/empty_dir", "--out", "{root}/out"], "holds no images"),
    ("data-unreadable-folder", ["train", "--data", "{root}/garbage", "--out", "{root}/out"],
     "none of its 2 image file(s) is readable (a.png, b.jpg)"),
    ("data-images-too-small", ["train", "--data", "{root}/small", "--out", "{root}/out"], "smaller than 16×16"),
    ("data-nonexistent-file", ["train", "--data", "{root}/nowhere.npy", "--out", "{root}/out"], "does not exist"),
    ("data-unknown-spec", ["train", "--data", "nowhere", "--out", "{root}/out"], "unknown data 'nowhere'"),
    ("data-patch-too-small", ["train", "--data", "natural2", "--out", "{root}/out"], "outside 4..64"),
    # runs
    ("eval-not-a-run", ["eval", "{root}/not_a_run"], "not a fond model directory"),
    ("eval-nonexistent", ["eval", "{root}/nowhere"], "no such directory"),
    ("eval-a-file", ["eval", "{root}/ok.npy"], "ok.npy"),
    ("eval-no-data-recorded", ["eval", "{run}"], "pass --data"),
    ("eval-wrong-dimension", ["eval", "{run}", "--data", "{root}/d9.npy"], "has dimension 9, the model expects 16"),
    ("eval-zero-samples", ["eval", "{run}", "--samples", "0"], "argument --samples: must be ≥ 1"),
    ("compare-not-a-run", ["compare", "{root}/not_a_run"], "not a fond model directory"),
    ("analyze-not-a-run", ["analyze", "gabor", "{root}/not_a_run", "--out", "{root}/a"], "not a fond model directory"),
    ("bench-not-a-run", ["bench", "{root}/not_a_run", "--no-memory"], "not a fond model directory"),
    ("no-command", [], "required: command"),
]


def _argv(env, argv: list[str]) -> list[str]:
    return [arg.format(root=env.root, run=env.run) for arg in argv]


def _run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [pytest.param(*row[1:], id=row[0]) for row in CLI])
def test_cli_bad_input_gets_one_error_line(env, capsys, argv, fragment):
    """The command line refuses each bad input with exit status 2 and one stderr line naming the problem."""
    with warnings.catch_warnings():
        code, err = _run_in_process(_argv(env, argv), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("fond: error: "), err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("argv, fragment", [
    pytest.param([*TRAIN, "--steps", "0"], "--steps", id="usage-error"),
    pytest.param(["train", "--data", "{root}/text.npy", "--out", "{root}/out"], "text.npy", id="corrupt-data"),
    pytest.param(["eval", "{root}/not_a_run"], "not_a_run", id="not-a-run"),
])
def test_cli_process_prints_one_line_and_exits_2(env, argv, fragment):
    """As a real process too: exit status 2, one line on stderr, nothing on stdout, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "fond", *_argv(env, argv)], capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(lines) == 1 and lines[0].startswith("fond: error:") and fragment in lines[0], proc.stderr


def test_table_is_large_and_balanced():
    """The tables keep at least 25 bad inputs, with library and command line both well covered."""
    assert len(LIBRARY) + len(CLI) >= 25
    assert min(len(LIBRARY), len(CLI)) >= 15
    assert len({row[0] for row in LIBRARY}) == len(LIBRARY) and len({row[0] for row in CLI}) == len(CLI)


# ---------------------------------------------------------------------------------------------------------------------
# folders with some unreadable files: skipped and counted (a warning, and the count in the data set's name)
# ---------------------------------------------------------------------------------------------------------------------


def test_folder_with_unreadable_files_skips_and_counts_them(env):
    """Unreadable files in an image folder are skipped with a warning naming them and counted in the data's name."""
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable \(bad\.png\)"):
        data = load_image_folder(env.root / "mixed", patch_size=8, n_train=50, n_val=10, seed=0)
    assert "3 images, skipped 1 unreadable" in data.name
    assert data.train.shape == (50, 64) and np.isfinite(data.train).all()


def test_celeba_skips_unreadable_files_like_an_image_folder(tmp_path):
    """CelebA follows the folder rule: an undecodable chosen file is skipped and counted, not fatal mid-load."""
    from fond.data.color import load_celeba

    for i in range(1, 6):
        _png(tmp_path / f"{i:06d}.png", 24, seed=i)
    (tmp_path / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable \(000003\.jpg\)"):
        data = load_celeba(tmp_path, size=8, n_train=10, n_val=1, seed=0)
    assert data.train.shape == (4, 8 * 8 * 3) and "skipped 1 unreadable" in data.name


def test_cli_warns_in_one_line_and_goes_on(env, capsys):
    """On the command line a skipped file is one `fond: warning:` line, and the command still runs."""
    model = fond.IPVAE(256, 4, seed=0)  # the folder gives 16×16 patches
    run = env.root / "run64"
    model.save(run)
    code, err = _run_in_process(["eval", str(run), "--data", str(env.root / "mixed"), "--steps", "2",
                                 "--samples", "4", "--no-report", "--json"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"fond: warning: image folder '{env.root / 'mixed'}': skipped 1 unreadable (bad.png)"], err
