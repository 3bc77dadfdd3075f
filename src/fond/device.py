"""Where tensors live: the ``--device`` option of every command, resolved once, and its random generators.

A run's numbers do not depend on where it ran beyond sampling: the CPU draws come from fond's compiled,
counter-based kernels, a CUDA device draws with torch's own generator (``fond.families.sampling``), so the
same seed gives the same distributions but not the same draws. Nothing here is stored in a run's
config: a run trained on a GPU is evaluated, resumed or loaded on a CPU and the other way round (files are
always written from CPU copies and read onto the device asked for).

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("auto").type in ("cpu", "cuda")
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fond.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use: the command line reads DEVICE_HELP without it
    import torch

__all__ = ["DEVICE_HELP", "resolve_device", "seeded_generator", "device_name", "synchronize"]

#: the default stays the CPU until the CUDA paths have been run on a GPU (docs/gpu.md): opt in with cuda or auto
DEVICE_HELP = ("where tensors live: cpu, cuda, cuda:N or auto (a CUDA GPU when one is present, else the CPU) "
               "(default: cpu)")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``spec`` ("auto", "cpu", "cuda", "cuda:N", a ``torch.device`` or None = auto) as a usable device.

    A CUDA device asked for where none is present (or an index past the last one) is one ``ConfigError``
    line, not a failure deep inside the first product.
    """
    import torch

    if spec is None or spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"--device: fond runs on cpu or cuda, got {spec!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device is available here (torch.cuda.is_available() is "
                          "False; this torch build or machine has no GPU): use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    return device


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (torch's samplers need one on the device they
    draw on; the CPU's compiled kernels read their key from a CPU generator)."""
    import torch

    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def device_name(device: torch.device | str) -> str:
    """The device in words, for reports and benchmarks: the GPU's name, or "CPU"."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (timings of asynchronous CUDA kernels); nothing on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
