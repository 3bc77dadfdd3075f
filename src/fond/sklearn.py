"""A scikit-learn estimator around fond: learn a model on the rows of X, read its codes out as features.

    from fond.sklearn import FondEncoder
    enc = FondEncoder("ipvae", n_latents=128, iterations=300, steps=200).fit(X_train)    # X: (N, D)
    codes = enc.transform(X_test)          # (N, K): the mean code (firing rates) after ``steps`` inference steps
    x_hat = enc.inverse_transform(codes)   # (N, D): the decoder's reconstruction g(codes)
    enc.score(X_test)                      # mean per-sample R² of that reconstruction (fond.metrics.r2_per_sample)

``fit`` is ``fond.train.train`` with the preset the parameters name (``fond.config.preset``,
``preset_model_options``), into a temporary run folder unless ``run_dir`` is given; ``transform`` is
``model.infer(x, steps, seed=seed_)``. The fitted model is ``model_`` (save it with ``model_.save(dir)``:
safetensors, loadable by ``fond.load``). Bad input raises ``ValueError`` (sklearn's validation, or fond's
``DataError`` / ``ConfigError``, both ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import numbers
import tempfile
from dataclasses import asdict
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, check_random_state, validate_data

__all__ = ["FondEncoder", "CODES"]

#: what ``transform`` returns: the mean code (rates e^u, f(μ), p, or a point estimate's code) or the decoder
#: input of the last sample (integer spike counts for Poisson latents, 0/1 for Bernoulli, f(z) for Gaussians)
CODES: tuple[str, ...] = ("rates", "spikes")

#: TrainConfig fields the estimator sets through its own parameters (``train_options`` may not hold them)
_NAMED_TRAIN_FIELDS = {"steps": "train_steps", "beta": "beta", "iterations": "iterations",
                       "batch_size": "batch_size", "lr": "lr", "seed": "random_state", "preset": "preset"}
#: ModelConfig fields the estimator sets through its own parameters (``model_options`` may not hold them)
_NAMED_MODEL_FIELDS = {"n_inputs": "the data", "n_latents": "n_latents", "model": "model"}


def _integer(value: Any) -> Any:
    """A NumPy or Python integer as ``int`` (so fond's configs accept it); anything else unchanged."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _real(value: Any) -> Any:
    """A NumPy or Python real number as ``float``; anything else unchanged (fond's configs refuse it)."""
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value


def _options(value: Any, named: dict[str, str], what: str) -> dict[str, Any]:
    """``value`` (a dict or None) as a new dict; a ``ValueError`` if it is not a dict or holds a field the
    estimator sets itself (``named``: field → the parameter that sets it)."""
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict or None, got {type(value).__name__}")
    for key in value or {}:
        if key in named:
            raise ValueError(f"{what} may not set {key!r}: it comes from {named[key]}")
    return dict(value or {})


class FondEncoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Train any fond model on the rows of X (N, D) and encode rows as its codes (N, K) after ``steps`` steps.

    model: any name of ``fond.registry.model_names()`` ("ipvae", "igvae", "igvae-relu", "ibvae", the baselines
    "pvae", "gvae", "savae", "pc", "lca", "fista", ...). n_latents: K. preset: "quick", "paper" or "fond"
    (``fond.config.preset``; the schedule and the model's preset options); data_kind: "natural" or "mnist",
    which of the preset's schedules. beta, train_steps (T_train), iterations, batch_size, lr: override the
    preset's (None: the preset's). steps: inference steps of ``transform`` / ``score``. code: "rates" or
    "spikes" (``CODES``). model_options: further ``ModelConfig`` fields (``decoder``, ``family_options`` merged
    over the preset's key by key, ...); train_options: further ``TrainConfig`` fields (``grad_clip``,
    ``time_limit_minutes``, ...). random_state: fond's seed of training and inference (an int ≥ 0; None or a
    ``RandomState`` draws one at ``fit``). run_dir: the run folder ``fit`` writes (must not hold a run; None: a
    temporary folder, removed after training). verbose: show the training progress bar.

    Fitted attributes: ``model_`` (the trained fond model), ``n_features_in_`` (D), ``seed_`` (the seed used),
    ``model_config_`` / ``train_config_`` (fond's configs), ``n_iter_`` (training updates done).
    """

    def __init__(self, model="ipvae", n_latents=512, *, preset="quick", data_kind="natural", beta=None,
                 train_steps=None, iterations=None, batch_size=None, lr=None, steps=1000, code="rates",
                 model_options=None, train_options=None, random_state=0, run_dir=None, verbose=False):
        self.model = model
        self.n_latents = n_latents
        self.preset = preset
        self.data_kind = data_kind
        self.beta = beta
        self.train_steps = train_steps
        self.iterations = iterations
        self.batch_size = batch_size
        self.lr = lr
        self.steps = steps
        self.code = code
        self.model_options = model_options
        self.train_options = train_options
        self.random_state = random_state
        self.run_dir = run_dir
        self.verbose = verbose

    # ---- configuration (read at fit time, never in __init__) ---------------------------------------------

    def _seed(self) -> int:
        """The integer seed: ``random_state`` itself if an integer, else one drawn from it."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _model_config(self, n_inputs: int):
        """fond's ``ModelConfig``: the preset's model options, then ``model_options`` (family options merged)."""
        from fond.config import ModelConfig, config_from_dict, preset_model_options

        extra = _options(self.model_options, _NAMED_MODEL_FIELDS, "model_options")
        options = preset_model_options(self.preset, self.model, self.data_kind)
        family = {**options.get("family_options", {}),
                  **_options(extra.pop("family_options", None), {}, "model_options['family_options']")}
        options.update(extra)
        if family:
            options["family_options"] = family
        fields = {**options, "n_inputs": n_inputs, "n_latents": _integer(self.n_latents), "model": self.model}
        return config_from_dict(ModelConfig, fields, source="FondEncoder")

    def _train_config(self, seed: int):
        """fond's ``TrainConfig``: the preset's schedule, then the named overrides and ``train_options``."""
        from fond.config import TrainConfig, config_from_dict, preset

        extra = _options(self.train_options, _NAMED_TRAIN_FIELDS, "train_options")
        named = {"steps": _integer(self.train_steps), "beta": _real(self.beta), "lr": _real(self.lr),
                 "iterations": _integer(self.iterations), "batch_size": _integer(self.batch_size)}
        chosen = {key: value for key, value in named.items() if value is not None}
        fields = {**asdict(preset(self.preset, self.model, self.data_kind)), **chosen, **extra, "seed": seed}
        return config_from_dict(TrainConfig, fields, source="FondEncoder")

    def _check_code(self) -> str:
        if self.code not in CODES:
            raise ValueError(f"code must be one of {CODES}, got {self.code!r}")
        return self.code

    def _check_data_kind(self) -> None:
        if self.data_kind not in ("natural", "mnist"):
            raise ValueError(f"data_kind must be 'natural' or 'mnist', got {self.data_kind!r}")

    # ---- fitting -----------------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Train the model on the rows of X (N, D ≥ 2), float32 after conversion; y is ignored. Returns self."""
        self.__dict__.pop("model_", None)  # a fit that fails leaves the estimator unfitted, not half-refitted
        x = validate_data(self, X, dtype=np.float32, order="C", ensure_min_features=2)
        x = np.require(x, requirements=["C", "W"])  # a read-only memmap is copied (torch wants writable memory)
        self._check_code()
        self._check_data_kind()
        seed = self._seed()
        model_config, train_config = self._model_config(x.shape[1]), self._train_config(seed)
        result = self._train(x, model_config, train_config)
        self.model_ = result.model
        self.seed_, self.n_iter_ = seed, result.iterations
        self.model_config_, self.train_config_ = model_config, train_config
        return self

    def _train(self, x: np.ndarray, model_config, train_config):
        """``fond.train.train`` on x (N, D) (validated on its first rows) into ``run_dir`` or a temporary folder;
        its ``TrainResult``."""
        from fond.data import PatchData
        from fond.train import train

        data = PatchData(train=x, val=x, patch_shape=None, name=f"scikit-learn X ({x.shape[0]}×{x.shape[1]})")
        options = dict(model_config=model_config, progress=bool(self.verbose), resume=False)
        if self.run_dir is not None:
            return train(data, train_config, self.run_dir, **options)
        with tempfile.TemporaryDirectory(prefix="fond-sklearn-") as folder:
            return train(data, train_config, folder, **options)

    # ---- encoding and decoding ---------------------------------------------------------------------------

    def _inputs(self, X):
        """X checked against the fitted model: a float32 tensor (N, D)."""
        import torch

        check_is_fitted(self)
        x = validate_data(self, X, dtype=np.float32, reset=False)
        return torch.tensor(x)  # a copy: the caller's array may be read-only

    def _encode(self, x):
        """The codes (N, K) of ``model_.infer(x, steps, seed=seed_)``: its ``rates`` or ``spikes``."""
        result = self.model_.infer(x, _integer(self.steps), seed=self.seed_, trace=False)
        codes = result.rates if self._check_code() == "rates" else result.spikes
        return codes.to(x.dtype)

    def _decode(self, codes):
        """The decoder's mean g(codes): (N, K) → (N, D)."""
        import torch

        with torch.no_grad():
            return self.model_.decode(codes)

    def transform(self, X):
        """The codes of the rows of X (N, D) after ``steps`` inference steps: (N, K) float32 array."""
        return self._encode(self._inputs(X)).numpy()

    def inverse_transform(self, X):
        """The reconstruction g(codes) (N, D) of codes X (N, K), e.g. ``transform``'s: float32 array."""
        import torch

        check_is_fitted(self)
        codes = check_array(X, dtype=np.float32, input_name="codes")
        k = self.model_.n_latents
        if codes.shape[1] != k:
            raise ValueError(f"codes must have shape (n_samples, {k}) (n_latents), got {codes.shape}")
        return self._decode(torch.tensor(codes)).numpy()

    def score(self, X, y=None):
        """Mean over rows of fond's per-sample R² of X (N, D) against ``inverse_transform(transform(X))``."""
        from fond.metrics import r2_per_sample

        x = self._inputs(X)
        return float(r2_per_sample(x, self._decode(self._encode(x))).mean())

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    @property
    def _n_features_out(self) -> int:
        """K, the number of codes (for ``get_feature_names_out``); AttributeError before ``fit``."""
        return self.model_.n_latents

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # fond models compute in float32
        return tags
