"""Typed configurations that validate themselves and round-trip to JSON.

``ModelConfig`` fixes a model's architecture and inference options; ``TrainConfig`` fixes how it
learns. Both reject unknown keys and out-of-range values with a ``ConfigError`` naming the key.
Presets (``quick``, ``paper``) are functions of the model name, not hidden defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from fond.errors import ConfigError, read_bytes

__all__ = ["ModelConfig", "TrainConfig", "MODELS", "MODEL_FAMILIES", "DECODERS", "PRESETS", "PRESET_BETA", "preset",
           "preset_model_options", "load_json", "config_from_dict", "data_kind", "MNIST_STEPS_BETA"]

PRESETS: tuple[str, ...] = ("quick", "paper")

T = TypeVar("T")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: model name -> (family, the family options that define the model)
MODEL_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "ipvae": ("poisson", {}),
    "igvae": ("gaussian", {"nonlinearity": "identity"}),
    "igvae-relu": ("gaussian", {"nonlinearity": "relu"}),
    "ibvae": ("bernoulli", {}),
    # amortized VAEs (one encoder pass) and hybrid iterative-amortized VAEs
    "pvae": ("poisson", {}),
    "gvae": ("gaussian", {"nonlinearity": "identity"}),
    "gvae-relu": ("gaussian", {"nonlinearity": "relu"}),
    "savae": ("gaussian", {"nonlinearity": "identity"}),
    "iavae": ("gaussian", {"nonlinearity": "identity"}),
}
#: inference methods without a distribution family: point estimates with their own options
#: (``method_options``, validated by the dataclass named here, imported on demand)
METHOD_OPTIONS: dict[str, str] = {
    "pc": "fond.models.predictive_coding:PredictiveCodingOptions",
    "lca": "fond.models.sparse_coding:SparseCodingOptions",
    "ista": "fond.models.sparse_coding:SparseCodingOptions",
    "fista": "fond.models.sparse_coding:SparseCodingOptions",
}
#: hybrid models' own options
METHOD_OPTIONS.update({"savae": "fond.models.hybrid:SemiAmortizedOptions",
                       "iavae": "fond.models.hybrid:IterativeAmortizedOptions"})
ITERATIVE_MODELS: tuple[str, ...] = ("ipvae", "igvae", "igvae-relu", "ibvae")
AMORTIZED_MODELS: tuple[str, ...] = ("pvae", "gvae", "gvae-relu")
MODELS: tuple[str, ...] = (*MODEL_FAMILIES, "pc", "lca", "ista", "fista")
DECODERS: tuple[str, ...] = ("linear", "mlp", "conv")
ENCODERS: tuple[str, ...] = ("linear", "mlp", "conv")


def method_options_class(model: str):
    """The options dataclass of a method in METHOD_OPTIONS, or None."""
    import importlib

    target = METHOD_OPTIONS.get(model)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
#: keys that older configs kept at the top level and that now belong to the Poisson family's options
_LEGACY_POISSON_KEYS = ("u_init_low", "u_init_high", "clamp_init", "clamp_final", "floor", "kl", "indicator",
                        "n_exp_tail", "max_terms")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an iterative FOND model: family + decoder + shared learned scalars (DESIGN.md §2).

    n_inputs: D, pixels per input. n_latents: K, neurons. model: "ipvae" (Poisson), "igvae" (Gaussian),
    "igvae-relu" (Gaussian, f = relu·gain), "ibvae" (Bernoulli) or the name of any registered family;
    the baselines "pvae", "gvae", "gvae-relu" (amortized), "savae", "iavae" (hybrid), "pc" (predictive
    coding), "lca", "ista", "fista" (sparse coding). decoder: "linear" (dictionary Φ), "mlp" or "conv".
    decoder_hidden: hidden units (mlp) or channels (conv). encoder / encoder_hidden: the same for the
    amortized and hybrid models' encoders. init_scale: std of the linear dictionary's normal
    initialisation. log_bias_init: initial log b.
    sigma_clamp: |log σ_x| bound (tanh soft clamp). family_options: options of the family's own
    dataclass (e.g. ``{"clamp_final": 6}`` for Poisson; see ``fond.families``), validated by it.
    method_options: options of a baseline method's own dataclass (e.g. ``{"sparsity": 0.5}`` for LCA).
    """

    n_inputs: int
    n_latents: int
    model: str = "ipvae"
    decoder: str = "linear"
    decoder_hidden: int = 512
    init_scale: float = 1e-4
    log_bias_init: float = -3.0
    sigma_clamp: float = 3.45
    family_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    encoder: str = "mlp"
    encoder_hidden: int = 512
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("n_inputs", "n_latents", "decoder_hidden", "encoder_hidden"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key,
                     f"must be an integer ≥ 1, got {value!r}")
        for key in ("init_scale", "log_bias_init", "sigma_clamp"):
            _require(_finite(getattr(self, key)), key, f"must be a finite number, got {getattr(self, key)!r}")
        _require(isinstance(self.model, str), "model", f"expected a name, got {self.model!r}")
        _require(self.decoder in DECODERS, "decoder", f"unknown decoder {self.decoder!r}; expected one of {DECODERS}")
        _require(self.init_scale > 0, "init_scale", "must be > 0")
        _require(self.sigma_clamp > 0, "sigma_clamp", "must be > 0")
        _require(self.encoder in ENCODERS, "encoder", f"unknown encoder {self.encoder!r}; expected one of {ENCODERS}")
        _require(isinstance(self.family_options, dict), "family_options", "must be a JSON object")
        _require(isinstance(self.method_options, dict), "method_options", "must be a JSON object")
        options_class = method_options_class(self.model) if isinstance(self.model, str) else None
        if options_class is None:
            _require(not self.method_options, "method_options", f"model {self.model!r} takes none")
        else:
            self.method  # noqa: B018  (validates the method's options)
        if self.model in METHOD_OPTIONS and self.model not in MODEL_FAMILIES:
            _require(self.decoder == "linear", "decoder", f"model {self.model!r} learns a linear dictionary only")
            _require(not self.family_options, "family_options", f"model {self.model!r} has no family")
            return
        if self.model not in MODEL_FAMILIES:
            from fond.families.base import family_names

            _require(self.model in family_names(), "model",
                     f"unknown model {self.model!r}; expected one of {MODELS} or a family {family_names()}")
        fixed = MODEL_FAMILIES.get(self.model, (self.model, {}))[1]
        for key, value in self.family_options.items():
            _require(key not in fixed or fixed[key] == value, f"family_options.{key}",
                     f"is fixed to {fixed.get(key)!r} by model {self.model!r}")
        self.family  # noqa: B018  (validates the family's options)

    @property
    def method(self):
        """The baseline method's validated options (a dataclass), or None for the FOND models."""
        cls = method_options_class(self.model)
        if cls is None:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.method_options) - known)
        _require(not unknown, f"method_options.{unknown[0] if unknown else ''}",
                 f"not an option of {self.model} (options: {', '.join(sorted(known))})")
        return cls(**self.method_options)

    @property
    def family_name(self) -> str | None:
        if self.model in METHOD_OPTIONS and self.model not in MODEL_FAMILIES:
            return None
        return MODEL_FAMILIES.get(self.model, (self.model, {}))[0]

    @property
    def family(self):
        """The model's distribution family (a ``fond.families.Family``) with its options; None for PC/LCA."""
        from fond.families.base import make_family

        if self.family_name is None:
            return None
        name, fixed = MODEL_FAMILIES.get(self.model, (self.model, {}))
        return make_family(name, {**fixed, **self.family_options})


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
        _require(isinstance(self.preset, str), "preset", f"expected a name, got {self.preset!r}")
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


#: β of the natural-image presets (DESIGN.md §2.4): 24 for iP-VAE, 8 for the Gaussian models
#: The iterative models' loss is a mean over T_train = 16 steps of NLL + β·KL(q_t ‖ q_{t−1}); the per-step
#: KLs add up to about the KL from the initial state, so their β acts like β/16 on an amortized model's
#: single KL to the prior. The amortized and hybrid presets use that equivalent β (24/16 for P-VAE, 8/16
#: for the Gaussian ones): with the iterative value, a quick amortized P-VAE collapses to silence.
PRESET_BETA: dict[str, float] = {"ipvae": 24.0, "igvae": 8.0, "igvae-relu": 8.0, "ibvae": 8.0, "pvae": 1.5,
                                  "gvae": 0.5, "gvae-relu": 0.5, "savae": 0.5, "iavae": 0.5}
#: point-estimate methods learn their dictionary on converged codes: T_train is the number of inference
#: steps run (without gradient) before each dictionary update, and β is unused (λ is their knob)
POINT_ESTIMATE_MODELS: tuple[str, ...] = ("pc", "lca", "ista", "fista")
POINT_ESTIMATE_STEPS = 100


def _check_model_name(model: str) -> None:
    from fond.families.base import family_names

    if model not in MODELS and model not in family_names():
        raise ConfigError(f"unknown model {model!r}; expected one of {MODELS}")


#: MNIST (DESIGN.md §3): the paper's T_train / β per model, batch 100. β/T_train = 1 throughout, so the
#: amortized and hybrid models (one KL to the prior) get β = 1 and the quick preset, which cuts T_train to
#: 32 to fit 2 CPU cores, keeps that ratio (β 32).
MNIST_STEPS_BETA: dict[str, tuple[int, float]] = {"ipvae": (128, 128.0), "igvae": (64, 64.0),
                                                  "igvae-relu": (32, 32.0), "ibvae": (64, 64.0)}
MNIST_QUICK_STEPS = 32
#: T_train of the quick preset for iP-VAE on natural images. With the issue-6 engines 1500 iterations at
#: T_train 32 train in 6.7 min on 2 cores and reach R² 0.829 / zeros 0.792 at t = 1000 (d 0.269); at
#: T_train 16 (3.3 min) R² stays at 0.78 whatever β (12–24) or length (up to 5000 iterations) — BENCHMARKS.md.
QUICK_IPVAE_NATURAL_STEPS = 32


def data_kind(spec: str | None) -> str:
    """"mnist" for the MNIST data specs (``mnist``, ``mnist-test``, ``mnist-raw``...), else "natural"."""
    return "mnist" if str(spec).startswith("mnist") else "natural"


def preset(name: str, model: str = "ipvae", data: str | None = None) -> TrainConfig:
    """The named training preset for ``model`` on the data named by ``data`` (the CLI's ``--data``).

    Natural patches (and user data): ``paper`` is the reference schedule (batch 200, 300 epochs of 100k
    patches = 150,000 updates, β 24 for iP-VAE and 8 for the Gaussian models, T_train 16); ``quick`` a
    schedule for 2 CPU cores that finishes within 15 minutes; see README for what it reaches and why its
    schedule differs (β and clamp ramps stretched so the network does not fall silent, temperature
    annealed to near-hard spikes so 1000-step evaluation stays stable, T_train 32 for iP-VAE).
    MNIST (``data="mnist"``): batch 100, T_train/β 128/128 (iP-VAE), 64/64 (iG-VAE), 32/32 (iG_relu-VAE)
    for ``paper`` (300 epochs of 50k digits); ``quick`` uses T_train 32 and β 32 for every iterative model
    (β/T_train as in the paper).
    """
    _check_model_name(model)
    mnist = data_kind(data) == "mnist"
    beta = PRESET_BETA.get(model, 8.0)
    steps = 16
    if mnist:
        steps, beta = MNIST_STEPS_BETA.get(model, (1, 1.0))
        if name == "quick" and model in MNIST_STEPS_BETA:
            steps, beta = MNIST_QUICK_STEPS, float(MNIST_QUICK_STEPS)
        if model not in MNIST_STEPS_BETA:  # amortized / hybrid: the one-KL equivalent β/T_train = 1
            steps = 16
    if name == "quick" and not mnist and model == "ipvae":
        steps = QUICK_IPVAE_NATURAL_STEPS
    if model in POINT_ESTIMATE_MODELS:
        beta, steps = 0.0, POINT_ESTIMATE_STEPS
    batch, n_train = (100, 50_000) if mnist else (200, None)
    if name == "paper":
        cfg = TrainConfig(preset="paper", steps=steps, beta=beta, iterations=150_000, batch_size=batch,
                          checkpoint_every=1000, eval_every=5000, eval_samples=2000)
        return replace(cfg, n_train=n_train, n_val=10_000) if mnist else cfg
    if name == "quick":
        cfg = TrainConfig(preset="quick", steps=steps, beta=beta, iterations=1500, batch_size=batch,
                          beta_const_fraction=0.05, beta_ramp_fraction=0.5, warmup_fraction=0.02,
                          temp_anneal_fraction=0.6, lr_min=1e-4, n_train=60_000, n_val=2_000,
                          time_limit_minutes=15.0)
        return replace(cfg, n_train=n_train) if mnist else cfg
    raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")


def preset_model_options(name: str, model: str = "ipvae") -> dict[str, Any]:
    """``ModelConfig`` options that belong to a preset (applied by the CLI; explicit options win).

    ``quick`` lowers iP-VAE's final soft clamp from the paper's 10 to 6 (rates ≤ e⁶ ≈ 400 spikes per
    step): a model trained for minutes instead of hours occasionally lets a population overshoot into a
    synchronous burst during a 1000-step rollout (a few inputs in a thousand, every neuron pinned at
    e^10); the lower bound keeps such rollouts finite without touching typical rates (< 100).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")
    _check_model_name(model)
    if name == "quick" and MODEL_FAMILIES.get(model, (model,))[0] == "poisson":
        return {"family_options": {"clamp_final": 6.0}}
    return {}


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys with the key named."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if cls is ModelConfig:
        data = _migrate_model_keys(data)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known = {f.name for f in fields}
    unknown = sorted((str(key) for key in set(data) - known), key=str)
    if unknown:
        raise ConfigError(f"{source}: unknown config key '{unknown[0]}'")
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing config key '{missing[0]}'")
    try:
        return cls(**data)
    except ConfigError as exc:  # name the file the bad value came from
        if source == "config" or str(exc).startswith(f"{source}:"):
            raise
        raise ConfigError(f"{source}: {exc}") from None
    except TypeError as exc:  # a value of a type the checks did not foresee
        raise ConfigError(f"{source}: {exc}") from None


def _migrate_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written before families had their own options kept the Poisson options at the top level."""
    legacy = {("kl_form" if k == "kl" else k): data[k] for k in _LEGACY_POISSON_KEYS if k in data}
    if not legacy or data.get("model", "ipvae") != "ipvae":
        return data
    rest = {k: v for k, v in data.items() if k not in _LEGACY_POISSON_KEYS}
    options = rest.get("family_options", {})
    return {**rest, "family_options": {**legacy, **(options if isinstance(options, dict) else {})}}


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
