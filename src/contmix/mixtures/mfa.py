r"""Mixtures of factor analyzers."""

__all__ = [
    "MFA",
    "mfa_free_parameters",
]


from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn as nn

from torch import Size, Tensor

from .base import ParametricMixture, shifted_exp, shifted_log
from .conditional import LR, STEPS
from .criteria import InformationCriteria
from .start import STRATEGIES, as_labeller, fit_report, initial_clusters
from ..cluster import reference
from ..distributed import Data, accumulate, samples
from ..distributions import GaussianMixture, LowRankNormal
from ..em.mfa import _floor, fit_mfa, mfa_log_likelihood
from ..report import FitReport
from ..utils import check_sizes


def mfa_free_parameters(components: int, features: int, rank: int) -> int:
    r"""Returns the number of free parameters of an MFA of :math:`K` components in
    :math:`M` dimensions with loadings of rank :math:`R`: the weights, the means, the
    diagonals and the loadings less their rotations, never more than a full covariance,

    .. math:: P = (K - 1) + K \left(2 M + \min\left(M R - \frac{R (R - 1)}{2},
        \frac{M (M - 1)}{2}\right)\right) .

    Example:
        >>> mfa_free_parameters(components=2, features=5, rank=2)  # 1 + 2 * (10 + 9)
        39
    """

    K, M, R = components, features, rank
    return (K - 1) + K * (2 * M + min(M * R - R * (R - 1) // 2, M * (M - 1) // 2))


def mfa_shapes(components: int, features: int, rank: int) -> list[Size]:
    r"""The shapes of the parameters: logits, means, loadings and log-diagonals."""

    return [
        Size((components,)),
        Size((components, features)),
        Size((components, features, rank)),
        Size((components, features)),
    ]


class MFA(InformationCriteria, ParametricMixture):
    r"""Creates a mixture of factor analyzers (MFA).

    .. math:: p(X \mid c) = \sum_{k = 1}^K \pi_k(c) \,
        \mathcal{N}(X \mid \mu_k(c), D_k(c) + A_k(c) A_k(c)^T)

    where :math:`A_k` is a :math:`M \times R` loading matrix of rank :math:`R \ll M`
    and :math:`D_k = \operatorname{diag}(\exp(\phi_k) + \epsilon)`. The components are
    a batch of :class:`~contmix.distributions.LowRankNormal`, evaluated in
    :math:`O(N K M R)`.

    References:
        | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
        | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

        | On GANs and GMMs (Richardson et al., 2018)
        | https://arxiv.org/abs/1805.12462

    Arguments:
        features: The number of features :math:`M`.
        context: The number of context features.
        components: The number of components :math:`K`.
        rank: The rank :math:`R` of the loadings.
        epsilon: A numerical stability term added to the diagonal.
        kwargs: Keyword arguments passed to :class:`zuko.nn.MLP`.

    Example:
        >>> mfa = MFA(features=5, components=3, rank=2)
        >>> mfa().log_prob(torch.randn(10, 5)).shape
        torch.Size([10])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 2,
        rank: int = 1,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        check_sizes(features=features, components=components, rank=rank)
        check_sizes(0, context=context)
        shapes = mfa_shapes(components, features, rank)

        super().__init__(features, context, components, epsilon, shapes, **kwargs)

        self.rank = rank

    strategies = (*STRATEGIES[:-1], "fa", "em")
    variance_power = 1  # epsilon is added to the diagonals, variances

    @staticmethod
    def initial_parameters(shapes: Sequence[Size]) -> list[Tensor]:
        r"""Returns the initial ``phi``: uniform weights, standard normal means, loadings
        of variance :math:`1 / R` and unit diagonals (up to :math:`\epsilon`)."""

        logits, loc, factor, log_diag = shapes
        rank = factor[-1]

        return [
            torch.zeros(logits),
            torch.randn(loc),
            torch.randn(factor) / rank**0.5,
            torch.zeros(log_diag),
        ]

    def distribution(self, params: list[Tensor], c: Tensor | None) -> GaussianMixture:
        logits, loc, factor, log_diag = params
        base = LowRankNormal(loc, factor, shifted_exp(log_diag, self.epsilon))

        return GaussianMixture(base, logits)

    def _layout(self, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor) -> list[Tensor]:
        r"""Turns natural parameters into the layout of :attr:`shapes`."""

        return [logits, loc, factor, shifted_log(diag, self.epsilon)]

    @torch.no_grad()
    def initialize(
        self,
        x: Data,
        strategy: Literal["random", "kmeans", "kmeans++", "fa", "em"] = "fa",
        tol: float = 1e-3,
        max_iter: int = 100,
        reg: float = 1e-6,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        *,
        c: Tensor | None = None,
        steps: int = STEPS,
        lr: float = LR,
    ) -> FitReport:
        r"""Initializes the mixture from data.

        ``"random"``, ``"kmeans"`` and ``"kmeans++"`` pick centres (random samples, the
        k-means solution or greedy k-means++ seeds) and assign each sample to its nearest
        centre. Each component gets the weight, mean and variances of its cluster as
        :math:`\pi_k`, :math:`\mu_k` and :math:`D_k`, and small random loadings
        :math:`A_k` (zero loadings would be a saddle point of the likelihood).
        ``"fa"`` then fits a factor analyzer to each k-means cluster, all at once, by
        :func:`~contmix.em.fit_mfa` with the assignments held fixed, as Richardson et al. (2018) do
        before gradient training. ``"em"`` runs EM for the whole mixture from there
        until the mean log-likelihood changes by less than ``tol``. With ``n_init``
        restarts, each from its own centres and loadings, the fit of the highest mean
        log-likelihood on :math:`x` is kept (for ``"em"``, that of its last E-step, as
        scikit-learn keeps the best lower bound).

        For a conditional model, the mixture fitted is the unconditional :math:`p(x)`:
        the hypernetwork starts out producing it whatever the context. Given the
        contexts ``c`` of the samples, the network is then fitted to :math:`p(x \mid
        c)` by ``steps`` Adam steps from there, never ending worse than the
        unconditional mixture on :math:`(x, c)`, as in :meth:`contmix.GMM.initialize`
        (:mod:`contmix.mixtures.conditional`).

        The default ``n_init=1`` is scikit-learn's: on 16 well-separated clusters in 16
        dimensions (``benchmarks/init_quality.py``), one run ends in the basin of the
        best optimum as often as scikit-learn's GMM does (4 of 5 seeds), 5 of 5 with
        ``n_init=2``. The variances are floored at ``reg``, an absolute variance that
        no sample moves (see :func:`~contmix.em.fit_mfa`).

        EM that stops at ``max_iter`` without converging warns with a
        :class:`~contmix.report.ConvergenceWarning`; progress bars count the restarts
        and the iterations (:func:`~contmix.report.progress_bar`). Nothing changes if
        an error is raised.

        :math:`x` may be an iterable of batches (:data:`~contmix.distributed.Data`, e.g.
        a :class:`~torch.utils.data.DataLoader` over a memory-mapped array) for data
        larger than memory: every strategy passes through the batches as often as it
        needs, holding a batch at a time, and gives the fit of their concatenation (up
        to the rounding of the sums), as :meth:`~contmix.GMM.initialize` does.

        Arguments:
            x: The samples, with shape :math:`(N, M)` and :math:`N > K`, or a
                re-iterable of batches with shape :math:`(B, M)`.
            strategy: ``"random"``, ``"kmeans"``, ``"kmeans++"``, ``"fa"`` or ``"em"``.
            tol: The tolerance of EM on the mean log-likelihood.
            max_iter: The maximum number of EM iterations.
            reg: The floor of the diagonals, a variance in the units of :math:`x^2`.
            n_init: The number of restarts, of which the best fit is kept.
            generator: The random generator of the centres and loadings (torch's global
                generator if :py:`None`): the same seed gives the same fit, and the
                global seed is left alone.
            progress: Whether to show progress bars (:py:`None`: only in a terminal).
            c: The contexts of the samples of a conditional model, with shape
                :math:`(N, C)`, for :math:`x` a tensor; :py:`None` fits the
                unconditional mixture, whatever the context.
            steps: The number of Adam steps of the context fit (with ``c``).
            lr: The learning rate of the context fit (with ``c``).

        Returns:
            The :class:`~contmix.report.FitReport` of the kept fit, also kept as
            ``fit_report``: the EM of ``"em"``, or that of the factor analyzers for
            ``"fa"`` (whose lower bounds hold the assignments fixed); with ``c``, the
            mean conditional log-likelihoods of the context fit.

        Example:
            >>> mfa = MFA(features=4, components=2, rank=1)
            >>> x = torch.cat((torch.randn(100, 4) - 3, torch.randn(100, 4) + 3))
            >>> report = mfa.initialize(x, strategy="em")
            >>> report.converged, report.strategy
            (True, 'em')
            >>> mfa().logits.exp().round(decimals=1)
            tensor([0.5000, 0.5000], grad_fn=<RoundBackward1>)
        """

        args = (x, strategy, tol, max_iter, reg, n_init, generator, progress, c, steps, lr)

        return self._initialize(*args)

    @torch.no_grad()
    def em(
        self,
        x: Data,
        tol: float = 1e-3,
        max_iter: int = 100,
        reg: float = 1e-6,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Runs expectation-maximization on :math:`x` from the current parameters (as
        scikit-learn's ``warm_start``), until the mean log-likelihood changes by less
        than ``tol`` or for ``max_iter`` iterations (see :func:`~contmix.em.fit_mfa`): e.g. to
        finish a model trained by gradient descent at the local optimum it is in.
        :py:`initialize(x, "em")` amounts to :py:`initialize(x, "fa")` followed by this.

        Each iteration computes the responsibilities :math:`r_{nk} \propto \pi_k
        \mathcal{N}(x_n \mid \mu_k, D_k + A_k A_k^T)` and the posterior of the factors,
        then sets the weights, means, loadings and diagonals that maximize the expected
        log-likelihood; EM never lowers the likelihood, and warns with a
        :class:`~contmix.report.ConvergenceWarning` if it stops at ``max_iter``. Only an
        unconditional model: a conditional model's parameters are the outputs of its
        hypernetwork. Nothing changes if an error is raised. For data larger than memory,
        :math:`x` may be an iterable of batches: one pass through them per iteration.

        References:
            | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
            | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

        Arguments:
            x: The samples, with shape :math:`(N, M)` and :math:`N > K`, or a
                re-iterable of batches with shape :math:`(B, M)`.
            tol: The tolerance on the mean log-likelihood.
            max_iter: The maximum number of iterations.
            reg: The floor of the diagonals, a variance in the units of :math:`x^2`.
            progress: Whether to show a progress bar (:py:`None`: only in a terminal).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit (strategy ``"em"``), also
            kept as ``fit_report``.

        Example:
            >>> x = torch.cat((torch.randn(100, 3) - 3, torch.randn(100, 3) + 3))
            >>> mfa = MFA(features=3, components=2, rank=1)
            >>> _ = mfa.initialize(x, strategy="kmeans")
            >>> report = mfa.em(x)
            >>> bool((torch.tensor(report.lower_bounds).diff() > -1e-5).all())  # never lower
            True
        """

        return self._em(x, tol, max_iter, reg, progress)

    def _run_em(
        self, x: Data, tol: float, max_iter: int, reg: float, progress: bool | None
    ) -> tuple[list[Tensor], FitReport]:
        r"""The EM of :meth:`em`: :func:`~contmix.em.fit_mfa` from :meth:`_natural`."""

        param = next(self.parameters())
        fit = fit_mfa(x, *self._natural(), tol, max_iter, reg, progress=progress)

        return self._layout(*(p.to(param) for p in fit[:4])), fit_report("em", fit)

    @torch.no_grad()
    def _natural(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The log-weights, means, loadings and diagonals of an unconditional model, in
        the layout of :func:`~contmix.em.fit_mfa` (the inverse of :meth:`_layout`)."""

        logits, loc, factor, log_diag = self.phi

        return logits.log_softmax(dim=-1), loc, factor, shifted_exp(log_diag, self.epsilon)

    def free_parameters(self) -> int:
        r"""Returns the number of free parameters :math:`P` of :meth:`bic` and :meth:`aic`:
        for an unconditional model,

        .. math:: P = (K - 1) + K \left( 2 M + \min \left( M R - \tfrac{R (R - 1)}{2},
            \tfrac{M (M - 1)}{2} \right) \right)

        for the weights, means, diagonals and loadings, whose rotations :math:`A_k Q`
        leave :math:`D_k + A_k A_k^T` unchanged (hence :math:`R (R - 1) / 2` fewer) and
        which, with the diagonal, never count more than a full covariance
        (:math:`M (M + 1) / 2`). For a conditional model, the parameters of the
        hypernetwork.

        Example:
            >>> MFA(features=5, components=3, rank=2).free_parameters()  # 2 + 3 (10 + 9)
            59
        """

        if self.context > 0:
            return sum(p.numel() for p in self.parameters())

        return mfa_free_parameters(self.components, self.features, self.rank)

    def _clusters(
        self,
        x: Data,
        strategy: str,
        reg: float,
        generator: torch.Generator | None,
        progress: bool | None = None,
    ) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor, Tensor, Tensor]:
        r"""Returns the hard responsibilities of the clusters of ``strategy`` (a function
        of a batch, two passes through the data for an iterable of batches) and the
        weights, means, variances (floored) and small random loadings of the clusters."""

        K, R = self.components, self.rank
        centers, labels = initial_clusters(x, K, strategy, generator, progress)
        label = as_labeller(labels)
        resp = lambda batch: nn.functional.one_hot(label(batch), K).to(batch.dtype)

        shift, N = reference(x), samples(x)

        def sums(batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            r, centred = resp(batch), batch - shift
            return r.sum(dim=0), r.mT @ centred, centred.square().sum(dim=0)

        nk, sx, sq = accumulate(sums, x)
        filled = (nk > 0).unsqueeze(-1)
        means = sx / nk.clamp(min=1).unsqueeze(-1)  # around the data mean, no cancellation

        def squares(batch: Tensor) -> tuple[Tensor]:
            residual = batch - shift - means[label(batch)]
            return (resp(batch).mT @ residual.square(),)

        var = accumulate(squares, x)[0] / nk.clamp(min=1).unsqueeze(-1)
        loc = torch.where(filled, means + shift, centers)
        var = torch.where(filled, var, sq / N)
        diag = torch.maximum(var, _floor(shift, reg))

        device = shift.device if generator is None else generator.device
        noise = torch.randn(
            diag.shape + (R,), generator=generator, device=device, dtype=diag.dtype
        )
        factor = 0.1 * diag.sqrt().unsqueeze(-1) * noise.to(shift.device) / R**0.5
        logits = (nk / N).clamp(min=torch.finfo(diag.dtype).tiny).log()

        return resp, logits, loc, factor, diag

    def _start(
        self,
        x: Data,
        strategy: str,
        tol: float,
        max_iter: int,
        reg: float,
        generator: torch.Generator | None,
        progress: bool | None = None,
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], FitReport]:
        r"""Returns the natural parameters fitted by ``strategy`` and the report of the
        fit, whose lower bound is the mean log-likelihood of the last E-step for ``"em"``,
        of the fitted mixture otherwise."""

        centers = "kmeans" if strategy in ("fa", "em") else strategy
        resp, *params = self._clusters(x, centers, reg, generator, progress)

        if strategy == "fa":
            fit = fit_mfa(x, *params, tol, max_iter, reg, resp=resp, progress=progress)
            bound = mfa_log_likelihood(x, *fit[:4])
            return fit[:4], FitReport.of(strategy, bound, fit.history, fit.converged)
        if strategy == "em":
            params = fit_mfa(x, *params, tol, max_iter, reg, resp=resp, progress=progress)[:4]
            fit = fit_mfa(x, *params, tol, max_iter, reg, progress=progress)
            return fit[:4], fit_report(strategy, fit)

        return tuple(params), FitReport.of(strategy, mfa_log_likelihood(x, *params))
