"""Models: each pairs a family with a decoder and an inference method behind ``infer(x, steps, ...)``.

FOND models (``iterative.py``) and the baselines the paper compares against — amortized VAEs
(``amortized.py``), hybrid iterative-amortized VAEs (``hybrid.py``), predictive coding
(``predictive_coding.py``) and sparse coding (``sparse_coding.py``) — share the interface the trainer,
evaluation, reports and CLI use: ``infer(x, steps, seed=, generator=, trace=) -> InferenceResult``,
``unroll_loss(x, steps, beta=, temperature=, clamp_fraction=, generator=) -> UnrollLoss``, optional
``after_update()`` (e.g. unit-norm atoms), ``n_params()``, ``save(dir)``, ``config``.
"""

import importlib

from fond.models.iterative import IBVAE, IGVAE, IPVAE, InferenceResult, IterativeVAE

__all__ = ["IterativeVAE", "IPVAE", "IGVAE", "IBVAE", "InferenceResult", "build_model", "MODEL_CLASSES"]

#: model name -> "module:Class" (imported on demand); names not listed are FOND models of a registered family
MODEL_CLASSES: dict[str, str] = {
    "ipvae": "fond.models.iterative:IPVAE",
    "igvae": "fond.models.iterative:IGVAE",
    "igvae-relu": "fond.models.iterative:IGVAE",
    "ibvae": "fond.models.iterative:IBVAE",
    "pvae": "fond.models.amortized:AmortizedVAE",
    "gvae": "fond.models.amortized:AmortizedVAE",
    "gvae-relu": "fond.models.amortized:AmortizedVAE",
    "savae": "fond.models.hybrid:SemiAmortizedVAE",
    "iavae": "fond.models.hybrid:IterativeAmortizedVAE",
    "pc": "fond.models.predictive_coding:PredictiveCoding",
    "lca": "fond.models.sparse_coding:LCA",
    "ista": "fond.models.sparse_coding:ISTA",
    "fista": "fond.models.sparse_coding:FISTA",
}


def build_model(config, seed: int = 0):
    """Instantiate the model a ``ModelConfig`` describes, initialised from ``seed``."""
    target = MODEL_CLASSES.get(config.model)
    if target is None:
        return IterativeVAE(config=config, seed=seed)
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(config=config, seed=seed)
