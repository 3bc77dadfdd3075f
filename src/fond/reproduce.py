"""``fond reproduce``: train the paper's comparisons, run every analysis, write one report with figures.

Everything in the report is computed by this run (nothing is copied except the paper's own numbers,
shown beside ours). Steps, each resumable (finished runs and finished analyses are skipped):

1. natural 16×16 patches: iP-VAE at β ∈ {½β, β, 2β} and at ½T_train (the effects of β and T_train), the
   other FOND models, their amortized counterparts and LCA (λ 0.5) → rate–distortion frontier;
2. MNIST: iP-, iG_relu-, iG-VAE, SA-VAE (hybrid), P-VAE (amortized), predictive coding → R², zeros,
   logistic-regression accuracy over inference steps, out-of-distribution generalisation;
3. V1 properties of the natural-image iP-VAE: Gabor fits of its dictionary, grating tuning,
   contrast-dependent latency; online inference: serial dependence and tracking of a rotating digit;
   a spike raster;
4. ``OUT/index.md``: the tables, figures, the configuration that made them and, for each of the paper's
   orderings (DESIGN.md §3), whether it holds here — said plainly when it does not.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fond.config import PAPER_DATA
from fond.errors import ConfigError
from fond.registry import model_spec
from fond.run import RunFolder, atomic_write

__all__ = ["ReproducePreset", "REPRODUCE_PRESETS", "reproduce"]

NATURAL_MODELS = ("igvae-relu", "igvae", "pvae", "gvae-relu", "gvae", "lca")
MNIST_MODELS = ("ipvae", "igvae-relu", "igvae", "savae", "pvae", "pc")
ITERATIVE_VS_AMORTIZED = (("ipvae", "pvae"), ("igvae-relu", "gvae-relu"), ("igvae", "gvae"))


@dataclass(frozen=True)
class ReproducePreset:
    """How much of the protocol to run. ``quick``: about an hour on 2 CPU cores; ``paper``: the full one."""

    name: str
    train_preset: str
    natural_iterations: int | None
    mnist_iterations: int | None
    eval_steps: int = 1000
    natural_eval_samples: int = 1000
    mnist_eval_samples: int = 1000
    probe_train: int = 5000
    probe_test: int = 1000
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    probe_every: int = 50
    ood_samples: int = 300
    latency_steps: int = 100
    time_limit_minutes: float | None = None
    latents: int | None = None
    batch_size: int | None = None
    natural_data: str = "natural16"
    mnist_data: str = "mnist"

    @property
    def mnist_test_data(self) -> str:
        """The spec whose held-out split is the 10k MNIST test digits, preprocessed as ``mnist_data``."""
        return {"mnist": "mnist-test", "mnist-raw": "mnist-raw-test"}.get(self.mnist_data, self.mnist_data)


REPRODUCE_PRESETS = {
    # every model at its quick recipe's own updates (the natural-patch iP-VAE's 1500 at T_train 32 take ~7 min on
    # 2 quiet cores: the guard leaves room for a busier machine; MNIST ~2.5 min per model, iP-VAE's ~7.5 at T 64)
    "quick": ReproducePreset("quick", "quick", natural_iterations=None, mnist_iterations=None, natural_eval_samples=500,
                             mnist_eval_samples=500, probe_train=2000, probe_test=500, probe_seeds=(0, 1),
                             probe_every=100, time_limit_minutes=12.0),
    "paper": ReproducePreset("paper", "paper", natural_iterations=None, mnist_iterations=None,
                             natural_eval_samples=5000, mnist_eval_samples=10000, probe_train=50000,
                             probe_test=10000, probe_seeds=(0, 1, 2, 3, 4), ood_samples=2000, latency_steps=200,
                             natural_data=PAPER_DATA["natural"], mnist_data=PAPER_DATA["mnist"]),
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _json(path: Path, data: Any) -> None:
    from fond.analysis.summary import json_default

    atomic_write(path, json.dumps(data, indent=2, default=json_default) + "\n")


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if an earlier run wrote it, else ``compute()`` written there."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    _json(path, value)
    return json.loads(path.read_text())


def _sweep(models, data, preset: ReproducePreset, iterations, eval_samples, **fields):
    from fond.sweep import SweepConfig

    return SweepConfig(models=list(models), data=data, preset=preset.train_preset, iterations=iterations,
                       eval_steps=preset.eval_steps, eval_samples=eval_samples,
                       time_limit_minutes=preset.time_limit_minutes, latents=preset.latents,
                       batch_size=preset.batch_size, **fields)


def _load(run_dir: Path, device="cpu"):
    from fond.resume import load_model

    return load_model(run_dir, device)


def _row_by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["model"]: row for row in rows}


def reproduce(preset: str | ReproducePreset = "quick", out: str | Path = "runs/reproduce", *,
              log: Callable[[str], None] | None = None, device="cpu") -> Path:
    """Run the whole protocol named by ``preset`` (or given as a ``ReproducePreset``) into ``out`` on
    ``device`` (``fond.device.resolve_device``); return the path of ``out/index.md``."""
    if isinstance(preset, ReproducePreset):
        p = preset
    elif preset in REPRODUCE_PRESETS:
        p = REPRODUCE_PRESETS[preset]
    else:
        raise ConfigError(f"unknown reproduce preset {preset!r}; expected one of {tuple(REPRODUCE_PRESETS)}")
    out = Path(out)
    stage = _Stage(p, out, out / "figures", log or (lambda message: None), device)
    stage.figures.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    natural = _natural_runs(stage)  # 1. natural patches
    frontier_summary = _frontier(stage, natural)
    r2_at_t, r2_final = _convergence(stage, natural)
    gabor_summary, latency = _v1_properties(stage, natural)  # 3. V1 properties
    mnist = _mnist_runs(stage)  # 2. MNIST
    probes = _probes(stage, mnist)
    ood_results = _out_of_distribution(stage, mnist)
    online = _online_inference(stage, mnist)
    findings = _Findings(natural, frontier_summary, r2_at_t, r2_final, gabor_summary, latency, mnist.rows, probes,
                         ood_results, online)
    index = _report(stage, findings, started)  # 4. the report
    stage.log(f"report: {index}")
    return index


# --------------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class _Stage:
    """What every stage of ``reproduce`` reads: the budget, the output folder, its figures folder, the log."""

    preset: ReproducePreset
    out: Path
    figures: Path
    log: Callable[[str], None]
    device: Any = "cpu"  # where runs train and models are loaded (fond.device.resolve_device)

    def sweep(self, models, data: str, folder: str, iterations: int | None, eval_samples: int,
              **fields) -> list[dict[str, Any]]:
        """The rows of the sweep of ``models`` on ``data`` in ``out/folder`` (finished runs are skipped)."""
        from fond.sweep import run_sweep

        config = _sweep(models, data, self.preset, iterations, eval_samples, **fields)
        return run_sweep(config, self.out / folder, log=self.log, device=self.device)

    def natural_sweep(self, models, folder: str, **fields) -> list[dict[str, Any]]:
        """A sweep on natural 16×16 patches with the preset's natural budget."""
        p = self.preset
        return self.sweep(models, p.natural_data, folder, p.natural_iterations, p.natural_eval_samples, **fields)


@dataclass(frozen=True)
class _NaturalRuns:
    """The natural-patch sweeps: iP-VAE at three β, at ½T_train, the other models; each row's sweep folder."""

    beta_rows: list[dict[str, Any]]
    t_rows: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # all of them: β rows, T_train rows, the other models
    folders: dict[str, str]  # run name → sweep folder under OUT
    main_ip: dict[str, Any]  # iP-VAE at the preset's β
    best: list[dict[str, Any]]  # each model at its best configuration (smallest d), iP-VAE first

    @property
    def best_ip(self) -> dict[str, Any]:
        return self.best[0]

    def run_dir(self, out: Path, row: dict[str, Any]) -> Path:
        return out / self.folders[row["run"]] / row["run"]


@dataclass(frozen=True)
class _MnistRuns:
    """The MNIST sweep's rows, the test digits the analyses use and each model read back from its run."""

    rows: list[dict[str, Any]]
    data: Any  # PatchData: train = probe training digits, val = probe test / OOD digits
    models: dict[str, Any]


@dataclass(frozen=True)
class _Findings:
    """Every number the report shows."""

    natural: _NaturalRuns
    frontier: dict[str, Any]
    r2_at_t: float  # iP-VAE mean-code R² at t = T_train (NaN when the evaluation is shorter)
    r2_final: float  # ... at the last evaluation step
    gabor: dict[str, Any]
    latency: dict[str, Any]
    mnist_rows: list[dict[str, Any]]
    probes: dict[str, Any]
    ood: dict[str, Any]
    online: dict[str, Any]


def _natural_runs(stage: _Stage) -> _NaturalRuns:
    from fond.config import preset as train_preset

    stage.log("natural patches: iP-VAE at three β and two T_train")
    base = train_preset(stage.preset.train_preset, "ipvae", stage.preset.natural_data)
    beta_rows = stage.natural_sweep(["ipvae"], "natural-beta", betas=[base.beta / 2, base.beta, base.beta * 2])
    t_rows = stage.natural_sweep(["ipvae"], "natural-t", t_train=[base.steps // 2])
    stage.log("natural patches: the other models")
    other_rows = stage.natural_sweep(NATURAL_MODELS, "natural",
                                     model_options={"lca": {"method_options": {"sparsity": 0.5}}})
    main_ip = next(r for r in beta_rows if r["beta"] == base.beta)
    folders = {**{r["run"]: "natural-beta" for r in beta_rows}, **{r["run"]: "natural-t" for r in t_rows},
               **{r["run"]: "natural" for r in other_rows}}
    rows = [*beta_rows, *t_rows, *other_rows]
    # the paper compares each model at its best configuration
    return _NaturalRuns(beta_rows, t_rows, rows, folders, main_ip, _best_by_model(rows))


def _frontier(stage: _Stage, natural: _NaturalRuns) -> dict[str, Any]:
    """The rate–distortion frontier and the effects of β and T_train: figures and ``frontier.json``."""
    from fond.analysis import frontier
    from fond.report import PAPER_NATURAL

    paper_points = [{"model": m, "r2": v["r2"], "zeros": v["zeros"]} for m, v in PAPER_NATURAL.items()
                    if "r2" in v]
    frontier.plot_frontier(natural.rows, stage.figures / "frontier.png", paper_points=paper_points)
    effect_points = [*natural.beta_rows, *[dict(r, beta=natural.main_ip["beta"]) for r in natural.t_rows]]
    frontier.plot_effects(effect_points, stage.figures / "effects.png")
    summary = {"table": frontier.frontier_table(natural.rows),
               "effects": frontier.summarize_effects(natural.beta_rows),
               "t_train": {str(r["t_train"]): r["rate_distortion"] for r in [natural.main_ip, *natural.t_rows]}}
    _json(stage.out / "frontier.json", summary)
    return summary


def _convergence(stage: _Stage, natural: _NaturalRuns) -> tuple[float, float]:
    """Convergence curves of the natural models (each at its best configuration); the iP-VAE's mean-code R²
    at t = T_train and at the last step (NaN where there is no reading)."""
    from fond.plots import plot_convergence

    traces = {}
    for row in natural.best:
        path = RunFolder(natural.run_dir(stage.out, row)).trace_path
        if path.is_file():
            with np.load(path) as npz:
                traces[row["model"]] = {k: npz[k] for k in npz.files}
    best_ip = natural.best_ip
    plot_convergence(traces, stage.figures / "convergence.png", t_train=best_ip["t_train"],
                     steps=stage.preset.eval_steps)
    ip_trace = traces.get("ipvae", {})
    # (an evaluation shorter than T_train, as in a tiny test budget, has no reading at t = T_train)
    at_t = best_ip["t_train"] - 1
    r2_at_t = float(ip_trace["r2_rates"][at_t]) if ip_trace and at_t < len(ip_trace["r2_rates"]) else float("nan")
    r2_final = float(ip_trace["r2_rates"][-1]) if ip_trace else float("nan")
    return r2_at_t, r2_final


def _v1_properties(stage: _Stage, natural: _NaturalRuns) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gabor fits, grating tuning and contrast-dependent latency of the recipe's natural-image iP-VAE (the
    preset's β: the model whose dictionary the recipe is judged by, not the β sweep's lowest d) (cached in
    ``gabor.json`` and ``latency.json``); the atoms of its most active neurons as a figure."""
    from fond.data import load_data
    from fond.plots import plot_dictionary
    from fond.report import atoms_by_activity

    main_ip, p, figures = natural.main_ip, stage.preset, stage.figures
    stage.log(f"V1 properties of {main_ip['run']}: Gabor fits, grating tuning, contrast-dependent latency")
    ip_model = _load(natural.run_dir(stage.out, main_ip), stage.device)
    patches = load_data(p.natural_data, n_train=10, n_val=2000, seed=0)
    gabor_summary = _cached(stage.out / "gabor.json",
                            lambda: _gabor(ip_model, figures, p.eval_steps, patches.val[:500]))
    plot_dictionary(atoms_by_activity(ip_model, patches.val)[:, :GABOR_ATOMS], (16, 16),
                    figures / "dictionary_natural.png", max_atoms=GABOR_ATOMS, order="index",
                    title=f"iP-VAE (β {main_ip['beta']:g}) dictionary: the {GABOR_ATOMS} most active neurons' atoms")
    latency = _cached(stage.out / "latency.json", lambda: _latency(ip_model, patches.val[:64], p, figures))
    return gabor_summary, latency


def _mnist_runs(stage: _Stage) -> _MnistRuns:
    from fond.data import load_data

    p = stage.preset
    stage.log("MNIST: FOND models, hybrid, amortized, predictive coding")
    rows = stage.sweep(MNIST_MODELS, p.mnist_data, "mnist", p.mnist_iterations, p.mnist_eval_samples)
    data = load_data(p.mnist_test_data, n_train=p.probe_train, n_val=max(p.probe_test, p.ood_samples), seed=0)
    models = {row["model"]: _load(stage.out / "mnist" / row["run"], stage.device) for row in rows}
    return _MnistRuns(rows, data, models)


def _probes(stage: _Stage, mnist: _MnistRuns) -> dict[str, Any]:
    """Logistic-regression accuracy from each MNIST model's code over inference steps (``classification.json``)."""
    from fond.analysis import classification

    p, data = stage.preset, mnist.data

    def probe() -> dict[str, Any]:
        results = {}
        for name, model in mnist.models.items():
            stage.log(f"MNIST: classification from {name}'s code over inference steps")
            results[name] = classification.classification_over_steps(
                model, data.train, data.train_labels, data.val[: p.probe_test], data.val_labels[: p.probe_test],
                steps=p.eval_steps, every=p.probe_every, seeds=p.probe_seeds)
        classification.plot_classification(results, stage.figures / "classification.png")
        return {name: r.to_dict() for name, r in results.items()}

    return _cached(stage.out / "classification.json", probe)


def _out_of_distribution(stage: _Stage, mnist: _MnistRuns) -> dict[str, Any]:
    """Each MNIST model on the out-of-distribution sets (fixed-input solvers: the static ones; ``ood.json``)."""
    from fond.analysis import ood

    steps = stage.preset.eval_steps

    def evaluate() -> dict[str, Any]:
        raw, centre = ood.mnist_test_inputs(stage.preset.mnist_data, stage.preset.ood_samples)
        sets = ood.ood_sets(raw, steps=steps, centre=centre)
        results = {}
        for name, model in mnist.models.items():
            if not model_spec(name).accepts_online_input:  # fixed-input solvers: no online set
                results[name] = ood.ood_evaluation(model, {k: v for k, v in sets.items() if v.ndim == 2}, steps)
            else:
                stage.log(f"MNIST: out-of-distribution sets for {name}")
                results[name] = ood.ood_evaluation(model, sets, steps)
        ood.plot_ood({k: v for k, v in results.items() if "rotating" in v.curves}, stage.figures / "ood.png")
        return {"results": {k: v.to_dict() for k, v in results.items()}, **ood.ood_table(results)}

    return _cached(stage.out / "ood.json", evaluate)


def _online_inference(stage: _Stage, mnist: _MnistRuns) -> dict[str, Any]:
    """Serial dependence and tracking of the MNIST iP-VAE (``online.json``); its spike raster and dictionary."""
    from fond.analysis import temporal
    from fond.plots import plot_dictionary, plot_spike_raster

    steps, figures, ip_model = stage.preset.eval_steps, stage.figures, mnist.models["ipvae"]
    stage.log("online inference: serial dependence, tracking, spike raster")
    online = _cached(stage.out / "online.json", lambda: _online(ip_model, mnist.data.val, figures, steps,
                                                                   stage.preset.mnist_data))
    plot_spike_raster(temporal.spike_raster(ip_model, mnist.data.val[:1], min(200, steps)), figures / "raster.png",
                      title="iP-VAE spike raster for one MNIST digit (marker size = spike count, capped at 5)")
    plot_dictionary(ip_model.dictionary.detach().numpy(), (28, 28), figures / "dictionary_mnist.png",
                    max_atoms=100, title="iP-VAE dictionary on MNIST (100 largest atoms)")
    return online


def _report(stage: _Stage, findings: _Findings, started: float) -> Path:
    """``orderings.json``, then ``index.md`` and ``reproduce-config.json``; ``started``: this invocation's start
    (``time.perf_counter()``)."""
    natural = findings.natural
    orderings = _orderings(natural.best, findings.frontier, natural.t_rows, natural.main_ip, natural.best_ip,
                           findings.r2_at_t, findings.r2_final, _row_by_model(findings.mnist_rows), findings.ood,
                           findings.gabor, findings.latency, stage.preset.eval_steps)
    _json(stage.out / "orderings.json", orderings)
    return _write_index(stage, findings, orderings, minutes=(time.perf_counter() - started) / 60.0)


# --------------------------------------------------------------------------------------------------- analyses


GABOR_ATOMS = 128  # = fond.analysis.gabor.MOST_ACTIVE_ATOMS


def _gabor(model, figures: Path, steps: int, x: np.ndarray) -> dict[str, Any]:
    """Gabor fits of the atoms of the ``GABOR_ATOMS`` neurons with the highest mean rate on held-out
    patches ``x`` (the atoms the population uses; a neuron that never fires keeps a near-random atom), and
    grating tuning."""
    from fond.analysis import gabor
    from fond.analysis.tuning import grating_tuning, plot_tuning

    used = gabor.most_active_neurons(model, x, count=GABOR_ATOMS, steps=min(steps, 200))
    summary = gabor.fit_dictionary(model.dictionary.detach().numpy(), (16, 16), columns=used)
    gabor.plot_gabor_summary(summary, figures / "gabor.png")
    tuning = grating_tuning(model, (16, 16), steps=min(200, steps))
    plot_tuning(tuning, figures / "tuning.png")
    return {"fits": summary.to_dict(include_fits=False), "tuning": tuning.to_dict(include_neurons=False)}


def _latency(model, stimuli, preset: ReproducePreset, figures: Path) -> dict[str, Any]:
    """Contrast-dependent latency of ``model`` on ``stimuli`` at contrasts ¼, ½, 1, 2."""
    from fond.analysis import temporal

    result = temporal.contrast_latency(model, stimuli, [0.25, 0.5, 1.0, 2.0], steps=preset.latency_steps)
    temporal.plot_contrast_latency(result, figures / "latency.png")
    return result.to_dict()


def _online(model, digits: np.ndarray, figures: Path, steps: int, spec: str = "mnist") -> dict[str, Any]:
    """Serial dependence between pairs of (model-ready) ``digits``; tracking of raw digits rotating 2° per step."""
    from fond.analysis import ood, temporal
    from fond.analysis.stimuli import rotating_sequence

    half = min(50, len(digits) // 2)
    labels_a, labels_b = digits[:half], digits[half:2 * half]
    serial = temporal.serial_dependence(model, labels_a, labels_b, steps_a=min(100, steps), steps_b=min(100, steps))
    temporal.plot_serial_dependence(serial, figures / "serial_dependence.png")
    raw, centre = ood.mnist_test_inputs(spec, 50)
    frames = rotating_sequence(raw.reshape(-1, 28, 28), 2.0, min(180, steps))
    frames = frames if centre is None else frames - centre
    track = temporal.tracking(model, frames)
    temporal.plot_tracking(track, figures / "tracking.png")
    return {"serial_dependence": serial.to_dict(), "tracking": track.to_dict()}


def _numbers(values) -> str:
    return "[" + ", ".join(_fmt(v, 1) if isinstance(v, float) or v is None else str(v) for v in values or []) + "]"


def _best_by_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's row with the smallest rate–distortion distance, in first-appearance order."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["model"] not in best or row["rate_distortion"] < best[row["model"]]["rate_distortion"]:
            best[row["model"]] = row
    return list(best.values())


def _orderings(best_natural, frontier_summary, t_rows, main_ip, best_ip, r2_at_t, r2_final, mnist_by_model,
               ood_results, gabor_summary, latency, eval_steps: int = 1000) -> list[dict[str, Any]]:
    by_model = _row_by_model(best_natural)
    out = []
    pairs = [(a, b) for a, b in ITERATIVE_VS_AMORTIZED if a in by_model and b in by_model]
    detail = ", ".join(f"{a} d {by_model[a]['rate_distortion']:.3f} vs {b} {by_model[b]['rate_distortion']:.3f}"
                       for a, b in pairs)
    out.append({"claim": "every iterative model beats its amortized counterpart on the rate–distortion frontier",
                "holds": all(by_model[a]["rate_distortion"] < by_model[b]["rate_distortion"] for a, b in pairs),
                "evidence": f"natural patches, each model at its best d among the configurations run: {detail}"})
    effects = frontier_summary["effects"].get("ipvae", {}).get("beta", {})
    rho_zeros = (effects.get("zeros") or {}).get("rho")
    rho_r2 = (effects.get("r2") or {}).get("rho")
    out.append({"claim": "larger β → more zeros, lower R²",
                "holds": rho_zeros is not None and rho_r2 is not None and rho_zeros > 0 and rho_r2 < 0,
                "evidence": f"iP-VAE at three β: Spearman ρ(β, zeros) = {_fmt(rho_zeros, 2)}, ρ(β, R²) = "
                            f"{_fmt(rho_r2, 2)}"})
    short = t_rows[0] if t_rows else None
    out.append({"claim": "larger T_train lifts the frontier (smaller d)",
                "holds": short is not None and main_ip["rate_distortion"] < short["rate_distortion"],
                "evidence": (f"iP-VAE d = {main_ip['rate_distortion']:.3f} at T_train {main_ip['t_train']} vs "
                             f"{short['rate_distortion']:.3f} at T_train {short['t_train']}") if short else "no run"})
    conv = best_ip.get("convergence_step")
    out.append({"claim": "R² keeps rising long after T_train",
                "holds": bool(r2_final > r2_at_t + 0.005 and conv is not None and conv > best_ip["t_train"]),
                "evidence": f"iP-VAE (β {best_ip['beta']:g}) mean-code R² {r2_at_t:.3f} at t = T_train = "
                            f"{best_ip['t_train']}, "
                            f"{r2_final:.3f} at t = {eval_steps}; convergence step {_fmt(conv)} (first step with "
                            "99 % of the final R²)"})
    results = ood_results.get("results", {})
    shifted_sets = [s for s in ood_results.get("table", {}) if s != "mnist"]

    def ood_score(model):
        final = results.get(model, {}).get("final", {})
        values = [final[s]["r2_rates"] for s in shifted_sets if s in final and s != "rotating"]
        return float(np.mean(values)) if values else float("nan")

    scores = {m: ood_score(m) for m in results}
    best = max(scores, key=lambda m: scores[m]) if scores else None
    out.append({"claim": "iP-VAE generalises best out of distribution",
                "holds": best == "ipvae",
                "evidence": "mean R² over the static OOD sets: "
                            + ", ".join(f"{m} {v:.3f}" for m, v in scores.items())})
    chain = [scores.get(m, float("nan")) for m in ("ipvae", "savae", "pvae")]
    out.append({"claim": "out of distribution: iterative > hybrid iterative-amortized > amortized",
                "holds": bool(chain[0] > chain[1] > chain[2]),
                "evidence": f"iP-VAE {chain[0]:.3f}, SA-VAE {chain[1]:.3f}, P-VAE {chain[2]:.3f}"})
    fits = gabor_summary.get("fits", {})
    fraction = fits.get("fraction_well_fit")
    out.append({"claim": "the learned dictionary is Gabor-like (localised, oriented, band-pass)",
                "holds": fraction is not None and fraction >= 0.5,
                "evidence": f"{_fmt(fraction)} of the atoms of the iP-VAE's {GABOR_ATOMS} most active neurons are "
                            "fit by a Gabor with "
                            "R² ≥ 0.7 (criterion: at least half)"})
    rho = latency.get("spearman_rho")
    p_value = latency.get("spearman_p")
    out.append({"claim": "responses show contrast-dependent latency (higher contrast → earlier)",
                "holds": bool(rho is not None and rho < 0 and p_value is not None and p_value < 0.05),
                "evidence": f"Spearman ρ(contrast, latency) = {_fmt(rho, 2)} (p = {_fmt(p_value, 4)}); median "
                            f"latency (steps) at contrasts {latency.get('contrasts')}: "
                            f"{_numbers(latency.get('latency_median'))}"})
    return out


def _write_index(stage: _Stage, findings: _Findings, orderings: list[dict[str, Any]], minutes: float) -> Path:
    """``OUT/index.md`` (section by section) and ``OUT/reproduce-config.json``; ``minutes``: this invocation's
    time."""
    lines = [*_header_lines(stage, findings, minutes), *_ordering_lines(orderings),
             *_natural_lines(findings.natural), *_convergence_lines(stage.preset, findings),
             *_v1_lines(findings), *_mnist_lines(stage.preset, findings), *_online_lines(findings.online)]
    path = atomic_write(stage.out / "index.md", "\n".join(lines) + "\n")
    _json(stage.out / "reproduce-config.json", asdict(stage.preset))
    return path


def _header_lines(stage: _Stage, findings: _Findings, minutes: float) -> list[str]:
    p, natural_rows, mnist_rows = stage.preset, findings.natural.rows, findings.mnist_rows
    run_minutes = sum(float(r.get("minutes") or 0.0) for r in [*natural_rows, *mnist_rows])
    return [f"# fond reproduce — preset `{p.name}`", "",
            f"Computed by `fond reproduce --preset {p.name} --out {stage.out}` on this machine (torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads): training and evaluating the "
            f"{len(natural_rows) + len(mnist_rows)} runs took {run_minutes:.0f} minutes, this invocation "
            f"{minutes:.0f} minutes (finished runs and analyses of earlier invocations are reused). Every number "
            "and figure below comes "
            "from this run; the paper's numbers (van Hateren patches / MNIST, GPU training) are shown beside ours. "
            f"Configuration: [reproduce-config.json](reproduce-config.json); each run's own config, log and report "
            "are in its folder.", ""]


def _ordering_lines(orderings: list[dict[str, Any]]) -> list[str]:
    lines = ["## Does each of the paper's orderings hold here?", "", "| claim | holds here | evidence |",
             "|---|---|---|"]
    lines += [f"| {o['claim']} | **{'yes' if o['holds'] else 'NO'}** | {o['evidence']} |" for o in orderings]
    failed = [o["claim"] for o in orderings if not o["holds"]]
    if failed:
        lines += ["", "Not reproduced in this run: " + "; ".join(failed) + ". Short training (the quick preset "
                  "trains each model for minutes, the paper for GPU-hours) is the first suspect; the runs and "
                  "their logs are kept so a longer preset can be compared."]
    return lines


def _natural_lines(natural: _NaturalRuns) -> list[str]:
    """Every natural-patch run (each model's best in bold) and the effects of β and T_train."""
    from fond.registry import model_title as title
    from fond.report import PAPER_NATURAL

    best_runs = {row["run"] for row in natural.best}
    order = [b["model"] for b in natural.best]
    lines = ["", "## Natural image patches (16×16, whitened; K = 512)", "",
             "Each model at its best configuration (smallest d) in bold; the paper's d is its best configuration.",
             "", "| model | β | T_train | R² | R² (mean code) | zeros | d | paper d | convergence step | params "
             "| run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(natural.rows, key=lambda r: order.index(r["model"])):
        paper = PAPER_NATURAL.get(row["model"], {})
        folder = natural.folders[row["run"]]
        name = f"**{title(row['model'])}**" if row["run"] in best_runs else title(row["model"])
        lines.append(f"| {name} | {row['beta']:g} | {row['t_train']} | {_fmt(row['r2'])} | "
                     f"{_fmt(row['r2_rates'])} | {_fmt(row['zeros'])} | {_fmt(row['rate_distortion'])} | "
                     f"{_fmt(paper.get('rate_distortion'))} | {_fmt(row['convergence_step'])} | {row['n_params']:,} | "
                     f"[{row['run']}]({folder}/{row['run']}/report/report.md) |")
    lines += ["", "![frontier](figures/frontier.png)", "",
              "Effect of β and T_train (iP-VAE):", "", "| β | T_train | R² | zeros | d |", "|---|---|---|---|---|"]
    for row in [*natural.beta_rows, *natural.t_rows]:
        lines.append(f"| {row['beta']:g} | {row['t_train']} | {_fmt(row['r2'])} | {_fmt(row['zeros'])} | "
                     f"{_fmt(row['rate_distortion'])} |")
    return [*lines, "", "![effects](figures/effects.png)", ""]


def _convergence_lines(p: ReproducePreset, findings: _Findings) -> list[str]:
    best_ip = findings.natural.best_ip
    return [f"### Convergence over {p.eval_steps} steps", "",
            f"iP-VAE (β {best_ip['beta']:g}) mean-code R² at t = T_train: {findings.r2_at_t:.3f}; at t = "
            f"{p.eval_steps}: {findings.r2_final:.3f}.", "", "![convergence](figures/convergence.png)", ""]


def _v1_lines(findings: _Findings) -> list[str]:
    fits = findings.gabor.get("fits", {})
    tuning = findings.gabor.get("tuning", {})
    latency = findings.latency
    return [f"### V1 properties of the iP-VAE dictionary (the recipe's β: run {findings.natural.main_ip['run']})", "",
            f"Gabor fits: {_fmt(fits.get('fraction_well_fit'))} of the atoms of the {GABOR_ATOMS} most active "
            "neurons well fit (R² ≥ 0.7); median spatial "
            f"frequency {_fmt(fits.get('median_frequency'))} cycles/pixel; median size "
            f"{_fmt(fits.get('median_size'))} pixels. Grating tuning: median orientation selectivity index "
            f"{_fmt(tuning.get('osi_median'))}.", "", "![dictionary](figures/dictionary_natural.png)",
            "![gabor](figures/gabor.png)", "![tuning](figures/tuning.png)", "",
            f"Contrast-dependent latency (time to half the peak population response): median latency (steps) "
            f"{_numbers(latency.get('latency_median'))} at contrasts {latency.get('contrasts')}; Spearman ρ = "
            f"{_fmt(latency.get('spearman_rho'), 2)}.", "", "![latency](figures/latency.png)", ""]


def _mnist_lines(p: ReproducePreset, findings: _Findings) -> list[str]:
    """The MNIST runs beside the paper's numbers, the probes and the out-of-distribution table."""
    from fond.registry import model_title as title
    from fond.report import PAPER_MNIST

    lines = ["## MNIST (784 inputs, K of each model's preset)", "",
             f"| model | R² | R² (mean code) | R² on raw digits | zeros | accuracy at t = {p.eval_steps} (95 % CI) | "
             "params | paper R² / zeros / accuracy | run |", "|---|---|---|---|---|---|---|---|---|"]
    for row in findings.mnist_rows:
        acc = findings.probes.get(row["model"], {})
        paper = PAPER_MNIST.get(row["model"], {})
        paper_txt = " / ".join(_fmt(paper.get(k)) for k in ("r2", "zeros", "accuracy")) if paper else "—"
        ci = acc.get("final_ci") or []
        ci_txt = f" ({_fmt(ci[0])}–{_fmt(ci[1])})" if isinstance(ci, list) and len(ci) == 2 else ""
        raw = row.get("r2_uncentred") if row.get("r2_uncentred") is not None else row["r2"]  # (raw digits: r2)
        lines.append(f"| {title(row['model'])} | {_fmt(row['r2'])} | {_fmt(row['r2_rates'])} | {_fmt(raw)} | "
                     f"{_fmt(row['zeros'])} | "
                     f"{_fmt(acc.get('final_accuracy'))}{ci_txt} | {row['n_params']:,} | {paper_txt} | "
                     f"[{row['run']}](mnist/{row['run']}/report/report.md) |")
    return [*lines, "", "R² on raw digits: the sample's R² against the digits before centring (the paper's "
            "models see raw digits, and its R² is measured on them; the residual is the same).", "",
            f"Logistic regression (scikit-learn, standardised features) on the mean code (rates e^u, "
            f"f(μ)) of {p.probe_train} training digits, scored on {p.probe_test} test digits, over inference steps; "
            f"{len(p.probe_seeds)} inference seeds.", "", "![classification](figures/classification.png)", "",
            "### Out-of-distribution generalisation (trained on MNIST)", "", _ood_table(findings.ood, title), "",
            "![ood](figures/ood.png)", ""]


def _online_lines(online: dict[str, Any]) -> list[str]:
    serial = online.get("serial_dependence", {})
    track = online.get("tracking", {})
    return ["### Online inference", "",
            f"Serial dependence: after {serial.get('steps_a')} steps on digit A, the code for digit B is pulled "
            f"toward A's code (bias index, 0 = none, 1 = A's code) by {_fmt(serial.get('initial_bias'))} at the "
            f"first step of B, decaying to half by step {_fmt(serial.get('half_decay_step'))} and to "
            f"{_fmt(serial.get('final_bias'))} after {serial.get('steps_b')} steps. Tracking a digit rotating 2° "
            "per step: lag "
            f"index {_fmt(track.get('lag_index'))} (R² against the previous frame minus against the current one).",
            "", "![serial](figures/serial_dependence.png)", "![tracking](figures/tracking.png)",
            "![raster](figures/raster.png)", "![dictionary](figures/dictionary_mnist.png)", ""]


def _ood_table(ood_results: dict[str, Any], title) -> str:
    table = ood_results.get("table", {})
    models = sorted({m for row in table.values() for m in row}, key=lambda m: MNIST_MODELS.index(m)
                    if m in MNIST_MODELS else 99)
    lines = ["| test set | " + " | ".join(title(m) for m in models) + " |", "|---|" + "---|" * len(models)]
    for name, row in table.items():
        best = ood_results.get("best", {}).get(name)
        cells = [(f"**{_fmt(row[m])}**" if m == best else _fmt(row[m])) if m in row else "—" for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMean-code R² at the last step (best per set in bold); `rotating`: the digit turns " \
        "1° per step while inference runs (fixed-input solvers cannot take it)."


def with_overrides(preset: ReproducePreset, **changes) -> ReproducePreset:
    """A copy of ``preset`` with fields replaced (for tests and custom budgets)."""
    return replace(preset, **changes)
