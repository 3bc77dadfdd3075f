"""One registry of models: every model name, its class, family, options, presets, title and capabilities.

A model is one ``ModelSpec``. The CLI's ``--model``, ``ModelConfig``'s validation, the presets,
``build_model``, the reports' titles, the analyses, the sweeps and ``fond reproduce`` all read it, so a
new model is one file (its class) and one ``register_model(ModelSpec(...))``. A family registered with
``fond.register_family("name")`` and no spec of its own is a FOND model of that family (``IterativeVAE``)
with the default presets and the title ``name``.

User plug-ins (modules that register families or specs) load through ``load_plugins``: modules named by
``fond --plugin MODULE``, by the ``FOND_PLUGINS`` environment variable (comma-separated) and by the
Python entry points of group ``fond.plugins``. ``model_spec`` loads the last two by itself the first time
it meets a name it does not know, so ``fond.load`` of a plug-in's run works wherever the plug-in is declared.

Nothing here imports torch: the classes are "module:Class" strings imported on demand.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fond.errors import ConfigError

__all__ = ["ModelSpec", "PresetValues", "KINDS", "DATA_KINDS", "BUILTIN_MODELS", "PLUGIN_ENV", "PLUGIN_GROUP",
           "register_model", "model_spec", "model_names", "model_title", "models_by_kind", "family_model_spec",
           "load_plugins", "import_target"]

#: how a model infers: FOND's iterative refinement, one encoder pass, an encoder refined by steps, or a
#: point estimate (MAP code, no posterior)
KINDS: tuple[str, ...] = ("iterative", "amortized", "hybrid", "point-estimate")
#: the kinds of data presets distinguish (``fond.config.data_kind``)
DATA_KINDS: tuple[str, ...] = ("natural", "mnist")
#: environment variable naming plug-in modules, comma-separated
PLUGIN_ENV = "FOND_PLUGINS"
#: entry-point group of installed plug-ins (each names a module, or a function to call)
PLUGIN_GROUP = "fond.plugins"
ITERATIVE_CLASS = "fond.models.iterative:IterativeVAE"


@dataclass(frozen=True)
class PresetValues:
    """What a model's presets set on one kind of data, beside the data kind's schedule.

    steps / beta: the ``fond`` and ``paper`` presets' T_train (inference steps unrolled per batch) and KL weight
    β. quick_steps / quick_beta: the ``quick`` preset's, None for the same as ``fond``'s; paper_beta: the
    ``paper`` preset's β, None for ``beta``. schedule: ``TrainConfig`` fields every preset of this model sets on
    top of the data kind's schedule (``fond.config.PRESET_SCHEDULES``; e.g. the sparse-coding models' SGD);
    quick_schedule / paper_schedule: those the ``quick`` / ``paper`` preset sets on top of that.
    quick_model_options / paper_model_options: ``ModelConfig`` fields the preset sets (e.g. ``encoder``,
    ``family_options``); explicit options win, key by key inside ``family_options``. The ``fond`` preset sets
    none of these.
    """

    steps: int = 16
    beta: float = 8.0
    quick_steps: int | None = None
    quick_beta: float | None = None
    paper_beta: float | None = None
    schedule: Mapping[str, Any] = field(default_factory=dict, hash=False)
    quick_schedule: Mapping[str, Any] = field(default_factory=dict, hash=False)
    paper_schedule: Mapping[str, Any] = field(default_factory=dict, hash=False)
    quick_model_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    paper_model_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for key in ("schedule", "quick_schedule", "paper_schedule", "quick_model_options", "paper_model_options"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))

    def schedule_for_preset(self, name: str) -> Mapping[str, Any]:
        """The ``TrainConfig`` fields this model sets in preset ``name``: ``schedule``, then the "quick" or "paper"
        preset's own."""
        own = {"quick": self.quick_schedule, "paper": self.paper_schedule}.get(name, {})
        return MappingProxyType({**self.schedule, **own})

    def model_options_for_preset(self, name: str) -> Mapping[str, Any]:
        """The ``ModelConfig`` fields this model sets in preset ``name`` ("quick", "paper"; none for others)."""
        return {"quick": self.quick_model_options, "paper": self.paper_model_options}.get(name, MappingProxyType({}))

    def for_preset(self, name: str) -> tuple[int, float]:
        """(T_train, β) of preset ``name`` ("quick", "paper"; anything else — "fond" — reads steps and beta)."""
        if name == "paper" and self.paper_beta is not None:
            return self.steps, self.paper_beta
        if name != "quick":
            return self.steps, self.beta
        steps = self.steps if self.quick_steps is None else self.quick_steps
        return steps, self.beta if self.quick_beta is None else self.quick_beta


#: presets of a model that sets none: β 8 / T_train 16 on natural data, β/T_train = 1 at T_train 16 on MNIST
DEFAULT_PRESETS: Mapping[str, PresetValues] = MappingProxyType(
    {"natural": PresetValues(16, 8.0), "mnist": PresetValues(16, 1.0)})


@dataclass(frozen=True)
class ModelSpec:
    """Everything fond needs to know about one model, without importing it.

    name: the ``--model`` / ``ModelConfig.model`` name. model_class: "module:Class" built by
    ``build_model`` (``Class(config=..., seed=...)``). kind: one of ``KINDS``. family: the distribution
    family's registered name, None for methods without one (point estimates). family_options: the options
    the model fixes (e.g. iG_relu-VAE = gaussian with nonlinearity relu); a config may repeat them, not
    change them. method_options: "module:Class" of the dataclass validating ``ModelConfig.method_options``,
    or None (then the model takes none). title: the name reports print (default: ``name``).
    accepts_online_input: ``infer`` takes an input sequence (steps, B, D) as well as (B, D); models that do
    not refuse one with a one-line ``DataError``. linear_decoder_only: the model learns a linear dictionary
    only. presets: ``PresetValues`` per data kind (missing kinds: ``DEFAULT_PRESETS``): T_train, β, schedule
    fields and ``ModelConfig`` fields of each preset.
    """

    name: str
    model_class: str = ITERATIVE_CLASS
    kind: str = "iterative"
    family: str | None = None
    family_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    method_options: str | None = None
    title: str = ""
    accepts_online_input: bool = True
    linear_decoder_only: bool = False
    presets: Mapping[str, PresetValues] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a model spec needs a non-empty name, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"model {self.name!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        for target in (self.model_class, self.method_options):
            if target is not None and (not isinstance(target, str) or target.count(":") != 1):
                raise ConfigError(f"model {self.name!r}: expected 'module:Class', got {target!r}")
        preset_options = [values.model_options_for_preset(name) for values in self.presets.values()
                          for name in ("quick", "paper")]
        if self.family is None and (self.family_options or any("family_options" in o for o in preset_options)):
            raise ConfigError(f"model {self.name!r}: family options need a family")
        unknown = sorted(set(self.presets) - set(DATA_KINDS))
        if unknown:
            raise ConfigError(f"model {self.name!r}: presets for unknown data kind {unknown[0]!r}")
        for key in ("family_options", "presets"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))
        if not self.title:
            object.__setattr__(self, "title", self.name)

    @property
    def point_estimate(self) -> bool:
        """A MAP code without a posterior: T_train counts converging steps and β is unused."""
        return self.kind == "point-estimate"

    def preset_values(self, data_kind: str) -> PresetValues:
        """T_train and β of the presets on ``data_kind`` ("natural" or "mnist")."""
        return self.presets.get(data_kind, DEFAULT_PRESETS[data_kind])

    def preset_model_options(self, preset: str, data_kind: str) -> Mapping[str, Any]:
        """The ``ModelConfig`` fields preset ``preset`` sets on ``data_kind`` ("natural" or "mnist")."""
        return self.preset_values(data_kind).model_options_for_preset(preset)

    def load_class(self) -> type:
        """The model class (imports its module)."""
        return import_target(self.model_class)

    def method_options_class(self) -> type | None:
        """The method-options dataclass (imports its module), or None."""
        return None if self.method_options is None else import_target(self.method_options)


def import_target(target: str) -> Any:
    """The attribute ``Class`` of module ``module`` named by "module:Class"."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def family_model_spec(family: str, **fields: Any) -> ModelSpec:
    """The spec of a FOND model of ``family`` named after it (``fields`` override the defaults, e.g. title)."""
    return ModelSpec(**{"name": family, "family": family, **fields})


# -- the built-in models -------------------------------------------------------------------------------
_IDENTITY = {"nonlinearity": "identity"}
_RELU = {"nonlinearity": "relu"}
#: quick lowers the Poisson models' final soft clamp from 10 to 6 (rates ≤ e⁶ ≈ 400 spikes per step): a model
#: trained for minutes occasionally lets a population burst during a 1000-step rollout; typical rates (< 100)
#: are untouched
_POISSON_QUICK = {"clamp_final": 6.0}
#: paper: the authors' iterative code (DESIGN.md §7) weights the KL by e^Δ (``kl_form="reference"``) and gives
#: every element of a batch the arrival times its largest rate needs (``n_exp_rule="batch"``)
_POISSON_PAPER = {"kl_form": "reference", "n_exp_rule": "batch"}
#: the ``ModelConfig`` fields of the Poisson models' presets (every data kind)
_POISSON_OPTIONS = {"quick_model_options": {"family_options": _POISSON_QUICK},
                    "paper_model_options": {"family_options": _POISSON_PAPER}}
#: quick iP-VAE on natural patches: lr 2·10⁻³ (not 5·10⁻³), β 56 (not 24), gradient clip 50 (not 300).
#: Adamax moves every dictionary entry by about lr per update whatever the size of its gradient, so in a
#: 1500-update run the entries whose gradient is mostly noise (the pixels outside an atom's envelope, and the
#: atoms of rarely active neurons) random-walk by ~lr per update and the atoms stay noisy; a smaller lr and a
#: sparser code (larger β) leave clean, localised atoms. The clip keeps the jumps of the gradient norm while β
#: ramps (past 300, 10⁵ in short runs) from freezing Adamax's denominator. Measured (README, "What the demo
#: reaches"; seed 0): β 56: 76 % of the 128 most active atoms Gabor-like (r² ≥ 0.7) and d 0.259; β 48: 55 %,
#: d 0.249; β 64: 84 %, d 0.285; lr 5·10⁻³ / β 24: 30 %, d 0.298; lr 10⁻³ / β 48: 73 % but R² 0.56 (d 0.443)
_IPVAE_NATURAL_QUICK = {"grad_clip": 50.0, "lr": 2e-3}
_IPVAE_NATURAL_QUICK_BETA = 56.0
#: quick iP-VAE on MNIST: T_train = β = 64 (the other iterative models 32). At 32 the rollouts drift past the trained
#: steps once the dictionary has had more updates (4500: spike R² peaks at t ≈ 100, then sinks), and at 1500 updates
#: the spike R² on raw digits is 0.904; at 64 it is 0.919 (centred 0.889, d 0.193), still rising at t = 1000, in
#: 7.7 minutes on 2 cores (the paper unrolls 128; docs/cli.md, "The quick MNIST iP-VAE")
_IPVAE_MNIST_QUICK_STEPS = 64
_AMORTIZED = "fond.models.amortized:AmortizedVAE"
_SPARSE = "fond.models.sparse_coding"


def _iterative_presets(natural_beta: float, mnist_steps: int, natural_quick_steps: int | None = None,
                       natural_quick_schedule: Mapping[str, Any] | None = None, natural_quick_beta: float | None = None,
                       model_options: Mapping[str, Any] | None = None, mnist_quick_steps: int = 32):
    """Natural patches: T_train 16 and ``natural_beta`` (quick: ``natural_quick_steps``, ``natural_quick_beta``
    and the schedule fields ``natural_quick_schedule``); MNIST: the paper's T_train = β = ``mnist_steps``, and
    quick T_train = β = ``mnist_quick_steps`` (β/T_train as in the paper, fits 2 CPU cores). ``model_options``:
    ``PresetValues`` fields of the presets' model options, on both kinds of data."""
    options = model_options or {}
    return {"natural": PresetValues(16, natural_beta, quick_steps=natural_quick_steps, quick_beta=natural_quick_beta,
                                    quick_schedule=natural_quick_schedule or {}, **options),
            "mnist": PresetValues(mnist_steps, float(mnist_steps), quick_steps=mnist_quick_steps,
                                  quick_beta=float(mnist_quick_steps), **options)}


def _one_kl_presets(natural_beta: float, natural: Mapping[str, Any] | None = None,
                    mnist: Mapping[str, Any] | None = None):
    """Amortized and hybrid models have one KL to the prior where the iterative ones add up T_train = 16
    per-step KLs, so their β is the iterative β/16 (with the iterative value a quick P-VAE falls silent);
    on MNIST β/T_train = 1 gives β = 1. ``natural`` / ``mnist``: further ``PresetValues`` fields."""
    return {"natural": PresetValues(16, natural_beta, **(natural or {})),
            "mnist": PresetValues(16, 1.0, **(mnist or {}))}


#: the authors' PoissonVAE recipe (hadivafaii/PoissonVAE, checkpoints/*-<lin|lin>-vH16*/ConfigTrainVAE.json) on
#: top of the paper preset's natural schedule: batch 1000 for 3000 epochs (of 100k patches: 300,000 updates),
#: Adamax lr 5e-3 (5 warm-up epochs, cosine to 1e-5) without weight decay, gradient clip 500, β from 1e-4
#: ramped over the first half, τ 1 → 0.05 over the first half
_POISSONVAE_PAPER_SCHEDULE = dict(batch_size=1000, iterations=300_000, weight_decay=0.0, warmup_fraction=5 / 3000,
                                  grad_clip=500.0, beta_const_fraction=0.0, beta_ramp_fraction=0.5, temp_stop=0.05,
                                  temp_anneal_fraction=0.5)
#: their encoder: linear without bias (``enc_type="lin"``, ``enc_bias=False``)
_POISSONVAE_ENCODER = {"encoder": "linear-nobias"}


def _amortized_presets(natural_beta: float, paper_beta: float, quick: Mapping[str, Any],
                       paper_family_options: Mapping[str, Any] | None = None,
                       mnist: Mapping[str, Any] | None = None):
    """An amortized VAE's presets: natural patches ``paper``: the authors' PoissonVAE recipe at ``paper_beta``
    (their encoder, schedule and ``paper_family_options``); ``quick``: ``PresetValues`` fields ``quick``
    (chosen by the sweep in docs/models.md, "Every model the paper compares"); ``fond``: β ``natural_beta`` (the
    iterative β/16).
    MNIST: ``_one_kl_presets`` with the ``PresetValues`` fields ``mnist``."""
    paper_options = {**_POISSONVAE_ENCODER, **({"family_options": paper_family_options} if paper_family_options
                                              else {})}
    natural = {**quick, "paper_beta": paper_beta, "paper_schedule": _POISSONVAE_PAPER_SCHEDULE,
               "paper_model_options": paper_options}
    return _one_kl_presets(natural_beta, natural, mnist)


#: quick amortized VAEs on natural patches: the best by d of the sweep in docs/models.md ("Every model the paper
#: compares"; 2000 held-out patches, 1000 steps; its rows hold the numbers). P-VAE: the authors' encoder, batch 1000,
#: β 0.002, log-rates soft-clamped at 2 (ramped from 1; at 6 a few neurons fire up to 400 spikes and d stays ≈ 1),
#: and plain gradient steps (SGD, lr 0.03, momentum 0.9, no weight decay, 4500 updates: d 0.358, Gabor-like atoms;
#: Adamax left noise-like atoms at any lr tried). G_relu-VAE: the authors' encoder, β 0.01; G-VAE: MLP encoder, β 0.03
_PVAE_NATURAL_QUICK = {"quick_beta": 0.002,
                       "quick_schedule": {"batch_size": 1000, "iterations": 4500, "optimizer": "sgd", "lr": 0.03,
                                          "momentum": 0.9, "weight_decay": 0.0},
                       "quick_model_options": {**_POISSONVAE_ENCODER,
                                               "family_options": {"clamp_init": 1.0, "clamp_final": 2.0}}}
#: quick P-VAE on MNIST: β swept (1500 updates, 2000 validation digits, 1000 steps; one seed each): β 1 (the
#: one-KL rule) is nearly silent (R² 0.36, zeros 0.987 in reproduce); 0.2 → d 0.523, 0.05 → 0.470, 0.01 → 0.440,
#: 0.002 → 0.431 (R² 0.572, zeros 0.951), 0.0005 → 0.430: the curve flattens below 0.002, the natural P-VAE's β
_PVAE_MNIST_QUICK = {"quick_beta": 0.002, "quick_model_options": {"family_options": _POISSON_QUICK}}
_GVAE_NATURAL_QUICK = {"quick_beta": 0.03}
_GVAE_RELU_NATURAL_QUICK = {"quick_beta": 0.01, "quick_model_options": _POISSONVAE_ENCODER}
#: the authors' P-VAE bounds log-rates by a soft clamp at 5 from the start (no ramp)
_PVAE_PAPER_CLAMP = {"clamp_init": 5.0, "clamp_final": 5.0}

#: point estimates learn their dictionary on converged codes: T_train is the number of inference steps run
#: (without gradient) before each dictionary update; β is unused (λ is their knob)
_POINT_PRESETS = {"natural": PresetValues(100, 0.0), "mnist": PresetValues(100, 0.0)}
#: sparse coding learns its unit-norm atoms by classical dictionary learning, plain gradient steps (SGD, momentum
#: 0.9, lr 1 at the loss's scale; no weight decay: the atoms are renormalised after each step). Under Adamax every
#: entry moved by about lr per update whatever its gradient: the quick LCA's atoms stayed noisy (32 % Gabor-like,
#: d 0.188 at lr 5·10⁻³; at 10⁻³ and 3·10⁻⁴ they hardly left their random start); with SGD the 128 most active
#: atoms are all Gabor-like and d 0.143 in the same 1500 updates (docs/models.md)
_SPARSE_CODING_SCHEDULE = {"optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0}
_SPARSE_CODING_PRESETS = {kind: PresetValues(100, 0.0, schedule=_SPARSE_CODING_SCHEDULE) for kind in DATA_KINDS}


#: predictive coding on MNIST: the authors' PC has K = 64 latents (hadivafaii/IterativeVAE, results/df_table.df:
#: R² 0.896, probe 90.7 %, 5 seeds; their network has ~0.13 M parameters, fond's linear PC 50 k). At K 512 fond's
#: dense linear code is near-complete on 784 pixels (R² 0.988) and reconstructs any input, digit or not, best of all
#: models: the paper's out-of-distribution comparison then says nothing (docs/experiments.md)
_PC_MNIST_LATENTS = {"n_latents": 64}
_PC_PRESETS = {**_POINT_PRESETS, "mnist": replace(_POINT_PRESETS["mnist"], quick_model_options=_PC_MNIST_LATENTS,
                                                  paper_model_options=_PC_MNIST_LATENTS)}


def _point_estimate(name: str, model_class: str, method_options: str, title: str,
                    presets: Mapping[str, PresetValues] = MappingProxyType(_POINT_PRESETS)) -> ModelSpec:
    return ModelSpec(name, model_class, kind="point-estimate", method_options=method_options, title=title,
                     accepts_online_input=False, linear_decoder_only=True, presets=presets)


def _sparse_coding(title: str) -> ModelSpec:
    """LCA, ISTA or FISTA: ``fond.models.sparse_coding``'s class ``title``, named in lower case."""
    return _point_estimate(title.lower(), f"{_SPARSE}:{title}", f"{_SPARSE}:SparseCodingOptions", title,
                           _SPARSE_CODING_PRESETS)


_BUILTIN_SPECS: tuple[ModelSpec, ...] = (
    # FOND models (iP-VAE on natural patches: quick T_train 32 reaches R² 0.83 where 16 stays at 0.78)
    ModelSpec("ipvae", "fond.models.iterative:IPVAE", family="poisson", title="iP-VAE",
              presets=_iterative_presets(24.0, 128, model_options=_POISSON_OPTIONS, natural_quick_steps=32,
                                         mnist_quick_steps=_IPVAE_MNIST_QUICK_STEPS,
                                         natural_quick_schedule=_IPVAE_NATURAL_QUICK,
                                         natural_quick_beta=_IPVAE_NATURAL_QUICK_BETA)),
    ModelSpec("igvae", "fond.models.iterative:IGVAE", family="gaussian", family_options=_IDENTITY, title="iG-VAE",
              presets=_iterative_presets(8.0, 64)),
    ModelSpec("igvae-relu", "fond.models.iterative:IGVAE", family="gaussian", family_options=_RELU,
              title="iG_relu-VAE", presets=_iterative_presets(8.0, 32)),
    ModelSpec("ibvae", "fond.models.iterative:IBVAE", family="bernoulli", title="iB-VAE",
              presets=_iterative_presets(8.0, 64)),
    # amortized VAEs (one encoder pass)
    ModelSpec("pvae", _AMORTIZED, kind="amortized", family="poisson", title="P-VAE (amortized)",
              presets=_amortized_presets(1.5, 0.01, _PVAE_NATURAL_QUICK, paper_family_options=_PVAE_PAPER_CLAMP,
                                         mnist=_PVAE_MNIST_QUICK)),
    ModelSpec("gvae", _AMORTIZED, kind="amortized", family="gaussian", family_options=_IDENTITY,
              title="G-VAE (amortized)", presets=_amortized_presets(0.5, 0.5, _GVAE_NATURAL_QUICK)),
    ModelSpec("gvae-relu", _AMORTIZED, kind="amortized", family="gaussian", family_options=_RELU,
              title="G_relu-VAE (amortized)", presets=_amortized_presets(0.5, 0.5, _GVAE_RELU_NATURAL_QUICK)),
    # hybrid iterative-amortized VAEs: fixed-input refiners
    ModelSpec("savae", "fond.models.hybrid:SemiAmortizedVAE", kind="hybrid", family="gaussian",
              family_options=_IDENTITY, method_options="fond.models.hybrid:SemiAmortizedOptions",
              title="SA-VAE (semi-amortized)", accepts_online_input=False, presets=_one_kl_presets(0.5)),
    ModelSpec("iavae", "fond.models.hybrid:IterativeAmortizedVAE", kind="hybrid", family="gaussian",
              family_options=_IDENTITY, method_options="fond.models.hybrid:IterativeAmortizedOptions",
              title="IA-VAE (iterative amortized)", accepts_online_input=False, presets=_one_kl_presets(0.5)),
    # point estimates: predictive coding and sparse coding
    _point_estimate("pc", "fond.models.predictive_coding:PredictiveCoding",
                    "fond.models.predictive_coding:PredictiveCodingOptions", "predictive coding", _PC_PRESETS),
    *(_sparse_coding(title) for title in ("LCA", "ISTA", "FISTA")),
    # the Poisson family as a model of its own is iP-VAE's: its quick clamp, the authors' KL and sampler
    family_model_spec("poisson", presets={"natural": PresetValues(16, 8.0, **_POISSON_OPTIONS),
                                          "mnist": PresetValues(16, 1.0, **_POISSON_OPTIONS)}),
)
#: the paper's models, in the order the CLI and reports list them
BUILTIN_MODELS: tuple[str, ...] = tuple(spec.name for spec in _BUILTIN_SPECS if spec.name != spec.family)
_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _BUILTIN_SPECS}
_PLUGINS_LOADED: set[str] = set()


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` a model: its name is accepted by ``ModelConfig``, ``--model``, presets and reports.

    A spec named after a registered family replaces that family's default spec. Registering the same
    spec twice is harmless; another spec under a taken name raises ``ValueError`` (a programming error).
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model takes a fond.registry.ModelSpec, got {type(spec).__name__}")
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def _family_names() -> tuple[str, ...]:
    from fond.families.base import family_names  # imports torch: only for names that are not specs

    return family_names()


def _find(name: str) -> ModelSpec | None:
    spec = _SPECS.get(name)
    if spec is None and name in _family_names():
        return family_model_spec(name)
    return spec


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; an unknown name raises a one-line ``ConfigError`` listing the known ones.

    A name that is neither a spec nor a family first loads the declared plug-ins (``FOND_PLUGINS``, entry
    points of ``fond.plugins``) once, in case one of them registers it.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a model name must be a string, got {name!r}")
    spec = _find(name)
    if spec is None and load_plugins():
        spec = _find(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(model_names())}")
    return spec


def model_names() -> tuple[str, ...]:
    """Every model name: the paper's models (``BUILTIN_MODELS``), then other specs and families, sorted."""
    others = sorted((set(_SPECS) | set(_family_names())) - set(BUILTIN_MODELS))
    return (*BUILTIN_MODELS, *others)


def models_by_kind() -> str:
    """The paper's models grouped by kind, for help texts: "iterative: ipvae, ...; amortized: ..."."""
    groups: dict[str, list[str]] = {}
    for name in BUILTIN_MODELS:
        groups.setdefault(_SPECS[name].kind, []).append(name)
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in groups.items())


def model_title(name: str) -> str:
    """The name reports print for model ``name`` (``name`` itself for a name that is not registered)."""
    try:
        return model_spec(name).title
    except ConfigError:
        return str(name)


# -- plug-ins ------------------------------------------------------------------------------------------
def load_plugins(modules: Iterable[str] = ()) -> tuple[str, ...]:
    """Import user plug-ins: ``modules``, then those named by ``FOND_PLUGINS``, then the entry points of group
    ``fond.plugins``. Each is imported once per process; returns the ones imported by this call.

    A module is a dotted name on ``sys.path`` or the path of a ``.py`` file; an entry point names a module
    or a function (called with no arguments). A plug-in that fails to load raises a one-line ``ConfigError``
    naming it and the cause (and is tried again next time).
    """
    from_env = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    loaded = []
    for module in (*modules, *from_env):
        if not isinstance(module, str) or not module:
            raise ConfigError(f"plug-in: expected a module name or a .py file, got {module!r}")
        key = str(Path(module).resolve()) if module.endswith(".py") else module
        if _load_once(key, f"plug-in {module!r}", lambda m=module: _import_module(m)):
            loaded.append(module)
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if _load_once(entry.value, f"plug-in entry point {entry.name!r} ({entry.value})",
                      lambda e=entry: _call_entry(e.load())):
            loaded.append(entry.value)
    return tuple(loaded)


def _load_once(key: str, what: str, action) -> bool:
    """Run ``action`` unless ``key`` was loaded before; a failure becomes one ConfigError line naming ``what``."""
    if key in _PLUGINS_LOADED:
        return False
    try:
        action()
    except Exception as exc:  # a plug-in may raise anything; the user gets one line
        cause = str(exc) if isinstance(exc, ConfigError) else f"cannot load ({type(exc).__name__}: {exc})"
        raise ConfigError(f"{what}: {cause.splitlines()[0] if cause else cause}") from None
    _PLUGINS_LOADED.add(key)
    return True


def _call_entry(target: Any) -> None:
    """An entry point names a module (imported: done) or a function, called with no arguments."""
    if callable(target) and not isinstance(target, type):
        target()


def _import_module(module: str) -> None:
    """Import a dotted module name, or the file ``module`` (``.py``) as the module named by its stem."""
    if not module.endswith(".py"):
        importlib.import_module(module)
        return
    path = Path(module)
    if not path.is_file():
        raise ConfigError("file not found")
    existing = sys.modules.get(path.stem)
    if existing is not None and Path(getattr(existing, "__file__", None) or "").resolve() == path.resolve():
        return
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[path.stem]
        raise
