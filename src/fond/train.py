"""Learning to infer: backpropagation through the unrolled FOND dynamics (DESIGN.md §2.4).

``train(...)`` runs the schedule a ``TrainConfig`` describes on a ``PatchData`` split and writes, into
the run directory: ``config.json`` + ``model.safetensors`` (the model, loadable by ``fond.load``),
``checkpoint.safetensors`` (model, optimizer state and position, with the model and training configuration
in its metadata: an interrupted run resumes from it alone), ``checkpoint.prev.safetensors`` (the checkpoint
before it, used if the newest is unreadable), ``metrics.jsonl`` (one JSON row per logged iteration) and, if
TensorBoard is installed, event files.

All randomness is a pure function of (seed, iteration): the batch order, the samplers' streams and the
validation rollouts are drawn from generators seeded by ``_stream_seed``; the learning rate, β, τ and clamp
schedules are functions of the iteration. So the model, the optimizer state (Adamax moments and step counts)
and the iteration are the whole state, and a resumed run, however it was stopped (SIGKILL included), ends
with the parameters of an uninterrupted one. SIGINT/SIGTERM are deferred to the end of the iteration, the
completed iterations are checkpointed and ``TrainingInterrupted`` is raised. A non-finite loss or gradient
stops training before the update (``TrainingDiverged``), and a checkpoint is never written with non-finite
parameters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fond.checkpoint import (
    atomic_write,
    check_tensors,
    load_tensors,
    read_config,
    remove_stale_temporaries,
    save_model,
    save_tensors,
)
from fond.config import ModelConfig, TrainConfig, config_from_dict
from fond.data import PatchData
from fond.distributed import SINGLE, DistributedContext, any_rank, shard_rows
from fond.errors import CheckpointError, ConfigError, FondError
from fond.models import build_model

__all__ = ["train", "Schedule", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "run_configuration",
           "CHECKPOINT", "PREVIOUS_CHECKPOINT"]

#: the newest checkpoint of a run directory, and the one before it (kept until the next is safely written)
CHECKPOINT = "checkpoint.safetensors"
PREVIOUS_CHECKPOINT = "checkpoint.prev.safetensors"
CHECKPOINT_FORMAT = "fond-checkpoint"
_OPTIMIZER_SLOTS = ("step", "exp_avg", "exp_inf")  # Adamax's per-parameter state


class TrainingDiverged(FondError):
    """The loss, a gradient or a parameter went non-finite; the message names the step and the last good
    checkpoint (non-finite parameters are never written)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM (or Ctrl-C) stopped training at an iteration boundary; the message says what was
    checkpointed. ``checkpoint``: its path (None if nothing was saved), ``iteration``: iterations it holds."""

    def __init__(self, message: str, checkpoint: Path | None, iteration: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iteration = iteration


class _SecondInterrupt(KeyboardInterrupt):
    """A second signal: stop at once, possibly mid-update, so nothing more is saved."""


@dataclass(frozen=True)
class Schedule:
    """Pure functions of the iteration: β, relaxed-sampler temperature τ, clamp ramp, learning rate."""

    train: TrainConfig

    def _fraction(self, iteration: int) -> float:
        return iteration / max(1, self.train.iterations)

    def ramp(self, iteration: int) -> float:
        """0 during the constant phase, then linear to 1 over the ramp window (β and clamp share it)."""
        cfg = self.train
        p = self._fraction(iteration) - cfg.beta_const_fraction
        if p <= 0:
            return 0.0
        if cfg.beta_ramp_fraction == 0:
            return 1.0
        return min(1.0, p / cfg.beta_ramp_fraction)

    def beta(self, iteration: int) -> float:
        cfg = self.train
        return cfg.beta_min + self.ramp(iteration) * (cfg.beta - cfg.beta_min)

    def clamp_fraction(self, iteration: int) -> float:
        """How far the family's clamp bounds have ramped (0: initial, 1: final); shares β's ramp."""
        return self.ramp(iteration)

    def temperature(self, iteration: int) -> float:
        cfg = self.train
        if cfg.temp_anneal_fraction == 0:
            return cfg.temp_stop
        p = self._fraction(iteration) / cfg.temp_anneal_fraction
        if p >= 1.0:
            return cfg.temp_stop
        return cfg.temp_start + p * (cfg.temp_stop - cfg.temp_start)

    def lr(self, iteration: int) -> float:
        cfg = self.train
        p = self._fraction(iteration)
        if p < cfg.warmup_fraction:
            return cfg.lr * max(p / cfg.warmup_fraction, 1e-3)
        q = (p - cfg.warmup_fraction) / max(1e-12, 1.0 - cfg.warmup_fraction)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(1.0, q)))

    def warming_up(self, iteration: int) -> bool:
        return self._fraction(iteration) < self.train.warmup_fraction


@dataclass
class TrainResult:
    """Where the run ended: directory, iterations done, whether it stopped early, wall time (s)."""

    directory: Path
    iterations: int
    stopped_early: bool
    seconds: float
    model: torch.nn.Module


def _stream_seed(seed: int, stream: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _batch_indices(seed: int, iteration: int, n: int, batch_size: int) -> torch.Tensor:
    """The rows of iteration ``iteration``: epochs are seeded permutations, so no state is needed."""
    per_epoch = max(1, n // batch_size)
    epoch, position = divmod(iteration, per_epoch)
    gen = torch.Generator().manual_seed(_stream_seed(seed, 1, epoch))
    perm = torch.randperm(n, generator=gen)
    if n < batch_size:
        return perm
    return perm[position * batch_size:(position + 1) * batch_size]


def _step_sizes(model: torch.nn.Module) -> float | list[float] | None:
    log_step_size = getattr(model, "log_step_size", None)
    if not isinstance(log_step_size, torch.Tensor):
        return None
    sizes = log_step_size.detach().exp().tolist()
    return sizes[0] if len(sizes) == 1 else sizes


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on the decoder only; the log-parameters, initial states and gains are exempt
    (unless ``decay_log_params``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = not name.startswith("decoder.")
        (no_decay if exempt and not cfg.decay_log_params else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            out[f"optim.{names[id(param)]}.{key}"] = torch.as_tensor(value)
    return out


def _expected_checkpoint_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def _restore(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> None:
    """Check every tensor of a checkpoint (names, shapes, finiteness) before touching the model or optimizer,
    then load them; a one-line ``CheckpointError`` naming the file and the first problem otherwise."""
    params = dict(model.named_parameters())
    model_tensors = {k: v for k, v in tensors.items() if k.startswith("model.")}
    other = sorted(k for k in tensors if not k.startswith(("model.", "optim.")))
    if other:
        raise CheckpointError(f"{path}: unexpected tensor '{other[0]}' (not a fond training checkpoint?)")
    check_tensors(path, model_tensors, _expected_checkpoint_tensors(model))
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        name, _, slot = key[len("optim."):].rpartition(".")
        if name not in params:
            raise CheckpointError(f"{path}: optimizer state for unknown parameter '{name}' (wrong model?)")
        if slot not in _OPTIMIZER_SLOTS:
            raise CheckpointError(f"{path}: unknown optimizer state '{key}'")
        shape = () if slot == "step" else params[name].shape
        if value.shape != shape:
            raise CheckpointError(f"{path}: optimizer state '{key}' has shape {tuple(value.shape)}, the model "
                                  f"needs {tuple(shape)} (wrong model?)")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: optimizer state '{key}' holds NaN or Inf")
        optim.setdefault(name, {})[slot] = value
    for name, slots in optim.items():
        if len(slots) != len(_OPTIMIZER_SLOTS):
            lacking = next(s for s in _OPTIMIZER_SLOTS if s not in slots)
            raise CheckpointError(f"{path}: missing optimizer state 'optim.{name}.{lacking}'")
    model.load_state_dict({k[len("model."):]: v for k, v in model_tensors.items()})
    optimizer.state.clear()
    for name, slots in optim.items():
        optimizer.state[params[name]] = {slot: value.clone() for slot, value in slots.items()}


def _normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and metadata; ``CheckpointError`` if unreadable or without a position."""
    tensors, meta = load_tensors(path)
    iteration = meta.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
        raise CheckpointError(f"{path}: no valid training position in its metadata (iteration {iteration!r})")
    if not isinstance(meta.get("train"), dict):
        raise CheckpointError(f"{path}: no training configuration in its metadata")
    return tensors, meta


def _saved_model_config(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    saved = meta.get("model")
    if saved is None:  # checkpoints written before the model config was stored in them
        saved = read_config(directory).get("model")
    return saved


def _check_same_configuration(directory: Path, path: Path, meta: dict[str, Any], model_config: ModelConfig,
                              cfg: TrainConfig) -> None:
    """Refuse (``FondError`` naming the first differing key) a checkpoint of another configuration."""
    for section, saved, now in (("model", _saved_model_config(directory, meta), asdict(model_config)),
                                ("train", meta.get("train"), asdict(cfg))):
        now = _normalised(now)
        if saved == now:
            continue
        saved = saved if isinstance(saved, dict) else {}
        key = next((k for k in list(now) + list(saved) if saved.get(k) != now.get(k)), "?")
        raise FondError(f"{directory} holds a run with a different configuration ({section}.{key} is "
                        f"{saved.get(key)!r} in {path.name}, {now.get(key)!r} now); use another --out")


def _checkpoint_candidates(directory: Path) -> list[Path]:
    return [p for p in (directory / CHECKPOINT, directory / PREVIOUS_CHECKPOINT) if p.exists()]


def run_configuration(directory: str | Path) -> tuple[TrainConfig, ModelConfig, dict[str, Any]]:
    """The training and model configuration and the data description (``spec``, sizes) of the run in
    ``directory``, from its newest readable checkpoint (for ``fond train --resume DIR``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such run directory")
    candidates = _checkpoint_candidates(directory)
    if not candidates:
        raise CheckpointError(f"{directory}: no checkpoint to resume ({CHECKPOINT} not found)")
    problems = []
    for path in candidates:
        try:
            _, meta = _read_checkpoint(path)
            source = str(path)
            cfg = config_from_dict(TrainConfig, meta["train"], source=source)
            model_config = config_from_dict(ModelConfig, _saved_model_config(directory, meta), source=source)
        except (CheckpointError, ConfigError) as exc:
            problems.append(str(exc))
            continue
        return cfg, model_config, meta.get("data") or {}
    raise CheckpointError(f"{directory}: no usable checkpoint: " + "; ".join(problems))


def _resume(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            model_config: ModelConfig, cfg: TrainConfig) -> int:
    """Load the newest checkpoint that reads and validates and return its iteration. An unusable newest one
    is reported (one-line warning naming it and the problem), set aside as ``*.corrupt`` and the previous
    one used; a checkpoint of another configuration is refused."""
    problems: list[tuple[Path, str]] = []
    for path in _checkpoint_candidates(directory):
        try:
            tensors, meta = _read_checkpoint(path)
        except CheckpointError as exc:
            problems.append((path, str(exc)))
            continue
        _check_same_configuration(directory, path, meta, model_config, cfg)
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
            os.replace(bad, aside)  # so the next checkpoint does not rotate it over the good one
            warnings.warn(f"{problem}; resuming from {path} (iteration {iteration}), the unusable file is "
                          f"kept as {aside.name}", stacklevel=3)
        return iteration
    raise CheckpointError(f"{directory}: no usable checkpoint: " + "; ".join(p for _, p in problems))


class _Logger:
    def __init__(self, directory: Path, start_iteration: int) -> None:
        self.path = directory / "metrics.jsonl"
        if self.path.exists():  # drop rows of iterations the checkpoint we resume from does not hold
            kept = []
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                step = row.get("step", 0) if isinstance(row, dict) else None
                if isinstance(step, int) and step <= start_iteration:
                    kept.append(line)
            atomic_write(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
        except Exception:  # noqa: BLE001 - tensorboard absent or broken: log to JSONL only
            SummaryWriter = None  # noqa: N806
        if SummaryWriter is not None:
            self.writer = SummaryWriter(log_dir=str(directory / "tensorboard"), purge_step=start_iteration)

    def log(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def _deferred_interrupts():
    """Within the block, SIGINT/SIGTERM only raise a flag, acted on at iteration boundaries, so a checkpoint
    never falls between a parameter update and its bookkeeping. A second signal interrupts at once.
    Outside the main thread (where handlers cannot be set) signals behave as usual."""
    pending = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def handler(signum, frame):
        if pending.is_set():
            raise _SecondInterrupt
        pending.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN/Inf, or None. Checked every iteration, so the
    fast path is one reduction: a sum is finite whenever every element is (an overflowing sum of finite
    values is rechecked element by element)."""
    state = [(name, value.detach()) for name, value in model.state_dict().items()
             if value.is_floating_point() and value.numel()]
    if not state:
        return None
    with contextlib.suppress(RuntimeError):  # tensors on several devices: check them one by one
        if bool(torch.isfinite(torch.stack([value.sum().float() for _, value in state]).sum())):
            return None
    for name, value in state:
        if not torch.isfinite(value).all():
            return name
    return None


def _save_checkpoint(directory: Path, model, optimizer, iteration: int, run_info: dict[str, Any]) -> None:
    """The checkpoint (the old one kept as ``checkpoint.prev.safetensors``), then the model files."""
    tensors = _expected_checkpoint_tensors(model)
    tensors.update(_optimizer_tensors(model, optimizer))
    meta = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "model": asdict(model.config), **run_info}
    save_tensors(directory / CHECKPOINT, tensors, meta, keep_previous=directory / PREVIOUS_CHECKPOINT)
    save_model(model, directory, extra=run_info)


class _UnrollLoss(torch.nn.Module):
    """``model.unroll_loss`` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor, steps: int, **options: Any):
        return self.model.unroll_loss(batch, steps, **options)


class _NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _sampler_stream(ctx: DistributedContext) -> int:
    """The sampler's stream index: 2 for rank 0 (a single process's), distinct for every other rank."""
    return 2 if ctx.rank == 0 else 1000 + ctx.rank


def _global_means(ctx: DistributedContext, *values) -> list[float]:
    """The values (scalar tensors or numbers) averaged over the ranks (the global batch's means for equal
    shards)."""
    stacked = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return [float(v) for v in stacked.cpu()]


def train(
    data: PatchData,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    n_latents: int = 512,
    data_spec: str | None = None,
    progress: bool = True,
    resume: bool = True,
    stop_at: int | None = None,
    distributed: DistributedContext | None = None,
    on_iteration: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Train a model on ``data.train`` with ``train_config``; checkpoints and logs go to ``out_dir``.

    If ``out_dir`` already holds a checkpoint of the same configuration and ``resume`` is true, the run
    continues from it (from the previous checkpoint, with a warning, if the newest is unreadable) and ends
    with the parameters an uninterrupted run would have. A run directory holding a different configuration
    is refused. ``stop_at``: stop (with a checkpoint) once this many iterations are done, to be resumed
    later. SIGINT/SIGTERM (in the main thread) stop at the end of the current iteration: the completed
    iterations are checkpointed and ``TrainingInterrupted`` (a ``KeyboardInterrupt``) is raised; a second
    signal stops at once without saving (the last checkpoint stays intact). ``TrainingDiverged``: the loss
    or a gradient went non-finite (the update is not applied; the iterations before it are checkpointed).

    ``distributed``: this process's place in a data-parallel group (``fond.distributed.context_from_env``
    under torchrun): each rank trains on its shard of every global batch through DistributedDataParallel,
    only rank 0 writes files. ``on_iteration(done, model)`` is called after every applied update.
    """
    cfg = train_config
    ctx = distributed or SINGLE
    main = ctx.is_main
    shard = shard_rows(cfg.batch_size, ctx)
    directory = Path(out_dir)
    model_config = model_config or ModelConfig(n_inputs=data.n_inputs, n_latents=n_latents)
    if model_config.n_inputs != data.n_inputs:
        raise FondError(f"model expects {model_config.n_inputs} inputs but the data has {data.n_inputs}")
    run_info = {"train": asdict(cfg), "data": {"spec": data_spec or data.name, "patch_shape": data.patch_shape,
                                               "n_train": int(data.train.shape[0]),
                                               "n_val": int(data.val.shape[0])}}

    model = build_model(model_config, seed=cfg.seed)
    optimizer = torch.optim.Adamax(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    start = 0
    checkpoint = directory / CHECKPOINT
    if _checkpoint_candidates(directory) and not resume:
        raise FondError(f"{directory} already holds a run; use another --out or resume it")
    # rank 0 resumes first (it may set a corrupt checkpoint aside), then the others read what it kept; a
    # failure on any rank stops every rank (collectively: no rank is left waiting for the others)
    for turn in ((0, 1) if ctx.distributed else (0,)):
        failure: FondError | None = None
        if (turn == 0) == main and _checkpoint_candidates(directory):
            try:
                start = _resume(directory, model, optimizer, model_config, cfg)
            except FondError as exc:
                failure = exc
        if any_rank(failure is not None, ctx):
            raise failure or FondError(f"{directory}: another process could not resume this run")
    if main:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        if start > 0:  # the model files follow the checkpoint we resume from, whatever a kill left
            save_model(model, directory, extra=run_info)
    # with DDP the forward goes through the wrapper (gradient all-reduce); the model itself is shared
    unroll = (DistributedDataParallel(_UnrollLoss(model), device_ids=None, find_unused_parameters=True)
              if ctx.distributed else model.unroll_loss)

    schedule = Schedule(cfg)
    x_train = torch.from_numpy(np.ascontiguousarray(data.train))
    x_eval = torch.from_numpy(np.ascontiguousarray(data.val[: cfg.eval_samples]))
    logger = _Logger(directory, start) if main else _NullLogger()
    began = time.monotonic()
    stopped_early = False
    interrupted: KeyboardInterrupt | None = None
    last_saved = start
    completed = start
    bar = None

    def last_good() -> str:
        return f"{checkpoint} (iteration {last_saved})" if last_saved > 0 else "none (nothing was checkpointed)"

    def save() -> None:
        nonlocal last_saved
        bad = _nonfinite_parameter(model)
        if bad is not None:
            raise TrainingDiverged(f"parameter '{bad}' became non-finite by step {completed}/{cfg.iterations}; "
                                   f"not saved; last good checkpoint: {last_good()}")
        if main:
            _save_checkpoint(directory, model, optimizer, completed, run_info)
        last_saved = completed

    def diverged(what: str, step: int) -> TrainingDiverged:
        """Checkpoint the good iterations before ``step`` (if the parameters are finite), name them."""
        if completed > last_saved and _nonfinite_parameter(model) is None:
            save()
        return TrainingDiverged(f"{what} at step {step}/{cfg.iterations} (update not applied); last good "
                                f"checkpoint: {last_good()}")

    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="train", dynamic_ncols=True, leave=True)
    with _deferred_interrupts() as interrupt_requested:
        try:
            for iteration in range(start, cfg.iterations):
                if any_rank(interrupt_requested.is_set(), ctx):
                    raise KeyboardInterrupt
                done = iteration + 1
                beta, tau = schedule.beta(iteration), schedule.temperature(iteration)
                clamp_fraction, lr = schedule.clamp_fraction(iteration), schedule.lr(iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = x_train[_batch_indices(cfg.seed, iteration, len(x_train), cfg.batch_size)[shard]]
                gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, _sampler_stream(ctx), iteration))
                failure = None
                try:
                    out = unroll(batch, cfg.steps, beta=beta, temperature=tau, clamp_fraction=clamp_fraction,
                                 generator=gen)
                    if not torch.isfinite(out.loss):
                        failure = "the loss became non-finite"
                except FloatingPointError as exc:  # e.g. the Poisson sampler refusing a non-finite rate
                    failure = f"the forward pass failed ({exc})"
                if any_rank(failure is not None, ctx):
                    raise diverged(failure or "another process's forward pass failed", done)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                max_norm = cfg.grad_clip * (3.0 if schedule.warming_up(iteration) else 1.0)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                if not math.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    raise diverged("the gradient became non-finite", done)
                if done % cfg.log_every == 0 or done == cfg.iterations:  # logged before the update: see _Logger
                    loss, nll, kl = _global_means(ctx, out.loss.detach(), out.nll.mean(), out.kl.mean())
                    logger.log({"step": done, "loss": loss, "nll": nll, "kl": kl, "beta": beta, "temperature": tau,
                                "clamp_fraction": clamp_fraction, "lr": lr, "grad_norm": grad_norm,
                                "rate_max": out.rate_max, "step_size": _step_sizes(model),
                                "seconds": time.monotonic() - began})
                optimizer.step()
                if hasattr(model, "after_update"):  # e.g. sparse coding renormalises its atoms
                    with torch.no_grad():
                        model.after_update()
                bad = _nonfinite_parameter(model)
                if bad is not None:  # finite loss and gradient, yet the update overflowed: nothing more is saved
                    raise TrainingDiverged(f"parameter '{bad}' became non-finite in the update of step {done}/"
                                           f"{cfg.iterations}; not saved; last good checkpoint: {last_good()}")
                completed = done
                if on_iteration is not None:
                    on_iteration(done, model)
                if main and (done % cfg.eval_every == 0 or done == cfg.iterations):
                    res = model.infer(x_eval, cfg.eval_steps, seed=cfg.seed)
                    logger.log({"step": done, "eval_steps": cfg.eval_steps, "eval_r2": float(res.trace["r2"][-1]),
                                "eval_r2_rates": float(res.trace["r2_rates"][-1]),
                                "eval_zeros": float(res.trace["zeros"][-1])})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(out.loss.detach()):.3g}", beta=f"{beta:.3g}", temp=f"{tau:.3g}",
                                    refresh=False)
                if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                    save()
                if stop_at is not None and done >= stop_at and done < cfg.iterations:
                    stopped_early = True
                    break
                limit = cfg.time_limit_minutes
                if (limit is not None and done < cfg.iterations
                        and any_rank(time.monotonic() - began > 60.0 * limit, ctx)):
                    warnings.warn(f"time limit of {limit} min reached at iteration {done}/{cfg.iterations}; "
                                  "stopping (resume to finish the schedule)", stacklevel=2)
                    stopped_early = True
                    break
            if any_rank(interrupt_requested.is_set(), ctx):
                raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            interrupted = exc
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        if isinstance(interrupted, _SecondInterrupt):  # possibly mid-update: keep the last checkpoint as it is
            raise TrainingInterrupted(f"interrupted twice: stopped at once without saving; {checkpoint} "
                                      f"(iteration {last_saved}) is intact" if last_saved else
                                      "interrupted twice: stopped at once, nothing was checkpointed",
                                      checkpoint if last_saved else None, last_saved) from None
        if completed != last_saved:
            save()
        if interrupt_requested.is_set() and interrupted is None:  # a signal during the last iteration or save
            interrupted = KeyboardInterrupt()
    if interrupted is not None:
        if last_saved == 0:
            raise TrainingInterrupted("interrupted before the first iteration completed; nothing to checkpoint",
                                      None, 0) from None
        raise TrainingInterrupted(f"interrupted after {last_saved} of {cfg.iterations} iterations; saved in "
                                  f"{checkpoint}", checkpoint, last_saved) from None
    return TrainResult(directory=directory, iterations=completed, stopped_early=stopped_early,
                       seconds=time.monotonic() - began, model=model)


def read_run(directory: str | Path) -> dict[str, Any]:
    """The run information (train config, data spec) stored beside a trained model."""
    data = read_config(directory)
    if "train" in data:
        config_from_dict(TrainConfig, data["train"], source=f"{directory}/config.json")
    return data
