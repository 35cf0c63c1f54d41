r"""The distribution of classifier-weighted mixtures (CWM) and its maps.

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
    "CWMDistribution",
    "ComponentwiseTransform",
    "LocScaleTransform",
    "TriangularAffineTransform",
]

from collections.abc import Callable, Sequence

import torch

from torch import Size, Tensor
from torch.distributions import Categorical, Distribution, Transform, constraints

from .shapes import _check_event


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

    This is the hook for arbitrary (zuko) transformations in :class:`~contmix.CWM`; it loops
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
        >>> from contmix.distributions import DiagNormal
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
            >>> from contmix import CWM
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

        by Bayes' rule in the latent-variable model :math:`Z \sim p_0`, :math:`R \mid Z
        \sim \operatorname{Categorical}(w(Z))`, :math:`X = T_R^{-1}(Z)`: the probability
        that :math:`x` was drawn through the map of component :math:`k`. Each weight is
        that of the classifier at the component's own latent point :math:`T_k(x)`, not
        a constant :math:`\pi_k`; with a constant classifier and identity maps beyond
        the affine ones, it is the posterior of the Gaussian mixture.
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
