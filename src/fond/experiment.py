"""One experiment pipeline: train → evaluate → report, the same for every caller.

``fond train``, ``fond sweep`` (local and Ray backends) and ``fond reproduce`` all call
:func:`run_experiment`, so every run folder holds the same things: the model and its checkpoints, the
training log, ``report/`` (eval.json, report.md, figures, trace.npz with the per-step curves) and
``done.json``, the run's result row, written last (it marks the run finished).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ExperimentResult", "RESULT_COLUMNS", "run_experiment", "evaluate_and_report", "result_row"]

#: Columns of a run's result row (``done.json``) and of a sweep's table, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "beta", "t_train", "seed", "iterations", "data", "r2", "r2_rates", "r2_uncentred", "zeros",
    "rate_distortion", "convergence_step", "nelbo", "n_params", "diverged", "complete", "minutes", "run",
)


@dataclass
class ExperimentResult:
    """What one experiment produced: the training result, the evaluation (None if not evaluated, e.g. on
    ranks other than 0 or with ``evaluate=False``) and the result row written to ``done.json`` (or None)."""

    train: Any
    evaluation: Any | None
    row: dict[str, Any] | None


def result_row(train_config, model_config, evaluation, *, iterations: int, data_spec: str, minutes: float,
               run: str) -> dict[str, Any]:
    """The result row of an evaluated run, with exactly the columns of ``RESULT_COLUMNS``; ``complete`` is False
    for a model stopped mid-schedule (e.g. by the time limit: resume the run to finish it)."""
    row = {"model": model_config.model, "beta": train_config.beta, "t_train": train_config.steps,
           "seed": train_config.seed, "iterations": iterations, "data": data_spec, **evaluation.summary(),
           "complete": iterations >= train_config.iterations, "minutes": round(minutes, 2), "run": run}
    return {key: row.get(key) for key in RESULT_COLUMNS}


def run_experiment(data, train_config, model_config, out_dir: str | Path, *, data_spec: str | None = None,
                   eval_steps: int = 1000, eval_samples: int | None = None, evaluate: bool = True,
                   progress: bool = False, distributed=None, device="cpu") -> ExperimentResult:
    """Train (or resume) ``model_config`` on ``data.train`` with ``train_config`` in ``out_dir``, then
    evaluate it on ``data.val`` (its first ``eval_samples`` inputs, all if None) for ``eval_steps`` steps
    (seed 0), write the report and the per-step curves, and last ``done.json``.

    ``data``: a ``PatchData``. ``data_spec``: the ``--data`` spec recorded with the run (default: the data's
    name). ``device``: where training and evaluation run (``fond.device.resolve_device``; None or "auto": a
    CUDA GPU where there is one). ``distributed``: this process's place under torchrun; only rank 0 evaluates
    and writes. The run
    folder is locked for the whole experiment (under torchrun the trainer locks it while it trains, rank 0
    again while it evaluates). Training errors (``TrainingDiverged``, ``TrainingInterrupted``, ...)
    propagate; nothing is evaluated then.
    """
    from fond.run import RunFolder
    from fond.train import train

    folder = RunFolder(out_dir)
    spec = data_spec or data.name
    several = distributed is not None and distributed.distributed
    started = time.perf_counter()
    with contextlib.nullcontext() if several else folder.lock():
        trained = train(data, train_config, folder.path, model_config=model_config, data_spec=spec,
                        progress=progress, distributed=distributed, device=device)
        if not evaluate or (distributed is not None and not distributed.is_main):
            return ExperimentResult(train=trained, evaluation=None, row=None)
        with folder.lock():
            evaluation = evaluate_and_report(folder, trained.model, data, steps=eval_steps, samples=eval_samples)
            row = result_row(train_config, model_config, evaluation, iterations=trained.iterations,
                             data_spec=spec, minutes=(time.perf_counter() - started) / 60.0, run=folder.path.name)
            folder.write_done(row)
    return ExperimentResult(train=trained, evaluation=evaluation, row=row)


def evaluate_and_report(folder, model, data, *, steps: int = 1000, samples: int | None = None, seed: int = 0,
                        write: bool = True, **anytime):
    """Evaluate ``model`` on ``data.val`` (its first ``samples`` inputs, all if None) for ``steps`` steps and,
    if ``write``, write the run's ``report/`` (eval.json, report.md, figures, trace.npz) in ``folder`` (a
    ``RunFolder`` or a path). ``anytime``: ``tol`` / ``window`` of ``fond.evaluate.evaluate``. Returns the
    ``Evaluation``; where the data were centred (MNIST), with the R² against the uncentred inputs as well."""
    from fond.data.preprocessing import input_offset
    from fond.evaluate import evaluate
    from fond.report import write_report
    from fond.run import RunFolder

    x = data.val if samples is None else data.val[:samples]
    evaluation = evaluate(model, x, steps, seed=seed, offset=input_offset(data.preprocessing), **anytime)
    if write:
        folder = RunFolder(folder)
        with folder.lock():
            write_report(folder.path, model, evaluation, x, data.patch_shape,
                         mnist=(data.preprocessing or {}).get("kind") == "mnist")
            folder.write_trace(evaluation.trace)
    return evaluation
