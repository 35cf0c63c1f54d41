r"""contmix - Mixture-model densities for PyTorch."""

__version__ = "0.1.0"

from . import (
    cluster,
    datasets,
    ddp,
    distributed,
    distributions,
    em,
    figures,
    metrics,
    mixtures,
    nn,
    report,
    transforms,
    utils,
)
from .curriculum import Curriculum
from .distributions import GaussianMixture
from .distributions.cwm import CWMDistribution
from .mixtures.cpmm import CPMM, HierarchicalCPMM
from .mixtures.cwm import CWM
from .mixtures.gmm import GMM
from .mixtures.hierarchical import HierarchicalMFA
from .mixtures.mfa import MFA
from .mixtures.solver import Solver, SolverError
from .report import ConvergenceWarning, FitReport
