"""Saving and loading without pickle: tensors in safetensors, everything else in JSON.

A model directory holds ``config.json`` (the ``ModelConfig`` and provenance) and ``model.safetensors``.
A training run directory additionally holds ``checkpoint.safetensors``: parameters, optimizer state and
the trainer's position (in the file's JSON metadata). Every file is written to a temporary name in the
same directory, flushed to disk and renamed over the old one, so a crash mid-write leaves the previous
file intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fond.config import ModelConfig, config_from_dict
from fond.errors import CheckpointError, ConfigError, read_bytes

__all__ = ["atomic_write", "save_model", "load_model", "save_tensors", "load_tensors", "FORMAT"]

FORMAT = "fond-model"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) and JSON ``metadata`` to a safetensors file."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {})}
    return atomic_write(path, st_save(flat, metadata=meta))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by ``save_tensors``; one-line ``CheckpointError`` on any fault."""
    path = Path(path)
    raw = read_bytes(path, CheckpointError)
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt: {reason})") from None
    return tensors, meta


def save_model(model: torch.nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    config = {"format": FORMAT, "version": FORMAT_VERSION, "model": asdict(model.config), **(extra or {})}
    save_tensors(directory / "model.safetensors", dict(model.state_dict()), {"model": config["model"]})
    atomic_write(directory / "config.json", json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked for format."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such directory")
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a fond model directory (no config.json)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable or not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fond model config (missing format '{FORMAT}')")
    return data


#: tensors renamed since the first release (the dictionary moved into the decoder module)
_LEGACY_TENSOR_NAMES = {"dictionary": "decoder.dictionary"}


def load_model(directory: str | Path) -> torch.nn.Module:
    """Rebuild a model from ``directory`` (``config.json`` + ``model.safetensors``), never unpickling."""
    from fond.models import build_model

    directory = Path(directory)
    data = read_config(directory)
    try:
        config = config_from_dict(ModelConfig, data.get("model"), source=str(directory / "config.json"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(config)
    tensors, _ = load_tensors(directory / "model.safetensors")
    tensors = {_LEGACY_TENSOR_NAMES.get(k, k): v for k, v in tensors.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        what = "missing" if missing else "unexpected"
        raise CheckpointError(f"{directory / 'model.safetensors'}: {what} tensor '{name}' (wrong model?)")
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CheckpointError(f"{directory / 'model.safetensors'}: tensor '{key}' has shape "
                                  f"{tuple(tensors[key].shape)}, config says {tuple(value.shape)}")
        if not torch.isfinite(tensors[key]).all():
            raise CheckpointError(f"{directory / 'model.safetensors'}: tensor '{key}' holds NaN or Inf")
    model.load_state_dict(tensors)
    return model
