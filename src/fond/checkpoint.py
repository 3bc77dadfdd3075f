"""Tensor files without pickle: safetensors + JSON, checksummed, with one-line errors for bad files.

``save_tensors`` / ``load_tensors`` write and read a safetensors file whose header carries JSON metadata and
a SHA-256 of the metadata and tensors: a truncated, corrupt or tampered file is refused with a one-line
``CheckpointError`` naming the file and the problem, and nothing is ever unpickled. ``check_tensors``
compares loaded tensors with the ones a model expects. ``save_model`` / ``read_config`` write and read a
model's files in a run folder (``config.json`` + ``model.safetensors``; names from ``fond.run.RunFolder``).
Every file goes through ``fond.run.atomic_write`` (temp file, fsync, rename, fsync of the folder).

This module knows tensors and files, not models: rebuilding a model from its folder is
``fond.resume.load_model`` (``fond.load``), a training checkpoint's contents are ``fond.resume``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fond.errors import CheckpointError, read_bytes
from fond.run import RunFolder, atomic_write

__all__ = ["save_model", "read_config", "save_tensors", "load_tensors", "check_tensors", "FORMAT", "FORMAT_VERSION",
           "QUANTIZED_FORMAT"]

FORMAT = "fond-model"
FORMAT_VERSION = 1
#: the integer models ``fond quantize`` writes (``fond.fixedpoint``): read by the same commands
QUANTIZED_FORMAT = "fond-fixedpoint"


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 of the metadata and of every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None, *,
                 keep_previous: str | Path | None = None) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies) and JSON ``metadata`` to a safetensors file, with
    a SHA-256 of both in the header; ``keep_previous``: see ``fond.run.atomic_write``. A failed write
    raises a one-line ``StorageError`` and leaves the file ``path`` held intact."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(metadata or {})
    meta = {"json": meta_json, "sha256": _digest(flat, meta_json)}
    return atomic_write(path, st_save(flat, metadata=meta), keep_previous=keep_previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by ``save_tensors``; one-line ``CheckpointError`` naming the file and
    the problem if it is missing, empty, truncated, not safetensors (a pickle is recognised and never
    loaded), corrupt, or does not match its checksum."""
    path = Path(path)
    raw = read_bytes(path, CheckpointError)
    if not raw:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a safetensors file")
    header_len = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
    if header_len < 0 or header_len > len(raw) - 8 or raw[8:9] != b"{":
        if raw[:1] == b"\x80" or raw[:2] == b"PK":  # pickle protocol ≥ 2, or torch.save's zip of pickles
            kind = "a pickle" if raw[:1] == b"\x80" else "a zip archive (torch.save?)"
            raise CheckpointError(f"{path}: not a safetensors file (looks like {kind}; fond never unpickles)")
        if header_len < 0:
            raise CheckpointError(f"{path}: truncated ({len(raw)} bytes, shorter than a safetensors header)")
        if header_len > len(raw) - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {header_len} bytes "
                                  f"announced, {len(raw) - 8} present)")
    try:
        header = json.loads(raw[8:8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        extra = header.get("__metadata__") or {}
        meta = json.loads(extra.get("json", "{}"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({_first_line(exc)})") from None
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({_first_line(exc)})") from None
    expected = extra.get("sha256")
    if expected is not None and _digest(tensors, extra.get("json", "{}")) != expected:
        raise CheckpointError(f"{path}: contents do not match their SHA-256 (corrupt or tampered with)")
    return tensors, meta


def check_tensors(path: str | Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  what: str = "tensor") -> None:
    """``tensors`` has exactly the names and shapes of ``expected``, with finite floating values; else a
    one-line ``CheckpointError`` naming ``path`` and the first mismatch."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        state = "missing" if missing else "unexpected"
        raise CheckpointError(f"{path}: {state} {what} '{name}' (wrong model?)")
    for key, value in expected.items():
        got = tensors[key]
        if got.shape != value.shape:
            raise CheckpointError(f"{path}: {what} '{key}' has shape {tuple(got.shape)}, the model needs "
                                  f"{tuple(value.shape)} (wrong model?)")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: {what} '{key}' holds NaN or Inf")


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, text)


def save_model(model: torch.nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``."""
    folder = RunFolder(directory)
    config = {"format": FORMAT, "version": FORMAT_VERSION, "model": asdict(model.config), **(extra or {})}
    save_tensors(folder.model_path, dict(model.state_dict()), {"model": config["model"]})
    _write_if_changed(folder.config_path, json.dumps(config, indent=2) + "\n")
    return folder.path


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked for format."""
    if not isinstance(directory, str | os.PathLike):
        raise CheckpointError(f"model directory must be a path, got {type(directory).__name__}")
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (a model is a run folder with config.json)")
    path = RunFolder(directory).config_path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a fond model directory (no {path.name})") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable or not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, QUANTIZED_FORMAT):
        raise CheckpointError(f"{path}: not a fond model config (missing format '{FORMAT}')")
    return data
