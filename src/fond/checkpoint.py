"""Saving and loading without pickle: tensors in safetensors, everything else in JSON.

A model directory holds ``config.json`` (the ``ModelConfig`` and provenance) and ``model.safetensors``.
A training run directory additionally holds ``checkpoint.safetensors``: parameters, optimizer state and
the trainer's position (in the file's JSON metadata), and ``checkpoint.prev.safetensors``, the checkpoint
before it. Every file is written to a temporary name in the same directory, flushed to disk (``fsync``)
and renamed over the old one, and the directory is synced, so a crash mid-write leaves the previous file
intact. Tensor files carry a SHA-256 of their metadata and tensors: a truncated, corrupt or tampered file
is refused with a one-line ``CheckpointError`` naming the file and the problem. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
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

from fond.config import ModelConfig, config_from_dict
from fond.errors import CheckpointError, ConfigError, read_bytes

__all__ = ["atomic_write", "save_model", "load_model", "save_tensors", "load_tensors", "check_tensors",
           "remove_stale_temporaries", "FORMAT"]

FORMAT = "fond-model"
FORMAT_VERSION = 1

_TMP_MARK = ".tmp-"


def _fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str, *, keep_previous: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, flush + fsync, rename, fsync
    of the directory. With ``keep_previous``, the file ``path`` held is first renamed to ``keep_previous``
    (so at every instant one of the two names holds a complete file). A failed write removes its temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)
    return path


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temp files ``atomic_write`` left in ``directory`` when its process was killed mid-write
    (those of processes still alive are kept). Returns the paths removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(f".*{_TMP_MARK}*"):
        pid_text = path.name.rpartition(_TMP_MARK)[2]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        if os.name == "posix":
            try:
                os.kill(int(pid_text), 0)
                continue  # the writer is alive (or the pid was reused): leave it
            except ProcessLookupError:
                pass
            except OSError:
                continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


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
    a SHA-256 of both in the header; ``keep_previous``: see ``atomic_write``."""
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
    directory = Path(directory)
    config = {"format": FORMAT, "version": FORMAT_VERSION, "model": asdict(model.config), **(extra or {})}
    save_tensors(directory / "model.safetensors", dict(model.state_dict()), {"model": config["model"]})
    _write_if_changed(directory / "config.json", json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked for format."""
    if not isinstance(directory, str | os.PathLike):
        raise CheckpointError(f"model directory must be a path, got {type(directory).__name__}")
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (a model is a run folder with config.json)")
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

    data = read_config(directory)
    directory = Path(directory)
    try:
        config = config_from_dict(ModelConfig, data.get("model"), source=str(directory / "config.json"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(config)
    path = directory / "model.safetensors"
    tensors, _ = load_tensors(path)
    tensors = {_LEGACY_TENSOR_NAMES.get(k, k): v for k, v in tensors.items()}
    check_tensors(path, tensors, model.state_dict())
    model.load_state_dict(tensors)
    return model
