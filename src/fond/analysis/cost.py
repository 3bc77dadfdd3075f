"""What inference costs in operations, at equal reconstruction quality (issue 20, item 3).

The paper's hardware argument for iP-VAE is that neurons talk only by integer spikes. This counts, per input,
what each model spends until its mean-code R² on held-out inputs (the batch mean of ``trace["r2_rates"]``)
first reaches a target, and turns the counts into energy *estimates* from published per-operation figures.

Counted (a linear decoder; per input):

* **the feed-forward drive**, once: Φᵀx/σ² (D·K multiply-accumulates; the amortized models: their encoder);
* **the recurrent term**, every step after the first, driven by the previous step's code through the Gram
  matrix W = ΦᵀΣ⁻¹Φ (K×K): an integer spike code (iP-VAE counts, iB-VAE binary spikes) delivers one weight to
  each of the K neurons per spike — K **synaptic events** per spike, additions on event-driven hardware; a
  real-valued code (iG-VAE, iG_relu-VAE, LCA, ISTA, FISTA, predictive coding) costs nnz(code)·K **MACs** (zeros
  skipped, the count most favourable to it; FISTA's product acts on a momentum point with at least as many
  nonzeros, so its count is a lower bound). The sample that drives step 1 (drawn from the initial state, nearly
  silent for iP-VAE) is not counted.

Energy figures (estimates, labelled as such everywhere they appear): 23.6 pJ per synaptic spike operation on
Intel's Loihi (Davies et al. 2018, IEEE Micro 38(1), Table 2); 4.6 pJ per float32 MAC (0.9 add + 3.7 multiply)
and 0.23 pJ per int8 MAC (0.03 + 0.2) in 45 nm CMOS (Horowitz 2014, ISSCC), whose 0.03 pJ per int8 addition also
prices a synaptic event as the one addition it is at its core (a lower bound for a custom digital circuit).
Memory traffic, which dominates real chips, is not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fond.errors import DataError

__all__ = ["ENERGY_PJ", "Cost", "inference_cost", "cost_of_curve", "count_operations", "steps_to_reach",
           "plot_costs"]

#: picojoules per operation (published figures: estimates, see the module docstring)
ENERGY_PJ = {"synaptic_event_loihi": 23.6, "add_int8_45nm": 0.03, "mac_float32_45nm": 4.6, "mac_int8_45nm": 0.23}


@dataclass(frozen=True)
class Cost:
    """Operations per input until the target mean-code R² (``steps`` None: never reached within the rollout).

    drive_macs: the feed-forward MACs (Φᵀx, or the amortized encoder). recurrent_events: synaptic events
    (spiking codes). recurrent_macs: MACs of the recurrent product (real-valued codes). r2: the mean-code R²
    reached at ``steps``.
    """

    model: str
    target_r2: float
    steps: int | None
    r2: float | None
    drive_macs: float
    recurrent_events: float
    recurrent_macs: float

    def energy_nj(self) -> dict[str, float]:
        """Estimated nanojoules per input: events on Loihi plus MACs in float32; plus MACs in int8; and events
        as the one int8 addition each is at its core, plus int8 MACs (a custom digital circuit's lower bound)."""
        events = self.recurrent_events * ENERGY_PJ["synaptic_event_loihi"]
        adds = self.recurrent_events * ENERGY_PJ["add_int8_45nm"]
        macs = self.drive_macs + self.recurrent_macs
        return {"events_loihi_plus_float32_macs": (events + macs * ENERGY_PJ["mac_float32_45nm"]) * 1e-3,
                "events_loihi_plus_int8_macs": (events + macs * ENERGY_PJ["mac_int8_45nm"]) * 1e-3,
                "events_as_int8_adds_plus_int8_macs": (adds + macs * ENERGY_PJ["mac_int8_45nm"]) * 1e-3}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "energy_nj_estimate": self.energy_nj()}


def steps_to_reach(r2_curve: Any, target: float) -> int | None:
    """The first 1-based step whose value in ``r2_curve`` (steps,) is ≥ ``target``, or None."""
    curve = np.asarray(r2_curve, dtype=np.float64)
    hits = np.flatnonzero(curve >= target)
    return int(hits[0]) + 1 if hits.size else None


def inference_cost(model, x, target_r2: float, *, steps: int = 1000, seed: int = 0, chunk_size: int = 100) -> Cost:
    """The ``Cost`` of ``model`` on inputs x (N, D) to reach mean-code R² ``target_r2`` within ``steps`` steps.

    The R² curve comes from ``fond.evaluate.evaluate`` (chunks of ``chunk_size``, chunk i seeded seed + i);
    the operations are then counted on the same rollouts (same chunks and seeds) up to the step found.
    """
    from fond.evaluate import evaluate

    if isinstance(target_r2, bool) or not isinstance(target_r2, (int, float)) or not math.isfinite(target_r2):
        raise DataError(f"target_r2 must be a finite number, got {target_r2!r}")
    curve = evaluate(model, x, steps, seed=seed, chunk_size=chunk_size).trace["r2_rates"]
    return cost_of_curve(model, x, curve, target_r2, seed=seed, chunk_size=chunk_size)


def cost_of_curve(model, x, curve: Any, target_r2: float, *, seed: int = 0, chunk_size: int = 100) -> Cost:
    """The ``Cost`` given the model's mean-code R² curve on x (``evaluate``'s, same seed and chunks)."""
    reached = steps_to_reach(curve, target_r2)
    counted = count_operations(model, x, reached or len(curve), seed=seed, chunk_size=chunk_size)
    return Cost(model=model.config.model, target_r2=float(target_r2), steps=reached,
                r2=None if reached is None else float(curve[reached - 1]), **counted)


def count_operations(model, x, steps: int, *, seed: int = 0, chunk_size: int = 100) -> dict[str, float]:
    """{drive_macs, recurrent_events, recurrent_macs} per input (means over x (N, D)) of ``steps`` steps."""
    counter = _counter_for(model)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    totals = np.zeros(3)
    for i, begin in enumerate(range(0, x.shape[0], chunk_size)):
        chunk = x[begin:begin + chunk_size]
        totals += np.asarray(counter(model, chunk, steps, seed + i), dtype=np.float64) * chunk.shape[0]
    drive, events, macs = totals / x.shape[0]
    return {"drive_macs": float(drive), "recurrent_events": float(events), "recurrent_macs": float(macs)}


def _codes(model, x, steps: int, seed: int, key: str) -> torch.Tensor:
    """The codes that drive steps 2..steps: ``history[key]`` of steps 1..steps − 1, (steps − 1, B, K)."""
    if steps < 2:
        return torch.zeros(0, x.shape[0], model.n_latents)
    result = model.infer(x, steps, seed=seed, trace=False, record=range(1, steps))
    return result.history[key]


def _iterative(model, x, steps: int, seed: int) -> tuple[float, float, float]:
    """FOND models: the decoder input of each step's sample drives the next step."""
    _needs_linear_decoder(model)
    k, drive = model.n_latents, float(model.n_inputs * model.n_latents)
    codes = _codes(model, x, steps, seed, "spikes")
    if model.components().family.integer_samples:
        return drive, float(codes.sum(dim=(0, 2)).mean()) * k, 0.0
    return drive, 0.0, float((codes != 0).sum(dim=(0, 2)).float().mean()) * k


def _map_coding(model, x, steps: int, seed: int) -> tuple[float, float, float]:
    """LCA, ISTA, FISTA, predictive coding: the code a_{t−1} times the Gram matrix."""
    codes = _codes(model, x, steps, seed, "rates")
    return float(model.n_inputs * model.n_latents), 0.0, float((codes != 0).sum(dim=(0, 2)).float().mean()) * \
        model.n_latents


def _amortized(model, x, steps: int, seed: int) -> tuple[float, float, float]:
    """Amortized VAEs: one encoder pass (its matrix products' and convolutions' MACs)."""
    return _encoder_macs(model.encoder, x[:1]), 0.0, 0.0


def _encoder_macs(encoder: torch.nn.Module, x: torch.Tensor) -> float:
    """MACs of one input's pass through ``encoder``: the matrix products and convolutions torch's
    ``FlopCounterMode`` counts (2 FLOPs per MAC); elementwise nonlinearities are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(x[:1])
    return counter.get_total_flops() / 2.0


def _needs_linear_decoder(model) -> None:
    if model.dictionary is None:
        raise DataError("the cost model counts linear decoders (a nonlinear decoder's pull-back is a "
                        "vector–Jacobian product, not a Gram product)")


def _counter_for(model) -> Callable[..., tuple[float, float, float]]:
    """The counting rule of the model's class (looked up along its MRO)."""
    from fond.models.amortized import AmortizedVAE
    from fond.models.iterative import IterativeVAE
    from fond.models.sparse_coding import MAPCoding

    rules = {IterativeVAE: _iterative, MAPCoding: _map_coding, AmortizedVAE: _amortized}
    for cls in type(model).__mro__:
        if cls in rules:
            return rules[cls]
    raise DataError(f"the cost model does not count {model.config.model!r} (FOND, sparse and predictive coding, "
                    "and amortized models)")


def plot_costs(costs: Sequence[Cost], path) -> Any:
    """Bars of each model's estimated energy per input (log scale) and its steps to the target."""
    from fond.plots import new_figure, save_figure

    fig = new_figure(7.5, 3.2)
    ax_energy, ax_steps = fig.subplots(1, 2)
    names = [c.model for c in costs]
    energy = [c.energy_nj()["events_loihi_plus_float32_macs"] for c in costs]
    ax_energy.bar(names, energy, color=["C0" if c.recurrent_events else "C1" for c in costs])
    ax_energy.set_yscale("log")
    ax_energy.set_ylabel("nJ per input (estimate)")
    ax_energy.set_title(f"to mean-code R² {costs[0].target_r2:.3g}" if costs else "", fontsize=9)
    ax_steps.bar(names, [c.steps or 0 for c in costs], color="C2")
    ax_steps.set_ylabel("inference steps to the target")
    for ax in (ax_energy, ax_steps):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax_energy.set_xlabel("blue: spiking code (synaptic events, Loihi 23.6 pJ each)\norange: real-valued code "
                         "(MACs, float32 4.6 pJ each); estimates", fontsize=7)
    return save_figure(fig, path)
