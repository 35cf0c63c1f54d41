r"""Classifier-weighted mixtures (CWM).

A CWM replaces the constant weights of a mixture by functions of :math:`x` built
from a classifier :math:`w` evaluated in the latent space of each component:

.. math:: p(x) = \sum_{k = 1}^K w_k(T_k(x)) \, p_0(T_k(x)) \,
    |\det J_{T_k}(x)|

where :math:`p_0` is a standard normal, :math:`T_k` are invertible maps and
:math:`w = \operatorname{softmax}(f)` sums to one everywhere. It is the marginal of
the latent-variable model :math:`Z \sim p_0`, :math:`R \mid Z \sim
\operatorname{Categorical}(w(Z))`, :math:`X = T_R^{-1}(Z)`, so it can be evaluated
and sampled exactly, and expectations have a differentiable Rao-Blackwellized
estimator.

References:
    | Classifier Weighted Mixtures (Argouarc'h et al.)
"""

__all__ = [
    "CWM",
    "CWMDistribution",
    "ComponentwiseTransform",
    "LocScaleTransform",
    "TriangularAffineTransform",
]

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn as nn

from torch import Size, Tensor
from torch.distributions import Categorical, Distribution, Transform, constraints
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
from ..distributions import DiagNormal, _check_event
from ..em.gmm import _factor
from ..report import FitReport
from ..utils import check_sizes

MapType = Literal["diagonal", "affine"]
MAP_TYPES = ("diagonal", "affine")


class LocScaleTransform(Transform):
    r"""Creates a batch of location-scale transformations, from data to latent space.

    .. math:: T_k(x) = \frac{x - \mu_k}{\sigma_k}, \quad
        \log |\det J_{T_k}| = -\sum_i \log \sigma_{ki}

    Arguments:
        loc: The locations :math:`\mu_k`, with shape :math:`(*, K, D)`.
        scale: The positive scales :math:`\sigma_k`, with shape :math:`(*, K, D)`.

    Example:
        >>> t = LocScaleTransform(torch.zeros(3, 2), 2 * torch.ones(3, 2))
        >>> t(torch.ones(1, 2)).shape
        torch.Size([3, 2])
        >>> t.inv(t(torch.ones(1, 2)))[0]
        tensor([1., 1.])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: Tensor, scale: Tensor, **kwargs) -> None:
        super().__init__(**kwargs)

        self.loc = loc
        self.scale = scale

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.loc) / self.scale

    def _inverse(self, z: Tensor) -> Tensor:
        return self.loc + self.scale * z

    def log_abs_det_jacobian(self, x: Tensor, z: Tensor) -> Tensor:
        return -self.scale.log().sum(dim=-1).expand(z.shape[:-1])


class TriangularAffineTransform(Transform):
    r"""Creates a batch of full affine transformations, from data to latent space.

    .. math:: T_k(x) = L_k^{-1} (x - \mu_k), \quad
        \log |\det J_{T_k}| = -\sum_i \log L_{kii}

    with :math:`L_k` lower triangular with a positive diagonal, so that
    :math:`T_k^{-1}(Z) \sim \mathcal{N}(\mu_k, L_k L_k^T)` when
    :math:`Z \sim \mathcal{N}(0, I)`.

    Arguments:
        loc: The locations :math:`\mu_k`, with shape :math:`(*, K, D)`.
        tril: The lower triangular factors :math:`L_k`, with shape :math:`(*, K, D, D)`.

    Example:
        >>> t = TriangularAffineTransform(torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
        >>> t(torch.ones(1, 2)).shape
        torch.Size([3, 2])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: Tensor, tril: Tensor, **kwargs) -> None:
        super().__init__(**kwargs)

        eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device)

        self.loc = loc
        self.tril = tril
        self.inverse_tril = torch.linalg.solve_triangular(tril, eye, upper=False)

    def _call(self, x: Tensor) -> Tensor:
        return ((x - self.loc).unsqueeze(-2) @ self.inverse_tril.mT).squeeze(-2)

    def _inverse(self, z: Tensor) -> Tensor:
        return self.loc + (z.unsqueeze(-2) @ self.tril.mT).squeeze(-2)

    def log_abs_det_jacobian(self, x: Tensor, z: Tensor) -> Tensor:
        log_diag = self.tril.diagonal(dim1=-2, dim2=-1).log()
        return -log_diag.sum(dim=-1).expand(z.shape[:-1])


class ComponentwiseTransform(Transform):
    r"""Applies one transformation per component: :math:`f_k` to :math:`x_k`, the
    :math:`k`-th row of an input with shape :math:`(*, K, D)` (or :math:`(*, 1, D)`,
    shared by all components).

    This is the hook for arbitrary (zuko) transformations in :class:`CWM`; it loops
    over the :math:`K` transformations.

    Arguments:
        transforms: The transformations :math:`f_k`, each with event shape :math:`(D,)`.

    Example:
        >>> from zuko.transforms import MonotonicAffineTransform, DependentTransform
        >>> fs = [DependentTransform(MonotonicAffineTransform(torch.ones(2), torch.zeros(2)), 1)]
        >>> t = ComponentwiseTransform(fs * 3)
        >>> t(torch.zeros(1, 2))
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.]])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, transforms: Sequence[Transform], **kwargs) -> None:
        super().__init__(**kwargs)

        self.transforms = list(transforms)

    def _pairs(self, x: Tensor) -> zip:
        r"""Pairs each transformation with its row of :math:`x`, broadcast to :math:`K` rows."""

        K = len(self.transforms)
        rows = x.expand(*x.shape[:-2], K, x.shape[-1]).unbind(dim=-2)

        return zip(self.transforms, rows, strict=True)

    def _call(self, x: Tensor) -> Tensor:
        return torch.stack([f(r) for f, r in self._pairs(x)], dim=-2)

    def _inverse(self, z: Tensor) -> Tensor:
        return torch.stack([f.inv(r) for f, r in self._pairs(z)], dim=-2)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outputs = [f.call_and_ladj(r) for f, r in self._pairs(x)]
        z = torch.stack([y for y, _ in outputs], dim=-2)
        ladj = torch.stack([ladj for _, ladj in outputs], dim=-1)

        return z, ladj

    def log_abs_det_jacobian(self, x: Tensor, z: Tensor) -> Tensor:
        return self.call_and_ladj(x)[1]


class CWMDistribution(Distribution):
    r"""Creates a classifier-weighted mixture distribution.

    .. math:: p(x) = \sum_{k = 1}^K w_k(T_k(x)) \, p_0(T_k(x)) \,
        |\det J_{T_k}(x)|

    with :math:`w = \operatorname{softmax}(f)` a classifier. It is the marginal of
    :math:`Z \sim p_0`, :math:`R \mid Z \sim \operatorname{Categorical}(w(Z))`,
    :math:`X = T_R^{-1}(Z)`: :meth:`sample` follows these three steps, and
    :meth:`expectation` integrates :math:`R` out (Rao-Blackwellization),

    .. math:: \mathbb{E}[h(X)] \approx \frac{1}{M} \sum_{i = 1}^M \sum_{k = 1}^K
        w_k(z_i) \, h(T_k^{-1}(z_i)), \quad z_i \sim p_0,

    which has a lower variance than plain Monte Carlo and is differentiable with
    respect to every parameter (the :math:`z_i` are reparameterized).

    References:
        | Classifier Weighted Mixtures (Argouarc'h et al.), Eq. (12) and (19)

    Arguments:
        base: The base :math:`p_0`, with event shape :math:`(D,)` and batch shape
            :math:`(*)`.
        transform: The maps :math:`T_k` from data to latent space, taking inputs with
            shape :math:`(*, K, D)` or :math:`(*, 1, D)` to :math:`(*, K, D)`.
        classifier: The logits :math:`f`, from :math:`(*, D)` to :math:`(*, K)`.

    Example:
        >>> loc, scale = torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1)
        >>> base = DiagNormal(torch.zeros(1), torch.ones(1))
        >>> f = lambda z: torch.cat((z, -z), dim=-1)  # logits of a 2-class classifier
        >>> d = CWMDistribution(base, LocScaleTransform(loc, scale), f)
        >>> x = torch.linspace(-20, 20, 100001).unsqueeze(-1)
        >>> bool(abs(d.log_prob(x).exp().sum() * 40 / 100000 - 1) < 1e-4)
        True
        >>> d.sample((5,)).shape
        torch.Size([5, 1])
    """

    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        base: Distribution,
        transform: Transform,
        classifier: Callable[[Tensor], Tensor],
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

        self.base = base
        self.transform = transform
        self.classifier = classifier

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(base={self.base}, transform={self.transform})"

    def expand(self, batch_shape: Size, _instance=None) -> "CWMDistribution":
        r"""Returns the distribution with a larger batch shape, to which the current
        one broadcasts, as :meth:`torch.distributions.Distribution.expand`: the base is
        expanded, and the maps and the classifier, which broadcast with their inputs,
        are shared.

        Example:
            >>> d = CWM(features=2, context=3, components=2)(torch.randn(5, 3))
            >>> d.expand((4, 5)).sample().shape
            torch.Size([4, 5, 2])
        """

        batch_shape = Size(batch_shape)
        try:
            broadcasts = torch.broadcast_shapes(batch_shape, self.batch_shape) == batch_shape
        except RuntimeError:
            broadcasts = False
        if not broadcasts:
            raise ValueError(
                f"The batch shape {tuple(self.batch_shape)} cannot be expanded to "
                f"{tuple(batch_shape)}: it must broadcast to it."
            )

        new = self._get_checked_instance(CWMDistribution, _instance)
        new.base = self.base.expand(batch_shape)
        new.transform, new.classifier = self.transform, self.classifier
        super(CWMDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args

        return new

    def _check(self, x: Tensor) -> None:
        _check_event(x, self.event_shape[-1], like=self.base.mean)

    def joint(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\log w_k(T_k(x)) + \log p_0(T_k(x)) + \log |\det J_{T_k}(x)|`
        for every component, with shape :math:`(*, K)`. Each component's classifier
        weight is evaluated at its own latent :math:`T_k(x)`, all at once."""

        self._check(x)

        z, ladj = self.transform.call_and_ladj(x.unsqueeze(-2))
        z_ = z.movedim(-2, 0)  # (K, *, D) broadcasts with the batch shape

        log_w = self.classifier(z_).movedim(0, -2).log_softmax(dim=-1)
        log_w = log_w.diagonal(dim1=-2, dim2=-1)
        log_p0 = self.base.log_prob(z_).movedim(0, -1)

        return log_w + log_p0 + ladj

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.joint(x), dim=-1)

    def posterior(self, x: Tensor) -> Tensor:
        r"""Returns the log-responsibilities :math:`\log p(R = k \mid x)`, with shape
        :math:`(*, K)`.

        .. math:: p(R = k \mid x) = \frac{w_k(T_k(x)) \, p_0(T_k(x)) \,
            |\det J_{T_k}(x)|}{p(x)}
        """

        return torch.log_softmax(self.joint(x), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_k p(R = k \mid x)`."""

        return self.joint(x).argmax(dim=-1)

    def latents(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns the points :math:`T_k^{-1}(z)` of all components, with shape
        :math:`(*, K, D)`, and the log-weights :math:`\log w_k(z)`, with shape
        :math:`(*, K)`, for latent points :math:`z` with shape :math:`(*, D)`."""

        x = self.transform.inv(z.unsqueeze(-2))
        log_w = self.classifier(z).log_softmax(dim=-1)

        return x, log_w

    def sample(self, shape: Size = ()) -> Tensor:
        if any(s < 0 for s in shape):
            raise ValueError(f"The sample shape must be non-negative, got {tuple(shape)}.")

        with torch.no_grad():
            z = self.base.sample(shape)
            x, log_w = self.latents(z)
            r = Categorical(logits=log_w).sample()
            index = r.reshape(*r.shape, 1, 1).expand(*r.shape, 1, x.shape[-1])

            return torch.take_along_dim(x, index, dim=-2).squeeze(-2)

    def conditional_expectation(self, h: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
        r"""Returns :math:`\mathbb{E}[h(X) \mid Z = z] = \sum_k w_k(z) \,
        h(T_k^{-1}(z))`, with shape :math:`(*, *H)`.

        Arguments:
            h: A function from :math:`(*, D)` to :math:`(*, *H)`.
            z: Latent points, with shape :math:`(*, D)`.
        """

        x, log_w = self.latents(z)
        y = h(x)
        w = log_w.exp()
        w = w.reshape(w.shape + (1,) * (y.dim() - w.dim()))

        return (w * y).sum(dim=log_w.dim() - 1)

    def expectation(self, h: Callable[[Tensor], Tensor], n: int = 1024) -> Tensor:
        r"""Returns the Rao-Blackwellized estimate of :math:`\mathbb{E}[h(X)]` from
        :math:`n` base samples, differentiable with respect to every parameter.

        .. math:: \mathbb{E}[h(X)] \approx \frac{1}{n} \sum_{i = 1}^n \sum_{k = 1}^K
            w_k(z_i) \, h(T_k^{-1}(z_i)), \quad z_i \sim p_0

        Arguments:
            h: A function from :math:`(*, D)` to :math:`(*, *H)`, applied to all
                :math:`n K` points at once.
            n: The number of samples :math:`z_i`.

        Returns:
            The estimate, with shape :math:`(*, *H)` where :math:`(*)` is the batch shape.
        """

        z = self.base.rsample((n,))

        return self.conditional_expectation(h, z).mean(dim=0)


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

    def predict_proba(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the posterior of the components, with shape :math:`(*, K)`, whose
        rows sum to one, as scikit-learn's ``predict_proba``.

        A CWM is the marginal of a latent-variable model, :math:`Z \sim p_0`, :math:`R
        \mid Z \sim \operatorname{Categorical}(w(Z))`, :math:`X = T_R^{-1}(Z)`, whose
        component :math:`R` has, by Bayes' rule, the posterior

        .. math:: p(R = k \mid x) = \frac{w_k(T_k(x)) \, p_0(T_k(x)) \,
            |\det J_{T_k}(x)|}{\sum_j w_j(T_j(x)) \, p_0(T_j(x)) \, |\det J_{T_j}(x)|}

        the probability that :math:`x` was drawn through the map of component
        :math:`k`: each weight is that of the classifier at the component's own latent
        point :math:`T_k(x)`, not a constant :math:`\pi_k`. With a constant classifier
        and no extra transformations (as :meth:`initialize` leaves it), it is the
        posterior of the Gaussian mixture, :meth:`contmix.GMM.predict_proba`. It is the
        exponential of the distribution's :meth:`CWMDistribution.posterior`, which
        returns :math:`\log p(R = k \mid x)`.

        Example:
            >>> cwm = CWM(features=2, components=3)
            >>> cwm.predict_proba(torch.randn(5, 2)).sum(dim=-1).allclose(torch.ones(5))
            True
        """

        return self(c).posterior(x).exp()

    def predict(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_k p(R = k \mid x)` of
        each sample (see :meth:`predict_proba`), with shape :math:`(*)`, as
        scikit-learn's ``predict``.

        Example:
            >>> CWM(features=2, components=3).predict(torch.randn(5, 2)).shape
            torch.Size([5])
        """

        return self(c).predict(x)

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
