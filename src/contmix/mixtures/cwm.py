r"""The classifier-weighted mixture model (CWM): its maps and classifier as modules,
conditioned on a context, initialized from a Gaussian mixture. The density, its maps and
its math are in :mod:`contmix.distributions.cwm`."""

__all__ = [
    "CWM",
]

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn as nn

from torch import Size, Tensor
from torch.func import functional_call
from zuko.lazy import LazyTransform
from zuko.nn import MLP
from zuko.transforms import ComposedTransform

from .base import (
    ParametricMixture,
    lower_triangular,
    set_parameters,
    shifted_exp,
    shifted_log,
    triangle,
)
from .conditional import LR, STEPS
from .start import fit_start
from ..distributions import DiagNormal
from ..distributions.cwm import (
    ComponentwiseTransform,
    CWMDistribution,
    LocScaleTransform,
    TriangularAffineTransform,
)
from ..em.gmm import _factor
from ..report import FitReport
from ..utils import check_sizes

MapType = Literal["diagonal", "affine"]
MAP_TYPES = ("diagonal", "affine")


def cwm_shapes(components: int, features: int, maps: MapType) -> list[Size]:
    r"""The shapes of the map parameters: locations, log-scales (the log-diagonal of
    :math:`L_k`) and, for full affine maps, the strictly lower triangle of :math:`L_k`."""

    if maps not in MAP_TYPES:
        raise ValueError(f"Unknown maps '{maps}': choose one of {MAP_TYPES}.")

    shapes = [Size((components, features)), Size((components, features))]

    if maps == "affine":
        shapes.append(Size((components, features * (features - 1) // 2)))

    return shapes


def _classify(net: Callable[[Tensor], Tensor], c: Tensor, z: Tensor) -> Tensor:
    r"""Evaluates a conditional classifier on :math:`[z, c]`, :math:`c` broadcast to
    the batch shape of :math:`z`."""

    return net(torch.cat((z, c.expand(*z.shape[:-1], c.shape[-1])), dim=-1))


class CWM(ParametricMixture):
    r"""Creates a classifier-weighted mixture (CWM).

    .. math:: p(X \mid c) = \sum_{k = 1}^K w_k(T_k(X \mid c) \mid c) \,
        \mathcal{N}(T_k(X \mid c) \mid 0, I) \, |\det J_{T_k}(X \mid c)|

    with a softmax classifier :math:`w = \operatorname{softmax}(f)`, :math:`f` a
    :class:`zuko.nn.MLP` from :math:`D` (plus context) features to :math:`K` logits,
    and invertible maps :math:`T_k` from data to latent space:

    * ``"diagonal"`` (default, the paper's choice):
      :math:`T_k(x) = (x - \mu_k) / \sigma_k`, with :math:`\sigma_k = \exp(\phi_k) +
      \epsilon`;
    * ``"affine"``: :math:`T_k(x) = L_k^{-1} (x - \mu_k)`, with :math:`L_k` lower
      triangular of diagonal :math:`\exp(\phi_k) + \epsilon`;

    optionally followed by one lazy zuko transformation per component
    (``transforms``), :math:`T_k = F_k \circ A_k`. With a constant classifier
    :math:`w_k = \pi_k` and no extra transformations, a CWM is a Gaussian mixture
    with :math:`\Sigma_k = \operatorname{diag}(\sigma_k^2)` or :math:`L_k L_k^T`, which
    is how :meth:`initialize` starts it. With a context, the map parameters come
    from a hypernetwork :math:`c \mapsto (\mu, \phi, \dots)` and the classifier
    reads :math:`[z, c]`. The record of the last :meth:`initialize` is ``fit_report``
    (a :class:`~contmix.report.FitReport`, :py:`None` before any fit; not part of the
    state dict), and :meth:`predict_proba` gives the posterior of the components.

    The parameters of the unconditional maps are ``phi = [loc (K, D), log_diag (K, D)]``
    (plus ``tril (K, D (D - 1) / 2)`` for ``"affine"``), as in :class:`contmix.GMM`.

    References:
        | Classifier Weighted Mixtures (Argouarc'h et al.)

    Arguments:
        features: The number of features :math:`D`.
        context: The number of context features.
        components: The number of components :math:`K`.
        maps: ``"diagonal"`` or ``"affine"``.
        transforms: Extra lazy transformations :math:`F_k` applied after the affine
            maps: a sequence of :math:`K` :class:`zuko.lazy.LazyTransform`, or a
            function without arguments that builds one (called :math:`K` times).
        hidden_features: The hidden widths of the classifier.
        activation: The activation of the classifier (default :class:`torch.nn.ReLU`).
        epsilon: A numerical stability term added to the scales.
        kwargs: Keyword arguments passed to the hypernetwork :class:`zuko.nn.MLP`.

    Example:
        >>> cwm = CWM(features=2, components=3)
        >>> x = torch.randn(256, 2)
        >>> report = cwm.initialize(x, strategy="em")
        >>> cwm().log_prob(x).shape
        torch.Size([256])
        >>> cwm().sample((4,)).shape
        torch.Size([4, 2])
        >>> cwm().expectation(lambda x: x.square().sum(-1), n=64).shape
        torch.Size([])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 2,
        maps: MapType = "diagonal",
        transforms: Sequence[LazyTransform] | Callable[[], LazyTransform] | None = None,
        hidden_features: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] | None = None,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        check_sizes(features=features, components=components)
        check_sizes(0, context=context)
        shapes = cwm_shapes(components, features, maps)

        super().__init__(features, context, components, epsilon, shapes, **kwargs)

        self.maps = maps
        self.classifier = MLP(features + context, components, hidden_features, activation)

        if transforms is None:
            self.transforms = None
        else:
            if callable(transforms) and not isinstance(transforms, nn.Module):
                transforms = [transforms() for _ in range(components)]
            if len(transforms) != components:
                raise ValueError(
                    f"transforms must hold one transformation per component ({components}), "
                    f"got {len(transforms)}."
                )
            self.transforms = nn.ModuleList(transforms)

    out_of_core = False  # the classifier's start needs the samples in memory

    @staticmethod
    def initial_parameters(shapes: Sequence[Size]) -> list[Tensor]:
        r"""Returns the initial ``phi``: standard normal locations, unit scales (up to
        :math:`\epsilon`) and, for ``"affine"`` maps, no shear."""

        return [torch.randn(shapes[0])] + [torch.zeros(s) for s in shapes[1:]]

    def distribution(self, params: list[Tensor], c: Tensor | None) -> CWMDistribution:
        loc, log_diag, *tril = params

        # the classifier, evaluated lazily by the distribution, is bound to the values
        # its parameters have now (as those of the maps): under torch.func.functional_call
        # the distribution then depends on the parameters it was given
        net = partial(functional_call, self.classifier, dict(self.classifier.named_parameters()))
        classifier = net if c is None else partial(_classify, net, c)
        scale = shifted_exp(log_diag, self.epsilon)

        if self.maps == "affine":
            transform = TriangularAffineTransform(loc, lower_triangular(scale, tril[0]))
        else:
            transform = LocScaleTransform(loc, scale)

        if self.transforms is not None:
            extra = ComponentwiseTransform([t(c) for t in self.transforms])
            transform = ComposedTransform(transform, extra)

        zeros = loc.new_zeros(loc.shape[:-2] + (self.features,))
        base = DiagNormal(zeros, torch.ones_like(zeros))

        return CWMDistribution(base, transform, classifier)

    def _layout(self, logits: Tensor, means: Tensor, covariances: Tensor) -> list[Tensor]:
        r"""Turns Gaussian mixture parameters into the layout of :attr:`shapes`."""

        if self.maps == "affine":
            scale, *tril = triangle(_factor(covariances))
        else:
            scale, tril = covariances.sqrt(), []

        log_diag = shifted_log(scale, self.epsilon)

        return [means, log_diag, *tril]

    @torch.no_grad()
    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "kmeans++", "em"] = "em",
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
        r"""Initializes the mixture from data as a Gaussian mixture.

        ``"random"``, ``"kmeans"`` and ``"kmeans++"`` pick centres (random samples, the
        k-means solution or k-means++ seeds) and set each map from the mean and
        covariance of its cluster, :math:`T_k(x) = (x - \mu_k) / \sigma_k` (or
        :math:`L_k^{-1} (x - \mu_k)` with :math:`L_k L_k^T = \Sigma_k`). ``"em"`` first
        fits a Gaussian mixture by expectation-maximization (diagonal for
        ``"diagonal"`` maps, full for ``"affine"``), the CWM's pre-training in the
        paper. The classifier then produces the constant weights :math:`\pi_k` (last
        layer weights zero, biases :math:`\log \pi_k`), so that the CWM's density
        equals the Gaussian mixture's (up to the extra ``transforms``, left as they
        are, and for a conditional model up to the hypernetwork's output weights,
        scaled by :math:`10^{-2}`). With ``n_init`` restarts, each from its own centres,
        the Gaussian mixture of the highest mean log-likelihood is kept, as in
        :meth:`contmix.GMM.initialize` (whose default ``n_init=1`` this follows). EM or
        k-means that stop without converging warn with a
        :class:`~contmix.report.ConvergenceWarning`; progress bars count the restarts
        and the iterations.

        For a conditional model, the mixture fitted is the unconditional :math:`p(x)`,
        whatever the context. Given the contexts ``c`` of the samples, the hypernetwork
        of the maps and the classifier (which reads the context too) are then fitted
        to :math:`p(x \mid c)`: from the Gaussian mixture, the weights of the
        hypernetwork's last layer at zero, ``steps`` full-batch Adam steps of the mean
        conditional log-likelihood, of which the best parameters are kept, never worse
        than the Gaussian mixture on :math:`(x, c)` (:mod:`contmix.mixtures.conditional`).

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, D)` and :math:`N > K`.
            strategy: ``"random"``, ``"kmeans"``, ``"kmeans++"`` or ``"em"``.
            tol: The tolerance of EM on the mean log-likelihood.
            max_iter: The maximum number of EM iterations.
            reg: The variance added to the diagonal of the covariances.
            n_init: The number of restarts, of which the best fit is kept.
            generator: The random generator of the centres (torch's global generator
                if :py:`None`): the same seed gives the same fit, and the global seed
                is left alone.
            progress: Whether to show progress bars (:py:`None`: only in a terminal).
            c: The contexts of the samples of a conditional model, with shape
                :math:`(N, C)`; :py:`None` fits the unconditional mixture, whatever
                the context.
            steps: The number of Adam steps of the context fit (with ``c``).
            lr: The learning rate of the context fit (with ``c``).

        Returns:
            The :class:`~contmix.report.FitReport` of the Gaussian mixture, also kept
            as ``fit_report``: its lower bound is the mean log-likelihood of the
            Gaussian mixture, the CWM's at the start (without extra ``transforms``);
            with ``c``, the mean conditional log-likelihoods of the context fit.

        Example:
            >>> x = torch.cat((torch.randn(100, 2) - 3, torch.randn(100, 2) + 3))
            >>> cwm = CWM(features=2, components=2)
            >>> report = cwm.initialize(x, generator=torch.Generator().manual_seed(0))
            >>> report is cwm.fit_report, report.strategy, report.converged
            (True, 'em', True)
            >>> torch.allclose(cwm().log_prob(x).mean(), torch.tensor(report.lower_bound))
            True
        """

        args = (x, strategy, tol, max_iter, reg, n_init, generator, progress, c, steps, lr)

        return self._initialize(*args)

    def _start(
        self,
        x: Tensor,
        strategy: str,
        tol: float,
        max_iter: int,
        reg: float,
        generator: torch.Generator | None,
        progress: bool | None,
    ) -> tuple[tuple[Tensor, Tensor, Tensor], FitReport]:
        r"""One fit of :meth:`initialize`: the Gaussian mixture of
        :func:`~contmix.mixtures.start.fit_start`, diagonal for ``"diagonal"`` maps, full
        for ``"affine"``."""

        covariance_type = "full" if self.maps == "affine" else "diagonal"
        args = (x, self.components, strategy, covariance_type, False, tol, max_iter, reg)

        return fit_start(*args, generator, progress)

    def _write(self, params: Sequence[Tensor]) -> None:
        r"""Writes the maps of the Gaussian mixture of :meth:`_start` and its weights as
        the constant output of the classifier (last layer's weights zero, biases
        :math:`\log \pi_k`)."""

        logits, *params = params

        if not torch.isfinite(logits).all():
            raise ValueError("The fitted weights are not finite: the data is degenerate.")

        set_parameters(self, self._layout(logits, *params))
        self.classifier[-1].weight.zero_()
        self.classifier[-1].bias.copy_(logits)

    def _context_parameters(self) -> Iterable[nn.Parameter] | None:
        r"""The parameters of the context fit: those of the hypernetwork and of the
        classifier, which reads the context too."""

        if self.context == 0:
            return None

        return [*self.hyper.parameters(), *self.classifier.parameters()]
