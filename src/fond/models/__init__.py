"""Models: each pairs a family with a decoder and an inference method behind ``infer(x, steps, ...)``."""

from fond.models.iterative import IBVAE, IGVAE, IPVAE, InferenceResult, IterativeVAE

__all__ = ["IterativeVAE", "IPVAE", "IGVAE", "IBVAE", "InferenceResult", "build_model"]


def build_model(config, seed: int = 0):
    """Instantiate the model a ``ModelConfig`` describes, initialised from ``seed``."""
    classes = {"ipvae": IPVAE, "igvae": IGVAE, "igvae-relu": IGVAE, "ibvae": IBVAE}
    return classes.get(config.model, IterativeVAE)(config=config, seed=seed)
