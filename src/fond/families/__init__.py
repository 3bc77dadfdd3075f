"""Distribution families: the flexible choice of FOND (one file per family)."""

from fond.families.poisson import poisson_kl, relaxed_poisson, sample_poisson

__all__ = ["poisson_kl", "relaxed_poisson", "sample_poisson"]
