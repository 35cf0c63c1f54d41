r"""Expectation-maximization for Gaussian mixtures and mixtures of factor analyzers
(:mod:`contmix.em.mfa`).

The parameters of a Gaussian mixture are kept here in their natural form: log-weights
:math:`\log \pi` with shape :math:`(K,)`, means :math:`\mu` with shape :math:`(K, D)` and
covariances whose shape depends on the covariance type: :math:`(L, D, D)` for
``"full"``, :math:`(L, D)` variances for ``"diagonal"`` and :math:`(L, 1)` for
``"spherical"``, with :math:`L = 1` when the covariances are tied and :math:`L = K`
otherwise.

:func:`fit_gmm`, :func:`gmm_m_step` and :func:`gmm_log_likelihood` take the samples as
a tensor or as an iterable of batches (:data:`~contmix.distributed.Data`, e.g. a
:class:`~torch.utils.data.DataLoader` over a memory-mapped array): exact EM, one pass
through the batches per iteration, the sufficient statistics summed batch by batch in
float64 as they are summed block by block in memory.
"""

from .base import check_em, check_reg, degenerate, dtype_of, iterate
from .gmm import (
    COVARIANCE_TYPES,
    CovarianceType,
    GMMFit,
    fit_gmm,
    gaussian_mixture,
    gmm_log_likelihood,
    gmm_m_step,
)
from .mfa import MFAFit, fit_mfa, mfa_log_likelihood

__all__ = [
    "GMMFit",
    "MFAFit",
    "check_em",
    "check_reg",
    "degenerate",
    "dtype_of",
    "fit_gmm",
    "fit_mfa",
    "gaussian_mixture",
    "gmm_log_likelihood",
    "gmm_m_step",
    "mfa_log_likelihood",
]
