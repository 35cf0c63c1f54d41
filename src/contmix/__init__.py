r"""contmix - Mixture-model densities for PyTorch."""

__version__ = "0.1.0"

from . import (
    cluster,
    datasets,
    distributed,
    distributions,
    em,
    figures,
    metrics,
    report,
    transforms,
    utils,
)
from .cpmm import CPMM, HierarchicalCPMM, SolverError
from .curriculum import Curriculum
from .cwm import CWM, CWMDistribution
from .distributions import GaussianMixture
from .gmm import GMM
from .hierarchical import HierarchicalMFA
from .mfa import MFA
from .report import ConvergenceWarning, FitReport
