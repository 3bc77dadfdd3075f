"""Models: each pairs a family with a decoder and an inference method behind ``infer(x, steps, ...)``.

FOND models (``iterative.py``) and the baselines the paper compares against — amortized VAEs
(``amortized.py``), hybrid iterative-amortized VAEs (``hybrid.py``), predictive coding
(``predictive_coding.py``) and sparse coding (``sparse_coding.py``) — share the interface the trainer,
evaluation, reports and CLI use: ``infer(x, steps, seed=, generator=, trace=) -> InferenceResult``,
``unroll_loss(x, steps, beta=, temperature=, clamp_fraction=, generator=) -> UnrollLoss``, optional
``after_update()`` (e.g. unit-norm atoms), ``n_params()``, ``save(dir)``, ``config``. Which class builds
which model name is the model's registry entry (``fond.registry.ModelSpec.model_class``).
"""

from fond.models.iterative import IBVAE, IGVAE, IPVAE, InferenceResult, IterativeVAE
from fond.registry import BUILTIN_MODELS, model_spec

__all__ = ["IterativeVAE", "IPVAE", "IGVAE", "IBVAE", "InferenceResult", "build_model", "MODEL_CLASSES"]

#: the paper's models -> "module:Class" (a view of the registry; plug-in models are in the registry only)
MODEL_CLASSES: dict[str, str] = {name: model_spec(name).model_class for name in BUILTIN_MODELS}


def build_model(config, seed: int = 0):
    """Instantiate the model a ``ModelConfig`` describes (its registry entry's class), initialised from ``seed``."""
    return config.spec.load_class()(config=config, seed=seed)
