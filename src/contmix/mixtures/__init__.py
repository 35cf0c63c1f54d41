r"""The mixture models: each a :class:`zuko.lazy.LazyDistribution` whose ``forward(c)``
returns a mixture distribution."""

from .cpmm import CPMM, HierarchicalCPMM
from .cwm import CWM
from .gmm import GMM
from .hierarchical import HierarchicalMFA
from .mfa import MFA
from .solver import Solver, SolverError
