"""Typed configurations that validate themselves and round-trip to JSON.

``ModelConfig`` fixes a model's architecture and inference options; ``TrainConfig`` fixes how it
learns. Both reject unknown keys and out-of-range values with a ``ConfigError`` naming the key.
Presets (``quick``, ``paper``) are functions of the model name, not hidden defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from fond.errors import ConfigError, read_bytes

__all__ = ["ModelConfig", "TrainConfig", "MODELS", "PRESETS", "preset", "preset_model_options", "load_json",
           "config_from_dict"]

MODELS: tuple[str, ...] = ("ipvae",)
PRESETS: tuple[str, ...] = ("quick", "paper")

T = TypeVar("T")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference options of an iterative FOND model (DESIGN.md §2.1).

    n_inputs: D, pixels per input. n_latents: K, neurons. init_scale: std of the dictionary's normal
    initialisation. u_init_low/high: range of the uniform initial membrane potentials (nats).
    log_bias_init: initial log b. sigma_clamp: |log σ_x| bound (tanh soft clamp). clamp_init /
    clamp_final: the soft upper clamp c on u and Δu, ramped from init to final during training and
    fixed at final in evaluation. floor: hard lower bound on u and Δu. kl: "exact" or "reference"
    (the paper code's e^Δ-weighted form). indicator: relaxed-sampler indicator ("sigmoid", "cubic",
    "straight_through"). n_exp_tail: tail mass that sets the relaxed sampler's number of arrival times.
    max_terms: cap on that number.
    """

    n_inputs: int
    n_latents: int
    model: str = "ipvae"
    init_scale: float = 1e-4
    u_init_low: float = -6.0
    u_init_high: float = -4.0
    log_bias_init: float = -3.0
    sigma_clamp: float = 3.45
    clamp_init: float = 2.0
    clamp_final: float = 10.0
    floor: float = -8.0
    kl: str = "exact"
    indicator: str = "sigmoid"
    n_exp_tail: float = 1e-3
    max_terms: int = 1024

    def __post_init__(self) -> None:
        for key in ("n_inputs", "n_latents", "max_terms"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key,
                     f"must be an integer ≥ 1, got {value!r}")
        _require(self.model in MODELS, "model", f"unknown model {self.model!r}; expected one of {MODELS}")
        for f in fields(self):
            if f.type == "float":
                _require(_finite(getattr(self, f.name)), f.name, f"must be a finite number, got "
                         f"{getattr(self, f.name)!r}")
        _require(self.init_scale > 0, "init_scale", "must be > 0")
        _require(self.u_init_low < self.u_init_high, "u_init_low", "must be < u_init_high")
        _require(self.sigma_clamp > 0, "sigma_clamp", "must be > 0")
        _require(0 < self.clamp_init <= self.clamp_final, "clamp_init", "need 0 < clamp_init ≤ clamp_final")
        _require(self.floor < self.u_init_low, "floor", "must lie below u_init_low")
        _require(self.kl in ("exact", "reference"), "kl", f"expected 'exact' or 'reference', got {self.kl!r}")
        _require(self.indicator in ("sigmoid", "cubic", "straight_through"), "indicator",
                 f"expected sigmoid, cubic or straight_through, got {self.indicator!r}")
        _require(0 < self.n_exp_tail < 1, "n_exp_tail", "must lie in (0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """Learning to infer by backpropagation through the unrolled inference (DESIGN.md §2.4).

    steps: T_train, inference steps unrolled per batch. beta: KL weight β at full strength.
    iterations: parameter updates in total. batch_size: inputs per update. lr / lr_min: Adamax peak
    and final learning rate (cosine after a linear warm-up of warmup_fraction of the run).
    weight_decay: applied to the dictionary (and to log-parameters only if decay_log_params).
    grad_clip: max global gradient norm (3× during warm-up). beta_min, beta_const_fraction,
    beta_ramp_fraction: β is beta_min for the first const fraction, then ramps linearly to beta over
    ramp fraction; the clamp bound c ramps over the same window. temp_start/stop,
    temp_anneal_fraction: the relaxed sampler's temperature τ anneals linearly over that fraction.
    seed: of the initialisation, batches and samplers. checkpoint_every, eval_every, log_every:
    iterations. eval_steps / eval_samples: the quick validation during training.
    time_limit_minutes: wall-clock guard; training stops (and checkpoints) if it is hit.
    n_train / n_val: patches drawn for the bundled data sets.
    """

    preset: str = "custom"
    steps: int = 16
    beta: float = 24.0
    iterations: int = 2000
    batch_size: int = 200
    lr: float = 5e-3
    lr_min: float = 1e-5
    weight_decay: float = 3e-4
    decay_log_params: bool = False
    warmup_fraction: float = 0.005
    grad_clip: float = 300.0
    beta_min: float = 1e-4
    beta_const_fraction: float = 1e-3
    beta_ramp_fraction: float = 0.1
    temp_start: float = 1.0
    temp_stop: float = 0.01
    temp_anneal_fraction: float = 0.5
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 500
    log_every: int = 10
    eval_steps: int = 100
    eval_samples: int = 500
    time_limit_minutes: float | None = None
    n_train: int = 100_000
    n_val: int = 5_000

    def __post_init__(self) -> None:
        for key in ("steps", "iterations", "batch_size", "checkpoint_every", "eval_every", "log_every",
                    "eval_steps", "eval_samples", "n_train", "n_val"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key,
                     f"must be an integer ≥ 1, got {value!r}")
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed",
                 f"must be a non-negative integer, got {self.seed!r}")
        for key in ("beta", "lr", "lr_min", "weight_decay", "warmup_fraction", "grad_clip", "beta_min",
                    "beta_const_fraction", "beta_ramp_fraction", "temp_start", "temp_stop",
                    "temp_anneal_fraction"):
            _require(_finite(getattr(self, key)), key, f"must be a finite number, got {getattr(self, key)!r}")
        _require(self.beta >= 0, "beta", f"must be ≥ 0, got {self.beta}")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(0 <= self.lr_min <= self.lr, "lr_min", "need 0 ≤ lr_min ≤ lr")
        _require(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        _require(self.grad_clip > 0, "grad_clip", "must be > 0")
        _require(0 <= self.beta_min <= max(self.beta, self.beta_min), "beta_min", "must be ≥ 0")
        for key in ("warmup_fraction", "beta_const_fraction", "beta_ramp_fraction", "temp_anneal_fraction"):
            _require(0 <= getattr(self, key) <= 1, key, "must lie in [0, 1]")
        _require(self.temp_start > 0 and self.temp_stop > 0, "temp_stop", "temperatures must be > 0")
        _require(isinstance(self.decay_log_params, bool), "decay_log_params", "must be true or false")
        _require(self.time_limit_minutes is None or (_finite(self.time_limit_minutes)
                                                     and self.time_limit_minutes > 0),
                 "time_limit_minutes", "must be a positive number or null")


def preset(name: str, model: str = "ipvae") -> TrainConfig:
    """The named training preset for ``model``.

    ``paper``: the reference schedule (batch 200, 300 epochs of 100k patches = 150,000 updates, β 24,
    T_train 16). ``quick``: a schedule for 2 CPU cores that finishes within 15 minutes; see README for
    what it reaches and why its schedule differs (β and clamp ramps stretched so the network does not
    fall silent, temperature annealed to near-hard spikes so 1000-step evaluation stays stable).
    """
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; expected one of {MODELS}")
    if name == "paper":
        return TrainConfig(preset="paper", steps=16, beta=24.0, iterations=150_000, batch_size=200,
                           checkpoint_every=1000, eval_every=5000, eval_samples=2000)
    if name == "quick":
        return TrainConfig(preset="quick", steps=16, beta=24.0, iterations=1500, batch_size=200,
                           beta_const_fraction=0.05, beta_ramp_fraction=0.5, warmup_fraction=0.02,
                           temp_anneal_fraction=0.6, lr_min=1e-4, n_train=60_000, n_val=2_000,
                           time_limit_minutes=15.0)
    raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")


def preset_model_options(name: str) -> dict[str, Any]:
    """``ModelConfig`` options that belong to a preset (applied by the CLI; explicit options win).

    ``quick`` lowers the final soft clamp from the paper's 10 to 6 (rates ≤ e⁶ ≈ 400 spikes per step):
    a model trained for minutes instead of hours occasionally lets a population overshoot into a
    synchronous burst during a 1000-step rollout (a few inputs in a thousand, every neuron pinned at
    e^10); the lower bound keeps such rollouts finite without touching typical rates (< 100).
    """
    if name == "quick":
        return {"clamp_final": 6.0}
    if name == "paper":
        return {}
    raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys with the key named."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown config key '{unknown[0]}'")
    try:
        return cls(**data)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{source}: {exc}") from None


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path`` with a one-line error for missing or corrupt files."""
    path = Path(path)
    raw = read_bytes(path, ConfigError)
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data
