"""Learning to infer: backpropagation through the unrolled FOND dynamics (DESIGN.md §2.4).

``train(...)`` runs the schedule a ``TrainConfig`` describes on a ``PatchData`` split and writes, into
the run folder (``fond.run.RunFolder``, whose lock it holds while it trains): ``config.json`` +
``model.safetensors`` (the model, loadable by ``fond.load``), ``checkpoint.safetensors`` (model, optimizer
state and position, with the model and training configuration in its metadata: an interrupted run resumes
from it alone; see ``fond.resume``), ``checkpoint.prev.safetensors`` (the checkpoint before it, used if the
newest is unreadable), ``metrics.jsonl`` (one JSON row per logged iteration) and, if TensorBoard is
installed, event files.

All randomness is a pure function of (seed, iteration): the batch order, the samplers' streams and the
validation rollouts are drawn from generators seeded by ``_stream_seed``; the learning rate, β, τ and clamp
schedules are functions of the iteration. So the model, the optimizer state (Adamax moments and step counts)
and the iteration are the whole state, and a resumed run, however it was stopped (SIGKILL included), ends
with the parameters of an uninterrupted one. SIGINT/SIGTERM are deferred to the end of the iteration, the
completed iterations are checkpointed and ``TrainingInterrupted`` is raised. A non-finite loss or gradient
stops training before the update (``TrainingDiverged``), and a checkpoint is never written with non-finite
parameters. A checkpoint that cannot be written (full disk, read-only folder) stops training with a one-line
``StorageError``; the previous checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fond.checkpoint import save_model
from fond.config import ModelConfig, TrainConfig
from fond.data import PatchData
from fond.device import resolve_device, seeded_generator
from fond.distributed import SINGLE, DistributedContext, any_rank, shard_rows
from fond.errors import FondError, StorageError
from fond.metrics import r2_per_sample, zeros_fraction
from fond.models import build_model
from fond.resume import read_run, resume_from_checkpoint, run_configuration, write_checkpoint
from fond.run import CHECKPOINT, PREVIOUS_CHECKPOINT, RunFolder, atomic_write

__all__ = ["train", "training_device", "Schedule", "build_optimizer", "BurstMonitor", "TrainResult", "TrainingDiverged",
           "TrainingInterrupted", "run_configuration", "read_run", "CHECKPOINT", "PREVIOUS_CHECKPOINT"]


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

    def grad_clip(self, iteration: int) -> float:
        """The largest global gradient norm let through: ``grad_clip``, three times it during the warm-up."""
        return self.train.grad_clip * (3.0 if self.warming_up(iteration) else 1.0)


class BurstMonitor:
    """Notices a population burst while training (README, "MNIST bursts"): an iteration shows a sign of one
    when its gradient norm (before clipping) exceeds ``grad_jump`` × the median of the last 100 ordinary
    iterations, or its largest rate reaches ``saturation_rate`` (half the final clamp's rate e^c, None for
    families without one); a burst is ``window`` such iterations among the last 2·``window``. ``observe``
    returns the one-line report at a burst's onset (None otherwise); ``bursting``: inside one now. Its state
    is not checkpointed: a resumed run starts watching afresh."""

    def __init__(self, saturation_rate: float | None, *, window: int = 10, grad_jump: float = 30.0) -> None:
        self.saturation_rate, self.window, self.grad_jump = saturation_rate, window, grad_jump
        self.ordinary: deque[float] = deque(maxlen=100)
        self.recent: deque[bool] = deque(maxlen=2 * window)
        self.bursting = False

    def signs(self, grad_norm: float, rate_max: float) -> list[str]:
        """What makes this iteration look like a burst (empty: an ordinary iteration)."""
        found = []
        if len(self.ordinary) >= 20 and grad_norm > self.grad_jump * float(np.median(self.ordinary)):
            found.append(f"gradient norm {grad_norm:.3g} (median of the last ordinary iterations "
                         f"{float(np.median(self.ordinary)):.3g})")
        if self.saturation_rate is not None and rate_max >= self.saturation_rate:
            found.append(f"rates at the clamp (rate_max {rate_max:.3g} ≥ {self.saturation_rate:.3g})")
        return found

    def observe(self, iteration: int, grad_norm: float, rate_max: float) -> str | None:
        """Record iteration ``iteration`` (1-based); the report if a burst begins with it."""
        found = self.signs(grad_norm, rate_max)
        self.recent.append(bool(found))
        if not found:
            self.ordinary.append(grad_norm)
        was_bursting, self.bursting = self.bursting, sum(self.recent) >= self.window
        if not self.bursting or was_bursting:
            return None
        return (f"training burst by iteration {iteration}: " + ", ".join(found) + f"; {self.window} of the "
                f"last {len(self.recent)} iterations like this; the rollouts of this model are likely to "
                "diverge (docs/cli.md: 'MNIST bursts')")


def _saturation_rate(model: torch.nn.Module) -> float | None:
    """Half the largest rate the final clamp allows, for a recurrent model whose family has one (iP-VAE). An
    amortized encoder's rates sit at its clamp by design (a bounded output, no dynamics to burst): None."""
    if not getattr(model, "bursts_at_clamp", False):
        return None
    rate = getattr(getattr(model, "family", None), "saturation_rate", None)
    return rate() if callable(rate) else None


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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The trainer's optimizer (``cfg.optimizer``): Adamax (β1 ``cfg.momentum``, default 0.9; β2 0.999; eps 1e-8) or
    SGD with momentum ``cfg.momentum``, at ``cfg.lr``, with ``cfg.weight_decay`` on the decoder's parameters, or on
    every parameter with ``cfg.decay_log_params``."""
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adamax(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), eps=1e-8)


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on the decoder only; the log-parameters, initial states and gains are exempt
    (unless ``decay_log_params``: then every parameter decays)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = not name.startswith("decoder.")
        (no_decay if exempt and not cfg.decay_log_params else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class _Logger:
    """``metrics.jsonl`` (and TensorBoard, if installed) of rank 0: one JSON row per logged iteration."""

    def __init__(self, folder: RunFolder, start_iteration: int) -> None:
        self.path = folder.metrics_path
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
        try:
            self.handle = open(self.path, "a")
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
        except Exception:  # noqa: BLE001 - tensorboard absent or broken: log to JSONL only
            SummaryWriter = None  # noqa: N806
        if SummaryWriter is not None:
            self.writer = SummaryWriter(log_dir=str(folder.tensorboard_dir), purge_step=start_iteration)

    def log(self, row: dict[str, Any]) -> None:
        try:
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()
        except OSError as exc:  # e.g. a full disk
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a row that could not be flushed was reported by log
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
    stacked = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.tensor_device)
    if ctx.distributed:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return [float(v) for v in stacked.cpu()]


@contextlib.contextmanager
def _writer_lock(folder: RunFolder, ctx: DistributedContext) -> Iterator[None]:
    """Rank 0 (the only writer) holds the run folder's lock for the block; if it cannot take it (another
    process writes there, or the folder is read-only) every rank stops with that one-line error."""
    with contextlib.ExitStack() as stack:
        failure: FondError | None = None
        if ctx.is_main:
            try:
                stack.enter_context(folder.lock())
            except FondError as exc:
                failure = exc
        if any_rank(failure is not None, ctx):
            raise failure or FondError(f"{folder.path}: the process writing this run could not lock it")
        yield


def _resume_every_rank(folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       model_config: ModelConfig, cfg: TrainConfig, ctx: DistributedContext, allowed: bool) -> int:
    """The iteration the run continues from: 0 for a new run, else that of the checkpoint loaded into
    ``model`` and ``optimizer`` (``fond.resume.resume_from_checkpoint``). Rank 0 resumes first (it may set a
    corrupt checkpoint aside), then the others read what it kept; a failure on any rank stops every rank
    (collectively: no rank is left waiting for the others)."""
    if folder.checkpoints() and not allowed:
        raise FondError(f"{folder.path} already holds a run; use another --out or resume it")
    start = 0
    for turn in ((0, 1) if ctx.distributed else (0,)):
        failure: FondError | None = None
        if (turn == 0) == ctx.is_main and folder.checkpoints():
            try:
                start = resume_from_checkpoint(folder, model, optimizer, model_config, cfg)
            except FondError as exc:
                failure = exc
        if any_rank(failure is not None, ctx):
            raise failure or FondError(f"{folder.path}: another process could not resume this run")
    return start


def _run_info(cfg: TrainConfig, data: PatchData, data_spec: str | None) -> dict[str, Any]:
    """What a checkpoint and ``config.json`` record beside the model: the training config and the data."""
    record = {"spec": data_spec or data.name, "patch_shape": data.patch_shape, "n_train": int(data.train.shape[0]),
              "n_val": int(data.val.shape[0])}
    if data.preprocessing is not None:
        record["preprocessing"] = dict(data.preprocessing)
    record["input_std"] = (data.preprocessing or {}).get("input_std") or float(data.train.std(dtype=np.float64))
    return {"train": asdict(cfg), "data": record}


class _TrainingRun:
    """One ``train`` call under way: the model and optimizer, how far training got (``completed``
    iterations), how far the checkpoint on disk goes (``last_saved``), and the log (rank 0's; nothing on
    other ranks)."""

    def __init__(self, folder: RunFolder, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: TrainConfig, ctx: DistributedContext, run_info: dict[str, Any], start: int) -> None:
        self.folder, self.model, self.optimizer = folder, model, optimizer
        self.cfg, self.ctx, self.run_info = cfg, ctx, run_info
        self.schedule = Schedule(cfg)
        self.shard = shard_rows(cfg.batch_size, ctx)
        self.completed = self.last_saved = start
        self.logger: _Logger | _NullLogger = _NullLogger()
        self.began = time.monotonic()
        self.bursts = BurstMonitor(_saturation_rate(model))
        # with DDP the forward goes through the wrapper (gradient all-reduce); the model itself is shared
        self.device = model.input_like.device
        ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
        self.unroll = (DistributedDataParallel(_UnrollLoss(model), device_ids=ids, find_unused_parameters=True)
                       if ctx.distributed else model.unroll_loss)

    # ---- saving and stopping ------------------------------------------------------------------------------

    def last_good(self) -> str:
        """The newest checkpoint on disk, as messages name it."""
        if self.last_saved == 0:
            return "none (nothing was checkpointed)"
        return f"{self.folder.checkpoint_path} (iteration {self.last_saved})"

    def save(self) -> None:
        """Checkpoint the completed iterations, then the model files (rank 0 writes). Non-finite parameters
        are never written (``TrainingDiverged``); a failed write (``StorageError``) names the last good one."""
        bad = _nonfinite_parameter(self.model)
        if bad is not None:
            raise TrainingDiverged(f"parameter '{bad}' became non-finite by step {self.completed}/"
                                   f"{self.cfg.iterations}; not saved; last good checkpoint: {self.last_good()}")
        if self.ctx.is_main:
            try:
                write_checkpoint(self.folder, self.model, self.optimizer, self.completed, self.run_info)
            except StorageError as exc:
                raise StorageError(f"{exc}; last good checkpoint: {self.last_good()}") from None
            save_model(self.model, self.folder.path, extra=self.run_info)
        self.last_saved = self.completed

    def diverged(self, what: str, step: int) -> TrainingDiverged:
        """Checkpoint the good iterations before ``step`` (if the parameters are finite), name them."""
        if self.completed > self.last_saved and _nonfinite_parameter(self.model) is None:
            self.save()
        return TrainingDiverged(f"{what} at step {step}/{self.cfg.iterations} (update not applied); last good "
                                f"checkpoint: {self.last_good()}")

    def interruption(self, *, twice: bool) -> TrainingInterrupted:
        """What a stop by SIGINT/SIGTERM reports: the checkpoint and its iteration (a second signal stopped
        at once, possibly mid-update, so nothing more was saved)."""
        path, saved = self.folder.checkpoint_path, self.last_saved
        if twice:
            if not saved:
                return TrainingInterrupted("interrupted twice: stopped at once, nothing was checkpointed", None, 0)
            return TrainingInterrupted(f"interrupted twice: stopped at once without saving; {path} (iteration "
                                       f"{saved}) is intact", path, saved)
        if not saved:
            return TrainingInterrupted("interrupted before the first iteration completed; nothing to checkpoint",
                                       None, 0)
        return TrainingInterrupted(f"interrupted after {saved} of {self.cfg.iterations} iterations; saved in "
                                   f"{path}", path, saved)

    # ---- one iteration ------------------------------------------------------------------------------------

    def forward(self, iteration: int, batch: torch.Tensor, **schedule: float) -> Any:
        """The unrolled loss of ``batch`` (an ``UnrollLoss``) with the sampler stream of ``iteration``;
        ``TrainingDiverged`` on every rank if it is non-finite or the forward pass failed on any rank."""
        gen = seeded_generator(_stream_seed(self.cfg.seed, _sampler_stream(self.ctx), iteration), self.device)
        out, failure = None, None
        try:
            out = self.unroll(batch, self.cfg.steps, generator=gen, **schedule)
            if not torch.isfinite(out.loss):
                failure = "the loss became non-finite"
        except FloatingPointError as exc:  # e.g. the Poisson sampler refusing a non-finite rate
            failure = f"the forward pass failed ({exc})"
        if any_rank(failure is not None, self.ctx):
            raise self.diverged(failure or "another process's forward pass failed", iteration + 1)
        return out

    def step(self, iteration: int, x_train: torch.Tensor) -> tuple[Any, dict[str, float]]:
        """Iteration ``iteration`` (0-based): schedule, forward, backward, clipping, the log row (before the
        update: see ``_Logger``), the update. Returns the ``UnrollLoss`` and the schedule's values."""
        cfg, schedule, done = self.cfg, self.schedule, iteration + 1
        beta, tau = schedule.beta(iteration), schedule.temperature(iteration)
        clamp_fraction, lr = schedule.clamp_fraction(iteration), schedule.lr(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = x_train[_batch_indices(cfg.seed, iteration, len(x_train), cfg.batch_size)[self.shard]]
        out = self.forward(iteration, batch, beta=beta, temperature=tau, clamp_fraction=clamp_fraction)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), schedule.grad_clip(iteration)))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise self.diverged("the gradient became non-finite", done)
        values = {"beta": beta, "temperature": tau, "clamp_fraction": clamp_fraction, "lr": lr}
        self.watch_bursts(done, grad_norm, out.rate_max)
        if done % cfg.log_every == 0 or done == cfg.iterations:
            loss, nll, kl = _global_means(self.ctx, out.loss.detach(), out.nll.mean(), out.kl.mean())
            self.logger.log({"step": done, "loss": loss, "nll": nll, "kl": kl, **values, "grad_norm": grad_norm,
                             "rate_max": out.rate_max, "step_size": _step_sizes(self.model),
                             "burst": self.bursts.bursting, "seconds": time.monotonic() - self.began})
        self.update(done)
        return out, values

    def watch_bursts(self, done: int, grad_norm: float, rate_max: float) -> None:
        """Feed the burst monitor; at a burst's onset warn and log a ``burst_report`` row (rank 0)."""
        report = self.bursts.observe(done, grad_norm, rate_max)
        if report is not None and self.ctx.is_main:
            warnings.warn(report, stacklevel=4)
            self.logger.log({"step": done, "burst_report": report})

    def update(self, done: int) -> None:
        """Apply the optimizer step (and the model's ``after_update``, e.g. unit-norm atoms); parameters gone
        non-finite stop training with nothing more saved."""
        self.optimizer.step()
        if hasattr(self.model, "after_update"):
            with torch.no_grad():
                self.model.after_update()
        bad = _nonfinite_parameter(self.model)
        if bad is not None:  # finite loss and gradient, yet the update overflowed: nothing more is saved
            raise TrainingDiverged(f"parameter '{bad}' became non-finite in the update of step {done}/"
                                   f"{self.cfg.iterations}; not saved; last good checkpoint: {self.last_good()}")
        self.completed = done

    def validate(self, done: int, x_eval: torch.Tensor) -> None:
        """Log the validation rollout's final R², rate R² and zeros (from its read-out: no trace needed)."""
        res = self.model.infer(x_eval, self.cfg.eval_steps, seed=self.cfg.seed, trace=False)
        x = x_eval.to(res.reconstruction.dtype)
        self.logger.log({"step": done, "eval_steps": self.cfg.eval_steps,
                         "eval_r2": float(r2_per_sample(x, res.reconstruction).mean()),
                         "eval_r2_rates": float(r2_per_sample(x, res.reconstruction_from_rates).mean()),
                         "eval_zeros": float(zeros_fraction(res.spikes).mean())})

    def stop_early(self, done: int, stop_at: int | None) -> bool:
        """Whether to stop after ``done`` iterations, short of the schedule: ``stop_at`` or the time limit
        (decided collectively) reached."""
        cfg = self.cfg
        if stop_at is not None and stop_at <= done < cfg.iterations:
            return True
        limit = cfg.time_limit_minutes
        if (limit is not None and done < cfg.iterations
                and any_rank(time.monotonic() - self.began > 60.0 * limit, self.ctx)):
            warnings.warn(f"time limit of {limit} min reached at iteration {done}/{cfg.iterations}; "
                          "stopping (resume to finish the schedule)", stacklevel=5)
            return True
        return False

    # ---- the loop -----------------------------------------------------------------------------------------

    def loop(self, x_train: torch.Tensor, x_eval: torch.Tensor, bar: Any, interrupt: threading.Event,
             stop_at: int | None, on_iteration: Callable[[int, torch.nn.Module], None] | None) -> bool:
        """Iterate to the end of the schedule (or an early stop: returns True); a signal (``interrupt`` set on
        any rank) raises ``KeyboardInterrupt`` at the next iteration boundary."""
        cfg, stopped_early = self.cfg, False
        for iteration in range(self.completed, cfg.iterations):
            if any_rank(interrupt.is_set(), self.ctx):
                raise KeyboardInterrupt
            done = iteration + 1
            out, values = self.step(iteration, x_train)
            if on_iteration is not None:
                on_iteration(done, self.model)
            if self.ctx.is_main and (done % cfg.eval_every == 0 or done == cfg.iterations):
                self.validate(done, x_eval)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(out.loss.detach()):.3g}", beta=f"{values['beta']:.3g}",
                                temp=f"{values['temperature']:.3g}", refresh=False)
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                self.save()
            if self.stop_early(done, stop_at):
                stopped_early = True
                break
        if any_rank(interrupt.is_set(), self.ctx):
            raise KeyboardInterrupt
        return stopped_early

    def run(self, data: PatchData, *, progress: bool, stop_at: int | None,
            on_iteration: Callable[[int, torch.nn.Module], None] | None) -> TrainResult:
        """Train on ``data.train`` (validating on ``data.val``) from ``completed`` to the end of the schedule
        or an early stop; the completed iterations are checkpointed however it ends, except by a second
        signal (``TrainingInterrupted``) or non-finite parameters (``TrainingDiverged``)."""
        cfg, main = self.cfg, self.ctx.is_main
        x_train = torch.from_numpy(np.ascontiguousarray(data.train)).to(self.device)
        x_eval = torch.from_numpy(np.ascontiguousarray(data.val[: cfg.eval_samples])).to(self.device)
        if main:
            self.logger = _Logger(self.folder, self.completed)
        self.began = time.monotonic()
        stopped_early, interrupted = False, None
        bar = _progress_bar(cfg.iterations, self.completed) if progress and main else None
        with _deferred_interrupts() as interrupt_requested:
            try:
                stopped_early = self.loop(x_train, x_eval, bar, interrupt_requested, stop_at, on_iteration)
            except KeyboardInterrupt as exc:
                interrupted = exc
            finally:
                if bar is not None:
                    bar.close()
                self.logger.close()
            if isinstance(interrupted, _SecondInterrupt):  # possibly mid-update: keep the last checkpoint as is
                raise self.interruption(twice=True) from None
            if self.completed != self.last_saved:
                self.save()
            if interrupt_requested.is_set() and interrupted is None:  # a signal in the last iteration or save
                interrupted = KeyboardInterrupt()
        if interrupted is not None:
            raise self.interruption(twice=False) from None
        return TrainResult(directory=self.folder.path, iterations=self.completed, stopped_early=stopped_early,
                           seconds=time.monotonic() - self.began, model=self.model)


def training_device(device: str | torch.device | None, ctx: DistributedContext) -> torch.device:
    """The device this process trains on: ``device`` resolved; a CUDA device without an index under torchrun
    is this rank's GPU (``cuda:LOCAL_RANK``)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", ctx.local_rank if ctx.distributed else torch.cuda.current_device())
    return resolved


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, leave=True)


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
    device: str | torch.device | None = "cpu",
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

    The run folder is locked while training (``RunFolder.lock``): a folder another process writes
    (``RunInUseError``) or a read-only one (``StorageError``) is refused up front in one line; a checkpoint
    that cannot be written stops training with a one-line ``StorageError``, the previous one intact.

    ``distributed``: this process's place in a data-parallel group (``fond.distributed.context_from_env``
    under torchrun): each rank trains on its shard of every global batch through DistributedDataParallel,
    only rank 0 writes files (and holds the lock). ``on_iteration(done, model)`` is called after every
    applied update. ``device``: where the model, the data and the samplers live ("cpu", "cuda[:N]", "auto";
    ``fond.device.resolve_device``; under torchrun on CUDA each rank takes the GPU of its local rank).
    Checkpoints are device-free: a run resumes on another device (its draws then come from that device's
    sampler).
    """
    cfg, ctx, folder = train_config, distributed or SINGLE, RunFolder(out_dir)
    model_config = model_config or ModelConfig(n_inputs=data.n_inputs, n_latents=n_latents)
    if model_config.n_inputs != data.n_inputs:
        raise FondError(f"model expects {model_config.n_inputs} inputs but the data has {data.n_inputs}")
    run_info = _run_info(cfg, data, data_spec)
    model = build_model(model_config, seed=cfg.seed).to(training_device(device, ctx))
    optimizer = build_optimizer(model, cfg)
    with _writer_lock(folder, ctx):
        start = _resume_every_rank(folder, model, optimizer, model_config, cfg, ctx, resume)
        if ctx.is_main:
            folder.remove_stale_temporaries()
            if start > 0:  # the model files follow the checkpoint we resume from, whatever a kill left
                save_model(model, folder.path, extra=run_info)
        run = _TrainingRun(folder, model, optimizer, cfg, ctx, run_info, start)
        return run.run(data, progress=progress, stop_at=stop_at, on_iteration=on_iteration)
