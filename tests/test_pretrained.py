"""Pretrained models: a tiny run packed, loaded with its card, named as ``pretrained:NAME`` by the commands.

Oracles: the packed weights are the run's own (same bytes, same SHA-256); the card's command, run again,
trains the same weights (training is seeded); the card's numbers are what ``fond eval`` and ``fond analyze
gabor`` print on the same inputs; a corrupt file or an unknown name is one line. The models that ship in
``src/fond/pretrained_models`` are checked the same way (load, SHA-256, numbers on the check sample).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

import fond
from fond import pretrained
from fond.errors import CheckpointError, ConfigError, FondError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MODELS = ROOT / "src" / "fond" / "pretrained_models"
SHIPPED = sorted(p.name for p in PACKAGE_MODELS.iterdir() if p.is_dir()) if PACKAGE_MODELS.is_dir() else []
MODEL_FILES = ("config.json", "model.safetensors", "card.json", "README.md", "report/eval.json")


def fond_cli(*args, cwd=None, models=None):
    env = {**os.environ, pretrained.DIRECTORY_ENV: str(models)} if models else None
    return subprocess.run([sys.executable, "-m", "fond", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-iteration iP-VAE (K = 12) on 16×16 sparse-coded patches, trained by `fond train` as a user would."""
    tmp = tmp_path_factory.mktemp("pretrained")
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((8, 256))
    x = rng.poisson(0.3, (300, 8)) @ atoms + 0.1 * rng.standard_normal((300, 256))
    np.save(tmp / "patches.npy", (x / x.std()).astype(np.float32))
    (tmp / "train.json").write_text(json.dumps({"n_train": 200, "n_val": 40, "checkpoint_every": 2,
                                                "eval_every": 100, "eval_samples": 10, "eval_steps": 5}))
    command = ["train", "--data", str(tmp / "patches.npy"), "--preset", "quick", "--iterations", "4", "--steps", "3",
               "--batch-size", "20", "--latents", "12", "--config", str(tmp / "train.json"), "--out",
               str(tmp / "run"), "--no-eval", "--no-progress"]
    proc = fond_cli(*command)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def models(tiny_run, tmp_path_factory):
    """A models folder (``FOND_PRETRAINED_DIR``) holding the tiny run packed as 'tiny'."""
    directory = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(pretrained.DIRECTORY_ENV, str(directory))
        pretrained.pack(tiny_run, "tiny", title="a tiny test model", steps=40, samples=30, check_samples=10)
        yield directory


@pytest.fixture
def use_models(models, monkeypatch):
    monkeypatch.setenv(pretrained.DIRECTORY_ENV, str(models))
    return models


def test_a_packed_model_loads_with_its_card_and_the_runs_weights(tiny_run, use_models):
    """fond.pretrained(name) is the trained model, byte for byte, and carries a complete card."""
    model = fond.pretrained("tiny")
    run_model = fond.load(tiny_run)
    for key, value in run_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    card = model.card
    assert card == pretrained.card("tiny") and set(pretrained.CARD_FIELDS) <= set(card)
    assert pretrained.available() == ("tiny",)
    assert card["sha256"] == pretrained.sha256_of(tiny_run / "model.safetensors")
    assert (card["iterations"], card["schedule_iterations"], card["complete"]) == (4, 4, True)
    assert card["evaluation"]["samples"] == 30 and card["check"]["samples"] == 10
    assert card["evaluation"]["steps"] == 40 and card["gabor"]["n_atoms"] == 12  # square patches → Gabor fits
    assert card["data"]["spec"].endswith("patches.npy") and card["training_minutes"] > 0
    assert all((use_models / "tiny" / name).is_file() for name in MODEL_FILES)


def test_the_card_numbers_reproduce_and_a_wrong_one_is_caught(use_models, tmp_path, monkeypatch):
    """verify re-runs the card's samples and agrees; a card that lies about a number is named in one line."""
    for full in (False, True):
        for key, pair in pretrained.verify("tiny", full=full).items():
            assert abs(pair["card"] - pair["now"]) <= pretrained.TOLERANCE, key
    shutil.copytree(use_models, tmp_path / "models")
    card_path = tmp_path / "models" / "tiny" / "card.json"
    card = json.loads(card_path.read_text())
    card["check"]["zeros"] -= 0.5
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv(pretrained.DIRECTORY_ENV, str(tmp_path / "models"))
    with pytest.raises(FondError, match="zeros is .* its card says"):
        pretrained.verify("tiny")


@pytest.mark.slow
def test_the_cards_command_trains_the_same_weights(tiny_run, use_models, tmp_path):
    """The recorded command is the one that trained the model: run again (seeded), it gives the same tensors."""
    card = pretrained.card("tiny")
    (tmp_path / "train.json").write_text(json.dumps(card["train_overrides"]))
    words = shlex.split(card["command"])
    assert words[:2] == ["fond", "train"] and words[-2] == "--out" and not card["model_overrides"]
    proc = fond_cli(*words[1:-1], str(tmp_path / "again"), "--no-eval", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again, packed = fond.load(tmp_path / "again"), fond.pretrained("tiny")
    for key, value in packed.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.mark.slow
def test_eval_and_analyze_take_pretrained_names_and_never_write_into_the_models(models, tmp_path):
    """`fond eval pretrained:NAME` prints the card's numbers and writes its report outside the models folder;
    `fond analyze gabor pretrained:NAME` gives the card's Gabor fraction (the card computes it the same way)."""
    before = sorted(p.relative_to(models) for p in models.rglob("*"))
    card = json.loads((models / "tiny" / "card.json").read_text())
    proc = fond_cli("eval", "pretrained:tiny", "--steps", "40", "--samples", "30", "--json", cwd=tmp_path,
                    models=models)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in pretrained.NUMBER_KEYS:
        assert abs(summary[key] - card["evaluation"][key]) <= pretrained.TOLERANCE, key
    assert (tmp_path / "runs" / "pretrained-tiny" / "report" / "eval.json").is_file()
    proc = fond_cli("eval", "pretrained:tiny", "--steps", "5", "--out", str(tmp_path / "elsewhere"), models=models)
    assert proc.returncode == 0 and (tmp_path / "elsewhere" / "report" / "report.md").is_file(), proc.stderr
    proc = fond_cli("analyze", "gabor", "pretrained:tiny", "--out", str(tmp_path / "analysis"), models=models)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fraction_well_fit"] == card["gabor"]["fraction_well_fit"]
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == before


def test_compare_list_and_show_read_pretrained_models(use_models, capsys):
    """The card's evaluation is the folder's report/eval.json, so `fond compare pretrained:NAME` reads it."""
    from fond.cli import main

    assert main(["compare", "pretrained:tiny"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert f"| {pretrained.card('tiny')['evaluation']['r2']:.3f} |" in row and row.endswith("tiny |")
    assert main(["pretrained", "list"]) == 0 and "a tiny test model" in capsys.readouterr().out
    assert main(["pretrained", "show", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"


def test_pack_from_the_command_line_writes_a_card_with_the_options_given(tiny_run, tmp_path, monkeypatch, capsys):
    """`fond pretrained pack RUN NAME` takes the sample sizes, steps, title and command it is given."""
    from fond.cli import main

    monkeypatch.setenv(pretrained.DIRECTORY_ENV, str(tmp_path))
    assert main(["pretrained", "pack", str(tiny_run), "tiny-cli", "--steps", "5", "--samples", "12",
                 "--check-samples", "6", "--no-gabor", "--title", "from the CLI", "--command", "fond train ..."]) == 0
    card = pretrained.card("tiny-cli")
    assert (card["evaluation"]["steps"], card["evaluation"]["samples"], card["check"]["samples"]) == (5, 12, 6)
    assert card["gabor"] is None and card["title"] == "from the CLI" and card["command"] == "fond train ..."
    assert "# tiny-cli: from the CLI" in capsys.readouterr().out


def test_a_corrupt_weights_file_is_one_line(use_models, tmp_path, monkeypatch):
    """A flipped byte in the shipped weights is refused (the SHA-256 of the card), in Python and on the CLI."""
    shutil.copytree(use_models, tmp_path / "models")
    weights = tmp_path / "models" / "tiny" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x10
    weights.write_bytes(bytes(raw))
    monkeypatch.setenv(pretrained.DIRECTORY_ENV, str(tmp_path / "models"))
    with pytest.raises(CheckpointError, match="SHA-256"):
        fond.pretrained("tiny")
    proc = fond_cli("eval", "pretrained:tiny", "--steps", "5", cwd=tmp_path, models=tmp_path / "models")
    assert proc.returncode == 2 and proc.stderr.startswith("fond: error:") and proc.stderr.count("\n") == 1
    assert "SHA-256" in proc.stderr


def test_an_unknown_name_is_one_line_listing_the_known_ones(use_models, tmp_path):
    """A typo names what exists, in Python and from every command that takes a run."""
    with pytest.raises(ConfigError, match="available: tiny"):
        fond.pretrained("tiny2")
    for args in (["eval", "pretrained:nope"], ["bench", "pretrained:nope"], ["analyze", "gabor", "pretrained:nope",
                                                                             "--out", str(tmp_path)]):
        proc = fond_cli(*args, cwd=tmp_path, models=use_models)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "available: tiny" in proc.stderr, args


def test_pack_refuses_a_bad_name_and_gabor_fits_where_they_mean_nothing(tiny_run, use_models, tmp_path):
    """Names are folder names; Gabor fits of a model without a square natural-patch dictionary are refused."""
    with pytest.raises(ConfigError, match="name"):
        pretrained.pack(tiny_run, "../escape")
    shutil.copytree(tiny_run, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["data"]["spec"] = "mnist"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FondError, match="Gabor"):
        pretrained.pack(tmp_path / "run", "digits", gabor=True)


def test_every_file_of_a_model_folder_is_package_data(use_models):
    """pyproject's package-data patterns take every file pack writes, so an installed fond ships the models."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fond"]
    for name in MODEL_FILES:
        path = PurePosixPath("pretrained_models", "tiny", name)
        assert any(path.match(pattern) for pattern in patterns), name


def test_report_folder_keeps_writes_out_of_the_models(use_models, tmp_path):
    """A report about a pretrained model goes to runs/pretrained-NAME (or --out); a run's own report stays in it."""
    assert pretrained.report_folder(pretrained.resolve_run("pretrained:tiny")) == Path("runs/pretrained-tiny")
    assert pretrained.report_folder("pretrained:tiny", tmp_path) == tmp_path
    assert pretrained.report_folder(tmp_path / "run") == tmp_path / "run"


def test_every_folder_in_the_package_is_a_complete_model():
    """A folder in src/fond/pretrained_models without its files or a complete card would ship half a model."""
    for name in SHIPPED:
        for file in MODEL_FILES:
            assert (PACKAGE_MODELS / name / file).is_file(), f"{name}/{file}"
        card = json.loads((PACKAGE_MODELS / name / "card.json").read_text())
        assert [key for key in pretrained.CARD_FIELDS if key not in card] == [], name
        assert card["name"] == name and card["complete"], name


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_loads_matches_its_sha_and_reproduces_its_card(name, monkeypatch):
    """What ships is what the card describes: the weights hash to its SHA-256 and give its numbers."""
    monkeypatch.delenv(pretrained.DIRECTORY_ENV, raising=False)
    model = fond.pretrained(name)
    assert model.card["sha256"] == pretrained.sha256_of(PACKAGE_MODELS / name / "model.safetensors")
    assert model.card["evaluation"]["steps"] == 1000 and model.card["evaluation"]["samples"] >= 1000
    for key, pair in pretrained.verify(name).items():
        assert abs(pair["card"] - pair["now"]) <= pretrained.TOLERANCE, key


def test_a_runs_training_split_is_rebuilt_from_its_config_and_a_run_without_one_is_one_line(tiny_run):
    """Held-out numbers are only honest on the run's own held-out rows: the split comes from config.json."""
    from fond.resume import read_run, training_split

    spec, split = training_split(read_run(tiny_run))
    assert spec.endswith("patches.npy") and split == {"n_train": 200, "n_val": 40, "seed": 0}
    assert np.array_equal(pretrained.held_out_data(read_run(tiny_run)).val,
                          fond.data.load_data(spec, n_train=200, n_val=40, seed=0).val)
    with pytest.raises(FondError, match="records no training data"):
        training_split({"train": read_run(tiny_run)["train"]})
