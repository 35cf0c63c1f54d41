r"""The Gaussian mixture, :class:`GaussianMixture` (see :mod:`contmix.distributions`)."""

import torch

from torch import Size, Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    MixtureSameFamily,
)

from .shapes import (
    Dims,
    _check_batch,
    _check_event,
    _index,
)
from ..ops import logsumexp


class GaussianMixture(MixtureSameFamily):
    r"""Creates a mixture of Gaussian distributions.

    .. math:: p(x) = \sum_{k = 1}^K \pi_k \, p_k(x), \quad
        \pi = \operatorname{softmax}(\text{logits})

    A :class:`torch.distributions.MixtureSameFamily` with zuko's surface
    (:attr:`base`, :attr:`logits`) and more: :meth:`posterior`, :meth:`predict`,
    :meth:`marginal` and :meth:`condition`, the latter two exact and returning a
    :class:`GaussianMixture` again. Its components are a batch of :class:`DiagNormal`,
    :class:`FullNormal`, :class:`LowRankNormal` or :class:`GaussianMixture`, the last
    giving a mixture of mixtures (hierarchical mixture).

    Wikipedia:
        https://wikipedia.org/wiki/Mixture_model#Gaussian_mixture_model

    Arguments:
        base: The components, with batch shape :math:`(*, K)`.
        logits: The unnormalized log-weights :math:`\log \pi_k`, with shape :math:`(*, K)`.
        validate_args: Whether to validate arguments, as in torch.

    Example:
        >>> from contmix.distributions import FullNormal
        >>> base = FullNormal(torch.tensor([[-2.0], [2.0]]), torch.eye(1).expand(2, 1, 1))
        >>> d = GaussianMixture(base, torch.zeros(2))
        >>> d.log_prob(torch.tensor([[0.0], [2.0]]))
        tensor([-2.9189, -1.6118])
        >>> d.posterior(torch.tensor([[1.0]])).exp()
        tensor([[0.0180, 0.9820]])
    """

    def __init__(self, base: Distribution, logits: Tensor, validate_args: bool | None = None):
        if len(base.event_shape) != 1:
            raise ValueError(
                f"The components must have one event dimension, got {tuple(base.event_shape)}."
            )

        super().__init__(Categorical(logits=logits), base, validate_args=validate_args)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(base={self.base}, logits: {tuple(self.logits.shape)})"

    @property
    def base(self) -> Distribution:
        r"""The components, as in :class:`zuko.distributions.Mixture`."""

        return self.component_distribution

    @property
    def logits(self) -> Tensor:
        r"""The normalized log-weights :math:`\log \pi_k`."""

        return self.mixture_distribution.logits

    @property
    def features(self) -> int:
        return self.event_shape[-1]

    def expand(self, batch_shape: Size, _instance=None) -> "GaussianMixture":
        shape = Size(batch_shape) + (self._num_component,)
        return GaussianMixture(self.base.expand(shape), self.logits.expand(shape))

    def joint(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\log \pi_k + \log p_k(x)` for every component, with shape
        :math:`(*, K)`."""

        _check_event(x, self.features, like=self.logits)
        _check_batch(x, self.batch_shape)

        return self.base.log_prob(x.unsqueeze(-2)) + self.logits

    def log_prob(self, x: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(x)

        if isinstance(self.base, GaussianMixture):  # of mixtures: one log-sum-exp over both
            _check_event(x, self.features, like=self.logits)
            _check_batch(x, self.batch_shape)
            inner = self.base
            joint = inner.base.log_prob(x[..., None, None, :]) + inner.logits
            joint = joint + self.logits.unsqueeze(-1)
            return logsumexp(joint.flatten(-2))

        return logsumexp(self.joint(x))

    def posterior(self, x: Tensor) -> Tensor:
        r"""Returns the log-responsibilities :math:`\log p(k \mid x)`, with shape
        :math:`(*, K)`.

        .. math:: \log p(k \mid x) = \log \pi_k + \log p_k(x) - \log p(x)
        """

        return torch.log_softmax(self.joint(x), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        r"""Returns the most probable component :math:`\arg\max_k p(k \mid x)`."""

        return self.joint(x).argmax(dim=-1)

    def sample(self, shape: Size = ()) -> Tensor:
        shape = Size(shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"The sample shape must be non-negative, got {tuple(shape)}.")
        if shape.numel() == 0:
            return self.logits.new_empty(self._extended_shape(shape))
        if not hasattr(self.base, "take"):
            return super().sample(shape)

        with torch.no_grad():
            index = self.mixture_distribution.sample(shape)
            return self.base.take(index).sample()

    def marginal(self, dims: Dims) -> "GaussianMixture":
        r"""Returns the marginal mixture of the dimensions ``dims`` (indices or a boolean
        mask): the same weights, each component marginalized.

        Example:
            >>> from contmix.distributions import FullNormal
            >>> base = FullNormal(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
            >>> GaussianMixture(base, torch.zeros(2)).marginal([0, 2]).event_shape
            torch.Size([2])
        """

        return GaussianMixture(self.base.marginal(dims), self.logits)

    def condition(self, dims: Dims, value: Tensor) -> "GaussianMixture":
        r"""Returns the mixture of the other dimensions given ``value`` at ``dims``.

        Each component is conditioned and the weights become the posterior of the
        components given the observed part:

        .. math:: p(x_u \mid x_o) = \sum_k \frac{\pi_k p_k(x_o)}{\sum_j \pi_j p_j(x_o)}
            p_k(x_u \mid x_o)

        Arguments:
            dims: The observed dimensions (indices or a boolean mask).
            value: The observed values, with shape :math:`(*, O)`, in the order of
                ``dims``. Its batch shape is broadcast with the mixture's.

        Example:
            >>> from contmix.distributions import FullNormal
            >>> base = FullNormal(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
            >>> d = GaussianMixture(base, torch.zeros(2))
            >>> d.condition([1], torch.randn(5, 1)).batch_shape
            torch.Size([5])
        """

        _check_event(value, len(_index(dims, self.features)), "value", self.logits)
        _check_batch(value, self.batch_shape, "value")

        value = value.unsqueeze(-2)
        logits = self.logits + self.base.marginal(dims).log_prob(value)

        return GaussianMixture(self.base.condition(dims, value), logits)
