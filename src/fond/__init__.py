"""fond: brain-like variational inference.

FOND (Free energy Online Natural-gradient Dynamics) derives inference dynamics from natural-gradient
descent on the variational free energy with online belief updating and iterative refinement. The
distribution family is the free choice: Poisson latents give the iterative Poisson VAE (``IPVAE``), a
recurrent spiking network; Gaussian ones ``IGVAE`` (optionally relu·gain); Bernoulli ones ``IBVAE``.

    import fond
    model = fond.IPVAE(n_inputs=256, n_latents=512)     # or fond.load("runs/quick")
    model = fond.IGVAE(256, 512, activation="relu", decoder="mlp")
    model = fond.pretrained("ipvae-natural16")          # a reference model that ships (fond.pretrained.available())
    result = model.infer(x, steps=1000, seed=0)          # x: (B, 256) float tensor
    result.rates, result.spikes, result.trace["r2"]
"""

from fond import pretrained  # a module, callable: fond.pretrained(name); reads nothing until called
from fond.errors import CheckpointError, ConfigError, DataError, FondError
from fond.families.base import Family, register_family
from fond.families.poisson import poisson_kl
from fond.models import IBVAE, IGVAE, IPVAE, InferenceResult, IterativeVAE
from fond.resume import load_model as load

__all__ = ["IPVAE", "IGVAE", "IBVAE", "IterativeVAE", "InferenceResult", "Family", "register_family", "load",
           "pretrained",
           "poisson_kl", "FondError", "DataError", "ConfigError",
           "CheckpointError"]
__version__ = "0.1.0"
