"""The run report: numbers (JSON, Markdown) and pictures (PNG) for a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fond import registry
from fond.evaluate import Evaluation
from fond.run import RunFolder, atomic_write, write_json

__all__ = ["write_report", "plot_run_dictionaries", "atoms_by_activity"]

#: the paper's natural-image numbers (van Hateren, K = 512, T_train = 16, t = 1000; DESIGN.md §3)
PAPER_NATURAL = {
    "ipvae": {"r2": 0.830, "zeros": 0.773, "rate_distortion": 0.284},
    "igvae-relu": {"r2": 0.820, "zeros": 0.576, "rate_distortion": 0.364},
    "igvae": {"r2": 0.874, "zeros": 0.000, "rate_distortion": 1.006},
}
PAPER_NATURAL.update({"lca": {"rate_distortion": 0.282}, "pvae": {"rate_distortion": 0.379},
                      "gvae-relu": {"rate_distortion": 0.649}, "gvae": {"rate_distortion": 1.021}})
#: the paper's MNIST numbers (DESIGN.md §3, §7: the authors' results table, 5 seeds, K = 512, predictive coding
#: K = 64), measured on raw digits: for a model trained on centred ones, compare with ``r2_uncentred``
PAPER_MNIST = {"ipvae": {"r2": 0.951, "zeros": 0.84, "accuracy": 0.965, "params": "0.40 M"},
               "igvae": {"r2": 0.914, "zeros": 0.0, "accuracy": 0.927},
               "igvae-relu": {"r2": 0.906, "zeros": 0.78, "accuracy": 0.957},
               "pvae": {"r2": 0.713, "zeros": 0.84, "accuracy": 0.979, "params": "6.8 M"},
               "pc": {"r2": 0.896, "zeros": 0.0, "accuracy": 0.907}}
#: the paper's models' display titles (a view of the registry: ``fond.registry.model_title`` knows every model)
MODEL_TITLES = {name: registry.model_title(name) for name in registry.BUILTIN_MODELS}


def _paper_numbers(model, mnist: bool, uncentred: bool) -> dict[str, Any]:
    """The paper's numbers for ``model``'s report rows (linear decoders): natural patches, or MNIST, whose R² (on
    raw digits) sits on the ``r2_uncentred`` row of a model trained on centred digits."""
    if model.config.decoder != "linear":
        return {}
    if not mnist:
        return PAPER_NATURAL.get(model.config.model, {})
    paper = PAPER_MNIST.get(model.config.model, {})
    return {("r2_uncentred" if uncentred and key == "r2" else key): value for key, value in paper.items()
            if key in ("r2", "zeros")}


def model_title(model) -> str:
    """A display name: "iP-VAE", "iG_relu-VAE (mlp decoder)", ... (the title of the model's registry entry, or the
    model's own ``title``: an integer model's)."""
    if getattr(model, "title", None):
        return model.title
    config = model.config
    title = registry.model_title(config.model)
    return title if config.decoder == "linear" else f"{title} ({config.decoder} decoder)"


def decoder_atoms(model) -> np.ndarray:
    """What each neuron writes into the image, (D, K): Φ for a linear decoder, g(e_k) − g(0) otherwise."""
    import torch

    if model.dictionary is not None:
        return model.dictionary.detach().cpu().numpy()
    with torch.no_grad():
        k = model.n_latents
        eye = torch.eye(k, dtype=model.log_sigma_x.dtype, device=model.log_sigma_x.device)
        return (model.decode(eye) - model.decode(torch.zeros(1, k, dtype=eye.dtype))).T.cpu().numpy()


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "loss" in row:
                rows.append(row)
    return rows


def atoms_by_activity(model, x: np.ndarray, *, samples: int = 500, steps: int = 200) -> np.ndarray:
    """The decoder atoms (D, K) ordered by their neurons' mean code on the first ``samples`` inputs of ``x``
    (``steps`` inference steps), most active first: the atoms that carry the code come first, where a norm
    order would put the large, noisy atoms of rarely active neurons first."""
    from fond.analysis.gabor import most_active_neurons

    atoms = decoder_atoms(model)
    return atoms[:, most_active_neurons(model, x[:samples], count=atoms.shape[1], steps=steps)]


def plot_run_dictionaries(runs: dict[str, Path], path: str | Path, *, atoms: int = 100) -> Path:
    """One figure with each run's decoder atoms (Φ for a linear decoder), ``runs`` mapping a label to a run
    folder: its ``atoms`` most active neurons' on 500 held-out inputs of its data (200 inference steps), most
    active first, captioned by model and label. Runs must be models of image patches (one-line error else)."""
    from fond import plots
    from fond.data import load_data
    from fond.errors import FondError
    from fond.resume import load_model, read_run

    panels, shape = {}, None
    for label, run in runs.items():
        model, data = load_model(run), read_run(run).get("data", {})
        if data.get("patch_shape") is None:
            raise FondError(f"{label}: a dictionary figure needs a model of image patches")
        shape = shape or tuple(data["patch_shape"])
        held_out = load_data(data["spec"], n_train=10, n_val=500, seed=0).val
        panels[f"{model_title(model)} ({label})"] = atoms_by_activity(model, held_out)[:, :atoms]
    return plots.plot_dictionaries(panels, shape, path, max_atoms=atoms, order="index",
                                   title=f"decoder atoms: the {atoms} most active neurons', most active first")


def write_report(directory: str | Path, model, evaluation: Evaluation, x_eval: np.ndarray,
                 patch_shape: tuple[int, int] | None, *, title: str | None = None, mnist: bool = False) -> Path:
    """Write ``DIR/report/``: eval.json, curves.npz, dictionary.png, inference_curves.png,
    reconstructions.png, training.png (if metrics.jsonl exists) and report.md, beside the paper's numbers for the
    model (natural patches, or MNIST where ``mnist``). Returns report.md's path."""
    from fond import plots

    title = title or model_title(model)
    family = getattr(model, "family", None)
    counts = family is not None and family.integer_samples
    folder = RunFolder(directory)
    out = folder.report_dir  # created by the first write
    summary = evaluation.summary()
    write_json(folder.eval_path, summary)
    figures = []
    if patch_shape is not None:
        what = "dictionary Φ" if model.dictionary is not None else "decoder atoms g(e_k) − g(0)"
        figures.append(plots.plot_dictionary(atoms_by_activity(model, x_eval), patch_shape, out / "dictionary.png",
                                             order="index", title=f"{title} {what} (most active neurons first)"))
    figures.append(plots.plot_inference_curves(evaluation.trace, out / "inference_curves.png",
                                               title=f"{title}: {evaluation.steps} inference steps",
                                               convergence_step=evaluation.convergence_step))
    if patch_shape is not None:
        n = min(12, len(x_eval))
        res = model.infer(x_eval[:n], evaluation.steps, seed=0, trace=False)
        figures.append(plots.plot_reconstructions(
            np.asarray(x_eval[:n]), {("spikes" if counts else "sample"): res.reconstruction.cpu().numpy(),
                                     ("rates" if counts else "mean"): res.reconstruction_from_rates.cpu().numpy()},
            patch_shape, out / "reconstructions.png", n=n))
    records = _read_metrics(folder.metrics_path)
    if records:
        figures.append(plots.plot_training_curves(records, out / "training.png"))

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    samples = {True: "exact integer spikes", False: "samples z = μ + σε"}[counts]
    if family is None:
        samples = "deterministic point-estimate codes"
    elif family.name == "bernoulli":
        samples = "hard binary spikes"
    uncentred = ("r2_uncentred", "r2_rates_uncentred") if "r2_uncentred" in summary else ()
    paper = _paper_numbers(model, mnist, bool(uncentred))
    lines = [f"# {title} report", "", f"Evaluated on {evaluation.n_samples} held-out inputs over "
             f"{evaluation.steps} inference steps with {samples}.", "",
             f"| metric | value | paper ({'MNIST, 5 seeds' if mnist else 'van Hateren, 3 GPU-hours'}) |",
             "|---|---|---|"]
    for key in ("r2", "r2_rates", *uncentred, "zeros", "rate_distortion", "convergence_step", "nelbo", "n_params",
                "diverged", "diverged_fraction"):
        lines.append(f"| {key} | {fmt(summary[key])} | {fmt(paper.get(key, ''))} |")
    if evaluation.diverged:
        lines += ["", "**Warning: the rollout diverged** (non-finite values, mean-code R² < 0, or some input's "
                      "R² < −1)."]
    lines += ["", "Convergence step: first step at which R² reaches 99 % of its final value."]
    if uncentred:
        lines += ["", "r2_uncentred: the same R² against the digits before centring (the raw digits the paper's "
                      "models see and its R² is measured on); r2 is measured on the centred inputs the model saw."]
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    return atomic_write(folder.report_path, "\n".join(lines) + "\n")
