"""Reference models that ship inside the package, each with its model card.

    model = fond.pretrained("ipvae-natural16")        # the trained model; model.card is its card
    fond.pretrained.available()                       # ('ipvae-natural16', ...)
    fond.pretrained.card("ipvae-natural16")           # dict: command, iterations, data, numbers at t = 1000, ...
    fond eval pretrained:ipvae-natural16              # report in runs/pretrained-ipvae-natural16 (or --out)
    fond pretrained pack runs/my-run my-model         # a finished run → a pretrained model with its card

A pretrained model is a small read-only run folder, ``pretrained_models/NAME/`` inside the package::

    config.json         the run's config.json as ``fond train`` wrote it (model, train config, data)
    model.safetensors   the trained tensors, float32, copied byte for byte from the run
    report/eval.json    the card's evaluation summary (so ``fond compare`` and ``fond analyze frontier`` read it)
    card.json           the model card (``CARD_FIELDS``): command, iterations, data, numbers at t = 1000 on a
                        held-out sample, a smaller check sample, Gabor fraction, SHA-256 of model.safetensors
    README.md           the card as Markdown

so every reader of a run folder (``fond.load``, ``read_run``, ``fond eval/analyze/bench/compare``) reads it as it
is; ``pretrained:NAME`` names it wherever a run folder is accepted (:func:`resolve_run`), and commands that
write a report write it elsewhere (:func:`report_folder`). Every load checks model.safetensors against the
SHA-256 its card records. ``FOND_PRETRAINED_DIR=DIR`` reads (and packs) models in DIR instead of the
package's folder (tests; a collection of your own).

``fond.pretrained`` is this module, callable: ``fond.pretrained(name)`` is :func:`load`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import shlex
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fond.errors import CheckpointError, ConfigError, FondError, read_bytes

__all__ = ["PREFIX", "DIRECTORY_ENV", "CARD_FIELDS", "NUMBER_KEYS", "TOLERANCE", "models_directory", "available",
           "card", "run_folder", "load", "is_pretrained", "resolve_run", "report_folder", "pack", "verify",
           "train_command", "card_markdown", "listing", "sha256_of"]

#: ``pretrained:NAME`` names a shipped model wherever a run folder is accepted
PREFIX = "pretrained:"
#: environment variable: a folder of pretrained models read (and packed) instead of the package's own
DIRECTORY_ENV = "FOND_PRETRAINED_DIR"
CARD = "card.json"
CARD_README = "README.md"
#: what every card holds
CARD_FIELDS: tuple[str, ...] = ("name", "title", "model", "decoder", "n_inputs", "n_latents", "n_params", "data",
                                "command", "preset", "iterations", "schedule_iterations", "complete",
                                "training_minutes", "evaluation", "check", "gabor", "sha256", "weights_bytes",
                                "fond_version", "date")
#: the numbers of an evaluation that a re-evaluation must reproduce
NUMBER_KEYS: tuple[str, ...] = ("r2", "r2_rates", "zeros", "rate_distortion", "diverged_fraction")
#: largest difference allowed between a card's number and a re-evaluation on the same inputs with the same seed:
#: the same code gives the same numbers; other hardware or thread counts change float summation order, which can
#: flip a few spike counts over a 1000-step rollout
TOLERANCE = 0.01
EVAL_SAMPLES = 1000  # held-out inputs of the card's numbers
CHECK_SAMPLES = 100  # held-out inputs of the check that `verify` re-runs quickly
GABOR_SAMPLES, GABOR_STEPS = 500, 200  # what `fond analyze gabor` uses (its --samples default, its step cap)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SUMMARY_KEYS = ("r2", "r2_rates", "zeros", "rate_distortion", "diverged", "diverged_fraction", "nelbo",
                 "convergence_step", "rate_max", "n_params", "steps", "n_samples")


# ---- finding and reading a shipped model ----------------------------------------------------------------------


def models_directory() -> Path:
    """The folder of pretrained models: ``$FOND_PRETRAINED_DIR`` if set, else the package's ``pretrained_models``."""
    override = os.environ.get(DIRECTORY_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "pretrained_models"


def available() -> tuple[str, ...]:
    """The names of the pretrained models present (folders holding a card), sorted."""
    directory = models_directory()
    if not directory.is_dir():
        return ()
    return tuple(sorted(p.name for p in directory.iterdir() if (p / CARD).is_file()))


def _folder(name: str) -> Path:
    """The folder of pretrained model ``name``; an unknown name is one line listing the known ones."""
    if not isinstance(name, str) or name not in available():
        known = ", ".join(available()) or f"none in {models_directory()}"
        raise ConfigError(f"unknown pretrained model {name!r}; available: {known}")
    return models_directory() / name


def card(name: str) -> dict[str, Any]:
    """The model card of ``name`` (keys ``CARD_FIELDS``); a card that does not read or lacks a field is a
    one-line ``CheckpointError``."""
    path = _folder(name) / CARD
    try:
        data = json.loads(read_bytes(path, CheckpointError))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a JSON model card") from None
    missing = [key for key in CARD_FIELDS if not isinstance(data, dict) or key not in data]
    if missing:
        raise CheckpointError(f"{path}: model card lacks '{missing[0]}'")
    return data


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the bytes of ``path`` (one-line ``CheckpointError`` if it cannot be read)."""
    return hashlib.sha256(read_bytes(path, CheckpointError)).hexdigest()


def run_folder(name: str) -> Path:
    """The run folder of pretrained model ``name``, its weights checked against the SHA-256 of its card."""
    from fond.run import RunFolder

    folder = RunFolder(_folder(name))
    if sha256_of(folder.model_path) != card(name)["sha256"]:
        raise CheckpointError(f"pretrained model {name!r}: {folder.model_path} does not match the SHA-256 of its "
                              "card (corrupt or modified; reinstall fond or pack it again)")
    return folder.path


def load(name: str, device: str | None = "cpu"):
    """Pretrained model ``name``, rebuilt like ``fond.load`` from its checked folder (on ``device``);
    ``model.card`` is its card."""
    from fond.resume import load_model

    model = load_model(run_folder(name), device)
    model.card = card(name)
    return model


def is_pretrained(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` reads ``pretrained:NAME``."""
    return str(source).startswith(PREFIX)


def resolve_run(source: str | os.PathLike[str]) -> Path:
    """A run folder argument: ``pretrained:NAME`` → the model's checked folder; anything else as a path."""
    if is_pretrained(source):
        return run_folder(str(source)[len(PREFIX):])
    return Path(source)


def report_folder(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Where a command that writes a report about ``run`` writes it: ``out`` if given; for a pretrained model
    (never written into the package) ``runs/pretrained-NAME``; else the run folder itself."""
    if out is not None:
        return Path(out)
    run = Path(run)
    if is_pretrained(run):
        return Path("runs") / f"pretrained-{str(run)[len(PREFIX):]}"
    if run.resolve().parent == models_directory().resolve():
        return Path("runs") / f"pretrained-{run.name}"
    return run


# ---- evaluating one ------------------------------------------------------------------------------------------


def held_out_data(info: dict[str, Any]):
    """The data a run was trained on, split as in training (``info``: its ``read_run``): ``.val`` is held out."""
    from fond.data import load_data
    from fond.resume import training_split

    spec, split = training_split(info)
    return load_data(spec, **split)


def evaluation_numbers(model, x, *, steps: int, seed: int, offset=None) -> dict[str, Any]:
    """``fond.evaluate.evaluate`` of ``model`` on ``x`` (N, D) for ``steps`` steps, as JSON-ready numbers plus
    the sample's description (``samples`` = N, ``seed``); with ``offset`` (centred MNIST's mean digit) also the R²
    against the uncentred inputs (``r2_uncentred``, ``r2_rates_uncentred``: the paper's measure)."""
    from fond.evaluate import evaluate

    summary = evaluate(model, x, steps, seed=seed, offset=offset).summary()
    keys = _SUMMARY_KEYS + (("r2_uncentred", "r2_rates_uncentred") if offset is not None else ())
    return {**{key: summary[key] for key in keys}, "samples": int(len(x)), "seed": seed}


def gabor_numbers(model, spec: str) -> dict[str, Any]:
    """Gabor fits of the atoms of the ``MOST_ACTIVE_ATOMS`` most active neurons, exactly as ``fond analyze
    gabor`` computes them (its data, ``GABOR_SAMPLES`` inputs, ``GABOR_STEPS`` steps): fraction well fit (r² ≥
    min_r2), median r² of the fitted atoms, atoms examined."""
    from fond.analysis import gabor
    from fond.data import load_data

    data = load_data(spec, n_train=10, n_val=max(GABOR_SAMPLES, 100), seed=0)
    side = int(round(model.n_inputs ** 0.5))
    used = gabor.most_active_neurons(model, data.val[:GABOR_SAMPLES], steps=GABOR_STEPS)
    summary = gabor.fit_dictionary(model.dictionary.detach().cpu().numpy(), (side, side), columns=used).to_dict(
        include_fits=False)
    return {"fraction_well_fit": summary["fraction_well_fit"], "median_r2": summary["median_r2"],
            "n_atoms": summary["n_atoms"], "min_r2": summary["min_r2"], "samples": GABOR_SAMPLES,
            "steps": GABOR_STEPS}


def _gabor_applies(model, info: dict[str, Any]) -> bool:
    """A linear dictionary over square grey patches of natural images: Gabor fits mean something."""
    from fond.config import data_kind

    side = int(round(model.n_inputs ** 0.5))
    shape = (info.get("data") or {}).get("patch_shape")
    return (getattr(model, "dictionary", None) is not None and side * side == model.n_inputs
            and list(shape or []) == [side, side] and data_kind(info["data"]["spec"]) == "natural")


def _differences(record: dict[str, Any], now: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {key: {"card": record[key], "now": now[key]} for key in NUMBER_KEYS}


def _agree(a: Any, b: Any, tolerance: float) -> bool:
    a, b = float("nan") if a is None else a, float("nan") if b is None else b
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance


def verify(name: str, *, full: bool = False, tolerance: float = TOLERANCE) -> dict[str, dict[str, float]]:
    """Re-evaluate pretrained model ``name`` on its card's check sample (``full``: on the sample of its main
    numbers) — the same held-out inputs, steps and seed — and compare with the card: each of ``NUMBER_KEYS``
    within ``tolerance`` (absolute). Returns key → {"card", "now"}; a number off by more is a one-line
    ``FondError``."""
    from fond.resume import read_run

    record = card(name)["evaluation" if full else "check"]
    model = load(name)
    data = held_out_data(read_run(run_folder(name)))
    now = evaluation_numbers(model, data.val[:record["samples"]], steps=record["steps"], seed=record["seed"])
    differences = _differences(record, now)
    for key, pair in differences.items():
        if not _agree(pair["card"], pair["now"], tolerance):
            raise FondError(f"pretrained model {name!r}: {key} is {pair['now']} on its {record['samples']} "
                            f"{'' if full else 'check '}inputs, its card says {pair['card']} (tolerance {tolerance})")
    return differences


# ---- packing a finished run ----------------------------------------------------------------------------------


def _model_words(model_cfg, preset_name: str, spec: str) -> tuple[list[str], dict[str, Any]]:
    """``fond train`` flags giving ``model_cfg`` over what ``fond train --preset preset_name --data spec`` sets
    without them (the CLI's defaults, the preset's model options), and its fields that no flag sets (changed by
    code, not by ``fond train``)."""
    import dataclasses

    from fond.config import ModelConfig, preset_model_options

    preset_options = preset_model_options(preset_name, model_cfg.model, spec)
    preset_family = preset_options.pop("family_options", {})
    expected = {**{f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING},
                "n_latents": 512, **preset_options}
    flags = {"n_latents": "--latents", "decoder": "--decoder", "decoder_hidden": "--decoder-hidden",
             "encoder": "--encoder", "encoder_hidden": "--encoder-hidden"}
    words = [word for key, flag in flags.items() if getattr(model_cfg, key) != expected[key]
             for word in (flag, str(getattr(model_cfg, key)))]
    for key, value in sorted(model_cfg.family_options.items()):
        if preset_family.get(key) != value:
            words += ["--family-option", f"{key}={json.dumps(value)}"]
    for key, value in sorted(model_cfg.method_options.items()):
        words += ["--method-option", f"{key}={json.dumps(value)}"]
    unset = {key: getattr(model_cfg, key) for key in ("init_scale", "log_bias_init", "sigma_clamp")
             if getattr(model_cfg, key) != expected[key]}
    if set(preset_family) - set(model_cfg.family_options):  # the preset sets an option the run did not have
        unset["family_options"] = model_cfg.family_options
    return words, unset


def _train_words(cfg, base) -> tuple[list[str], dict[str, Any]]:
    """``fond train`` flags giving ``cfg`` over the preset ``base``, and the train fields that no flag sets
    (they go in a ``--config`` JSON file)."""
    from dataclasses import asdict

    flags = {"beta": "--beta", "steps": "--steps", "iterations": "--iterations", "batch_size": "--batch-size",
             "seed": "--seed"}
    words: list[str] = []
    for key, flag in flags.items():
        if getattr(cfg, key) != getattr(base, key):
            words += [flag, str(getattr(cfg, key))]
    return words, {k: v for k, v in asdict(cfg).items() if k not in flags and v != getattr(base, k)}


def train_command(info: dict[str, Any], out: str = "runs/NAME") -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The ``fond train`` command that trains the run whose ``read_run`` is ``info`` (preset + the flags that
    differ from it); the train fields no flag sets (``{}``, or the ``--config train.json`` it names); the model
    fields no flag sets (``{}`` unless the model was configured in code)."""
    from fond.config import PRESETS, ModelConfig, TrainConfig, config_from_dict, preset

    cfg = config_from_dict(TrainConfig, info["train"])
    model_cfg = config_from_dict(ModelConfig, info["model"])
    spec = info["data"]["spec"]
    base = preset(cfg.preset if cfg.preset in PRESETS else "quick", model_cfg.model, spec)
    train_words, rest = _train_words(cfg, base)
    model_words, unset = _model_words(model_cfg, base.preset, spec)
    head = ["fond", "train", "--model", model_cfg.model, "--data", spec, "--preset", base.preset]
    tail = ["--config", "train.json"] if rest else []
    return shlex.join(head + train_words + model_words + tail + ["--out", out]), rest, unset


def _training_record(folder) -> tuple[int | None, float | None]:
    """Iterations done (the checkpoint's position, else done.json's) and the training wall time in minutes
    summed over the log's segments (each resume restarts its clock), None where the run does not record it."""
    from fond.checkpoint import load_tensors

    iterations = None
    if folder.checkpoint_path.is_file():
        iterations = load_tensors(folder.checkpoint_path)[1].get("iteration")
    if iterations is None and folder.is_finished():
        iterations = json.loads(folder.done_path.read_text()).get("iterations")
    seconds, last = 0.0, 0.0
    if folder.metrics_path.is_file():
        for line in folder.metrics_path.read_text().splitlines():
            value = json.loads(line).get("seconds") if line.strip() else None
            if isinstance(value, int | float):
                seconds, last = (seconds + last, value) if value < last else (seconds, value)
    total = seconds + last
    return iterations, (round(total / 60.0, 2) if total > 0 else None)


def _fond_version() -> str:
    """The installed fond's version (read from its metadata: importing ``fond`` here would be an import circle)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fond")
    except PackageNotFoundError:
        return "unknown"


def _make_card(name: str, title: str | None, info: dict[str, Any], model, folder,
               command: str | None) -> dict[str, Any]:
    """The card's description of the run (every field but the numbers, Gabor fits and checksum)."""
    from fond.registry import model_title

    reconstructed, overrides, unset = train_command(info, out=f"runs/{name}")
    iterations, minutes = _training_record(folder)
    schedule = info["train"]["iterations"]
    return {
        "name": name, "title": title or f"{model_title(model.config.model)} on {info['data']['spec']}",
        "model": model.config.model, "decoder": model.config.decoder, "n_inputs": model.n_inputs,
        "n_latents": model.config.n_latents, "n_params": int(model.n_params()), "data": info["data"],
        "command": command or reconstructed, "train_overrides": overrides if command is None else {},
        "model_overrides": unset if command is None else {},
        "preset": info["train"]["preset"], "iterations": iterations, "schedule_iterations": schedule,
        "complete": iterations is not None and iterations >= schedule, "training_minutes": minutes,
        "fond_version": _fond_version(), "date": datetime.date.today().isoformat(),
    }


def pack(run: str | os.PathLike[str], name: str, *, title: str | None = None, command: str | None = None,
         steps: int = 1000, samples: int = EVAL_SAMPLES, check_samples: int = CHECK_SAMPLES, seed: int = 0,
         gabor: bool | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Pack the trained run in ``run`` as pretrained model ``name`` in :func:`models_directory` (replacing one of
    that name): its config.json and model.safetensors, evaluated for ``steps`` steps with ``seed`` on the first
    ``samples`` held-out inputs of its split (the card's numbers, also report/eval.json) and on the first
    ``check_samples`` (what :func:`verify` re-runs), Gabor fits if ``gabor`` (default: for a linear dictionary on
    square natural patches), the card (``command``: what trained it, default reconstructed from the config) and
    its Markdown. Returns the model's folder."""
    from fond.data.preprocessing import input_offset
    from fond.resume import load_model, read_run
    from fond.run import RunFolder

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"pretrained model name must be lower-case letters, digits, '.', '_' or '-', got {name!r}")
    say = log or (lambda message: None)
    source, info = RunFolder(run), read_run(run)
    model = load_model(source.path)
    if gabor and not _gabor_applies(model, info):
        raise FondError(f"{run}: Gabor fits need a linear dictionary trained on square natural patches")
    record = _make_card(name, title, info, model, source, command)
    data = held_out_data(info)
    say(f"evaluating {name} at t = {steps} on {min(samples, len(data.val))} held-out inputs")
    offset = input_offset(data.preprocessing)
    record["evaluation"] = evaluation_numbers(model, data.val[:samples], steps=steps, seed=seed, offset=offset)
    record["check"] = evaluation_numbers(model, data.val[:check_samples], steps=steps, seed=seed, offset=offset)
    record["gabor"] = None
    if gabor or (gabor is None and _gabor_applies(model, info)):
        say(f"fitting Gabors to the atoms of {name}'s most active neurons")
        record["gabor"] = gabor_numbers(model, info["data"]["spec"])
    return _write_model(source, name, record)


def _write_model(source, name: str, record: dict[str, Any]) -> Path:
    """Write the pretrained folder ``name``: the run's config and weights, the evaluation summary, the card
    (with the weights' SHA-256) and its Markdown."""
    from fond.run import RunFolder, atomic_write, write_json

    target = RunFolder(models_directory() / name)
    weights = read_bytes(source.model_path, CheckpointError)
    atomic_write(target.model_path, weights)
    atomic_write(target.config_path, read_bytes(source.config_path, CheckpointError))
    write_json(target.eval_path, {key: record["evaluation"][key] for key in _SUMMARY_KEYS})
    record.update(sha256=hashlib.sha256(weights).hexdigest(), weights_bytes=len(weights))
    ordered = {key: record[key] for key in (*CARD_FIELDS, "train_overrides", "model_overrides") if key in record}
    write_json(target.path / CARD, ordered)
    atomic_write(target.path / CARD_README, card_markdown(ordered))
    return target.path


# ---- showing cards -------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def card_markdown(record: dict[str, Any]) -> str:
    """The model card ``record`` as Markdown (each pretrained folder's README.md, ``fond pretrained show``)."""
    e, c, g = record["evaluation"], record["check"], record["gabor"]
    lines = [f"# {record['name']}: {record['title']}", "",
             f"{record['model']} ({record['decoder']} decoder), {record['n_inputs']} inputs, {record['n_latents']} "
             f"latents, {record['n_params']:,} parameters. Load it with `fond.pretrained(\"{record['name']}\")`, "
             f"or name it `pretrained:{record['name']}` in `fond eval`, `fond analyze`, `fond bench`.", "",
             "Trained by", "", f"    {record['command']}", ""]
    if record.get("train_overrides"):
        lines += [f"with train.json = `{json.dumps(record['train_overrides'])}`", ""]
    if record.get("model_overrides"):
        lines += [f"and model options no flag sets (set in code): `{json.dumps(record['model_overrides'])}`", ""]
    lines += [f"on `{record['data']['spec']}` ({record['data'].get('n_train')} training / "
              f"{record['data'].get('n_val')} held-out inputs), preset {record['preset']}: "
              f"{record['iterations']} of {record['schedule_iterations']} iterations"
              f"{'' if record['complete'] else ' (mid-schedule)'}, {_fmt(record['training_minutes'])} minutes.", "",
              "| sample | inputs | steps | seed | R² | R² (mean code) | zeros | d | diverged fraction |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, n in (("evaluation", e), ("check", c)):
        lines.append(f"| {label} | {n['samples']} | {n['steps']} | {n['seed']} | " + " | ".join(
            _fmt(n[k]) for k in NUMBER_KEYS) + " |")
    if e.get("r2_uncentred") is not None:
        lines += ["", f"On the digits before centring (the raw digits the paper's R² is measured on): R² "
                      f"{_fmt(e['r2_uncentred'])}, mean code {_fmt(e['r2_rates_uncentred'])} (evaluation sample)."]
    lines += ["", "Inputs: the first N held-out inputs of the run's own split; `fond pretrained verify "
              f"{record['name']}` re-runs the check sample (tolerance {TOLERANCE})."]
    if g is not None:
        lines += ["", f"Gabor fits (as `fond analyze gabor`): {_fmt(g['fraction_well_fit'])} of the {g['n_atoms']} "
                      f"most active neurons' atoms fit with r² ≥ {g['min_r2']}; median r² {_fmt(g['median_r2'])}."]
    lines += ["", f"model.safetensors: {record['weights_bytes']:,} bytes, SHA-256 `{record['sha256']}`. Packed by "
                  f"fond {record['fond_version']} on {record['date']}."]
    return "\n".join(lines) + "\n"


def listing() -> str:
    """A Markdown table of the pretrained models present: name, title, R², zeros, d, Gabor fraction."""
    rows = ["| name | title | iterations | R² | zeros | d | Gabor fraction |", "|---|---|---|---|---|---|---|"]
    for name in available():
        c = card(name)
        e, g = c["evaluation"], c["gabor"]
        rows.append(f"| {name} | {c['title']} | {c['iterations']} | {_fmt(e['r2'])} | {_fmt(e['zeros'])} | "
                    f"{_fmt(e['rate_distortion'])} | {_fmt(g['fraction_well_fit']) if g else '—'} |")
    return "\n".join(rows) if len(rows) > 2 else f"no pretrained models in {models_directory()}"


class _CallableModule(types.ModuleType):
    """This module, callable: ``fond.pretrained(name)`` is ``fond.pretrained.load(name)``."""

    def __call__(self, name: str):
        return load(name)


sys.modules[__name__].__class__ = _CallableModule
