"""Data-parallel training across processes with ``torch.distributed`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m fond train ...`` (or the ``fond`` console script under torchrun) starts N
processes; each one finds its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and :func:`context_from_env` joins the process group: gloo for training on the
CPU, NCCL for training on CUDA (``--device cuda``: rank r trains on ``cuda:LOCAL_RANK``).
Training (``fond.train.train``) then

* draws the global batch of each iteration exactly as a single process would and gives rank r the rows
  r·B/N … (r+1)·B/N − 1 (the distributed sampler: disjoint shards, together the global batch);
* wraps the model in ``DistributedDataParallel``, whose gradient all-reduce averages the ranks' gradients —
  with equal shards that is the gradient of the global batch's mean loss, so N processes follow the same
  trajectory as one process with the same global batch (up to float rounding and the samplers' draws);
* seeds each rank's sampler from (seed, iteration, rank): distinct per rank and reproducible, rank 0's
  stream being the single process's;
* writes checkpoints, logs, reports and progress only on rank 0; every rank reads the checkpoint to resume;
* decides interruptions (SIGINT/SIGTERM) collectively, so all ranks stop at the same iteration boundary.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fond.errors import FondError

__all__ = ["DistributedContext", "SINGLE", "context_from_env", "shard_rows", "any_rank", "close"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def tensor_device(self) -> torch.device:
        """Where this rank's collective tensors live (NCCL: its GPU; gloo: the CPU)."""
        return torch.device(self.device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0


SINGLE = DistributedContext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise FondError(f"environment variable {name}={value!r} is not an integer") from None


def context_from_env(device: str | torch.device | None = "cpu") -> DistributedContext:
    """Join the process group torchrun describes in the environment, or SINGLE without WORLD_SIZE > 1.

    Backend: gloo for a CPU ``device``, NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``; ``device`` as
    ``fond.device.resolve_device`` reads it). An already initialised process group (e.g. set up by the
    caller) is used as it is.
    """
    from fond.device import resolve_device

    cuda = resolve_device(device).type == "cuda"
    if dist.is_available() and dist.is_initialized():
        backend, local_rank = dist.get_backend(), _env_int("LOCAL_RANK", 0)
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                                  f"cuda:{local_rank}" if backend == "nccl" else "cpu")
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE
    if not dist.is_available():
        raise FondError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as err:
        raise FondError(f"could not join the process group (rank {rank} of {world_size}, backend {backend}): "
                        f"{str(err).splitlines()[0]}") from None
    return DistributedContext(rank, world_size, local_rank, backend, f"cuda:{local_rank}" if cuda else "cpu")


def shard_rows(batch_size: int, context: DistributedContext) -> slice:
    """This rank's rows of a global batch of ``batch_size`` rows (equal shards; see the module docstring)."""
    if batch_size % context.world_size:
        raise FondError(f"batch_size {batch_size} is not divisible by the {context.world_size} processes; "
                        "choose a global batch that splits evenly")
    per_rank = batch_size // context.world_size
    return slice(context.rank * per_rank, (context.rank + 1) * per_rank)


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.tensor_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def close(context: DistributedContext) -> None:
    """Leave the process group joined by :func:`context_from_env` (no-op when not distributed).

    A collective: every rank calls it. Unreachable DistributedDataParallel wrappers are collected first (they
    hold the group and its in-flight work; freed only at interpreter shutdown, gloo's threads can abort the
    process), and the ranks meet at a barrier so that none tears down its connections while another still uses
    them.
    """
    if context.distributed and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
