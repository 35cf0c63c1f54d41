r"""contmix - Mixture-model densities for PyTorch."""

__version__ = "0.1.0"

from . import cluster, distributions, em, utils
from .distributions import GaussianMixture
from .gmm import GMM
from .mfa import MFA
