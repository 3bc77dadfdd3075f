"""``fond analyze KIND RUN...``: each analysis on trained runs, writing ``OUT/<kind>.json`` and ``OUT/<kind>.png``.

Kinds: frontier, convergence, classify, ood, gabor, tuning, latency, serial, tracking, raster. A RUN is a
run directory (``fond train`` / ``fond sweep``); ``frontier`` also takes sweep directories (their rows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fond.errors import DataError, FondError

__all__ = ["ANALYSES", "run_analysis"]

ANALYSES: tuple[str, ...] = ("frontier", "convergence", "classify", "ood", "gabor", "tuning", "latency", "serial",
                             "tracking", "raster")


def _write(out: Path, kind: str, data: Any) -> Path:
    from fond.analysis.summary import json_default
    from fond.run import atomic_write

    return atomic_write(out / f"{kind}.json", json.dumps(data, indent=2, default=json_default) + "\n")


def _rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Result rows of runs (done.json or report/eval.json + config) and of sweep folders (sweep.json)."""
    from fond.checkpoint import read_config
    from fond.run import RunFolder
    from fond.sweep import SWEEP_TABLE

    rows = []
    for path in paths:
        folder = RunFolder(path)
        if (path / SWEEP_TABLE).is_file():
            rows += json.loads((path / SWEEP_TABLE).read_text())
        elif folder.is_finished():
            rows.append(json.loads(folder.done_path.read_text()))
        elif folder.eval_path.is_file():
            config = read_config(path)
            rows.append({**json.loads(folder.eval_path.read_text()),
                         "model": config["model"]["model"], "beta": config.get("train", {}).get("beta"),
                         "t_train": config.get("train", {}).get("steps"), "run": path.name})
        else:
            raise FondError(f"{path}: neither a sweep nor an evaluated run (run `fond eval {path}` first)")
    return rows


def _model_and_data(run: Path):
    from fond.data import load_data
    from fond.resume import load_model, read_run

    info = read_run(run)
    spec = info.get("data", {}).get("spec")
    if spec is None:
        raise FondError(f"{run}: no data recorded for this run")
    return load_model(run), spec, load_data, info


def _patch_side(model) -> tuple[int, int]:
    side = int(round(model.n_inputs ** 0.5))
    if side * side != model.n_inputs:
        raise DataError(f"this analysis needs square grey patches; the model has {model.n_inputs} inputs")
    return side, side


def run_analysis(kind: str, runs: Sequence[Path], out: Path, *, steps: int = 1000, samples: int = 500,
                 seeds: Sequence[int] = (0, 1, 2), train_samples: int = 5000) -> Path:
    """Run analysis ``kind`` on ``runs``; return the JSON path (the PNG sits beside it)."""
    from fond.analysis import classification, frontier, gabor, ood, stimuli, temporal, tuning
    from fond.plots import plot_convergence, plot_spike_raster

    if kind not in ANALYSES:
        raise FondError(f"unknown analysis {kind!r}; expected one of {ANALYSES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{kind}.png"
    if kind == "frontier":
        rows = _rows(runs)
        frontier.plot_frontier(rows, png)
        if any(len({r.get(k) for r in rows if r["model"] == m}) > 1 for m in {r["model"] for r in rows}
               for k in ("beta", "t_train")):
            frontier.plot_effects(rows, out / "frontier_effects.png")  # R², zeros, d against β and T_train
        return _write(out, kind, {"table": frontier.frontier_table(rows), "effects": frontier.summarize_effects(rows)})
    if kind == "convergence":
        from fond.evaluate import evaluate
        from fond.metrics import convergence_step

        traces, summary = {}, {}
        for run in runs:
            model, spec, load_data, info = _model_and_data(run)
            data = load_data(spec, n_train=10, n_val=samples, seed=0)
            trace = evaluate(model, data.val[:samples], steps).trace
            traces[run.name] = trace
            summary[run.name] = {"convergence_step": convergence_step(trace["r2"]),
                                 "r2_rates_at": {str(t): float(trace["r2_rates"][t - 1])
                                                 for t in (1, 16, 64, 256, steps) if t <= steps}}
        plot_convergence(traces, png, t_train=int(info.get("train", {}).get("steps", 16)))
        return _write(out, kind, summary)
    if kind in ("classify", "ood"):
        models, specs = {}, set()
        for run in runs:
            model, spec, load_data, _ = _model_and_data(run)
            if not str(spec).startswith("mnist"):
                raise FondError(f"{run}: {kind} needs a model trained on MNIST (this one: {spec})")
            models[run.name] = model
            specs.add("mnist-raw" if "raw" in spec else "mnist")
        if len(specs) > 1:
            raise FondError(f"{kind}: the runs were trained on centred and raw MNIST; compare like with like")
        spec = specs.pop()
        data = load_data(f"{spec}-test", n_train=train_samples, n_val=samples, seed=0)
        if kind == "classify":
            results = {name: classification.classification_over_steps(
                model, data.train, data.train_labels, data.val, data.val_labels, steps=steps, seeds=tuple(seeds))
                for name, model in models.items()}
            classification.plot_classification(results, png)
            return _write(out, kind, {name: r.to_dict() for name, r in results.items()})
        raw, centre = ood.mnist_test_inputs(spec, samples)
        sets = ood.ood_sets(raw, steps=steps, centre=centre)
        results = {}
        for name, model in models.items():
            usable = sets if model.config.spec.accepts_online_input else {k: v for k, v in sets.items() if v.ndim == 2}
            results[name] = ood.ood_evaluation(model, usable, steps)
        ood.plot_ood(results, png)
        return _write(out, kind, {"results": {k: v.to_dict() for k, v in results.items()}, **ood.ood_table(results)})
    if len(runs) != 1:
        raise FondError(f"analysis {kind!r} takes one run, got {len(runs)}")
    model, spec, load_data, _ = _model_and_data(runs[0])
    if kind == "gabor":
        if model.dictionary is None:
            raise FondError(f"{runs[0]}: Gabor fits need a linear dictionary")
        summary = gabor.fit_dictionary(model.dictionary.detach().numpy(), _patch_side(model))
        gabor.plot_gabor_summary(summary, png)
        return _write(out, kind, summary.to_dict())
    if kind == "tuning":
        result = tuning.grating_tuning(model, _patch_side(model), steps=min(steps, 200))
        tuning.plot_tuning(result, png)
        return _write(out, kind, result.to_dict())
    data = load_data(spec, n_train=10, n_val=max(samples, 100), seed=0)
    if kind == "latency":
        result = temporal.contrast_latency(model, data.val[:64], [0.25, 0.5, 1.0, 2.0], steps=min(steps, 200))
        temporal.plot_contrast_latency(result, png)
        return _write(out, kind, result.to_dict())
    if kind == "serial":
        half = min(50, len(data.val) // 2)
        if half < 1:
            raise FondError(f"serial dependence needs at least 2 held-out inputs, {spec} has {len(data.val)}")
        result = temporal.serial_dependence(model, data.val[:half], data.val[half:2 * half], steps_a=min(steps, 100),
                                            steps_b=min(steps, 100))
        temporal.plot_serial_dependence(result, png)
        return _write(out, kind, result.to_dict())
    if kind == "tracking":
        side = _patch_side(model)
        if str(spec).startswith("mnist"):
            raw, centre = ood.mnist_test_inputs(spec, 50)
            frames = stimuli.rotating_sequence(raw.reshape(-1, *side), 2.0, min(steps, 180))
            frames = frames if centre is None else frames - centre
        else:
            frames = stimuli.rotating_sequence(data.val[:50].reshape(-1, *side), 2.0, min(steps, 180))
        result = temporal.tracking(model, frames)
        temporal.plot_tracking(result, png)
        return _write(out, kind, result.to_dict())
    spikes = temporal.spike_raster(model, data.val[:1], min(steps, 200))
    plot_spike_raster(spikes, png)
    return _write(out, kind, {"steps": int(spikes.shape[0]), "total_spikes": float(spikes.sum()),
                              "active_neurons": int((spikes.sum(0) > 0).sum()),
                              "mean_rate_per_step": float(np.mean(spikes))})
