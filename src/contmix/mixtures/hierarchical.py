r"""Hierarchical mixtures of factor analyzers: a mixture of :math:`C` MFAs."""

__all__ = ["HierarchicalMFA"]


from collections.abc import Sequence
from typing import Literal

import torch

from torch import Size, Tensor

from .base import ParametricMixture, set_parameters, shifted_exp, shifted_log
from .conditional import LR, STEPS
from .criteria import InformationCriteria
from .groups import factor_analyzers, group_labels, group_statistics
from .mfa import mfa_free_parameters
from .start import fit_report
from ..distributions import GaussianMixture, LowRankNormal
from ..em.mfa import fit_mfa
from ..report import FitReport
from ..utils import check_sizes


def hierarchical_shapes(groups: int, components: int, features: int, rank: int) -> list[Size]:
    r"""The shapes of the parameters: outer logits, inner logits, means, loadings and
    log-diagonals."""

    return [
        Size((groups,)),
        Size((groups, components)),
        Size((groups, components, features)),
        Size((groups, components, features, rank)),
        Size((groups, components, features)),
    ]


class HierarchicalMFA(InformationCriteria, ParametricMixture):
    r"""Creates a hierarchical mixture of factor analyzers: a mixture of :math:`C` MFAs
    with :math:`G` components each.

    .. math:: p(x) = \sum_{c = 1}^C \eta_c \sum_{j = 1}^G \pi_{cj} \,
        \mathcal{N}(x \mid \mu_{cj}, D_{cj} + A_{cj} A_{cj}^T)

    with :math:`D_{cj} = \operatorname{diag}(\exp(\phi_{cj}) + \epsilon)`. Its
    distribution is a :class:`~contmix.distributions.GaussianMixture` over :math:`C`
    groups whose components are :class:`~contmix.distributions.GaussianMixture` with
    batch shape :math:`(C,)` over :class:`~contmix.distributions.LowRankNormal`
    components with batch shape :math:`(C, G)`. By Bayes' rule, :meth:`predict_proba`
    gives the group posterior :math:`p(c \mid x)`, for clustering and classification.
    This is what :meth:`contmix.HierarchicalCPMM.extract` returns. It is fitted by
    :meth:`initialize` and :meth:`em`, whose record is kept as ``fit_report`` (a
    :class:`~contmix.report.FitReport`), and scored by :meth:`bic` and :meth:`aic`.

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 3.2
        | https://proceedings.mlr.press/v202/bender23a.html

    Arguments:
        features: The number of features :math:`M`.
        context: The number of context features.
        groups: The number of groups :math:`C`.
        components: The number of components :math:`G` per group.
        rank: The rank :math:`R` of the loadings.
        epsilon: A numerical stability term added to the diagonal.
        kwargs: Keyword arguments passed to :class:`zuko.nn.MLP`.

    Example:
        >>> model = HierarchicalMFA(features=3, groups=2, components=4, rank=1)
        >>> x = torch.randn(10, 3)
        >>> model().log_prob(x).shape
        torch.Size([10])
        >>> model.predict_proba(x).sum(dim=-1).allclose(torch.ones(10))
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        groups: int = 2,
        components: int = 2,
        rank: int = 1,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        check_sizes(features=features, groups=groups, components=components, rank=rank)
        check_sizes(0, context=context)
        shapes = hierarchical_shapes(groups, components, features, rank)

        super().__init__(features, context, components, epsilon, shapes, **kwargs)

        self.groups = groups
        self.rank = rank

    out_of_core = False  # the groups are split by k-means in memory
    variance_power = 1  # epsilon is added to the diagonals, variances

    @staticmethod
    def initial_parameters(shapes: Sequence[Size]) -> list[Tensor]:
        r"""Returns the initial ``phi``: uniform weights, standard normal means, loadings
        of variance :math:`1 / R` and unit diagonals (up to :math:`\epsilon`)."""

        eta, logits, loc, factor, log_diag = shapes
        rank = factor[-1]

        return [
            torch.zeros(eta),
            torch.zeros(logits),
            torch.randn(loc),
            torch.randn(factor) / rank**0.5,
            torch.zeros(log_diag),
        ]

    def variance_floor(self, reg: float, strategy: str = "em") -> float:
        r"""The smallest variance of a component: :math:`\epsilon`, or ``reg`` if
        larger for EM (the other strategies do not use ``reg``)."""

        return max(self.smallest_variance, reg if strategy == "em" else 0.0)

    def minimum_samples(self, em: bool = False) -> int:
        r"""The smallest number of samples of :meth:`initialize`, more than the groups,
        or of :meth:`em`, more than the :math:`C G` components."""

        return self.groups * (self.components if em else 1) + 1

    def distribution(self, params: list[Tensor], c: Tensor | None) -> GaussianMixture:
        eta, logits, loc, factor, log_diag = params
        base = LowRankNormal(loc, factor, shifted_exp(log_diag, self.epsilon))

        return GaussianMixture(GaussianMixture(base, logits), eta)

    @torch.no_grad()
    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "kmeans++", "em"] = "kmeans",
        y: Tensor | None = None,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        tol: float = 1e-3,
        max_iter: int = 100,
        reg: float = 1e-6,
        progress: bool | None = None,
        *,
        c: Tensor | None = None,
        steps: int = STEPS,
        lr: float = LR,
    ) -> FitReport:
        r"""Initializes the mixture from data.

        The samples are split into :math:`C` groups (by ``y`` when labels are given,
        otherwise by k-means, around random samples or around greedy k-means++ seeds),
        each group into :math:`G` sub-clusters, and each component is the factor
        analyzer (probabilistic PCA) of its sub-cluster (:func:`group_statistics`).
        ``"em"`` then runs expectation-maximization (:meth:`em`) from the k-means start
        until the mean log-likelihood changes by less than ``tol``. With ``n_init``
        restarts, each from its own centres, the mixture of the highest mean
        log-likelihood on :math:`x` is kept (the default, 1, is that of
        :meth:`contmix.GMM.initialize`). For a conditional model, the mixture fitted is
        the unconditional :math:`p(x)`: the hypernetwork starts out producing it
        whatever the context; given the contexts ``c`` of the samples, it is then
        fitted to :math:`p(x \mid c)` by ``steps`` Adam steps from there, never ending
        worse than the unconditional mixture on :math:`(x, c)`, as in
        :meth:`contmix.GMM.initialize` (:mod:`contmix.mixtures.conditional`). EM or k-means
        that stop without converging warn with a :class:`~contmix.report.ConvergenceWarning`;
        progress bars count the restarts and the iterations. Nothing changes if an
        error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)`.
            strategy: ``"random"``, ``"kmeans"``, ``"kmeans++"`` or ``"em"``.
            y: Optional labels in :math:`[0, C)`, with shape :math:`(N,)`.
            n_init: The number of restarts, of which the best mixture is kept.
            generator: The random generator of the centres (torch's global generator
                if :py:`None`): the same seed gives the same mixture, and the global
                seed is left alone.
            tol: The tolerance of EM on the mean log-likelihood (``"em"``).
            max_iter: The maximum number of EM iterations (``"em"``).
            reg: The floor of the diagonals of EM (``"em"``), a variance in the units of
                :math:`x^2`.
            progress: Whether to show progress bars (:py:`None`: only in a terminal).
            c: The contexts of the samples of a conditional model, with shape
                :math:`(N, C)`, for :math:`x` a tensor; :py:`None` fits the
                unconditional mixture, whatever the context.
            steps: The number of Adam steps of the context fit (with ``c``).
            lr: The learning rate of the context fit (with ``c``).

        Returns:
            The :class:`~contmix.report.FitReport` of the kept mixture, also kept as
            ``fit_report``; with ``c``, with the mean conditional log-likelihoods of the
            context fit.

        Example:
            >>> x = torch.cat((torch.randn(100, 3) - 4, torch.randn(100, 3) + 4))
            >>> model = HierarchicalMFA(features=3, groups=2, components=2, rank=1)
            >>> report = model.initialize(x, n_init=2, generator=torch.Generator().manual_seed(0))
            >>> report.n_init, report.iterations
            (2, 0)
            >>> model.predict(x).bincount().tolist()
            [100, 100]
        """

        args = (x, strategy, tol, max_iter, reg, n_init, generator, progress, c, steps, lr)

        return self._initialize(*args, y=y)

    def _write(self, params: list[Tensor]) -> None:
        r"""Writes the parameters of :meth:`_start`, in the layout of :attr:`shapes`."""

        set_parameters(self, params)

    @torch.no_grad()
    def em(
        self,
        x: Tensor,
        tol: float = 1e-3,
        max_iter: int = 100,
        reg: float = 1e-6,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Runs expectation-maximization on :math:`x` from the current parameters (as
        scikit-learn's ``warm_start``), until the mean log-likelihood changes by less
        than ``tol`` or for ``max_iter`` iterations.

        The hierarchical mixture is the mixture of the :math:`C G` factor analyzers of
        weights :math:`\eta_c \pi_{cj}`, and EM for it is :func:`~contmix.em.fit_mfa` on
        these: the M-step of the weights, :math:`\eta_c \pi_{cj} = N_{cj} / N`, gives
        :math:`\eta_c = \sum_j N_{cj} / N` and :math:`\pi_{cj} = N_{cj} / \sum_{j'}
        N_{cj'}`. EM never lowers the likelihood, and warns with a
        :class:`~contmix.report.ConvergenceWarning` if it stops at ``max_iter``. Only an
        unconditional model. Nothing changes if an error is raised.

        References:
            | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
            | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

        Arguments:
            x: The samples, with shape :math:`(N, M)` and :math:`N > C G`.
            tol: The tolerance on the mean log-likelihood.
            max_iter: The maximum number of iterations.
            reg: The floor of the diagonals, a variance in the units of :math:`x^2`.
            progress: Whether to show a progress bar (:py:`None`: only in a terminal).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit (strategy ``"em"``), also
            kept as ``fit_report``.

        Example:
            >>> x = torch.cat((torch.randn(100, 3) - 4, torch.randn(100, 3) + 4))
            >>> model = HierarchicalMFA(features=3, groups=2, components=2, rank=1)
            >>> _ = model.initialize(x)
            >>> report = model.em(x)
            >>> bool((torch.tensor(report.lower_bounds).diff() > -1e-5).all())  # never lower
            True
        """

        return self._em(x, tol, max_iter, reg, progress)

    def _run_em(
        self, x: Tensor, tol: float, max_iter: int, reg: float, progress: bool | None
    ) -> tuple[list[Tensor], FitReport]:
        r"""The EM of :meth:`em`: :func:`~contmix.em.fit_mfa` on the flat mixture."""

        param = next(self.parameters())
        fit = fit_mfa(x, *self._flat(list(self.phi)), tol, max_iter, reg, progress=progress)

        return [p.to(param) for p in self._nested(*fit[:4])], fit_report("em", fit)

    def free_parameters(self) -> int:
        r"""Returns the number of free parameters :math:`P` of :meth:`bic` and :meth:`aic`:
        for an unconditional model, those of the :class:`~contmix.MFA` of :math:`C G`
        components (:meth:`contmix.MFA.free_parameters`), whose weights
        :math:`\eta_c \pi_{cj}` are :math:`C G - 1` free parameters; for a conditional
        model, the parameters of the hypernetwork.

        Example:
            >>> HierarchicalMFA(features=5, groups=2, components=3, rank=2).free_parameters()
            119
        """

        if self.context > 0:
            return sum(p.numel() for p in self.parameters())

        return mfa_free_parameters(self.groups * self.components, self.features, self.rank)

    def _flat(self, params: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Turns parameters in the layout of :attr:`shapes` into the log-weights, means,
        loadings and diagonals of the flat mixture of :math:`C G` factor analyzers, in
        the layout of :func:`~contmix.em.fit_mfa`."""

        eta, logits, loc, factor, log_diag = params
        weights = eta.log_softmax(dim=-1).unsqueeze(-1) + logits.log_softmax(dim=-1)
        diag = shifted_exp(log_diag, self.epsilon)

        return weights.flatten(), loc.flatten(0, 1), factor.flatten(0, 1), diag.flatten(0, 1)

    def _nested(self, logits: Tensor, loc: Tensor, factor: Tensor, diag: Tensor) -> list[Tensor]:
        r"""The inverse of :meth:`_flat`: :math:`\log \eta_c = \log \sum_j \eta_c
        \pi_{cj}` and :math:`\log \pi_{cj} = \log \eta_c \pi_{cj} - \log \eta_c`."""

        shape = (self.groups, self.components)
        logits = logits.unflatten(0, shape)
        eta = logits.logsumexp(dim=-1)
        log_diag = shifted_log(diag, self.epsilon)

        return [
            eta,
            logits - eta.unsqueeze(-1),
            loc.unflatten(0, shape),
            factor.unflatten(0, shape),
            log_diag.unflatten(0, shape),
        ]

    def _start(
        self,
        x: Tensor,
        strategy: str,
        tol: float,
        max_iter: int,
        reg: float,
        generator: torch.Generator | None,
        progress: bool | None = None,
        y: Tensor | None = None,
    ) -> tuple[list[Tensor], FitReport]:
        r"""Returns the parameters of one initialization, in the layout of
        :attr:`shapes`, and its report."""

        labels = group_labels(x, self.groups, strategy, y, generator, progress)
        stats = group_statistics(
            x,
            labels,
            self.groups,
            self.components,
            strategy,
            generator=generator,
            progress=progress,
        )
        factor, diag = factor_analyzers(stats.covariances, self.rank)
        params = [
            stats.logits,
            torch.zeros_like(stats.means[..., 0]),
            stats.means,
            factor,
            shifted_log(diag, self.epsilon),
        ]

        if strategy == "em":
            fit = fit_mfa(x, *self._flat(params), tol, max_iter, reg, progress=progress)
            return self._nested(*fit[:4]), fit_report(strategy, fit)

        return params, FitReport.of(strategy, self._log_likelihood(x, params))

    def _log_likelihood(self, x: Tensor, params: list[Tensor]) -> Tensor:
        r"""The mean log-likelihood of :math:`x` under parameters in the layout of
        :attr:`shapes`, around the data mean."""

        eta, logits, loc, factor, log_diag = params
        shift = x.mean(dim=0)
        base = LowRankNormal(loc - shift, factor, shifted_exp(log_diag, self.epsilon))
        mixture = GaussianMixture(GaussianMixture(base, logits), eta)

        return mixture.log_prob(x - shift).mean()
