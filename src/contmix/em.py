r"""Expectation-maximization for Gaussian mixtures.

The parameters of a Gaussian mixture are kept here in their natural form: log-weights
:math:`\log \pi` with shape :math:`(K,)`, means :math:`\mu` with shape :math:`(K, D)` and
covariances whose shape depends on the covariance type: :math:`(L, D, D)` for
``"full"``, :math:`(L, D)` variances for ``"diagonal"`` and :math:`(L, 1)` for
``"spherical"``, with :math:`L = 1` when the covariances are tied and :math:`L = K`
otherwise.
"""

__all__ = [
    "GMMFit",
    "fit_gmm",
    "gaussian_mixture",
    "gmm_m_step",
]

from typing import Literal, NamedTuple

import torch

from torch import Tensor

from .distributions import DiagNormal, FullNormal, GaussianMixture
from .utils import cholesky

CovarianceType = Literal["full", "diagonal", "spherical"]
COVARIANCE_TYPES = ("full", "diagonal", "spherical")


class GMMFit(NamedTuple):
    r"""The result of :func:`fit_gmm`."""

    logits: Tensor
    means: Tensor
    covariances: Tensor
    history: Tensor
    converged: bool


def gaussian_mixture(
    logits: Tensor, means: Tensor, covariances: Tensor, covariance_type: CovarianceType
) -> GaussianMixture:
    r"""Builds the :class:`GaussianMixture` of natural parameters.

    Example:
        >>> d = gaussian_mixture(torch.zeros(2), torch.randn(2, 3), torch.ones(2, 3), "diagonal")
        >>> d.event_shape
        torch.Size([3])
    """

    if covariance_type == "full":
        base = FullNormal(means, scale_tril=cholesky(covariances))
    else:
        base = DiagNormal(means, covariances.sqrt())

    return GaussianMixture(base, logits)


def _chunks(x: Tensor, resp: Tensor, size: int):
    step = max(1, 2**24 // max(size, 1))
    return zip(x.split(step), resp.split(step), strict=True)


def gmm_m_step(
    x: Tensor,
    resp: Tensor,
    covariance_type: CovarianceType = "full",
    tied: bool = False,
    reg: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Returns the parameters that maximize the expected log-likelihood given the
    responsibilities :math:`r_{nk}`:

    .. math:: N_k = \sum_n r_{nk}, \quad \pi_k = \frac{N_k}{N}, \quad
        \mu_k = \frac{1}{N_k} \sum_n r_{nk} x_n, \quad
        \Sigma_k = \frac{1}{N_k} \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^T + \lambda I

    A tied covariance is :math:`\sum_k N_k \Sigma_k / N`; a diagonal covariance keeps
    the diagonal, a spherical one its mean. Second moments are accumulated around the
    data mean, in chunks of bounded memory.

    Arguments:
        x: The samples, with shape :math:`(N, D)`.
        resp: The responsibilities, with shape :math:`(N, K)`.
        covariance_type: ``"full"``, ``"diagonal"`` or ``"spherical"``.
        tied: Whether the components share one covariance.
        reg: The regularization :math:`\lambda` added to the variances.

    Example:
        >>> x = torch.randn(100, 2)
        >>> logits, means, covs = gmm_m_step(x, torch.ones(100, 1))
        >>> torch.allclose(covs[0], torch.cov(x.T, correction=0), atol=1e-4)
        True
    """

    N, D = x.shape
    eps = 10 * torch.finfo(x.dtype).eps
    nk = resp.sum(dim=0) + eps
    shift = x.mean(dim=0)

    means = resp.T @ x / nk[:, None]
    centered = means - shift

    if covariance_type == "full":
        second = sum(
            r.T @ ((xc - shift)[:, :, None] * (xc - shift)[:, None, :]).flatten(1)
            for xc, r in _chunks(x, resp, D * D)
        ).unflatten(-1, (D, D))
        covariances = second / nk[:, None, None] - centered[:, :, None] * centered[:, None, :]
    else:
        second = resp.T @ (x - shift).square()
        covariances = second / nk[:, None] - centered.square()

    if tied:
        weights = (nk / nk.sum()).reshape(-1, *([1] * (covariances.dim() - 1)))
        covariances = (weights * covariances).sum(dim=0, keepdim=True)

    if covariance_type == "full":
        covariances = covariances + reg * torch.eye(D, dtype=x.dtype, device=x.device)
    else:
        covariances = covariances.clamp(min=0) + reg
        if covariance_type == "spherical":
            covariances = covariances.mean(dim=-1, keepdim=True)

    return (nk / N).log(), means, covariances


def fit_gmm(
    x: Tensor,
    logits: Tensor,
    means: Tensor,
    covariances: Tensor,
    covariance_type: CovarianceType = "full",
    tied: bool = False,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg: float = 1e-6,
) -> GMMFit:
    r"""Fits a Gaussian mixture by expectation-maximization from the given parameters.

    Each iteration computes the responsibilities :math:`r_{nk} = p(k \mid x_n)`
    (E-step) and then :func:`gmm_m_step` (M-step). It stops when the mean
    log-likelihood of the E-step changes by less than ``tol``, as
    :class:`sklearn.mixture.GaussianMixture` does. EM never lowers the likelihood.

    References:
        | Maximum Likelihood from Incomplete Data via the EM Algorithm (Dempster et al., 1977)
        | https://doi.org/10.1111/j.2517-6161.1977.tb01600.x

    Returns:
        A :class:`GMMFit` with the fitted parameters, the mean log-likelihood at each
        E-step and whether it converged within ``max_iter`` iterations.

    Example:
        >>> x = torch.cat((torch.randn(100, 2) - 5, torch.randn(100, 2) + 5))
        >>> fit = fit_gmm(x, torch.zeros(2), x[[0, -1]], torch.ones(2, 2), "diagonal")
        >>> fit.converged, fit.means.round().abs().tolist()
        (True, [[5.0, 5.0], [5.0, 5.0]])
    """

    history = []
    converged = False

    for _ in range(max_iter):
        joint = gaussian_mixture(logits, means, covariances, covariance_type).joint(x)
        log_p = torch.logsumexp(joint, dim=-1, keepdim=True)
        history.append(log_p.mean())

        resp = (joint - log_p).exp()
        logits, means, covariances = gmm_m_step(x, resp, covariance_type, tied, reg)

        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break

    return GMMFit(logits, means, covariances, torch.stack(history), converged)
