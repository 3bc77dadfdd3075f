"""Sweeps on Ray: each unfinished run of a grid is one Ray task with its own CPU/GPU request.

``fond sweep GRID --backend ray`` starts a local Ray instance (``--ray-cpus N`` CPUs; Ray's default: all of
this machine's) or joins an existing cluster (``--address`` or ``RAY_ADDRESS``), submits one task per run
not yet finished, and gathers the results into the same ``sweep.csv`` / ``sweep.json`` as the local backend
(:func:`fond.sweep.run_sweep`): the same runs with the same seeds give the same rows, only the wall-clock
``minutes`` differ. Finished runs (``done.json``) are skipped before anything is submitted, an interrupted
one resumes from its checkpoint, so running the same command again finishes a sweep.

The tasks write their run folders under ``OUT`` themselves: on a cluster of several machines ``OUT`` must be
on a filesystem every node sees at the same path, and every node needs the same fond installed. The
training data is loaded once here and shipped to the tasks through Ray's object store.

Ray is an optional dependency (``pip install fond[ray]``), imported only when this backend runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fond.errors import ConfigError, FondError
from fond.sweep import RunSpec, SweepConfig, describe_row, gather, is_finished, prepare_sweep_dir

__all__ = ["run_sweep_ray", "RAY_MISSING"]

#: The error when the backend is asked for without Ray installed.
RAY_MISSING = "the Ray backend needs `pip install fond[ray]`"


def import_ray():
    """The ``ray`` module, or a one-line :class:`FondError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FondError(RAY_MISSING) from None
    return ray


def run_sweep_ray(sweep: SweepConfig, out_dir: str | Path, *, address: str | None = None,
                  cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, ray_cpus: int | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run every unfinished grid point of ``sweep`` as a Ray task; write sweep.csv / sweep.json.

    address: a Ray cluster to join (``"auto"``: the one ``ray start`` runs on this machine, ``"HOST:6379"``,
    ``"ray://HOST:10001"`` with ``ray[client]``); None: the ``RAY_ADDRESS`` environment variable, else a new
    local Ray instance with ``ray_cpus`` CPUs (Ray's default: every core), shut down at the end. If Ray is
    already initialised in this process it is used as it is. cpus_per_run / gpus_per_run: each task's
    resource request; the task runs torch on ``max(1, int(cpus_per_run))`` threads.

    A run that fails is reported (``log``) with its name and error while the others go on. Returns the rows
    of every finished run (including earlier invocations') and ``{run name: error}`` of the runs that failed.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    _check_resources(cpus_per_run, gpus_per_run, ray_cpus, address)
    ray = import_ray()
    log = log or (lambda message: None)
    out_dir = prepare_sweep_dir(sweep, out_dir)
    specs = sweep.runs()
    pending = _pending_runs(specs, out_dir, log)
    if not pending:  # nothing to do: do not start Ray at all
        return gather(sweep, out_dir), {}
    datasets = _load_datasets(sweep, pending)  # before Ray starts: bad data fails fast
    started = not ray.is_initialized()
    handler = _start_ray(ray, address, ray_cpus) if started else None
    try:
        _check_cluster(ray, cpus_per_run, gpus_per_run, local=started and address is None, log=log)
        refs = _submit(ray, pending, out_dir, datasets, cpus_per_run, gpus_per_run, log=log, total=len(specs))
        failures = _collect(ray, refs, sweep, out_dir, log=log, total=len(specs))
    finally:
        if started:
            ray.shutdown()
            _restore_sigterm(handler)
    return gather(sweep, out_dir), failures


def _pending_runs(specs: list[RunSpec], out_dir: Path, log: Callable[[str], None]) -> list[tuple[int, RunSpec]]:
    """The runs not finished yet, each with its 1-based position in the grid (finished ones are logged)."""
    pending: list[tuple[int, RunSpec]] = []
    for i, spec in enumerate(specs, 1):
        if is_finished(out_dir, spec):
            log(f"[{i}/{len(specs)}] {spec.name}: done, skipped")
        else:
            pending.append((i, spec))
    return pending


def _split_key(spec: RunSpec) -> tuple[int, int, int]:
    """What decides a run's data split: (n_train, n_val, seed)."""
    cfg = spec.train_config()
    return cfg.n_train, cfg.n_val, cfg.seed


def _load_datasets(sweep: SweepConfig, pending: list[tuple[int, RunSpec]]) -> dict[tuple[int, int, int], Any]:
    """The training data of the pending runs, loaded once per split (:func:`_split_key`)."""
    from fond.data import load_data

    datasets: dict[tuple[int, int, int], Any] = {}
    for _, spec in pending:
        key = _split_key(spec)
        if key not in datasets:
            datasets[key] = load_data(sweep.data, n_train=key[0], n_val=key[1], seed=key[2])
    return datasets


def _start_ray(ray, address: str | None, ray_cpus: int | None):
    """A new local Ray instance (``address`` None) or a connection to a cluster, keeping this process's SIGTERM
    handler (returned, to restore again after ``ray.shutdown``); a bad or unreachable address or a failed start
    is a one-line :class:`FondError`."""
    handler = _sigterm_handler()
    try:
        if address is None:  # "local": a new instance, even if `ray start` left a cluster running here
            ray.init(address="local", num_cpus=ray_cpus, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ValueError, OSError, RuntimeError) as exc:  # a bad or unreachable address, a failed start
        where = "start a local Ray instance" if address is None else f"connect to the Ray cluster at {address}"
        raise FondError(f"cannot {where}: {_describe_error(exc)}") from None
    finally:
        _restore_sigterm(handler)
    return handler


def _submit(ray, pending: list[tuple[int, RunSpec]], out_dir: Path, datasets: dict[tuple[int, int, int], Any],
            cpus_per_run: float, gpus_per_run: float, *, log: Callable[[str], None],
            total: int) -> dict[Any, tuple[int, RunSpec]]:
    """One Ray task per pending run (its data through the object store, shared by the runs of one split);
    returns {task reference: (position, run)}."""
    task = ray.remote(_run_task)
    threads = max(1, int(cpus_per_run))
    device = "cuda" if gpus_per_run > 0 else "cpu"  # a GPU reserved is a GPU used
    data_refs = {key: ray.put(data) for key, data in datasets.items()}
    refs: dict[Any, tuple[int, RunSpec]] = {}
    for i, spec in pending:
        ref = task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, name=f"fond:{spec.name}").remote(
            spec, str(out_dir / spec.name), data_refs[_split_key(spec)], threads, device)
        refs[ref] = (i, spec)
        log(f"[{i}/{total}] {spec.name}: submitted ({spec.train_config().iterations} iterations)")
    return refs


def _collect(ray, refs: dict[Any, tuple[int, RunSpec]], sweep: SweepConfig, out_dir: Path, *,
             log: Callable[[str], None], total: int) -> dict[str, str]:
    """Wait for every task as it finishes (the sweep table is rewritten after each success); returns
    {run name: error} of the runs that failed."""
    failures: dict[str, str] = {}
    waiting = list(refs)
    while waiting:
        finished, waiting = ray.wait(waiting, num_returns=1)
        for ref in finished:
            i, spec = refs[ref]
            try:
                row = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the run's own error (or a lost worker): report it, go on
                failures[spec.name] = _describe_error(exc)
                log(f"[{i}/{total}] {spec.name}: FAILED: {failures[spec.name]}")
                continue
            log(f"[{i}/{total}] {spec.name}: {describe_row(row)}")
            gather(sweep, out_dir)
    return failures


def _sigterm_handler():
    """This process's own SIGTERM handler (the CLI's: a clean stop like Ctrl-C), or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


def _restore_sigterm(handler) -> None:
    """``ray.init`` replaces the SIGTERM handler (exit with a C++ stack dump): put the application's back."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _run_task(spec: RunSpec, directory: str, data, threads: int, device: str = "cpu") -> dict[str, Any]:
    """One run inside a Ray worker: torch on the task's CPUs, then :func:`fond.sweep.run_point` on ``device``
    (a task that reserved GPUs trains on the one Ray gave it: Ray sets CUDA_VISIBLE_DEVICES, so it is "cuda")."""
    import dataclasses

    import numpy as np
    import torch

    from fond.sweep import run_point

    torch.set_num_threads(threads)
    # arrays from the object store are read-only views: give training its own writable copies
    data = dataclasses.replace(data, train=np.array(data.train), val=np.array(data.val))
    return run_point(spec, directory, data=data, device=device)


def _check_resources(cpus_per_run: float, gpus_per_run: float, ray_cpus: int | None, address: str | None) -> None:
    """Bad requests fail before Ray starts, each with the flag named."""
    if isinstance(cpus_per_run, bool) or not (isinstance(cpus_per_run, int | float) and 0 < cpus_per_run < 1e9):
        raise ConfigError(f"--cpus-per-run must be a number > 0, got {cpus_per_run!r}")
    if isinstance(gpus_per_run, bool) or not (isinstance(gpus_per_run, int | float) and 0 <= gpus_per_run < 1e9):
        raise ConfigError(f"--gpus-per-run must be a number ≥ 0, got {gpus_per_run!r}")
    if ray_cpus is None:
        return
    if isinstance(ray_cpus, bool) or not (isinstance(ray_cpus, int) and ray_cpus >= 1):
        raise ConfigError(f"--ray-cpus must be an integer ≥ 1, got {ray_cpus!r}")
    if address is not None:
        raise ConfigError("--ray-cpus sizes a local Ray instance; a cluster (--address or RAY_ADDRESS) has its own")
    if cpus_per_run > ray_cpus:
        raise ConfigError(f"each run asks for {cpus_per_run:g} CPUs (--cpus-per-run) but the local Ray instance "
                          f"has {ray_cpus} (--ray-cpus)")


def _check_cluster(ray, cpus_per_run: float, gpus_per_run: float, *, local: bool,
                   log: Callable[[str], None]) -> None:
    """A request larger than the whole instance would wait forever: refuse it locally, warn on a cluster."""
    total = ray.cluster_resources()
    for name, wanted in (("CPU", cpus_per_run), ("GPU", gpus_per_run)):
        have = total.get(name, 0.0)
        if wanted > have:
            flag = f"--{name.lower()}s-per-run"
            message = f"each run asks for {wanted:g} {name}s ({flag}) but the Ray instance has {have:g}"
            if local:
                raise ConfigError(message)
            log(f"warning: {message}; the runs wait until the cluster grows")


def _describe_error(exc: BaseException) -> str:
    """One line: the run's own exception (unwrapped from Ray's), type and first line of its message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
