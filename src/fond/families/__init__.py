"""Distribution families: the flexible choice of FOND (one file per family).

Each family subclasses ``fond.families.base.Family`` and registers itself by name; importing this
package registers the built-in ones (poisson, gaussian, bernoulli).
"""

from fond.families import bernoulli, gaussian, poisson  # noqa: F401  (registration)
from fond.families.base import Family, Sample, family_names, make_family, register_family
from fond.families.bernoulli import BernoulliFamily
from fond.families.gaussian import GaussianFamily
from fond.families.poisson import PoissonFamily, poisson_kl, relaxed_poisson, sample_poisson

__all__ = ["Family", "Sample", "register_family", "make_family", "family_names", "PoissonFamily",
           "GaussianFamily", "BernoulliFamily", "poisson_kl", "relaxed_poisson", "sample_poisson"]
