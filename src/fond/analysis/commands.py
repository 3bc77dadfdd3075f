"""``fond analyze KIND RUN...``: each analysis on trained runs, writing ``OUT/<kind>.json`` and ``OUT/<kind>.png``.

Kinds: frontier, convergence, classify, ood, gabor, tuning, latency, serial, tracking, raster, cost, bitwidth,
contrast. A RUN is a run directory (``fond train`` / ``fond sweep``); ``frontier`` also takes sweep directories
(their rows).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fond.errors import DataError, FondError

__all__ = ["ANALYSES", "run_analysis"]

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


def _read_run(run: Path, device="cpu"):
    """The run's model (on ``device``), the ``--data`` spec it was trained on and its run information
    (``read_run``)."""
    from fond.resume import load_model, read_run

    info = read_run(run)
    spec = info.get("data", {}).get("spec")
    if spec is None:
        raise FondError(f"{run}: no data recorded for this run")
    return load_model(run, device), spec, info


def _patch_side(model) -> tuple[int, int]:
    side = int(round(model.n_inputs ** 0.5))
    if side * side != model.n_inputs:
        raise DataError(f"this analysis needs square grey patches; the model has {model.n_inputs} inputs")
    return side, side


def run_analysis(kind: str, runs: Sequence[Path], out: Path, *, steps: int = 1000, samples: int = 500,
                 seeds: Sequence[int] = (0, 1, 2), train_samples: int = 50_000,
                 target_r2: float | None = None, device="cpu") -> Path:
    """Run analysis ``kind`` on ``runs`` (models on ``device``: ``fond.device.resolve_device``); return the JSON
    path (the PNG sits beside it)."""
    if kind not in ANALYSES:
        raise FondError(f"unknown analysis {kind!r}; expected one of {ANALYSES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    request = _Request(kind, list(runs), out, steps=steps, samples=samples, seeds=seeds,
                       train_samples=train_samples, target_r2=target_r2, device=device)
    return _ANALYSIS_FUNCTIONS[kind](request)


@dataclass(frozen=True)
class _Request:
    """One ``fond analyze`` call: the analysis, its runs, the output folder and the budget."""

    kind: str
    runs: list[Path]
    out: Path
    steps: int  # inference steps (each analysis caps its own)
    samples: int  # held-out inputs
    seeds: Sequence[int]  # inference seeds of the classification probes
    train_samples: int  # training digits of the classification probes
    target_r2: float | None = None  # cost: the mean-code R² every run is costed at (None: chosen from the runs)
    device: Any = "cpu"  # where the models run (fond.device.resolve_device)

    @property
    def png(self) -> Path:
        return self.out / f"{self.kind}.png"

    def write(self, data: Any) -> Path:
        """``OUT/<kind>.json``."""
        return _write(self.out, self.kind, data)

    def one_run(self):
        """The model of the single run this analysis takes and its data spec."""
        if len(self.runs) != 1:
            raise FondError(f"analysis {self.kind!r} takes one run, got {len(self.runs)}")
        model, spec, _ = _read_run(self.runs[0], self.device)
        return model, spec

    def one_run_with_data(self):
        """The single run's model, its data spec and its data (at least 100 held-out inputs)."""
        from fond.data import load_data

        model, spec = self.one_run()
        return model, spec, load_data(spec, n_train=10, n_val=max(self.samples, 100), seed=0)


def _frontier(request: _Request) -> Path:
    """Rate–distortion frontier of runs and sweeps; the effects of β and T_train where the rows vary them."""
    from fond.analysis import frontier

    rows = _rows(request.runs)
    frontier.plot_frontier(rows, request.png)
    if any(len({r.get(k) for r in rows if r["model"] == m}) > 1 for m in {r["model"] for r in rows}
           for k in ("beta", "t_train")):
        frontier.plot_effects(rows, request.out / "frontier_effects.png")  # R², zeros, d against β and T_train
    return request.write({"table": frontier.frontier_table(rows), "effects": frontier.summarize_effects(rows)})


def _convergence(request: _Request) -> Path:
    """R² over inference steps of each run on its own held-out data; convergence steps."""
    from fond.data import load_data
    from fond.evaluate import evaluate
    from fond.metrics import convergence_step
    from fond.plots import plot_convergence

    steps, samples = request.steps, request.samples
    traces, summary = {}, {}
    for run in request.runs:
        model, spec, info = _read_run(run, request.device)
        data = load_data(spec, n_train=10, n_val=samples, seed=0)
        trace = evaluate(model, data.val[:samples], steps).trace
        traces[run.name] = trace
        summary[run.name] = {"convergence_step": convergence_step(trace["r2"]),
                             "r2_rates_at": {str(t): float(trace["r2_rates"][t - 1])
                                             for t in (1, 16, 64, 256, steps) if t <= steps}}
    # T_train of the last run marks the figure
    plot_convergence(traces, request.png, t_train=int(info.get("train", {}).get("steps", 16)))
    return request.write(summary)


def _mnist_models(request: _Request):
    """The runs' models (all trained on the same MNIST: centred or raw), that spec and its test digits."""
    from fond.data import load_data

    models, specs = {}, set()
    for run in request.runs:
        model, spec, _ = _read_run(run, request.device)
        if not str(spec).startswith("mnist"):
            raise FondError(f"{run}: {request.kind} needs a model trained on MNIST (this one: {spec})")
        models[run.name] = model
        specs.add("mnist-raw" if "raw" in spec else "mnist")
    if len(specs) > 1:
        raise FondError(f"{request.kind}: the runs were trained on centred and raw MNIST; compare like with like")
    spec = specs.pop()
    data = load_data(f"{spec}-test", n_train=request.train_samples, n_val=request.samples, seed=0)
    return models, spec, data


def _classify(request: _Request) -> Path:
    """Logistic-regression accuracy from each MNIST model's code over inference steps."""
    from fond.analysis import classification

    models, _, data = _mnist_models(request)
    results = {name: classification.classification_over_steps(
        model, data.train, data.train_labels, data.val, data.val_labels, steps=request.steps,
        seeds=tuple(request.seeds))
        for name, model in models.items()}
    classification.plot_classification(results, request.png)
    return request.write({name: r.to_dict() for name, r in results.items()})


def _ood(request: _Request) -> Path:
    """Each MNIST model on the out-of-distribution sets (fixed-input solvers: the static ones)."""
    from fond.analysis import ood

    models, spec, _ = _mnist_models(request)
    raw, centre = ood.mnist_test_inputs(spec, request.samples)
    sets = ood.ood_sets(raw, steps=request.steps, centre=centre)
    results = {}
    for name, model in models.items():
        usable = sets if model.config.spec.accepts_online_input else {k: v for k, v in sets.items() if v.ndim == 2}
        results[name] = ood.ood_evaluation(model, usable, request.steps)
    ood.plot_ood(results, request.png)
    return request.write({"results": {k: v.to_dict() for k, v in results.items()}, **ood.ood_table(results)})


def _gabor(request: _Request) -> Path:
    """Gabor fits of the atoms of the run's ``MOST_ACTIVE_ATOMS`` most active neurons on held-out inputs."""
    from fond.analysis import gabor

    model, _, data = request.one_run_with_data()
    if model.dictionary is None:
        raise FondError(f"{request.runs[0]}: Gabor fits need a linear dictionary")
    used = gabor.most_active_neurons(model, data.val[:request.samples], steps=min(request.steps, 200))
    summary = gabor.fit_dictionary(model.dictionary.detach().cpu().numpy(), _patch_side(model), columns=used)
    gabor.plot_gabor_summary(summary, request.png)
    return request.write(summary.to_dict())


def _tuning(request: _Request) -> Path:
    """Orientation tuning to drifting gratings."""
    from fond.analysis import tuning

    model, _ = request.one_run()
    result = tuning.grating_tuning(model, _patch_side(model), steps=min(request.steps, 200))
    tuning.plot_tuning(result, request.png)
    return request.write(result.to_dict())


def _latency(request: _Request) -> Path:
    """Contrast-dependent latency on 64 held-out inputs."""
    from fond.analysis import temporal

    model, _, data = request.one_run_with_data()
    result = temporal.contrast_latency(model, data.val[:64], [0.25, 0.5, 1.0, 2.0], steps=min(request.steps, 200))
    temporal.plot_contrast_latency(result, request.png)
    return request.write(result.to_dict())


def _serial(request: _Request) -> Path:
    """Serial dependence between pairs of held-out inputs."""
    from fond.analysis import temporal

    model, spec, data = request.one_run_with_data()
    half = min(50, len(data.val) // 2)
    if half < 1:
        raise FondError(f"serial dependence needs at least 2 held-out inputs, {spec} has {len(data.val)}")
    steps = min(request.steps, 100)
    result = temporal.serial_dependence(model, data.val[:half], data.val[half:2 * half], steps_a=steps,
                                        steps_b=steps)
    temporal.plot_serial_dependence(result, request.png)
    return request.write(result.to_dict())


def _tracking(request: _Request) -> Path:
    """Tracking of an input rotating 2° per step (raw MNIST digits, or held-out patches)."""
    from fond.analysis import ood, stimuli, temporal

    model, spec, data = request.one_run_with_data()
    side = _patch_side(model)
    if str(spec).startswith("mnist"):
        raw, centre = ood.mnist_test_inputs(spec, 50)
        frames = stimuli.rotating_sequence(raw.reshape(-1, *side), 2.0, min(request.steps, 180))
        frames = frames if centre is None else frames - centre
    else:
        frames = stimuli.rotating_sequence(data.val[:50].reshape(-1, *side), 2.0, min(request.steps, 180))
    result = temporal.tracking(model, frames)
    temporal.plot_tracking(result, request.png)
    return request.write(result.to_dict())


def _raster(request: _Request) -> Path:
    """The spike raster of one held-out input."""
    from fond.analysis import temporal
    from fond.plots import plot_spike_raster

    model, _, data = request.one_run_with_data()
    spikes = temporal.spike_raster(model, data.val[:1], min(request.steps, 200))
    plot_spike_raster(spikes, request.png)
    return request.write({"steps": int(spikes.shape[0]), "total_spikes": float(spikes.sum()),
                          "active_neurons": int((spikes.sum(0) > 0).sum()),
                          "mean_rate_per_step": float(np.mean(spikes))})


def _cost(request: _Request) -> Path:
    """Operations and estimated energy per input of each run to one mean-code R² (``fond.analysis.cost``)."""
    from fond.analysis import cost
    from fond.data import load_data
    from fond.evaluate import evaluate

    prepared = []
    for run in request.runs:
        model, spec, _ = _read_run(run, request.device)
        x = load_data(spec, n_train=10, n_val=request.samples, seed=0).val[: request.samples]
        prepared.append((run, model, x, evaluate(model, x, request.steps, chunk_size=100).trace["r2_rates"]))
    target = request.target_r2
    if target is None:  # the quality every run reaches: 90 % of the lowest final mean-code R²
        target = 0.9 * min(float(curve[-1]) for *_, curve in prepared)
    costs = [cost.cost_of_curve(model, x, curve, target) for _, model, x, curve in prepared]
    cost.plot_costs(costs, request.png)
    return request.write({"target_r2": target, "steps": request.steps, "samples": request.samples,
                          "energy_pj_per_operation_estimates": cost.ENERGY_PJ,
                          "runs": {run.name: c.to_dict() for (run, *_), c in zip(prepared, costs, strict=True)}})


def _bitwidth(request: _Request) -> Path:
    """The integer engine at each weight and state width against the float engine (``fond.analysis.bitwidth``), on
    the run's own held-out split; on the CPU (the integer engine's kernels run there)."""
    from fond.analysis import bitwidth
    from fond.pretrained import held_out_data

    if len(request.runs) != 1:
        raise FondError(f"analysis 'bitwidth' takes one run, got {len(request.runs)}")
    model, _, info = _read_run(request.runs[0])
    x = held_out_data(info).val[: request.samples]
    study = bitwidth.bitwidth_study(model, x, steps=request.steps,
                                    log=lambda message: print(f"fond: bitwidth: {message}", file=sys.stderr,
                                                              flush=True))
    bitwidth.plot_bitwidth(study, request.png)
    return request.write(study.to_dict())


def _contrast(request: _Request) -> Path:
    """R² of the sample and the mean code by quartile of input contrast (``fond.analysis.contrast``), each run on
    its own held-out split."""
    from fond.analysis import contrast
    from fond.pretrained import held_out_data

    results = {}
    for run in request.runs:
        model, _, info = _read_run(run, request.device)
        x = held_out_data(info).val[: request.samples]
        results[run.name] = contrast.r2_by_contrast(model, x, request.steps)
    contrast.plot_contrast(results, request.png)
    return request.write({"runs": results})


#: kind → the function that runs it (the order of ``ANALYSES``).
_ANALYSIS_FUNCTIONS: dict[str, Callable[[_Request], Path]] = {
    "frontier": _frontier, "convergence": _convergence, "classify": _classify, "ood": _ood, "gabor": _gabor,
    "tuning": _tuning, "latency": _latency, "serial": _serial, "tracking": _tracking, "raster": _raster,
    "cost": _cost, "bitwidth": _bitwidth, "contrast": _contrast}

#: Every kind of analysis, in the order of the CLI's help.
ANALYSES: tuple[str, ...] = tuple(_ANALYSIS_FUNCTIONS)
