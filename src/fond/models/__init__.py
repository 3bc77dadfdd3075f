"""Models: each pairs a family with a decoder and an inference method behind ``infer(x, steps, ...)``."""

from fond.models.iterative import IPVAE, InferenceResult

__all__ = ["IPVAE", "InferenceResult"]


def build_model(config, seed: int = 0):
    """Instantiate the model a ``ModelConfig`` describes, initialised from ``seed``."""
    if config.model == "ipvae":
        return IPVAE(config=config, seed=seed)
    from fond.errors import ConfigError

    raise ConfigError(f"unknown model {config.model!r}")
