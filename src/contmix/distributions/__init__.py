r"""The Gaussian mixture family that every contmix mixture returns.

A :class:`GaussianMixture` is a :class:`torch.distributions.MixtureSameFamily` whose
components are one of three Gaussian families, each a subclass of the torch (or zuko)
distribution it extends:

* :class:`DiagNormal`: diagonal covariance (a :class:`zuko.distributions.DiagNormal`);
* :class:`FullNormal`: full covariance (a :class:`torch.distributions.MultivariateNormal`);
* :class:`LowRankNormal`: covariance :math:`D + A A^T` (a
  :class:`torch.distributions.LowRankMultivariateNormal`);

or a batch of :class:`GaussianMixture` itself, which gives a mixture of mixtures.

Every component family evaluates all :math:`K` components at once as matrix products
when the input is shared across components (the shape a mixture passes), each sample
expanded around its nearest mean so that float32 densities stay as accurate as torch's
own (:mod:`contmix.ops`), marginalizes
over dimensions and conditions on observed dimensions in closed form. The mixture
inherits all three operations, so mixtures nest.
"""

__all__ = [
    "DiagNormal",
    "FullNormal",
    "GaussianMixture",
    "LowRankNormal",
    "capacitance_tril",
]

from .mixture import GaussianMixture
from .normal import LOG_2PI, DiagNormal, FullNormal, LowRankNormal, capacitance_tril
