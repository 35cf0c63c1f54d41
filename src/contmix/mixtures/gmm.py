r"""Gaussian mixture models, a drop-in for :class:`zuko.mixtures.GMM`."""

__all__ = [
    "GMM",
]


from collections.abc import Callable
from math import prod
from typing import Literal

import torch
import torch.nn as nn

from torch import Size, Tensor
from zuko.lazy import LazyDistribution
from zuko.nn import MLP
from zuko.utils import unpack

from .conditional import (
    LR,
    STEPS,
    check_contexts,
    check_steps,
    keep_fit,
)
from .criteria import InformationCriteria
from ..cluster import assign, check_generator, kmeans, kmeans_plusplus, labeller, random_centers
from ..distributed import Data, batches, check_batches
from ..distributions import DiagNormal, FullNormal, GaussianMixture
from ..em.gmm import (
    COVARIANCE_TYPES,
    CovarianceType,
    _factor,
    check_em,
    check_reg,
    fit_gmm,
    gmm_log_likelihood,
    gmm_m_step,
)
from ..report import FitReport, best_of, check_progress
from ..utils import check_context, check_samples, check_scale, check_sizes, set_parameters

STRATEGIES = ("random", "kmeans", "kmeans++", "em")


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


def check_fit(n_init: int, generator: torch.Generator | None, reg: float) -> None:
    r"""Raises an error unless the arguments shared by the ``initialize`` methods are
    valid: ``n_init`` a positive integer, ``generator`` a :class:`torch.Generator` or
    :py:`None`, ``reg`` a finite non-negative number.

    Example:
        >>> check_fit(1, None, 1e-6)
        >>> check_fit(0, None, 1e-6)
        Traceback (most recent call last):
            ...
        ValueError: n_init must be an integer of at least 1, got 0.
    """

    check_sizes(n_init=n_init)
    check_generator(generator)
    check_reg(reg)


def check_unconditional(model: nn.Module, what: str) -> None:
    r"""Raises a :class:`ValueError` if ``model`` is conditional (``model.context > 0``),
    whose parameters are the outputs of a hypernetwork, which ``what`` cannot fit.

    Example:
        >>> check_unconditional(GMM(2, context=3), "em()")
        Traceback (most recent call last):
            ...
        ValueError: em() fits an unconditional GMM, but this one has context=3: ...
    """

    if model.context > 0:
        raise ValueError(
            f"{what} fits an unconditional {type(model).__name__}, but this one has "
            f"context={model.context}: its parameters come from a hypernetwork; train it "
            "by gradient descent."
        )


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
        return fit[:3], FitReport.of(strategy, fit.history[-1], fit.history, fit.converged)

    return params, FitReport.of(strategy, gmm_log_likelihood(x, *params, covariance_type))


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


class GMM(InformationCriteria, LazyDistribution):
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
        super().__init__()

        check_sizes(features=features, components=components)
        check_sizes(0, context=context)

        self.features = features
        self.context = context
        self.components = components
        self.covariance_type = covariance_type
        self.tied = tied
        self.epsilon = epsilon

        self.shapes = gmm_shapes(components, features, covariance_type, tied)
        self.total = sum(prod(s) for s in self.shapes)
        self.fit_report: FitReport | None = None

        if context > 0:
            self.hyper = MLP(context, self.total, **kwargs)
        else:
            self.phi = nn.ParameterList(torch.randn(*s) for s in self.shapes)

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        c = check_context(c, self.context, next(self.parameters()), ignore=True)

        if c is None:
            logits, loc, *scale = self.phi
        else:
            logits, loc, *scale = unpack(self.hyper(c), self.shapes)

        diag = scale[0].exp() + self.epsilon

        if self.covariance_type == "full":
            tril = torch.diag_embed(diag)
            mask = torch.tril(torch.ones_like(tril, dtype=bool), diagonal=-1)
            tril = torch.masked_scatter(tril, mask, scale[1])
            base = FullNormal(loc, scale_tril=tril)
        else:
            base = DiagNormal(loc, diag)

        return GaussianMixture(base, logits)

    def _layout(self, logits: Tensor, means: Tensor, covariances: Tensor) -> list[Tensor]:
        r"""Turns natural parameters into the layout of :attr:`shapes`."""

        if self.covariance_type == "full":
            tril = _factor(covariances)
            diag = tril.diagonal(dim1=-2, dim2=-1)
            rows, cols = torch.tril_indices(self.features, self.features, offset=-1)
            scale = [diag, tril[..., rows, cols]]
        else:
            scale = [covariances.sqrt()]

        tiny = torch.finfo(means.dtype).tiny
        scale[0] = (scale[0] - self.epsilon).clamp(min=tiny).log()

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

        check_strategy(strategy, STRATEGIES)
        check_fit(n_init, generator, reg)
        check_em(tol, max_iter)
        check_progress(progress)
        reference = next(self.parameters())
        floor = max(self.epsilon**2, reg)
        check_data(x, self.features, self.components + 1, reference, floor, "epsilon and reg")
        check_contexts(self, x, c)
        check_steps(steps, lr)

        args = (x, self.components, strategy, self.covariance_type, self.tied, tol, max_iter, reg)
        params, report = best_of(lambda: fit_start(*args, generator, progress), n_init, progress)

        return keep_fit(self, self._layout(*params), x, c, report, steps, lr, progress)

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

        check_unconditional(self, "em()")
        check_reg(reg)
        check_em(tol, max_iter)
        check_progress(progress)
        reference = next(self.parameters())
        floor = max(self.epsilon**2, reg)
        check_data(x, self.features, self.components + 1, reference, floor, "epsilon and reg")

        start = self._moments()
        fit = fit_gmm(x, *start, self.covariance_type, self.tied, tol, max_iter, reg, progress)
        set_parameters(self, self._layout(*(p.to(reference) for p in fit[:3])))
        self.fit_report = FitReport.of("em", fit.history[-1], fit.history, fit.converged)

        return self.fit_report

    @torch.no_grad()
    def _moments(self) -> tuple[Tensor, Tensor, Tensor]:
        r"""The log-weights, means and covariances of an unconditional model, in the
        layout of :func:`~contmix.em.fit_gmm` (the inverse of :meth:`_layout`)."""

        logits, loc, *scale = self.phi
        diag = scale[0].exp() + self.epsilon

        if self.covariance_type == "full":
            tril = torch.diag_embed(diag)
            rows, cols = torch.tril_indices(self.features, self.features, offset=-1)
            tril[..., rows, cols] = scale[1]
            covariances = tril @ tril.mT
        else:
            covariances = diag.square()

        return logits.log_softmax(dim=-1), loc, covariances

    def predict_proba(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the posterior of the components (the responsibilities), with shape
        :math:`(*, K)`, whose rows sum to one, as scikit-learn's ``predict_proba``:

        .. math:: p(k \mid x) = \frac{\pi_k \mathcal{N}(x \mid \mu_k, \Sigma_k)}
            {\sum_j \pi_j \mathcal{N}(x \mid \mu_j, \Sigma_j)}

        the exponential of the distribution's
        :meth:`~contmix.distributions.GaussianMixture.posterior`, which returns
        :math:`\log p(k \mid x)`.

        Example:
            >>> gmm = GMM(features=2, components=3)
            >>> gmm.predict_proba(torch.randn(5, 2)).sum(dim=-1).allclose(torch.ones(5))
            True
        """

        return self(c).posterior(x).exp()

    def predict(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_k p(k \mid x)` of each
        sample, with shape :math:`(*)`, as scikit-learn's ``predict``.

        Example:
            >>> gmm = GMM(features=1, components=2)
            >>> gmm.predict(torch.randn(5, 1)).shape
            torch.Size([5])
        """

        return self(c).predict(x)

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
