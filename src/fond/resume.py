"""A run folder read back: the trained model, and the training state a checkpoint holds.

``load_model(DIR)`` (``fond.load``) rebuilds a model from ``config.json`` + ``model.safetensors``.

A training checkpoint (``checkpoint.safetensors``, the one before it kept as ``checkpoint.prev.safetensors``)
holds the model's tensors as ``model.NAME``, the optimizer's state as ``optim.NAME.SLOT`` (Adamax: step, exp_avg,
exp_inf; SGD: momentum_buffer) and,
in its metadata, the iteration, the model and training configurations and the data description: with the
seeded streams of ``fond.train`` that is the whole state, so a run resumed from it ends where an
uninterrupted one does. ``write_checkpoint`` writes one; ``resume_from_checkpoint`` validates and loads the
newest usable one (setting an unreadable newest one aside with a one-line warning); ``run_configuration``
reads back what the run was trained with (``fond train --resume DIR``). File names come from ``fond.run.RunFolder``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fond.checkpoint import QUANTIZED_FORMAT, check_tensors, load_tensors, read_config, save_tensors
from fond.config import ModelConfig, TrainConfig, config_from_dict
from fond.device import resolve_device
from fond.errors import CheckpointError, ConfigError, FondError, StorageError
from fond.models import build_model
from fond.run import RunFolder

__all__ = ["load_model", "read_run", "training_split", "write_checkpoint", "resume_from_checkpoint",
           "run_configuration", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fond-checkpoint"
#: each optimizer's per-parameter state (``TrainConfig.optimizer``): "step" a scalar, the others the parameter's shape
_OPTIMIZER_SLOTS = {torch.optim.Adamax: ("step", "exp_avg", "exp_inf"), torch.optim.SGD: ("momentum_buffer",)}

#: tensors renamed since the first release (the dictionary moved into the decoder module)
_LEGACY_TENSOR_NAMES = {"dictionary": "decoder.dictionary"}


def load_model(directory: str | os.PathLike[str], device: str | torch.device | None = "cpu") -> torch.nn.Module:
    """Rebuild a model from ``directory`` (``config.json`` + ``model.safetensors``), never unpickling;
    one-line ``CheckpointError`` for a missing, foreign or damaged file. ``device``: where the model goes
    ("cpu", "cuda[:N]", "auto"; ``fond.device.resolve_device``): files written on any device load on any other."""
    data = read_config(directory)
    if data.get("format") == QUANTIZED_FORMAT:
        return _load_quantized(directory, device)
    folder = RunFolder(directory)
    try:
        config = config_from_dict(ModelConfig, data.get("model"), source=str(folder.config_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(config)
    tensors, _ = load_tensors(folder.model_path)
    tensors = {_LEGACY_TENSOR_NAMES.get(k, k): v for k, v in tensors.items()}
    check_tensors(folder.model_path, tensors, model.state_dict())
    model.load_state_dict(tensors)
    record = data.get("preprocessing") or (data.get("data") or {}).get("preprocessing")
    if record is not None:
        from fond.data.preprocessing import Preprocessing

        try:
            model.preprocessing = Preprocessing.from_dict(record)
        except FondError as exc:
            raise CheckpointError(f"{folder.config_path}: {exc}") from None
    return model.to(resolve_device(device))


def _load_quantized(directory: str | os.PathLike[str], device: str | torch.device | None):
    """An integer model (``fond quantize``): its engine runs on the CPU whatever the device asked for, except
    an explicit CUDA device, which is refused."""
    from fond.fixedpoint import load

    if device not in (None, "auto", "cpu") and _device_type(device) != "cpu":
        raise ConfigError(f"{directory}: an integer (fixed-point) model runs on the CPU only, not on {device}")
    return load(directory)


def _device_type(device: str | torch.device) -> str:
    """The kind of device ``device`` names ("cpu", "cuda", ...), whether or not this machine has one."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return resolve_device(device).type  # the one-line error for a malformed name


def read_run(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The run information (train config, data spec) stored beside a trained model in ``config.json``."""
    data = read_config(directory)
    if "train" in data:
        config_from_dict(TrainConfig, data["train"], source=str(RunFolder(directory).config_path))
    return data


def training_split(info: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """The data spec a run was trained on and the ``fond.data.load_data`` keywords that rebuild its split
    (``n_train``, ``n_val``, ``seed``; ``.val`` is then the run's held-out data). ``info``: its ``read_run``."""
    spec = (info.get("data") or {}).get("spec")
    if not isinstance(spec, str) or "train" not in info:
        raise FondError("the run records no training data (config.json has no data spec or train config)")
    cfg = config_from_dict(TrainConfig, info["train"])
    return spec, {"n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed}


def preprocessing_of(info: dict[str, Any]):
    """The ``fond.data.Preprocessing`` a run's inputs were made with (``info``: its ``read_run``), or None
    (inputs given as they are: a .npy file; a colour or contrast-normalised set). Runs that predate the record
    get it rebuilt from their training split (exact: the same patches set the same scale)."""
    from fond.data import load_data
    from fond.data.preprocessing import Preprocessing

    data = info.get("data") or {}
    if "preprocessing" in data:
        return Preprocessing.from_dict(data["preprocessing"])
    if "input_std" in data:  # recorded after preprocessing records began: the inputs had none
        return None
    spec, split = training_split(info)
    record = load_data(spec, **split).preprocessing
    return None if record is None else Preprocessing.from_dict(record)


# ---- writing a checkpoint -----------------------------------------------------------------------------------


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def _optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if value is not None:  # (SGD without momentum keeps a None buffer)
                out[f"optim.{names[id(param)]}.{key}"] = torch.as_tensor(value)
    return out


def write_checkpoint(folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                     run_info: dict[str, Any]) -> Path:
    """Write the checkpoint of ``iteration`` completed iterations (the old one kept as
    ``checkpoint.prev.safetensors``). ``run_info``: ``{"train": asdict(TrainConfig), "data": {...}}``."""
    tensors = _model_tensors(model)
    tensors.update(_optimizer_tensors(model, optimizer))
    meta = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "model": asdict(model.config), **run_info}
    return save_tensors(folder.checkpoint_path, tensors, meta, keep_previous=folder.previous_checkpoint_path)


# ---- reading one back ---------------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and metadata; ``CheckpointError`` if unreadable or without a position."""
    tensors, meta = load_tensors(path)
    iteration = meta.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
        raise CheckpointError(f"{path}: no valid training position in its metadata (iteration {iteration!r})")
    if not isinstance(meta.get("train"), dict):
        raise CheckpointError(f"{path}: no training configuration in its metadata")
    return tensors, meta


def _saved_model_config(folder: RunFolder, meta: dict[str, Any]) -> dict[str, Any]:
    saved = meta.get("model")
    if saved is None:  # checkpoints written before the model config was stored in them
        saved = read_config(folder.path).get("model")
    return saved


def _normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _check_same_configuration(folder: RunFolder, path: Path, meta: dict[str, Any], model_config: ModelConfig,
                              cfg: TrainConfig) -> None:
    """Refuse (``FondError`` naming the first differing key) a checkpoint of another configuration."""
    for section, saved, now in (("model", _saved_model_config(folder, meta), asdict(model_config)),
                                ("train", meta.get("train"), asdict(cfg))):
        now = _normalised(now)
        if saved == now:
            continue
        saved = saved if isinstance(saved, dict) else {}
        key = next((k for k in list(now) + list(saved) if saved.get(k) != now.get(k)), "?")
        raise FondError(f"{folder.path} holds a run with a different configuration ({section}.{key} is "
                        f"{saved.get(key)!r} in {path.name}, {now.get(key)!r} now); use another --out")


def run_configuration(directory: str | os.PathLike[str]) -> tuple[TrainConfig, ModelConfig, dict[str, Any]]:
    """The training and model configuration and the data description (``spec``, sizes) of the run in
    ``directory``, from its newest readable checkpoint (for ``fond train --resume DIR``)."""
    folder = RunFolder(directory)
    if not folder.path.is_dir():
        raise CheckpointError(f"{folder.path}: no such run directory")
    candidates = folder.checkpoints()
    if not candidates:
        raise CheckpointError(f"{folder.path}: no checkpoint to resume ({folder.checkpoint_path.name} not found)")
    problems = []
    for path in candidates:
        try:
            _, meta = _read_checkpoint(path)
            cfg = config_from_dict(TrainConfig, meta["train"], source=str(path))
            model_config = config_from_dict(ModelConfig, _saved_model_config(folder, meta), source=str(path))
        except (CheckpointError, ConfigError) as exc:
            problems.append(str(exc))
            continue
        return cfg, model_config, meta.get("data") or {}
    raise CheckpointError(f"{folder.path}: no usable checkpoint: " + "; ".join(problems))


# ---- restoring it -------------------------------------------------------------------------------------------


def _optimizer_state(path: Path, tensors: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter],
                     slots: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The ``optim.*`` tensors as parameter name → slot → tensor, each checked (known parameter, one of the
    optimizer's ``slots``, shape, finite, every slot present); one-line ``CheckpointError`` naming the first
    problem otherwise."""
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        name, _, slot = key[len("optim."):].rpartition(".")
        if name not in params:
            raise CheckpointError(f"{path}: optimizer state for unknown parameter '{name}' (wrong model?)")
        if slot not in slots:
            raise CheckpointError(f"{path}: unknown optimizer state '{key}' (another optimizer's?)")
        shape = () if slot == "step" else params[name].shape
        if value.shape != shape:
            raise CheckpointError(f"{path}: optimizer state '{key}' has shape {tuple(value.shape)}, the model "
                                  f"needs {tuple(shape)} (wrong model?)")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: optimizer state '{key}' holds NaN or Inf")
        optim.setdefault(name, {})[slot] = value
    for name, held in optim.items():
        if len(held) != len(slots):
            lacking = next(s for s in slots if s not in held)
            raise CheckpointError(f"{path}: missing optimizer state 'optim.{name}.{lacking}'")
    return optim


def _restore(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> None:
    """Check every tensor of a checkpoint (names, shapes, finiteness) before touching the model or optimizer,
    then load them; a one-line ``CheckpointError`` naming the file and the first problem otherwise."""
    params = dict(model.named_parameters())
    model_tensors = {k: v for k, v in tensors.items() if k.startswith("model.")}
    other = sorted(k for k in tensors if not k.startswith(("model.", "optim.")))
    if other:
        raise CheckpointError(f"{path}: unexpected tensor '{other[0]}' (not a fond training checkpoint?)")
    check_tensors(path, model_tensors, _model_tensors(model))
    optim = _optimizer_state(path, tensors, params, _OPTIMIZER_SLOTS[type(optimizer)])
    model.load_state_dict({k[len("model."):]: v for k, v in model_tensors.items()})
    optimizer.state.clear()
    for name, slots in optim.items():
        # Adamax keeps its step count on the CPU, its moments (as SGD its momentum) beside the parameter
        optimizer.state[params[name]] = {slot: value.clone() if slot == "step" else value.to(params[name].device,
                                                                                            copy=True)
                                          for slot, value in slots.items()}


def resume_from_checkpoint(folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           model_config: ModelConfig, cfg: TrainConfig) -> int:
    """Load the newest checkpoint of ``folder`` that reads and validates into ``model`` and ``optimizer`` and
    return its iteration. An unusable newest one is reported (one-line warning naming it and the problem),
    set aside as ``*.corrupt`` and the previous one used; a checkpoint of another configuration is refused
    (``FondError``); none usable: ``CheckpointError`` naming each file and its problem."""
    problems: list[tuple[Path, str]] = []
    for path in folder.checkpoints():
        try:
            tensors, meta = _read_checkpoint(path)
        except CheckpointError as exc:
            problems.append((path, str(exc)))
            continue
        _check_same_configuration(folder, path, meta, model_config, cfg)
        iteration = meta["iteration"]
        try:
            if iteration > cfg.iterations:
                raise CheckpointError(f"{path}: iteration {iteration} is beyond the schedule's {cfg.iterations}")
            _restore(path, tensors, model, optimizer)
        except CheckpointError as exc:
            problems.append((path, str(exc)))
            continue
        for bad, problem in problems:
            aside = bad.with_name(bad.name + ".corrupt")
            try:
                os.replace(bad, aside)  # so the next checkpoint does not rotate it over the good one
            except OSError as exc:
                raise StorageError(f"cannot rename {bad} to {aside.name}: {exc.strerror or exc}") from None
            warnings.warn(f"{problem}; resuming from {path} (iteration {iteration}), the unusable file is "
                          f"kept as {aside.name}", stacklevel=4)
        return iteration
    raise CheckpointError(f"{folder.path}: no usable checkpoint: " + "; ".join(p for _, p in problems))
