r"""The starting points of the parametric mixtures: the strategies of their
``initialize``, the clusters they start from (random samples, k-means or k-means++
centres), the check of the samples of a fit and the Gaussian mixture of the clusters
(:func:`fit_start`), from which :class:`~contmix.GMM` and :class:`~contmix.CWM` start."""

__all__ = [
    "STRATEGIES",
    "as_labeller",
    "check_data",
    "check_strategy",
    "fit_report",
    "fit_start",
    "hard_responsibilities",
    "initial_clusters",
]

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from torch import Tensor

from ..cluster import assign, kmeans, kmeans_plusplus, labeller, random_centers
from ..distributed import Data, batches, check_batches
from ..em.gmm import CovarianceType, fit_gmm, gmm_log_likelihood, gmm_m_step
from ..report import FitReport
from ..utils import check_samples, check_scale

STRATEGIES = ("random", "kmeans", "kmeans++", "em")  # every parametric mixture's


def check_strategy(strategy: str, choices: tuple[str, ...]) -> None:
    r"""Raises a :class:`ValueError`, which lists the choices, unless ``strategy`` is
    one of them.

    Example:
        >>> check_strategy("kmeans", STRATEGIES)
        >>> check_strategy("kmedoids", STRATEGIES)
        Traceback (most recent call last):
            ...
        ValueError: Unknown strategy 'kmedoids': choose one of 'random', ... or 'em'.
        >>> check_strategy(torch.randn(5, 3), STRATEGIES)
        Traceback (most recent call last):
            ...
        TypeError: strategy must be a string, got a tensor: pass the contexts ... c=c).
    """

    if isinstance(strategy, Tensor):
        raise TypeError(
            "strategy must be a string, got a tensor: pass the contexts of a conditional "
            "model by name, initialize(x, c=c)."
        )
    if not isinstance(strategy, str) or strategy not in choices:
        names = [repr(choice) for choice in choices]
        names = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {names}.")


def initial_clusters(
    x: Data,
    k: int,
    strategy: str,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor | Callable[[Tensor], Tensor]]:
    r"""Returns :math:`k` centres by ``"random"``, ``"kmeans"`` or ``"kmeans++"``
    (``"em"`` starts from k-means, as scikit-learn's ``init_params="kmeans"``), drawn
    from ``generator`` (torch's global generator if :py:`None`), and the cluster of
    each sample: its nearest centre, or for k-means its label (the centres are rounded
    to the dtype, which far from the origin would move samples near the boundaries).
    For an iterable of batches, the clusters are a function that labels a batch by its
    nearest centre (:func:`~contmix.cluster.labeller`).

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> initial_clusters(x, 2, "kmeans", torch.Generator().manual_seed(0))[1].bincount()
        tensor([2, 2])
        >>> centers, label = initial_clusters(x.split(3), 2, "kmeans")
        >>> label(x).bincount()
        tensor([2, 2])
    """

    if strategy in ("kmeans", "em"):
        centers, labels = kmeans(x, k, generator=generator, progress=progress)
        return centers, labeller(x, centers) if labels is None else labels
    elif strategy == "random":
        centers = random_centers(x, k, generator)
    elif strategy == "kmeans++":
        centers = kmeans_plusplus(x, k, generator)
    else:
        check_strategy(strategy, STRATEGIES)

    return centers, assign(x, centers) if isinstance(x, Tensor) else labeller(x, centers)


def as_labeller(labels: Tensor | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    r"""Returns the labels of :func:`initial_clusters` as a function of a batch: that of
    an iterable of batches as it is, those of a tensor (its one batch) as a constant.

    Example:
        >>> as_labeller(torch.tensor([0, 1]))(torch.randn(2, 3))
        tensor([0, 1])
    """

    return labels if callable(labels) else lambda batch: labels


def check_data(
    x: Data,
    features: int,
    minimum: int,
    reference: Tensor,
    floor: float,
    fix: str,
) -> None:
    r"""Raises an error unless :math:`x` is valid samples for a fit
    (:func:`~contmix.utils.check_samples` and :func:`~contmix.utils.check_scale`): a
    tensor, or a re-iterable of batches (:func:`~contmix.distributed.check_batches`),
    each checked in one pass, whose variance (summed in float64) is that of their
    concatenation.

    Example:
        >>> x = torch.randn(10, 2)
        >>> check_data(x.split(4), 2, 3, x, 1e-6, "reg")
        >>> check_data([x, x[:, :1]], 2, 3, x, 1e-6, "reg")
        Traceback (most recent call last):
            ...
        ValueError: batch 1 of x: x must have shape (N, 2), got (10, 1): ...
    """

    if isinstance(x, Tensor):
        check_samples(x, features, minimum, reference)
        check_scale(x, floor, fix)
        return

    check_batches(x)
    shift, N, sums = None, 0, 0

    for i, batch in enumerate(batches(x)):
        try:
            check_samples(batch, features, 1, reference)
        except (TypeError, ValueError) as error:
            raise type(error)(f"batch {i} of x: {error}") from None
        shift = batch[0].double() if shift is None else shift
        centred = batch.double() - shift
        sums = sums + torch.stack((centred.sum(dim=0), centred.square().sum(dim=0)))
        N += len(batch)

    if N < minimum:
        raise ValueError(
            f"x has {N} samples but at least {minimum} are needed (more samples than "
            "components): pass more data or use fewer components."
        )

    var = (sums[1] / N - (sums[0] / N).square()).max()
    if not var > floor:
        raise ValueError(
            f"The variance of x is at most {float(var):.3g} per feature, below {floor:.3g}, "
            "the smallest variance the model can represent: standardize x, e.g. "
            f"(x - x.mean(0)) / x.std(0), or lower {fix}."
        )


def hard_responsibilities(x: Tensor, centers: Tensor) -> Tensor:
    r"""Returns the one-hot assignment of each sample to its nearest centre
    (:func:`~contmix.cluster.assign`, exact far from the origin too), with shape
    :math:`(N, K)`."""

    return nn.functional.one_hot(assign(x, centers), len(centers)).to(x.dtype)


def fit_report(strategy: str, fit: NamedTuple) -> FitReport:
    r"""Returns the :class:`~contmix.report.FitReport` of an EM fit (a
    :class:`~contmix.em.GMMFit` or :class:`~contmix.em.MFAFit`): its lower bound is
    the mean log-likelihood of its last E-step, as scikit-learn's ``lower_bound_``."""

    return FitReport.of(strategy, fit.history[-1], fit.history, fit.converged)


def fit_start(
    x: Data,
    components: int,
    strategy: str,
    covariance_type: CovarianceType,
    tied: bool,
    tol: float,
    max_iter: int,
    reg: float,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> tuple[tuple[Tensor, Tensor, Tensor], FitReport]:
    r"""Returns the log-weights, means and covariances of a Gaussian mixture fitted to
    :math:`x`, and the report of the fit: the clusters of :func:`initial_clusters`
    (hard assignments, one M-step), then, for ``"em"``, expectation-maximization to
    convergence (:func:`~contmix.em.fit_gmm`). The lower bound of the report is the mean
    log-likelihood of the last E-step for ``"em"`` (scikit-learn's ``lower_bound_``),
    of the fitted mixture otherwise."""

    label = as_labeller(initial_clusters(x, components, strategy, generator, progress)[1])
    resp = lambda batch: nn.functional.one_hot(label(batch), components).to(batch.dtype)
    params = gmm_m_step(x, resp, covariance_type, tied, reg)

    if strategy == "em":
        fit = fit_gmm(x, *params, covariance_type, tied, tol, max_iter, reg, progress)
        return fit[:3], fit_report(strategy, fit)

    return params, FitReport.of(strategy, gmm_log_likelihood(x, *params, covariance_type))
