"""Typed configurations that validate themselves and round-trip to JSON.

``ModelConfig`` fixes a model's architecture and inference options; ``TrainConfig`` fixes how it
learns. Both reject unknown keys and out-of-range values with a ``ConfigError`` naming the key.
Presets (``quick``, ``paper``, ``fond``) are functions of the model name and the kind of data, not hidden
defaults: one table of schedules (``PRESET_SCHEDULES``) and the models' registry entries.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from fond.errors import ConfigError, read_bytes
from fond.registry import BUILTIN_MODELS, ModelSpec, model_spec
from fond.validate import require as _require

__all__ = ["ModelConfig", "TrainConfig", "MODELS", "AMORTIZED_MODELS", "POINT_ESTIMATE_MODELS", "DECODERS",
           "OPTIMIZERS", "PRESETS", "PRESET_SCHEDULES", "PAPER_DATA", "DEFAULT_LATENTS", "preset",
           "preset_model_options", "take_latents", "load_json", "config_from_dict", "data_kind", "updates_for_epochs"]

#: quick: minutes on 2 CPU cores; paper: the authors' recipe (DESIGN.md §7); fond: the paper's schedule with
#: fond's own choices (exact KL, weight decay on the dictionary only, centred 50k MNIST digits)
PRESETS: tuple[str, ...] = ("quick", "paper", "fond")

T = TypeVar("T")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: the trainer's optimizers (``TrainConfig.optimizer``, ``fond.train.build_optimizer``)
OPTIMIZERS: tuple[str, ...] = ("adamax", "sgd")

#: the paper's models (every name ``fond.registry.model_names()`` lists is a model, plug-ins' included)
MODELS: tuple[str, ...] = BUILTIN_MODELS
AMORTIZED_MODELS: tuple[str, ...] = tuple(name for name in MODELS if model_spec(name).kind == "amortized")
POINT_ESTIMATE_MODELS: tuple[str, ...] = tuple(name for name in MODELS if model_spec(name).point_estimate)
DECODERS: tuple[str, ...] = ("linear", "mlp", "conv")
ENCODERS: tuple[str, ...] = ("linear", "linear-nobias", "mlp", "conv")


#: keys that older configs kept at the top level and that now belong to the Poisson family's options
_LEGACY_POISSON_KEYS = ("u_init_low", "u_init_high", "clamp_init", "clamp_final", "floor", "kl", "indicator",
                        "n_exp_tail", "max_terms")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an iterative FOND model: family + decoder + shared learned scalars (DESIGN.md §2).

    n_inputs: D, pixels per input. n_latents: K, neurons. model: "ipvae" (Poisson), "igvae" (Gaussian),
    "igvae-relu" (Gaussian, f = relu·gain), "ibvae" (Bernoulli) or the name of any registered family;
    the baselines "pvae", "gvae", "gvae-relu" (amortized), "savae", "iavae" (hybrid), "pc" (predictive
    coding), "lca", "ista", "fista" (sparse coding) — any name of ``fond.registry.model_names()``, whose
    ``ModelSpec`` fixes the class, family and options. decoder: "linear" (dictionary Φ), "mlp" or "conv".
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
        spec = self.spec
        if spec.method_options is None:
            _require(not self.method_options, "method_options", f"model {self.model!r} takes none")
        else:
            self.method  # noqa: B018  (validates the method's options)
        if spec.linear_decoder_only:
            _require(self.decoder == "linear", "decoder", f"model {self.model!r} learns a linear dictionary only")
        if spec.family is None:
            _require(not self.family_options, "family_options", f"model {self.model!r} has no family")
            return
        fixed = spec.family_options
        for key, value in self.family_options.items():
            _require(key not in fixed or fixed[key] == value, f"family_options.{key}",
                     f"is fixed to {fixed.get(key)!r} by model {self.model!r}")
        self.family  # noqa: B018  (validates the family's options)

    @property
    def spec(self) -> ModelSpec:
        """The model's registry entry (``fond.registry.ModelSpec``)."""
        try:
            return model_spec(self.model)
        except ConfigError as exc:
            raise ConfigError(f"config key 'model': {exc}") from None

    @property
    def method(self):
        """The baseline method's validated options (a dataclass), or None for the FOND models."""
        cls = self.spec.method_options_class()
        if cls is None:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.method_options) - known)
        _require(not unknown, f"method_options.{unknown[0] if unknown else ''}",
                 f"not an option of {self.model} (options: {', '.join(sorted(known))})")
        return cls(**self.method_options)

    @property
    def family_name(self) -> str | None:
        """The registered name of the model's distribution family; None for methods without one."""
        return self.spec.family

    @property
    def family(self):
        """The model's distribution family (a ``fond.families.Family``) with its options; None for PC/LCA."""
        from fond.families.base import make_family

        spec = self.spec
        if spec.family is None:
            return None
        return make_family(spec.family, {**spec.family_options, **self.family_options})


@dataclass(frozen=True)
class TrainConfig:
    """Learning to infer by backpropagation through the unrolled inference (DESIGN.md §2.4).

    steps: T_train, inference steps unrolled per batch. beta: KL weight β at full strength.
    iterations: parameter updates in total. batch_size: inputs per update. optimizer: "adamax" (the authors'; every
    VAE) or "sgd" (plain gradient steps with momentum: classical dictionary learning, the sparse-coding models'
    presets — Adamax moves every entry of Φ by about lr per update whatever its gradient, so the entries that
    only see noise random-walk and the atoms stay noisy). lr / lr_min: peak and final learning rate (cosine
    after a linear warm-up of warmup_fraction of the run). momentum: Adamax's β1, the decay of its running mean
    of gradients (0.9: a mean over ~10 updates; 0.99: ~100), or SGD's momentum. weight_decay: L2, added to the
    gradient, on the decoder's parameters; with decay_log_params on every parameter (log σ_x, log b, step
    sizes, initial states, gains too: the authors' scope).
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
    optimizer: str = "adamax"
    lr: float = 5e-3
    lr_min: float = 1e-5
    momentum: float = 0.9
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
        _require(self.optimizer in OPTIMIZERS, "optimizer",
                 f"expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(0 <= self.lr_min <= self.lr, "lr_min", "need 0 ≤ lr_min ≤ lr")
        _require(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        _require(_finite(self.momentum) and 0 <= self.momentum < 1, "momentum", "must lie in [0, 1)")
        _require(self.grad_clip > 0, "grad_clip", "must be > 0")
        _require(0 <= self.beta_min <= max(self.beta, self.beta_min), "beta_min", "must be ≥ 0")
        for key in ("warmup_fraction", "beta_const_fraction", "beta_ramp_fraction", "temp_anneal_fraction"):
            _require(0 <= getattr(self, key) <= 1, key, "must lie in [0, 1]")
        _require(self.temp_start > 0 and self.temp_stop > 0, "temp_stop", "temperatures must be > 0")
        _require(isinstance(self.decay_log_params, bool), "decay_log_params", "must be true or false")
        _require(self.time_limit_minutes is None or (_finite(self.time_limit_minutes)
                                                     and self.time_limit_minutes > 0),
                 "time_limit_minutes", "must be a positive number or null")


def updates_for_epochs(epochs: int, n_train: int, batch_size: int) -> int:
    """Parameter updates of ``epochs`` passes over ``n_train`` inputs in batches of ``batch_size``."""
    return epochs * (n_train // batch_size)


#: what every long schedule shares (DESIGN.md §2.4, §7): Adamax lr warm-up over 0.5 % then cosine to 1e-5,
#: β 1e-4 for 0.1 % then a linear ramp over 10 % (the clamp ramps with it), τ 1 → 0.01 over the first half
_LONG = dict(lr_min=1e-5, weight_decay=3e-4, warmup_fraction=0.005, beta_min=1e-4, beta_const_fraction=1e-3,
             beta_ramp_fraction=0.1, temp_start=1.0, temp_stop=0.01, temp_anneal_fraction=0.5,
             checkpoint_every=1000, eval_every=5000, eval_samples=2000, time_limit_minutes=None)
_QUICK = dict(iterations=1500, batch_size=200, beta_const_fraction=0.05, beta_ramp_fraction=0.5, warmup_fraction=0.02,
              temp_anneal_fraction=0.6, lr_min=1e-4, n_train=60_000, n_val=2_000, time_limit_minutes=15.0)

#: the quick MNIST iP-VAE bursts at lr 5e-3 (README, "MNIST bursts"): the dictionary outgrows the step size, the
#: unrolled dynamics turn unstable (η·λ_max(ΦᵀΣ⁻¹Φ) 5 → 45 in 250 updates) and the gradient explodes; at the
#: authors' MNIST lr 2e-3 (and clip 3000) η·λ_max falls (1.6 at update 275, 0.4 at the end) and nothing bursts
_QUICK_MNIST_STEP = dict(lr=2e-3, grad_clip=3000.0)

#: TrainConfig fields of each (preset, data kind) beside T_train and β, which come from the model's registry
#: entry (``fond.registry.ModelSpec.presets``). ``paper`` is the authors' recipe: weight decay on every
#: parameter, 300 epochs of batch 200 on patches; lr 2e-3, gradient clip 3000, 400 epochs of batch 100 over
#: 60k digits on MNIST. ``fond`` is the same schedule with decay on the dictionary only, and 150,000 updates
#: on 50k MNIST digits at the natural-patch lr and clip (fond's paper preset before issue 16, unchanged).
PRESET_SCHEDULES: Mapping[tuple[str, str], Mapping[str, Any]] = MappingProxyType({
    ("paper", "natural"): MappingProxyType(dict(
        _LONG, iterations=updates_for_epochs(300, 100_000, 200), batch_size=200, lr=5e-3, grad_clip=300.0,
        decay_log_params=True, n_train=100_000, n_val=5_000)),
    ("paper", "mnist"): MappingProxyType(dict(
        _LONG, iterations=updates_for_epochs(400, 60_000, 100), batch_size=100, lr=2e-3, grad_clip=3000.0,
        decay_log_params=True, n_train=60_000, n_val=10_000)),
    ("fond", "natural"): MappingProxyType(dict(_LONG, iterations=150_000, batch_size=200)),
    ("fond", "mnist"): MappingProxyType(dict(_LONG, iterations=150_000, batch_size=100, n_train=50_000,
                                             n_val=10_000)),
    ("quick", "natural"): MappingProxyType(_QUICK),
    ("quick", "mnist"): MappingProxyType(dict(_QUICK, batch_size=100, n_train=50_000, **_QUICK_MNIST_STEP)),
})

#: the ``--data`` of the authors' recipe per kind of data (a preset cannot choose the data: pass it)
PAPER_DATA: Mapping[str, str] = MappingProxyType({"natural": "natural16-lcn", "mnist": "mnist-raw-60k"})


def data_kind(spec: str | None) -> str:
    """"mnist" for the MNIST data specs (``mnist``, ``mnist-test``, ``mnist-raw``...), else "natural"."""
    return "mnist" if str(spec).startswith("mnist") else "natural"


def preset(name: str, model: str = "ipvae", data: str | None = None) -> TrainConfig:
    """The named training preset for ``model`` on the data named by ``data`` (the CLI's ``--data``).

    ``paper``: the authors' recipe (DESIGN.md §7). Natural patches: batch 200, 300 epochs of 100k patches =
    150,000 updates, lr 5e-3, gradient clip 300, weight decay 3e-4 on every parameter, β 24 for iP-VAE and 8
    for the Gaussian models, T_train 16; MNIST: batch 100, 400 epochs of 60k digits = 240,000 updates, lr
    2e-3, clip 3000, T_train/β 128/128 (iP-VAE), 64/64 (iG-VAE), 32/32 (iG_relu-VAE). With it go the
    authors' family options (``preset_model_options``) and data (``PAPER_DATA``: ``natural16-lcn``,
    ``mnist-raw-60k``). ``fond``: the same schedule with fond's choices (decay on the dictionary only; MNIST:
    150,000 updates on 50k digits at lr 5e-3 and clip 300; exact KL). ``quick``: a schedule for 2 CPU cores
    that finishes within 15 minutes (README: β and clamp ramps stretched so the network does not fall silent,
    temperature annealed to near-hard spikes, T_train 32 for iP-VAE; MNIST T_train = β = 64 for iP-VAE, 32
    for the other FOND models).
    The schedules are ``PRESET_SCHEDULES``; T_train, β and a model's own schedule fields per data kind come
    from its registry entry (``fond.registry.ModelSpec.presets``): e.g. on natural patches the quick iP-VAE's
    gradient clip 50, the quick P-VAE's batch 1000, and the amortized VAEs' ``paper`` preset, the authors'
    PoissonVAE recipe (batch 1000, 300,000 updates, no weight decay, clip 500, β and τ ramped over half).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")
    kind = data_kind(data)
    values = model_spec(model).preset_values(kind)
    steps, beta = values.for_preset(name)
    schedule = {**PRESET_SCHEDULES[(name, kind)], **values.schedule_for_preset(name)}
    return TrainConfig(preset=name, steps=steps, beta=beta, **schedule)


def preset_model_options(name: str, model: str = "ipvae", data: str | None = None) -> dict[str, Any]:
    """``ModelConfig`` fields that belong to preset ``name`` for ``model`` on the data named by ``data`` (the
    CLI's ``--data``); the CLI, sweeps and ``fond reproduce`` apply them, explicit options win (key by key
    inside ``family_options``).

    ``quick`` lowers iP-VAE's final soft clamp from the paper's 10 to 6 (rates ≤ e⁶ ≈ 400 spikes per
    step): a model trained for minutes instead of hours occasionally lets a population overshoot into a
    synchronous burst during a 1000-step rollout (a few inputs in a thousand, every neuron pinned at
    e^10); the lower bound keeps such rollouts finite without touching typical rates (< 100). On natural
    patches the quick P- and G_relu-VAE take the authors' linear encoder without bias (``linear-nobias``), and
    the quick P-VAE a soft clamp ramped 1 → 2 (README, baselines). ``paper`` gives the iterative Poisson
    models the authors' KL form (e^Δ × the exact KL) and relaxed sampler (every element as many arrival
    times as the batch's largest rate needs), and the amortized VAEs on natural patches the authors'
    PoissonVAE encoder (and, for P-VAE, their log-rate clamp at 5). Predictive coding on MNIST has the authors'
    K = 64 (``n_latents``) in both. ``fond`` sets none. The options come from the model's registry entry
    (``fond.registry.PresetValues.quick_model_options`` / ``paper_...``); ``take_latents`` resolves K.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {PRESETS}")
    options = dict(model_spec(model).preset_model_options(name, data_kind(data)))
    if "family_options" in options:
        options["family_options"] = dict(options["family_options"])
    return options


#: K where neither the caller nor the preset sets it
DEFAULT_LATENTS = 512


def take_latents(options: dict[str, Any], explicit: int | None) -> int:
    """K of a run: ``explicit`` (e.g. ``--latents``) where given, else the preset's (``preset_model_options``), else
    ``DEFAULT_LATENTS``. Removes ``n_latents`` from ``options`` (they then hold the other fields only).

    >>> take_latents({"n_latents": 64}, None), take_latents({"n_latents": 64}, 128), take_latents({}, None)
    (64, 128, 512)
    """
    preset_k = options.pop("n_latents", DEFAULT_LATENTS)
    return preset_k if explicit is None else explicit


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
