r"""Gaussian mixture models, a drop-in for :class:`zuko.mixtures.GMM`."""

__all__ = [
    "GMM",
]


from typing import Literal

import torch

from torch import Size, Tensor

from .base import ParametricMixture, lower_triangular, shifted_exp, shifted_log, triangle
from .conditional import LR, STEPS
from .criteria import InformationCriteria
from .start import fit_report, fit_start
from ..distributed import Data
from ..distributions import DiagNormal, FullNormal, GaussianMixture
from ..em.gmm import COVARIANCE_TYPES, CovarianceType, _factor, fit_gmm
from ..report import FitReport
from ..utils import check_sizes


def gmm_shapes(
    components: int, features: int, covariance_type: CovarianceType, tied: bool
) -> list[Size]:
    r"""The shapes of the parameters, in zuko's layout: logits, means, then the log
    diagonal of the Cholesky factor (or of the standard deviations) and, for full
    covariances, its strictly lower triangle."""

    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"Unknown covariance type '{covariance_type}': choose one of {COVARIANCE_TYPES}."
        )

    leading = 1 if tied else components
    shapes = [Size((components,)), Size((components, features))]

    if covariance_type == "full":
        shapes += [Size((leading, features)), Size((leading, features * (features - 1) // 2))]
    elif covariance_type == "diagonal":
        shapes += [Size((leading, features))]
    else:
        shapes += [Size((leading, 1))]

    return shapes


class GMM(InformationCriteria, ParametricMixture):
    r"""Creates a Gaussian mixture model (GMM).

    .. math:: p(X \mid c) = \sum_{k = 1}^K \pi_k(c) \, \mathcal{N}(X \mid \mu_k(c), \Sigma_k(c))

    A drop-in for :class:`zuko.mixtures.GMM`: same arguments, same parameters (a zuko
    state dict loads as it is) and a :class:`~contmix.distributions.GaussianMixture`
    with the same density, plus EM fitting (:meth:`initialize` with ``"em"``, :meth:`em`),
    robust initialization, :meth:`predict_proba`, :meth:`bic` and :meth:`aic`. The
    record of the last fit is ``fit_report`` (a :class:`~contmix.report.FitReport`,
    :py:`None` before any fit; not part of the state dict). The covariance is
    :math:`\Sigma_k = L_k L_k^T` with :math:`L_k` lower triangular of diagonal
    :math:`\exp(\phi) + \epsilon` (``"full"``), or diagonal with standard deviations
    :math:`\exp(\phi) + \epsilon` (``"diagonal"``, ``"spherical"``).

    Wikipedia:
        https://wikipedia.org/wiki/Mixture_model#Gaussian_mixture_model

    References:
        | Pattern Recognition and Machine Learning, Section 9.2 (Bishop, 2006)

    Arguments:
        features: The number of features.
        context: The number of context features.
        components: The number of components :math:`K` in the mixture.
        covariance_type: ``"full"``, ``"diagonal"`` or ``"spherical"``.
        tied: Whether to tie the covariance parameters across components.
        epsilon: A numerical stability term.
        kwargs: Keyword arguments passed to :class:`zuko.nn.MLP`.

    Example:
        >>> gmm = GMM(features=2, components=3)
        >>> x = torch.randn(256, 2)
        >>> report = gmm.initialize(x, strategy="em")
        >>> report is gmm.fit_report
        True
        >>> gmm().log_prob(x).shape
        torch.Size([256])
        >>> gmm().posterior(x).exp().sum(dim=-1).allclose(torch.ones(256))
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 2,
        covariance_type: Literal["full", "diagonal", "spherical"] = "full",
        tied: bool = False,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        check_sizes(features=features, components=components)
        check_sizes(0, context=context)
        shapes = gmm_shapes(components, features, covariance_type, tied)

        super().__init__(features, context, components, epsilon, shapes, **kwargs)

        self.covariance_type = covariance_type
        self.tied = tied

    def distribution(self, params: list[Tensor], c: Tensor | None) -> GaussianMixture:
        logits, loc, *scale = params
        diag = shifted_exp(scale[0], self.epsilon)

        if self.covariance_type == "full":
            base = FullNormal(loc, scale_tril=lower_triangular(diag, scale[1]))
        else:
            base = DiagNormal(loc, diag)

        return GaussianMixture(base, logits)

    def _layout(self, logits: Tensor, means: Tensor, covariances: Tensor) -> list[Tensor]:
        r"""Turns natural parameters into the layout of :attr:`shapes`."""

        if self.covariance_type == "full":
            scale = list(triangle(_factor(covariances)))
        else:
            scale = [covariances.sqrt()]

        scale[0] = shifted_log(scale[0], self.epsilon)

        return [logits, means, *scale]

    @torch.no_grad()
    def initialize(
        self,
        x: Data,
        strategy: Literal["random", "kmeans", "kmeans++", "em"] = "kmeans++",
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
        k-means solution or greedy k-means++ seeds,
        :func:`~contmix.cluster.kmeans_plusplus`), assign each sample to its nearest
        centre and set the weights, means and covariances of the clusters, regularized
        by ``reg`` so that small or degenerate clusters stay positive definite. ``"em"``
        then runs expectation-maximization from the k-means clusters until the mean
        log-likelihood changes by less than ``tol``, as
        :class:`sklearn.mixture.GaussianMixture` does (from the k-means++ seeds, EM
        misses the best optimum more often: 42 of 60 seeds against 36 on 16
        overlapping clusters in 8 dimensions). With ``n_init`` restarts, each
        from its own centres, the fit of the highest mean log-likelihood on :math:`x`
        is kept (for ``"em"``, that of its last E-step, as scikit-learn keeps the best
        lower bound).

        For a conditional model, the mixture fitted is the unconditional :math:`p(x)`,
        written as the bias of the hypernetwork's last layer (its weights scaled by
        :math:`10^{-2}`, as zuko does), so that the network starts out producing it
        whatever the context. Given the contexts ``c`` of the samples, the network is
        then fitted to :math:`p(x \mid c)`: from the fitted bias, the weights of the
        last layer at zero, ``steps`` full-batch Adam steps of the mean conditional
        log-likelihood :math:`\frac{1}{N} \sum_n \log p(x_n \mid c_n)`, of which the
        best parameters are kept, never worse than the unconditional mixture on
        :math:`(x, c)` (:mod:`contmix.mixtures.conditional`). The restarts pick the
        unconditional fit; the context fit runs once, from it.

        The default ``n_init=1`` is scikit-learn's: one run of greedy k-means++,
        k-means and EM reaches the best optimum about as often as scikit-learn's
        :class:`~sklearn.mixture.GaussianMixture` (``benchmarks/init_quality.py``, 16
        well-separated clusters in 16 dimensions: 4 of 5 seeds for both, 16 and 15 of
        20); each restart costs one more fit and makes a bad local optimum less likely
        (5 of 5 with ``n_init=2``).

        EM that stops at ``max_iter`` without converging warns with a
        :class:`~contmix.report.ConvergenceWarning`, k-means at its iterations too.
        Progress bars count the restarts and the iterations of k-means and EM, the mean
        log-likelihood in their postfix. Nothing changes if an error is raised.

        :math:`x` may be an iterable of batches (:data:`~contmix.distributed.Data`, e.g.
        a :class:`~torch.utils.data.DataLoader` over a memory-mapped array) for data
        larger than memory: every strategy then passes through the batches as often as
        it needs (k-means++ two passes per centre, k-means and EM one per iteration),
        holding a batch at a time, and gives the fit of their concatenation (up to the
        rounding of the sums; ``"random"`` draws a permutation of the :math:`N`
        samples, :math:`8 N` bytes). They are checked in a first pass.

        Arguments:
            x: The samples, with shape :math:`(N, D)` and :math:`N > K`, or a
                re-iterable of batches with shape :math:`(B, D)`.
            strategy: ``"random"``, ``"kmeans"``, ``"kmeans++"`` or ``"em"``.
            tol: The tolerance of EM on the mean log-likelihood.
            max_iter: The maximum number of EM iterations.
            reg: The variance added to the diagonal of the covariances.
            n_init: The number of restarts, of which the best fit is kept.
            generator: The random generator of the centres (torch's global generator
                if :py:`None`): the same seed gives the same fit, and the global seed
                is left alone.
            progress: Whether to show progress bars (:py:`None`: only in a terminal,
                see :func:`~contmix.report.progress_bar`).
            c: The contexts of the samples of a conditional model, with shape
                :math:`(N, C)`, for :math:`x` a tensor; :py:`None` fits the
                unconditional mixture, whatever the context.
            steps: The number of Adam steps of the context fit (with ``c``).
            lr: The learning rate of the context fit (with ``c``).

        Returns:
            The :class:`~contmix.report.FitReport` of the kept fit, also kept as
            ``fit_report``: for ``"em"``, whether EM converged, its iterations and
            its mean log-likelihood at each E-step; with ``c``, the mean conditional
            log-likelihoods of the context fit (``context_history``,
            ``context_log_likelihood``).

        Example:
            >>> x = torch.cat((torch.randn(100, 2) - 3, torch.randn(100, 2) + 3))
            >>> a, b = GMM(features=2, components=2), GMM(features=2, components=2)
            >>> g = torch.Generator()
            >>> report = a.initialize(x, "em", n_init=2, generator=g.manual_seed(0))
            >>> report.converged, report.n_init, report.lower_bound == report.lower_bounds[-1]
            (True, 2, True)
            >>> _ = b.initialize(x, "em", n_init=2, generator=g.manual_seed(0))
            >>> torch.equal(a().log_prob(x), b().log_prob(x))
            True
            >>> c = torch.randn(200, 1)  # a context that shifts the samples
            >>> conditional = GMM(features=2, context=1, components=2)
            >>> report = conditional.initialize(x + 2 * c, "em", c=c, steps=50)
            >>> report.context_log_likelihood > report.context_history[0]  # p(x | c) > p(x)
            True
        """

        args = (x, strategy, tol, max_iter, reg, n_init, generator, progress, c, steps, lr)

        return self._initialize(*args)

    def _start(
        self,
        x: Data,
        strategy: str,
        tol: float,
        max_iter: int,
        reg: float,
        generator: torch.Generator | None,
        progress: bool | None,
    ) -> tuple[tuple[Tensor, Tensor, Tensor], FitReport]:
        r"""One fit of :meth:`initialize`: :func:`~contmix.mixtures.start.fit_start`."""

        args = (x, self.components, strategy, self.covariance_type, self.tied, tol, max_iter)
        return fit_start(*args, reg, generator, progress)

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
        than ``tol`` or for ``max_iter`` iterations: e.g. to finish a model trained by
        gradient descent, or through a :class:`~contmix.Curriculum`, at the local
        optimum it is in. :py:`initialize(x, "em")` is :py:`initialize(x, "kmeans")`
        followed by this.

        Each iteration computes the responsibilities
        :math:`r_{nk} \propto \pi_k \mathcal{N}(x_n \mid \mu_k, \Sigma_k)` and sets

        .. math:: \pi_k = \frac{N_k}{N}, \quad \mu_k = \frac{1}{N_k} \sum_n r_{nk} x_n,
            \quad \Sigma_k = \frac{1}{N_k} \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^T
            + \lambda I

        with :math:`N_k = \sum_n r_{nk}` (see :func:`~contmix.em.fit_gmm`). EM never lowers
        the likelihood; stopped at ``max_iter`` without converging, it warns with a
        :class:`~contmix.report.ConvergenceWarning`. Only an unconditional model: a
        conditional model's parameters are the outputs of its hypernetwork. Nothing
        changes if an error is raised.

        For data larger than memory, :math:`x` may be an iterable of batches (see
        :meth:`initialize`): one pass through them per iteration, the same fit as on
        their concatenation (up to the rounding of the float64 sums).

        References:
            | Maximum Likelihood from Incomplete Data via the EM Algorithm (Dempster et al., 1977)
            | https://doi.org/10.1111/j.2517-6161.1977.tb01600.x

        Arguments:
            x: The samples, with shape :math:`(N, D)` and :math:`N > K`, or a
                re-iterable of batches with shape :math:`(B, D)`.
            tol: The tolerance on the mean log-likelihood.
            max_iter: The maximum number of iterations.
            reg: The variance :math:`\lambda` added to the diagonal of the covariances.
            progress: Whether to show a progress bar (:py:`None`: only in a terminal).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit (strategy ``"em"``), also
            kept as ``fit_report``, with the mean log-likelihood of :math:`x` at each
            E-step as ``lower_bounds`` (as a tensor:
            :py:`torch.tensor(report.lower_bounds)`).

        Example:
            >>> x = torch.cat((torch.randn(100, 2) - 3, torch.randn(100, 2) + 3))
            >>> gmm = GMM(features=2, components=2)
            >>> _ = gmm.initialize(x, strategy="random")
            >>> report = gmm.em(x)
            >>> bool((torch.tensor(report.lower_bounds).diff() >= -1e-5).all())  # never lower
            True
            >>> loader = torch.utils.data.DataLoader(x, batch_size=64)  # batches of rows
            >>> report = gmm.em(loader)
        """

        return self._em(x, tol, max_iter, reg, progress)

    def _run_em(
        self, x: Data, tol: float, max_iter: int, reg: float, progress: bool | None
    ) -> tuple[list[Tensor], FitReport]:
        r"""The EM of :meth:`em`: :func:`~contmix.em.fit_gmm` from :meth:`_moments`."""

        start, param = self._moments(), next(self.parameters())
        fit = fit_gmm(x, *start, self.covariance_type, self.tied, tol, max_iter, reg, progress)

        return self._layout(*(p.to(param) for p in fit[:3])), fit_report("em", fit)

    @torch.no_grad()
    def _moments(self) -> tuple[Tensor, Tensor, Tensor]:
        r"""The log-weights, means and covariances of an unconditional model, in the
        layout of :func:`~contmix.em.fit_gmm` (the inverse of :meth:`_layout`)."""

        logits, loc, *scale = self.phi
        diag = shifted_exp(scale[0], self.epsilon)

        if self.covariance_type == "full":
            tril = lower_triangular(diag, scale[1])
            covariances = tril @ tril.mT
        else:
            covariances = diag.square()

        return logits.log_softmax(dim=-1), loc, covariances

    def free_parameters(self) -> int:
        r"""Returns the number of free parameters :math:`P` of :meth:`bic` and :meth:`aic`:
        for an unconditional model, as scikit-learn's ``_n_parameters``,

        .. math:: P = (K - 1) + K D + L \, C

        for the weights, the means and the :math:`L` covariances (:math:`L = 1` when
        tied, :math:`K` otherwise) of :math:`C = D (D + 1) / 2` (full), :math:`D`
        (diagonal) or 1 (spherical) parameters each. For a conditional model, the
        parameters of the hypernetwork.

        Example:
            >>> GMM(features=2, components=3).free_parameters()  # 2 + 6 + 3 * 3
            17
        """

        return sum(p.numel() for p in self.parameters()) - (self.context == 0)
