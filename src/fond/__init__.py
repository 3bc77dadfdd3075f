"""fond: brain-like variational inference.

FOND (Free energy Online Natural-gradient Dynamics) derives inference dynamics from natural-gradient
descent on the variational free energy with online belief updating and iterative refinement. Choosing
Poisson latents gives the iterative Poisson VAE (``IPVAE``), a recurrent spiking network.

    import fond
    model = fond.IPVAE(n_inputs=256, n_latents=512)     # or fond.load("runs/quick")
    result = model.infer(x, steps=1000, seed=0)          # x: (B, 256) float tensor
    result.rates, result.spikes, result.trace["r2"]
"""

from fond.checkpoint import load_model as load
from fond.errors import CheckpointError, ConfigError, DataError, FondError
from fond.families.poisson import poisson_kl
from fond.models import IPVAE, InferenceResult

__all__ = ["IPVAE", "InferenceResult", "load", "poisson_kl", "FondError", "DataError", "ConfigError",
           "CheckpointError"]
__version__ = "0.1.0"
