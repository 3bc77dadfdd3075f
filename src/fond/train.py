"""Learning to infer: backpropagation through the unrolled FOND dynamics (DESIGN.md §2.4).

``train(...)`` runs the schedule a ``TrainConfig`` describes on a ``PatchData`` split and writes, into
the run directory: ``config.json`` + ``model.safetensors`` (the model, loadable by ``fond.load``),
``checkpoint.safetensors`` (model, optimizer and position: an interrupted run resumes from it),
``metrics.jsonl`` (one JSON row per logged iteration) and, if TensorBoard is installed, event files.
All randomness is a pure function of (seed, iteration), so a resumed run draws exactly the batches
and spikes an uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fond.checkpoint import atomic_write, load_tensors, read_config, save_model, save_tensors
from fond.config import ModelConfig, TrainConfig, config_from_dict
from fond.data import PatchData
from fond.errors import CheckpointError, FondError
from fond.models import build_model

__all__ = ["train", "Schedule", "TrainResult", "TrainingDiverged"]


class TrainingDiverged(FondError):
    """The loss or a gradient went non-finite; the message names the step and the last good checkpoint."""


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


def _restore_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        name, _, slot = key[len("optim."):].rpartition(".")
        if name not in params:
            raise CheckpointError(f"checkpoint has optimizer state for unknown parameter '{name}'")
        optimizer.state[params[name]][slot] = value.clone()


class _Logger:
    def __init__(self, directory: Path, start_iteration: int) -> None:
        self.path = directory / "metrics.jsonl"
        if self.path.exists():  # drop rows of iterations the checkpoint we resume from does not hold
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_iteration]
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
            raise KeyboardInterrupt
        pending.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _save_checkpoint(directory: Path, model, optimizer, iteration: int, run_info: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(_optimizer_tensors(model, optimizer))
    save_tensors(directory / "checkpoint.safetensors", tensors, {"iteration": iteration, **run_info})
    save_model(model, directory, extra=run_info)


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
) -> TrainResult:
    """Train a model on ``data.train`` with ``train_config``; checkpoints and logs go to ``out_dir``.

    If ``out_dir`` already holds a checkpoint of the same configuration and ``resume`` is true, the run
    continues from it. A run directory holding a different configuration is refused. ``stop_at``: stop
    (with a checkpoint) once this many iterations are done, to be resumed later. On KeyboardInterrupt
    (Ctrl-C; the CLI maps SIGTERM to it too) the completed iterations are checkpointed before it propagates.
    """
    cfg = train_config
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
    checkpoint = directory / "checkpoint.safetensors"
    if checkpoint.exists():
        if not resume:
            raise FondError(f"{directory} already holds a run; use another --out or resume it")
        saved = read_config(directory)
        if saved.get("model") != asdict(model_config) or saved.get("train") != asdict(cfg):
            raise FondError(f"{directory} holds a run with a different configuration; use another --out")
        tensors, meta = load_tensors(checkpoint)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(model, optimizer, tensors)
        start = int(meta["iteration"])
    directory.mkdir(parents=True, exist_ok=True)

    schedule = Schedule(cfg)
    x_train = torch.from_numpy(np.ascontiguousarray(data.train))
    x_eval = torch.from_numpy(np.ascontiguousarray(data.val[: cfg.eval_samples]))
    logger = _Logger(directory, start)
    began = time.monotonic()
    stopped_early = interrupted = False
    last_saved = start
    completed = start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc="train", dynamic_ncols=True, leave=True)
    try:
        with _deferred_interrupts() as interrupt_requested:
            for iteration in range(start, cfg.iterations):
                if interrupt_requested.is_set():
                    raise KeyboardInterrupt
                beta, tau = schedule.beta(iteration), schedule.temperature(iteration)
                clamp_fraction, lr = schedule.clamp_fraction(iteration), schedule.lr(iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = x_train[_batch_indices(cfg.seed, iteration, len(x_train), cfg.batch_size)]
                gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, 2, iteration))
                out = model.unroll_loss(batch, cfg.steps, beta=beta, temperature=tau, clamp_fraction=clamp_fraction,
                                        generator=gen)
                if not torch.isfinite(out.loss):
                    raise TrainingDiverged(f"loss became non-finite at iteration {iteration}; last good checkpoint: "
                                           f"{checkpoint if checkpoint.exists() else 'none'} (iteration {last_saved})")
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                max_norm = cfg.grad_clip * (3.0 if schedule.warming_up(iteration) else 1.0)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                if not math.isfinite(grad_norm):
                    raise TrainingDiverged(f"gradient became non-finite at iteration {iteration}; last good "
                                           f"checkpoint: iteration {last_saved}")
                done = iteration + 1
                if done % cfg.log_every == 0 or done == cfg.iterations:  # logged before the update: see _Logger
                    logger.log({"step": done, "loss": float(out.loss.detach()), "nll": float(out.nll.mean()),
                                "kl": float(out.kl.mean()), "beta": beta, "temperature": tau,
                                "clamp_fraction": clamp_fraction, "lr": lr, "grad_norm": grad_norm,
                                "rate_max": out.rate_max, "step_size": _step_sizes(model),
                                "seconds": time.monotonic() - began})
                optimizer.step()
                if hasattr(model, "after_update"):  # e.g. sparse coding renormalises its atoms
                    with torch.no_grad():
                        model.after_update()
                completed = done
                if done % cfg.eval_every == 0 or done == cfg.iterations:
                    res = model.infer(x_eval, cfg.eval_steps, seed=cfg.seed)
                    logger.log({"step": done, "eval_steps": cfg.eval_steps, "eval_r2": float(res.trace["r2"][-1]),
                                "eval_r2_rates": float(res.trace["r2_rates"][-1]),
                                "eval_zeros": float(res.trace["zeros"][-1])})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(out.loss.detach()):.3g}", beta=f"{beta:.3g}", temp=f"{tau:.3g}",
                                    refresh=False)
                if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                    _save_checkpoint(directory, model, optimizer, done, run_info)
                    last_saved = done
                if stop_at is not None and done >= stop_at and done < cfg.iterations:
                    stopped_early = True
                    break
                limit = cfg.time_limit_minutes
                if limit is not None and time.monotonic() - began > 60.0 * limit and done < cfg.iterations:
                    warnings.warn(f"time limit of {limit} min reached at iteration {done}/{cfg.iterations}; "
                                  "stopping (resume to finish the schedule)", stacklevel=2)
                    stopped_early = True
                    break
            if interrupt_requested.is_set():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    if completed != last_saved and completed > 0:
        _save_checkpoint(directory, model, optimizer, completed, run_info)
    if interrupted:  # saved: now let the caller stop
        raise KeyboardInterrupt
    return TrainResult(directory=directory, iterations=completed, stopped_early=stopped_early,
                       seconds=time.monotonic() - began, model=model)


def read_run(directory: str | Path) -> dict[str, Any]:
    """The run information (train config, data spec) stored beside a trained model."""
    data = read_config(directory)
    if "train" in data:
        config_from_dict(TrainConfig, data["train"], source=f"{directory}/config.json")
    return data
